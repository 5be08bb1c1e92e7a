//! A child process for the resume tests.
//!
//! ```text
//! step-child slow-write RUN_DIR STARTED_FILE   write a 64 MiB output slowly
//! step-child once RUN_DIR SIDE_EFFECT_FILE     a step that appends one line, then sleeps
//! step-child chain RUN_DIR SIDE_EFFECT_FILE    five chained steps with file and directory
//!                                              outputs (`-` for no side-effect file)
//! step-child crash-outside RUN_DIR EXPORT_DIR   stage outputs in EXPORT_DIR, then SIGKILL itself
//! step-child family RUN_DIR SIDE_EFFECT_FILE   the family "page" over RECOVERY_CHILD_ITEMS
//!                                              items (1000) on RECOVERY_CHILD_THREADS
//!                                              threads (4), each thread starting at its
//!                                              own place; prints the sum of the values
//! step-child torture RUN_DIR HISTORY_FILE     the family "item" over RECOVERY_CHILD_ITEMS items
//!                                              on RECOVERY_CHILD_THREADS threads, each body
//!                                              taking RECOVERY_CHILD_BODY_MS; every attempt,
//!                                              commit and resume appended to HISTORY_FILE
//!                                              (tests/support/history.rs); items that fail
//!                                              are tried again until all are done
//! step-child held RUN_DIR SIGNAL_PATH          the step "held": writes its output, creates
//!                                              SIGNAL_PATH.started, waits for SIGNAL_PATH.go
//! ```
//!
//! With RECOVERY_CHILD_STORE=URL the run keeps its state in that store
//! (AWS_* variables configure it), with leases of RECOVERY_CHILD_TTL_MS.
//!
//! Prints the step's value on success.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use recovery::{Run, resumable_step};
use recovery_suite::history::History;

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

/// Appends "step pid" to the side-effect file: one line per body run.
fn side_effect(path: &Path, step: &str) -> std::io::Result<()> {
    if path == Path::new("-") {
        return Ok(());
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write, so lines from many threads and processes never interleave.
    log.write_all(format!("{step} {}\n", std::process::id()).as_bytes())
}

/// Deterministic content of `len` bytes from a seed.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            b'a' + ((x >> 33) % 26) as u8
        })
        .collect()
}

/// Link `n` of the chain: a directory output with two files and a file
/// output, all derived from the previous link's value.
fn chain_link(run: &Run, n: u64, previous: u64, side_effects: &Path) -> std::io::Result<u64> {
    side_effect(side_effects, &format!("link-{n}"))?;
    let dir = run.output_dir(&format!("chain/{n}"))?;
    std::fs::write(dir.path().join("big.bin"), content(previous ^ n, 64 * 1024))?;
    std::fs::write(
        dir.path().join("small.txt"),
        content(previous + n, 100 + 300 * n as usize),
    )?;
    run.write_output(&format!("chain/{n}.txt"), &content(n, 5000))?;
    Ok(previous.wrapping_mul(31).wrapping_add(n))
}

#[resumable_step("link-1", key = previous)]
fn link1(run: &Run, previous: u64, s: &Path) -> std::io::Result<u64> {
    chain_link(run, 1, previous, s)
}
#[resumable_step("link-2", key = previous)]
fn link2(run: &Run, previous: u64, s: &Path) -> std::io::Result<u64> {
    chain_link(run, 2, previous, s)
}
#[resumable_step("link-3", key = previous)]
fn link3(run: &Run, previous: u64, s: &Path) -> std::io::Result<u64> {
    chain_link(run, 3, previous, s)
}
#[resumable_step("link-4", key = previous)]
fn link4(run: &Run, previous: u64, s: &Path) -> std::io::Result<u64> {
    chain_link(run, 4, previous, s)
}
#[resumable_step("link-5", key = previous)]
fn link5(run: &Run, previous: u64, s: &Path) -> std::io::Result<u64> {
    chain_link(run, 5, previous, s)
}

fn chain(run: &Run, s: &Path) -> std::io::Result<u64> {
    let v = link1(run, 7, s)?;
    let v = link2(run, v, s)?;
    let v = link3(run, v, s)?;
    let v = link4(run, v, s)?;
    link5(run, v, s)
}

/// One item of a family: a file output whose content depends on the item.
#[resumable_step("page", item = n)]
fn page(run: &Run, n: u32, s: &Path) -> std::io::Result<u64> {
    side_effect(s, &format!("page-{n}"))?;
    let len = 200 + (n as usize % 7) * 300;
    run.write_output(&format!("pages/{n:04}.txt"), &content(u64::from(n), len))?;
    Ok(u64::from(n) * 3)
}

/// Every item of the family, from `threads` threads that each start at
/// their own place and wrap around, so that threads (and processes) meet
/// on items.
fn family(run: &Run, s: &Path) -> std::io::Result<u64> {
    let number = |var: &str, default: u32| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let items = number("RECOVERY_CHILD_ITEMS", 1000);
    let threads = number("RECOVERY_CHILD_THREADS", 4).max(1);
    let offset = std::process::id() % items.max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> std::io::Result<u64> {
                    let start = offset + t * items / threads;
                    (0..items).map(|i| page(run, (start + i) % items, s)).sum()
                })
            })
            .collect();
        // Each worker visits every item, so each sum is the family's.
        let sums = workers
            .into_iter()
            .map(|w| w.join().expect("a worker panicked"))
            .collect::<std::io::Result<Vec<u64>>>()?;
        Ok(sums[0])
    })
}

/// Writes its output, says so, and waits to be let go (a test pauses or
/// kills it meanwhile).
#[resumable_step("held")]
fn held(run: &Run, signal: &Path) -> std::io::Result<String> {
    run.write_output(
        "held.txt",
        format!("written by {}", std::process::id()).as_bytes(),
    )?;
    std::fs::write(signal.with_extension("started"), b"started")?;
    while !signal.with_extension("go").exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("value of {}", std::process::id()))
}

thread_local! {
    /// The token of the body this thread ran last.
    static RAN: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// An item whose output and value carry its attempt's token.
#[resumable_step("item", item = n)]
fn torture_item(run: &Run, n: u32, h: &History, body: Duration) -> std::io::Result<String> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let token = format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    RAN.with(|r| *r.borrow_mut() = Some(token.clone()));
    h.record("attempt", &format!("item/{n}"), &token);
    std::thread::sleep(body);
    run.write_output(&format!("items/{n}.txt"), token.as_bytes())?;
    Ok(token)
}

/// Every item, on several threads, until each has returned once.
fn torture(run: &Run, history: &Path) -> std::io::Result<u64> {
    let number = |var: &str, default: u64| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let items = number("RECOVERY_CHILD_ITEMS", 100) as u32;
    let threads = number("RECOVERY_CHILD_THREADS", 2).max(1) as u32;
    let body = Duration::from_millis(number("RECOVERY_CHILD_BODY_MS", 20));
    let h = History::in_file(history);
    let offset = std::process::id() % items.max(1);
    let done = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (h, done) = (&h, &done);
            scope.spawn(move || {
                let start = offset + t * items / threads;
                let mut left: Vec<u32> = (0..items).map(|i| (start + i) % items).collect();
                while !left.is_empty() {
                    left.retain(|&n| {
                        RAN.with(|r| *r.borrow_mut() = None);
                        match torture_item(run, n, h, body) {
                            Ok(value) => {
                                let ran = RAN.with(|r| r.borrow_mut().take());
                                let what = if ran.as_deref() == Some(value.as_str()) {
                                    "committed"
                                } else {
                                    "resumed"
                                };
                                h.record(what, &format!("item/{n}"), &value);
                                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                false
                            }
                            Err(e) => {
                                let error = e.to_string().replace('\n', " ");
                                h.record("failed", &format!("item/{n}"), &error);
                                true
                            }
                        }
                    });
                }
            });
        }
    });
    Ok(done.into_inner())
}

/// Stages a directory and a file outside the run, then is killed before
/// the commit: no destructor runs.
#[resumable_step("export")]
fn crash_outside(run: &Run, exports: &Path) -> std::io::Result<u64> {
    let dir = run.output_dir_outside(exports.join("site"))?;
    std::fs::write(dir.path().join("index.html"), b"<h1>half</h1>")?;
    let file = run.output_file_outside(exports.join("data.bin"))?;
    std::fs::write(file.path(), content(1, 10_000))?;
    // SIGKILL to itself: no destructor, no core file.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::process::exit(137)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, dir, extra] = args.as_slice() else {
        return Err(
            "usage: step-child (slow-write|once|chain|crash-outside|family|held|torture) RUN_DIR FILE"
                .into(),
        );
    };
    let run = match std::env::var("RECOVERY_CHILD_STORE") {
        Ok(url) => {
            let ttl = std::env::var("RECOVERY_CHILD_TTL_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(recovery::DEFAULT_LEASE_TTL, Duration::from_millis);
            Run::builder(dir).store(url).lease_ttl(ttl).open()?
        }
        Err(_) => Run::open(dir)?,
    };
    match mode.as_str() {
        "slow-write" => println!("{}", slow_write(&run, Path::new(extra))?),
        "once" => println!("{}", once(&run, Path::new(extra))?),
        "chain" => println!("{}", chain(&run, Path::new(extra))?),
        "family" => println!("{}", family(&run, Path::new(extra))?),
        "held" => println!("{}", held(&run, Path::new(extra))?),
        "torture" => println!("{}", torture(&run, Path::new(extra))?),
        "crash-outside" => {
            run.allow_outside(extra)?;
            println!("{}", crash_outside(&run, Path::new(extra))?)
        }
        other => return Err(format!("unknown mode {other:?}").into()),
    }
    Ok(())
}
