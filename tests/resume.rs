//! Resumable steps end to end: a done step is skipped, anything that makes
//! its marker or outputs doubtful reruns it, the marker comes last, retries
//! inside a step leave no duplicates, a killed writer leaves nothing that
//! counts, and two processes run a step once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use recovery::fs::{FileSystem, RealFs, Stat};
use recovery::{
    Context, Event, IssueCode, Recorder, Run, RunError, VirtualClock, WithContext, resumable_step,
    retryable,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Summary {
    files: u32,
    bytes: u64,
}

/// Writes a directory output and a file output; counts its runs.
#[resumable_step("build", key = (src, level), version = 1)]
fn build(run: &Run, src: &str, level: u32, runs: &mut u32) -> std::io::Result<Summary> {
    *runs += 1;
    let dir = run.output_dir("out/tree")?;
    std::fs::write(dir.path().join("a.txt"), format!("{src}:{level}"))?;
    std::fs::create_dir(dir.path().join("sub"))?;
    std::fs::write(dir.path().join("sub/b.txt"), b"bbbb")?;
    run.write_output("out/summary.json", br#"{"files":2}"#)?;
    Ok(Summary {
        files: 2,
        bytes: (src.len() + 2 + 4) as u64,
    })
}

#[resumable_step("build", key = (src, level), version = 2)]
fn build_v2(run: &Run, src: &str, level: u32, runs: &mut u32) -> std::io::Result<Summary> {
    build_body(run, src, level, runs)
}

fn build_body(run: &Run, src: &str, level: u32, runs: &mut u32) -> std::io::Result<Summary> {
    *runs += 1;
    run.write_output("out/summary.json", format!("{src}{level}").as_bytes())?;
    Ok(Summary { files: 1, bytes: 0 })
}

fn events(run: &Run) -> Vec<Event> {
    let log = run.events().unwrap();
    assert_eq!(log.skipped, 0);
    log.records
}

fn kinds(run: &Run) -> Vec<&'static str> {
    events(run).iter().map(Event::kind).collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    Fixture { _tmp: tmp, dir }
}

/// Runs `build` once, then applies `damage` and runs it again; returns how
/// many times the body ran and the events of the second run.
fn rerun_after(damage: impl FnOnce(&Path)) -> (u32, Vec<Event>) {
    let f = fixture();
    let mut runs = 0;
    let run = Run::open(&f.dir).unwrap();
    let first = build(&run, "src", 3, &mut runs).unwrap();
    drop(run);
    damage(&f.dir);
    let run = Run::open(&f.dir).unwrap();
    let before = events(&run).len();
    let second = build(&run, "src", 3, &mut runs).unwrap();
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read_to_string(f.dir.join("out/tree/a.txt")).unwrap(),
        "src:3",
        "the rerun restored the output"
    );
    (runs, events(&run)[before..].to_vec())
}

fn marker_invalid_reason(events: &[Event]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            Event::MarkerInvalid { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no MARKER_INVALID in {events:?}"))
}

#[test]
fn a_completed_step_is_skipped_and_returns_its_recorded_value() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let mut runs = 0;
    let first = build(&run, "src", 3, &mut runs).unwrap();
    let second = build(&run, "src", 3, &mut runs).unwrap();
    assert_eq!(runs, 1);
    assert_eq!(first, second);
    // And from another process's point of view: a fresh open.
    let again = Run::open(&f.dir).unwrap();
    assert_eq!(build(&again, "src", 3, &mut runs).unwrap(), first);
    assert_eq!(runs, 1);
    assert_eq!(
        kinds(&again),
        ["STEP_COMPLETED", "STEP_RESUMED", "STEP_RESUMED"]
    );
    assert_eq!(
        std::fs::read(f.dir.join("out/tree/sub/b.txt")).unwrap(),
        b"bbbb"
    );
    assert_eq!(
        std::fs::read_dir(f.dir.join("staging")).unwrap().count(),
        0,
        "staging is empty after a commit"
    );
}

#[test]
fn a_corrupted_output_reruns_the_step() {
    let (runs, ev) = rerun_after(|d| std::fs::write(d.join("out/tree/a.txt"), "src:4").unwrap());
    assert_eq!(runs, 2);
    assert!(marker_invalid_reason(&ev).contains("hash"));
}

#[test]
fn a_truncated_output_reruns_the_step() {
    let (runs, ev) = rerun_after(|d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("out/tree/sub/b.txt"))
            .unwrap();
        f.set_len(2).unwrap();
    });
    assert_eq!(runs, 2);
    assert!(marker_invalid_reason(&ev).contains("bytes"));
}

#[test]
fn a_deleted_output_reruns_the_step() {
    let (runs, ev) = rerun_after(|d| std::fs::remove_dir_all(d.join("out/tree/sub")).unwrap());
    assert_eq!(runs, 2);
    assert!(marker_invalid_reason(&ev).contains("missing"));
}

#[test]
fn a_symlink_in_place_of_an_output_reruns_the_step() {
    let (runs, ev) = rerun_after(|d| {
        let p = d.join("out/summary.json");
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &p).unwrap();
    });
    assert_eq!(runs, 2);
    assert!(marker_invalid_reason(&ev).contains("Symlink"));
}

#[test]
fn a_truncated_marker_reruns_the_step() {
    let (runs, ev) = rerun_after(|d| {
        let p = d.join("state/steps/build.json");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_eq!(runs, 2);
    assert!(marker_invalid_reason(&ev).contains("JSON"));
}

#[test]
fn a_flipped_byte_in_the_marker_reruns_the_step() {
    let (runs, ev) = rerun_after(|d| {
        let p = d.join("state/steps/build.json");
        let mut bytes = std::fs::read(&p).unwrap();
        // Inside the recorded value: still valid JSON, different meaning.
        let mut at = bytes.windows(8).position(|w| w == b"\"files\":").unwrap() + 8;
        while bytes[at] == b' ' {
            at += 1;
        }
        bytes[at] ^= 0x01; // 2 -> 3
        std::fs::write(&p, bytes).unwrap();
    });
    assert_eq!(runs, 2);
    assert!(marker_invalid_reason(&ev).contains("checksum"));
}

#[test]
fn an_empty_or_garbage_marker_reruns_the_step() {
    for content in [&b""[..], b"\x00\x01garbage", b"[]", b"{}"] {
        let (runs, _) =
            rerun_after(|d| std::fs::write(d.join("state/steps/build.json"), content).unwrap());
        assert_eq!(runs, 2, "{content:?}");
    }
}

#[test]
fn a_marker_of_a_newer_format_is_an_error_not_a_rerun() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let mut runs = 0;
    build(&run, "src", 3, &mut runs).unwrap();
    let p = f.dir.join("state/steps/build.json");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, text.replace("\"format\":1", "\"format\":9")).unwrap();
    let err = build(&run, "src", 3, &mut runs).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    assert_eq!(runs, 1, "the body did not run");
    let issues = run.issues().unwrap().records;
    assert_eq!(issues.last().unwrap().error_code, IssueCode::StepFailed);
}

#[test]
fn a_changed_key_reruns_the_step() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let mut runs = 0;
    build(&run, "src", 3, &mut runs).unwrap();
    build(&run, "src", 4, &mut runs).unwrap();
    assert_eq!(runs, 2);
    assert_eq!(
        std::fs::read_to_string(f.dir.join("out/tree/a.txt")).unwrap(),
        "src:4"
    );
    assert!(marker_invalid_reason(&events(&run)).contains("key or version"));
    // The new key is the one recorded now.
    build(&run, "src", 4, &mut runs).unwrap();
    assert_eq!(runs, 2);
}

#[test]
fn a_bumped_version_reruns_the_step() {
    let f = fixture();
    let mut runs = 0;
    build(&Run::open(&f.dir).unwrap(), "src", 3, &mut runs).unwrap();
    // A new program version: another process, where `build_v2` is the step.
    let run = Run::open(&f.dir).unwrap();
    build_v2(&run, "src", 3, &mut runs).unwrap();
    assert_eq!(runs, 2);
    build_v2(&run, "src", 3, &mut runs).unwrap();
    assert_eq!(runs, 2);
}

#[test]
fn two_different_steps_with_one_name_are_detected() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let mut runs = 0;
    build(&run, "src", 3, &mut runs).unwrap();
    let err = build_v2(&run, "src", 3, &mut runs).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("two different steps are named \"build\""),
        "{text}"
    );
    assert!(
        text.contains("resume::build") && text.contains("resume::build_v2"),
        "{text}"
    );
    assert_eq!(runs, 1);
}

#[test]
fn step_names_and_output_paths_given_at_run_time_are_checked() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    for bad in ["", "..", "a/b", "x\0", "sp ace"] {
        assert!(
            matches!(run.step(bad), Err(RunError::InvalidStepName { .. })),
            "{bad:?}"
        );
    }
    let exec = run.step("ok").unwrap().begin().unwrap();
    for bad in ["../escape", "/abs", "state/x", "a/../../b", "nul\0"] {
        assert!(
            matches!(
                exec.output_file(bad),
                Err(RunError::InvalidOutputPath { .. })
            ),
            "{bad:?}"
        );
    }
}

/// A step whose first attempts fail after writing part of their outputs.
#[resumable_step("flaky-build", key = attempts_to_fail)]
#[retryable(max_attempts = 4, base = "10ms")]
fn flaky_build(run: &Run, attempts_to_fail: u32, calls: &mut u32) -> std::io::Result<u32> {
    *calls += 1;
    let dir = run.output_dir("flaky")?;
    std::fs::write(dir.path().join(format!("attempt-{calls}.txt")), b"partial")?;
    if *calls <= attempts_to_fail {
        return Err(std::io::ErrorKind::ConnectionReset.into());
    }
    Ok(*calls)
}

#[test]
fn a_retried_step_keeps_only_the_last_attempts_outputs_and_logs_its_retries() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let clock = VirtualClock::new();
    let ctx = Context::builder().virtual_time(&clock).build();
    let mut calls = 0;
    assert_eq!(
        ctx.in_scope(|| flaky_build(&run, 2, &mut calls)).unwrap(),
        3
    );
    let names: Vec<String> = std::fs::read_dir(f.dir.join("flaky"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["attempt-3.txt"]);
    assert_eq!(
        kinds(&run),
        ["RETRY_ATTEMPTED", "RETRY_ATTEMPTED", "STEP_COMPLETED"]
    );
    // Resumed: the resume check runs once, outside the retry loop.
    assert_eq!(
        ctx.in_scope(|| flaky_build(&run, 2, &mut calls)).unwrap(),
        3
    );
    assert_eq!(calls, 3);
}

#[test]
fn a_step_that_fails_writes_no_marker_and_records_an_issue() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let clock = VirtualClock::new();
    let recorder = Arc::new(Recorder::default());
    let ctx = Context::builder()
        .virtual_time(&clock)
        .observer(recorder.clone())
        .build();
    let mut calls = 0;
    assert!(ctx.in_scope(|| flaky_build(&run, 10, &mut calls)).is_err());
    assert_eq!(calls, 4);
    assert!(!f.dir.join("state/steps/flaky-build.json").exists());
    assert!(
        !f.dir.join("flaky").exists(),
        "nothing reached a final path"
    );
    let codes: Vec<IssueCode> = run
        .issues()
        .unwrap()
        .records
        .iter()
        .map(|i| i.error_code)
        .collect();
    assert_eq!(
        codes,
        [IssueCode::MaxRetriesExceeded, IssueCode::StepFailed]
    );
    // The outer observer saw them too.
    assert_eq!(recorder.issues().len(), 2);
    assert_eq!(recorder.events().len(), 3);
}

/// A step whose failed attempts declare an output the successful one does
/// not: a partial file that must never be committed.
#[resumable_step("partial-build")]
#[retryable(max_attempts = 3, base = "10ms")]
fn partial_build(run: &Run, calls: &mut u32) -> std::io::Result<u32> {
    *calls += 1;
    if *calls == 1 {
        run.write_output("partial.txt", b"half of it")?;
        let dir = run.output_dir("half-dir")?;
        std::fs::write(dir.path().join("x"), b"x")?;
        return Err(std::io::ErrorKind::ConnectionReset.into());
    }
    run.write_output("whole.txt", b"all of it")?;
    Ok(*calls)
}

#[test]
fn a_failed_attempts_outputs_are_never_committed() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let clock = VirtualClock::new();
    let ctx = Context::builder().virtual_time(&clock).build();
    let mut calls = 0;
    assert_eq!(ctx.in_scope(|| partial_build(&run, &mut calls)).unwrap(), 2);
    assert!(
        !f.dir.join("partial.txt").exists(),
        "a partial output was committed"
    );
    assert!(
        !f.dir.join("half-dir").exists(),
        "a partial output was committed"
    );
    assert_eq!(
        std::fs::read(f.dir.join("whole.txt")).unwrap(),
        b"all of it"
    );
    let marker = std::fs::read_to_string(f.dir.join("state/steps/partial-build.json")).unwrap();
    assert!(marker.contains("whole.txt"), "{marker}");
    assert!(!marker.contains("partial.txt"), "{marker}");
    assert!(!marker.contains("half-dir"), "{marker}");
    // Nothing of the failed attempt is left in staging either.
    assert_eq!(std::fs::read_dir(f.dir.join("staging")).unwrap().count(), 0);
}

#[test]
fn step_failed_carries_the_attempts_and_sleep_of_its_retries() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let clock = VirtualClock::new();
    let ctx = Context::builder().virtual_time(&clock).build();
    let mut calls = 0;
    assert!(ctx.in_scope(|| flaky_build(&run, 10, &mut calls)).is_err());
    let issues = run.issues().unwrap().records;
    assert_eq!(issues.len(), 2);
    let (gave_up, failed) = (&issues[0], &issues[1]);
    assert_eq!(gave_up.error_code, IssueCode::MaxRetriesExceeded);
    assert_eq!(failed.error_code, IssueCode::StepFailed);
    assert_eq!(failed.attempts, 4);
    assert_eq!(failed.attempts, gave_up.attempts);
    // 10 + 20 + 40 ms between four attempts.
    assert_eq!(failed.slept_ns, 70_000_000);
    assert_eq!(failed.slept_ns, gave_up.slept_ns);
}

/// The async form: the first attempt stages an output, then fails.
#[resumable_step("partial-async")]
#[retryable(max_attempts = 2, base = "1ms")]
async fn partial_async(run: &Run, calls: Arc<Mutex<u32>>) -> std::io::Result<u32> {
    let n = {
        let mut c = calls.lock().unwrap();
        *c += 1;
        *c
    };
    if n == 1 {
        run.write_output("partial.txt", b"half")?;
        return Err(std::io::ErrorKind::ConnectionReset.into());
    }
    Ok(n)
}

#[tokio::test]
async fn a_failed_async_attempts_outputs_are_never_committed() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let ctx = Context::builder()
        .virtual_time(&VirtualClock::new())
        .build();
    let calls = Arc::new(Mutex::new(0));
    assert_eq!(
        partial_async(&run, calls).with_context(ctx).await.unwrap(),
        2
    );
    assert!(!f.dir.join("partial.txt").exists());
    let marker = std::fs::read_to_string(f.dir.join("state/steps/partial-async.json")).unwrap();
    assert!(!marker.contains("partial.txt"), "{marker}");
}

/// The async form of a step that gives up: every attempt fails, with a
/// permanent error (`NotFound`) or a transient one (`ConnectionReset`).
#[resumable_step("giving-up-async", key = permanent)]
#[retryable(max_attempts = 3, base = "10ms", when = recovery::Classify::classify)]
async fn giving_up_async(
    run: &Run,
    permanent: bool,
    calls: Arc<Mutex<u32>>,
) -> std::io::Result<u32> {
    *calls.lock().unwrap() += 1;
    run.write_output("partial.txt", b"half")?;
    Err(if permanent {
        std::io::ErrorKind::NotFound.into()
    } else {
        std::io::ErrorKind::ConnectionReset.into()
    })
}

#[tokio::test]
async fn an_async_step_that_gives_up_reports_its_attempts_and_sleep() {
    // A permanent error on the first attempt (given up before any retry),
    // then transient errors until the attempts run out.
    for (permanent, attempts, slept_ns) in [(true, 1, 0), (false, 3, 30_000_000)] {
        let f = fixture();
        let run = Run::open(&f.dir).unwrap();
        let ctx = Context::builder()
            .virtual_time(&VirtualClock::new())
            .build();
        let calls = Arc::new(Mutex::new(0));
        let r = giving_up_async(&run, permanent, calls.clone())
            .with_context(ctx)
            .await;
        assert!(r.is_err());
        assert_eq!(*calls.lock().unwrap(), attempts);
        let issues = run.issues().unwrap().records;
        let failed = issues
            .iter()
            .find(|i| i.error_code == IssueCode::StepFailed)
            .unwrap_or_else(|| panic!("no STEP_FAILED in {issues:?}"));
        assert_eq!((failed.attempts, failed.slept_ns), (attempts, slept_ns));
        assert!(!f.dir.join("partial.txt").exists());
        assert_eq!(std::fs::read_dir(f.dir.join("staging")).unwrap().count(), 0);
    }
}

struct Pipeline {
    run: Run,
    pushed: Vec<u32>,
}

impl Pipeline {
    #[resumable_step("push", key = batch, run = self.run)]
    #[retryable(max_attempts = 3, base = "5ms", jitter)]
    async fn push(&mut self, batch: Vec<u32>) -> std::io::Result<usize> {
        self.pushed.extend(&batch);
        if self.pushed.len() < 2 * batch.len() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.run
            .write_output("pushed.json", format!("{:?}", self.pushed).as_bytes())?;
        Ok(self.pushed.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_steps_with_mut_self_and_a_run_field() {
    let f = fixture();
    let clock = VirtualClock::new();
    let ctx = Context::builder().virtual_time(&clock).seed(3).build();
    let mut p = Pipeline {
        run: Run::open(&f.dir).unwrap(),
        pushed: vec![],
    };
    let n = p.push(vec![1, 2]).with_context(ctx.clone()).await.unwrap();
    assert_eq!(n, 4);
    assert_eq!(
        std::fs::read_to_string(f.dir.join("pushed.json")).unwrap(),
        "[1, 2, 1, 2]"
    );
    let n2 = p.push(vec![1, 2]).with_context(ctx).await.unwrap();
    assert_eq!(n2, 4, "resumed with the recorded value");
    assert_eq!(p.pushed.len(), 4, "the body did not run again");
    assert_eq!(
        kinds(&p.run),
        ["RETRY_ATTEMPTED", "STEP_COMPLETED", "STEP_RESUMED"]
    );
}

/// Records the order of durable operations on top of the real file system.
#[derive(Debug, Default)]
struct Recording {
    ops: Mutex<Vec<(String, PathBuf)>>,
}

impl Recording {
    fn log(&self, op: &str, p: &Path) {
        self.ops.lock().unwrap().push((op.into(), p.to_owned()));
    }
}

impl FileSystem for Recording {
    fn create_dir_all(&self, p: &Path) -> std::io::Result<()> {
        self.log("mkdir", p);
        RealFs.create_dir_all(p)
    }
    fn write(&self, p: &Path, d: &[u8]) -> std::io::Result<()> {
        self.log("write", p);
        RealFs.write(p, d)
    }
    fn append(&self, p: &Path, d: &[u8]) -> std::io::Result<()> {
        RealFs.append(p, d)
    }
    fn sync_file(&self, p: &Path) -> std::io::Result<()> {
        self.log("fsync", p);
        RealFs.sync_file(p)
    }
    fn sync_dir(&self, p: &Path) -> std::io::Result<()> {
        self.log("fsync_dir", p);
        RealFs.sync_dir(p)
    }
    fn rename(&self, f: &Path, t: &Path) -> std::io::Result<()> {
        self.log("rename", t);
        RealFs.rename(f, t)
    }
    fn remove_file(&self, p: &Path) -> std::io::Result<()> {
        self.log("remove", p);
        RealFs.remove_file(p)
    }
    fn remove_dir_all(&self, p: &Path) -> std::io::Result<()> {
        self.log("rmdir", p);
        RealFs.remove_dir_all(p)
    }
    fn remove_empty_dir(&self, p: &Path) -> std::io::Result<()> {
        self.log("rmdir_empty", p);
        RealFs.remove_empty_dir(p)
    }
    fn read(&self, p: &Path, l: u64) -> std::io::Result<Vec<u8>> {
        RealFs.read(p, l)
    }
    fn open(&self, p: &Path) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        RealFs.open(p)
    }
    fn stat(&self, p: &Path) -> std::io::Result<Stat> {
        RealFs.stat(p)
    }
    fn read_dir(&self, p: &Path) -> std::io::Result<Vec<String>> {
        RealFs.read_dir(p)
    }
    fn read_link(&self, p: &Path) -> std::io::Result<PathBuf> {
        RealFs.read_link(p)
    }
}

/// Runs `build` once in a fresh run directory, recording the durable
/// operations of the step alone (not the run's opening).
fn recorded_build() -> (Fixture, Vec<(String, PathBuf)>) {
    let f = fixture();
    let fs = Arc::new(Recording::default());
    let run = Run::open_with(&f.dir, fs.clone()).unwrap();
    fs.ops.lock().unwrap().clear();
    let mut runs = 0;
    build(&run, "src", 3, &mut runs).unwrap();
    let ops = fs.ops.lock().unwrap().clone();
    (f, ops)
}

#[test]
fn a_committed_steps_staging_directory_goes_with_one_rmdir() {
    let (f, ops) = recorded_build();
    let staging = f.dir.join("staging");
    let removals: Vec<String> = ops
        .iter()
        .filter(|(op, p)| op.starts_with("rmdir") && p.parent() == Some(&*staging))
        .map(|(op, _)| op.clone())
        .collect();
    // Its outputs were renamed out: nothing is left to list or recurse into.
    assert_eq!(removals, ["rmdir_empty"]);
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

/// `build`'s two outputs land in `out/`: both are renamed, then `out/` is
/// synced once (on a journaling file system, one journal commit for both).
#[test]
fn outputs_landing_in_one_directory_share_one_sync_of_it() {
    let (f, ops) = recorded_build();
    let out = f.dir.join("out");
    let syncs: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (op, p))| op == "fsync_dir" && *p == out)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(syncs.len(), 1, "{ops:#?}");
    for name in ["out/tree", "out/summary.json"] {
        let rename = ops
            .iter()
            .position(|(op, p)| op == "rename" && *p == f.dir.join(name))
            .unwrap();
        assert!(rename < syncs[0], "{name}");
    }
}

#[test]
fn the_marker_is_written_last_after_every_output_is_durable() {
    let (f, ops) = recorded_build();
    let marker = f.dir.join("state/steps/build.json");
    let pos = |op: &str, path: &Path| {
        ops.iter()
            .position(|(o, p)| o == op && p == path)
            .unwrap_or_else(|| panic!("no {op} {} in {ops:#?}", path.display()))
    };
    let marker_rename = pos("rename", &marker);
    // Every output file was synced, and renamed into place, before it.
    for out in ["out/tree", "out/summary.json"] {
        assert!(pos("rename", &f.dir.join(out)) < marker_rename, "{out}");
    }
    let syncs: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (o, p))| o == "fsync" && (p.ends_with("sub/b.txt") || p.ends_with("a.txt")))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(syncs.len(), 2, "both files of the tree were synced");
    assert!(syncs.iter().all(|i| *i < marker_rename));
    // The output directory's parent is synced after the rename into place.
    let tree = pos("rename", &f.dir.join("out/tree"));
    assert!(
        ops[tree..marker_rename]
            .iter()
            .any(|(o, p)| o == "fsync_dir" && p == &f.dir.join("out"))
    );
    // The marker's own write, fsync, rename and directory fsync come last.
    let tail: Vec<&str> = ops[marker_rename - 2..]
        .iter()
        .map(|(o, _)| o.as_str())
        .collect();
    assert_eq!(&tail[..4], ["write", "fsync", "rename", "fsync_dir"]);
    assert_eq!(ops[marker_rename + 1].1, f.dir.join("state/steps"));
}

/// A child process inside the step `slow-write`, once it has begun writing
/// its 64 MiB output.
fn slow_writer_started(dir: &Path, started: &Path) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_step-child"))
        .args(["slow-write"])
        .arg(dir)
        .arg(started)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never started writing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn a_writer_killed_mid_write_leaves_nothing_that_counts() {
    let f = fixture();
    let started = f.dir.with_file_name("started");
    let mut child = slow_writer_started(&f.dir, &started);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    // Half-written data sits in staging; nothing at the final path, no marker.
    assert!(!f.dir.join("big.bin").exists());
    assert!(!f.dir.join("state/steps/slow-write.json").exists());
    let leftovers = std::fs::read_dir(f.dir.join("staging")).unwrap().count();
    assert_eq!(leftovers, 1, "the killed step's staging directory");

    // Reopening sweeps it; running again completes.
    let run = Run::open(&f.dir).unwrap();
    assert!(!run.step("slow-write").unwrap().is_done(&(), 1).unwrap());
    assert_eq!(std::fs::read_dir(f.dir.join("staging")).unwrap().count(), 0);
    let out = Command::new(env!("CARGO_BIN_EXE_step-child"))
        .args(["slow-write"])
        .arg(&f.dir)
        .arg(&started)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(f.dir.join("big.bin")).unwrap().len(),
        64 << 20
    );
    assert!(run.step("slow-write").unwrap().is_done(&(), 1).unwrap());
}

/// The same step name as the child's, done quickly in this process.
#[resumable_step("slow-write")]
fn quick_write(run: &Run) -> std::io::Result<u64> {
    run.write_output("big.bin", b"small")?;
    Ok(5)
}

#[test]
fn a_worker_that_takes_over_a_killed_workers_step_sweeps_its_staging() {
    let f = fixture();
    let started = f.dir.with_file_name("started");
    let mut child = slow_writer_started(&f.dir, &started);
    // Opened while the child holds the step: its staging is left alone.
    let run = Run::open(&f.dir).unwrap();
    assert_eq!(std::fs::read_dir(f.dir.join("staging")).unwrap().count(), 1);
    child.kill().unwrap(); // SIGKILL
    assert!(!child.wait().unwrap().success());
    // This worker takes the step's lock: the dead one's leftovers are its own.
    assert_eq!(quick_write(&run).unwrap(), 5);
    let left: Vec<_> = std::fs::read_dir(f.dir.join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "the dead worker's staging lingers: {left:?}"
    );
    assert_eq!(std::fs::read(f.dir.join("big.bin")).unwrap(), b"small");
}

#[test]
fn a_directory_in_the_markers_place_is_handled_before_the_body_runs() {
    // Empty: nothing of anyone's, replaced; the step runs and is done.
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let marker = f.dir.join("state/steps/build.json");
    std::fs::create_dir(&marker).unwrap();
    let mut runs = 0;
    build(&run, "src", 1, &mut runs).unwrap();
    assert_eq!(runs, 1);
    assert!(marker.is_file());
    build(&run, "src", 1, &mut runs).unwrap();
    assert_eq!(runs, 1, "done, and resumed");

    // With files in it: an error that names it and the fix, and the body
    // does not run.
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    std::fs::create_dir(marker_of(&f.dir)).unwrap();
    std::fs::write(marker_of(&f.dir).join("notes.txt"), b"mine").unwrap();
    let mut runs = 0;
    let err = build(&run, "src", 1, &mut runs).unwrap_err().to_string();
    assert_eq!(
        runs, 0,
        "the body must not run when it cannot be marked done"
    );
    assert!(
        err.contains("build.json") && err.contains("Move it away"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(marker_of(&f.dir).join("notes.txt")).unwrap(),
        b"mine"
    );
}

fn marker_of(dir: &Path) -> PathBuf {
    dir.join("state/steps/build.json")
}

#[test]
fn two_processes_on_one_run_directory_run_a_step_once() {
    let f = fixture();
    Run::open(&f.dir).unwrap();
    let side_effects = f.dir.with_file_name("side-effects.log");
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_step-child"))
                .arg("once")
                .arg(&f.dir)
                .arg(&side_effects)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "the value");
    }
    let lines = std::fs::read_to_string(&side_effects).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    let run = Run::open(&f.dir).unwrap();
    let mut kinds = kinds(&run);
    kinds.sort();
    assert_eq!(kinds, ["STEP_COMPLETED", "STEP_RESUMED"]);
}

#[test]
fn two_runs_from_scratch_give_byte_identical_outputs_and_markers() {
    let snapshot = || {
        let f = fixture();
        let run = Run::open(&f.dir).unwrap();
        let mut runs = 0;
        build(&run, "src", 3, &mut runs).unwrap();
        let mut files = Vec::new();
        for rel in ["out/tree/a.txt", "out/tree/sub/b.txt", "out/summary.json"] {
            files.push(std::fs::read(f.dir.join(rel)).unwrap());
        }
        // The marker, less the fields documented as wall-clock (and the
        // checksum, which covers them).
        let mut marker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(f.dir.join("state/steps/build.json")).unwrap())
                .unwrap();
        marker["marker"]["completed_at_ms"] = 0.into();
        marker["checksum"] = "".into();
        (files, serde_json::to_vec(&marker).unwrap())
    };
    assert_eq!(snapshot(), snapshot());
}

#[test]
fn reset_invalidates_a_step() {
    let f = fixture();
    let run = Run::open(&f.dir).unwrap();
    let mut runs = 0;
    build(&run, "src", 3, &mut runs).unwrap();
    assert!(run.step("build").unwrap().reset().unwrap());
    build(&run, "src", 3, &mut runs).unwrap();
    assert_eq!(runs, 2);
}

#[test]
fn an_output_directory_reached_through_a_symlink_is_refused() {
    let f = fixture();
    let outside = tempfile::tempdir().unwrap();
    let run = Run::open(&f.dir).unwrap();
    std::os::unix::fs::symlink(outside.path(), f.dir.join("out")).unwrap();
    let mut runs = 0;
    let err = build(&run, "src", 3, &mut runs).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// A dead execution's staging directory in the run at `dir`, and a process
/// (as a `git clone` left by a killed worker) that keeps writing into it.
fn orphan_writing_into_a_dead_staging(dir: &Path) -> (PathBuf, std::process::Child) {
    let leftover = dir.join("staging/clone@999999.0");
    std::fs::create_dir_all(&leftover).unwrap();
    let orphan = std::process::Command::new("sh")
        .arg("-c")
        .arg("i=0; while :; do i=$((i+1)); : > \"$0/f$i\"; done")
        .arg(&leftover)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    (leftover, orphan)
}

#[test]
fn a_leftover_still_written_by_an_orphan_does_not_stop_the_run_from_opening() {
    // A worker killed mid-step can leave a child (a `git clone`) that keeps
    // writing into its staging directory; the next opener's sweep cannot
    // remove that directory yet, and must not fail for it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    Run::open(&dir).unwrap();
    let (leftover, mut orphan) = orphan_writing_into_a_dead_staging(&dir);
    let opened: Vec<bool> = (0..5).map(|_| Run::open(&dir).is_ok()).collect();
    orphan.kill().unwrap();
    orphan.wait().unwrap();
    assert!(opened.iter().all(|ok| *ok), "{opened:?}");
    // Once the orphan is gone, the next sweep removes it.
    Run::open(&dir).unwrap();
    assert!(!leftover.exists());
}

#[test]
fn a_leftover_still_written_by_an_orphan_does_not_stop_its_step_from_running() {
    // The same orphan, met when the step itself starts again: taking the
    // step sweeps its earlier executions' staging, and what cannot be
    // removed yet is left for later, not a reason to fail the step.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let run = Run::open(&dir).unwrap();
    let (leftover, mut orphan) = orphan_writing_into_a_dead_staging(&dir);
    let begun: Vec<String> = (0..5)
        .map(|_| match run.step("clone").unwrap().begin() {
            Ok(_) => "begun".to_owned(),
            Err(e) => e.to_string(),
        })
        .collect();
    orphan.kill().unwrap();
    orphan.wait().unwrap();
    assert!(begun.iter().all(|b| b == "begun"), "{begun:?}");
    // Once the orphan is gone, the step's next start removes it.
    let exec = run.step("clone").unwrap().begin().unwrap();
    drop(exec);
    assert!(!leftover.exists());
}
