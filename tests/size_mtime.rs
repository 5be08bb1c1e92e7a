//! The opt-in size-and-modification-time check (`verify = "size_mtime"`):
//! what it catches, what it trusts unread, and that hashing stays the
//! default.

use std::fs::{File, FileTimes};
use std::path::Path;
use std::time::{Duration, SystemTime};

use recovery::marker::MarkerState;
use recovery::{Run, resumable_step};

const CONTENT: &[u8] = b"0123456789abcdef";

#[resumable_step("fast", verify = "size_mtime")]
fn fast(run: &Run, runs: &mut u32) -> std::io::Result<()> {
    *runs += 1;
    run.write_output("out/data.bin", CONTENT)?;
    Ok(())
}

#[resumable_step("hashed")]
fn hashed(run: &Run, runs: &mut u32) -> std::io::Result<()> {
    *runs += 1;
    run.write_output("out/hashed.bin", CONTENT)?;
    Ok(())
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Overwrites `path` with `data`, then puts its modification time back.
fn tamper_keeping_mtime(path: &Path, data: &[u8]) {
    let before = mtime(path);
    std::fs::write(path, data).unwrap();
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(before))
        .unwrap();
    assert_eq!(mtime(path), before);
}

fn recorded_mtimes(run: &Run, step: &str) -> Vec<Option<u64>> {
    match run.step(step).unwrap().marker().unwrap() {
        MarkerState::Valid(m) => m.outputs.iter().map(|o| o.mtime_ns).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_opted_in_steps_record_modification_times() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    fast(&run, &mut 0).unwrap();
    hashed(&run, &mut 0).unwrap();
    let file = recorded_mtimes(&run, "fast");
    // One entry: an empty manifest would pass `all` vacuously.
    assert_eq!(file.len(), 1, "{file:?}");
    assert!(file.iter().all(Option::is_some), "{file:?}");
    assert_eq!(recorded_mtimes(&run, "hashed"), [None]);
}

#[test]
fn a_changed_size_or_modification_time_reruns_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let data = tmp.path().join("out/data.bin");
    let mut runs = 0;
    fast(&run, &mut runs).unwrap();
    fast(&run, &mut runs).unwrap();
    assert_eq!(runs, 1, "intact: resumed");

    std::fs::write(&data, b"short").unwrap();
    fast(&run, &mut runs).unwrap();
    assert_eq!(runs, 2, "another size: rerun");

    // Same size, other bytes, a new modification time: hashed, rerun.
    let before = mtime(&data);
    std::fs::write(&data, b"FEDCBA9876543210").unwrap();
    File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_times(FileTimes::new().set_modified(before + Duration::from_secs(5)))
        .unwrap();
    fast(&run, &mut runs).unwrap();
    assert_eq!(runs, 3, "another mtime: rerun");
    assert_eq!(std::fs::read(&data).unwrap(), CONTENT);
}

#[test]
fn a_same_size_change_that_keeps_the_mtime_is_trusted_only_by_the_opt_in() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let (mut fast_runs, mut hashed_runs) = (0, 0);
    fast(&run, &mut fast_runs).unwrap();
    hashed(&run, &mut hashed_runs).unwrap();
    tamper_keeping_mtime(&tmp.path().join("out/data.bin"), b"FEDCBA9876543210");
    tamper_keeping_mtime(&tmp.path().join("out/hashed.bin"), b"FEDCBA9876543210");

    // The opt-in does not read the file: the documented blind spot.
    fast(&run, &mut fast_runs).unwrap();
    assert_eq!(fast_runs, 1);
    // The default hashes it, and reruns.
    hashed(&run, &mut hashed_runs).unwrap();
    assert_eq!(hashed_runs, 2);
    // `recovery status` and `StepState::marker` always hash.
    assert!(matches!(
        run.step("fast").unwrap().marker().unwrap(),
        MarkerState::Invalid(reason) if reason.contains("hash")
    ));
}
