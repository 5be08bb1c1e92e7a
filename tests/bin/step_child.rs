//! A child process for the resume tests.
//!
//!     step-child slow-write RUN_DIR STARTED_FILE   write a 64 MiB output slowly
//!     step-child once RUN_DIR SIDE_EFFECT_FILE     a step that appends one line, then sleeps
//!
//! Prints the step's value on success.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use recovery::{Run, resumable_step};

#[resumable_step("slow-write")]
fn slow_write(run: &Run, started: &Path) -> std::io::Result<u64> {
    let out = run.output_file("big.bin")?;
    let mut file = std::fs::File::create(out.path())?;
    let chunk = vec![7u8; 1 << 20];
    for i in 0..64u64 {
        file.write_all(&chunk)?;
        if i == 1 {
            std::fs::write(started, b"writing")?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(64 << 20)
}

#[resumable_step("once")]
fn once(run: &Run, side_effects: &Path) -> std::io::Result<String> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(side_effects)?;
    writeln!(log, "ran in {}", std::process::id())?;
    std::thread::sleep(Duration::from_millis(300));
    run.write_output("once.txt", b"done once")?;
    Ok("the value".to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, dir, extra] = args.as_slice() else {
        return Err("usage: step-child (slow-write|once) RUN_DIR FILE".into());
    };
    let run = Run::open(dir)?;
    match mode.as_str() {
        "slow-write" => println!("{}", slow_write(&run, Path::new(extra))?),
        "once" => println!("{}", once(&run, Path::new(extra))?),
        other => return Err(format!("unknown mode {other:?}").into()),
    }
    Ok(())
}
