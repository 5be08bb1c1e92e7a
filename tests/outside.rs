//! Outputs placed outside the run directory, at a path the user names:
//! committed atomically beside their final place, verified by their
//! absolute path, replaced on a rerun, and never left half-made there by a
//! failure, a retry or a crash.

use std::path::{Path, PathBuf};
use std::process::Command;

use recovery::marker::MarkerState;
use recovery::{Context, Event, Run, RunError, VirtualClock, resumable_step, retryable};

struct Fixture {
    _tmp: tempfile::TempDir,
    run_dir: PathBuf,
    exports: PathBuf,
}

/// Opens the run, allowing outputs in the exports directory.
fn open(f: &Fixture) -> Run {
    let run = Run::open(&f.run_dir).unwrap();
    run.allow_outside(&f.exports).unwrap();
    run
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let exports = tmp.path().join("exports");
    std::fs::create_dir(&exports).unwrap();
    Fixture {
        _tmp: tmp,
        run_dir,
        exports,
    }
}

/// Publishes a directory and a file into `to`; counts its runs.
#[resumable_step("publish", key = label)]
fn publish(run: &Run, to: &Path, label: &str, runs: &mut u32) -> std::io::Result<String> {
    *runs += 1;
    let site = run.output_dir_outside(to.join("site"))?;
    std::fs::write(site.path().join("index.html"), format!("<h1>{label}</h1>"))?;
    let data = run.output_file_outside(to.join("data.json"))?;
    std::fs::write(data.path(), format!("{{\"label\":\"{label}\"}}"))?;
    Ok(data.final_path().display().to_string())
}

/// Names under `dir` that recovery staged and did not clean up.
fn staging_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".recovery-staging-"))
        .collect()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn outside_outputs_are_committed_recorded_by_absolute_path_and_resumed() {
    let f = fixture();
    let run = open(&f);
    let mut runs = 0;
    let value = publish(&run, &f.exports, "one", &mut runs).unwrap();
    assert_eq!(value, f.exports.join("data.json").display().to_string());
    assert_eq!(read(f.exports.join("site/index.html")), "<h1>one</h1>");
    assert_eq!(read(f.exports.join("data.json")), r#"{"label":"one"}"#);
    assert!(staging_leftovers(&f.exports).is_empty());

    let marker = match run.step("publish").unwrap().marker().unwrap() {
        MarkerState::Valid(m) => m,
        other => panic!("{other:?}"),
    };
    let paths: Vec<&str> = marker.outputs.iter().map(|o| o.path.as_str()).collect();
    let abs = |p: &str| f.exports.join(p).display().to_string();
    assert_eq!(
        paths,
        [abs("site"), abs("site/index.html"), abs("data.json")]
    );

    // Done: not run again, even from a new handle.
    let run = open(&f);
    assert_eq!(publish(&run, &f.exports, "one", &mut runs).unwrap(), value);
    assert_eq!(runs, 1);
}

#[test]
fn a_damaged_outside_output_reruns_the_step_and_is_replaced_whole() {
    let f = fixture();
    let run = open(&f);
    let mut runs = 0;
    publish(&run, &f.exports, "one", &mut runs).unwrap();
    std::fs::write(f.exports.join("site/index.html"), "<h1>tampered</h1>").unwrap();
    std::fs::write(f.exports.join("site/stray.txt"), "not the step's").unwrap();

    publish(&run, &f.exports, "one", &mut runs).unwrap();
    assert_eq!(runs, 2);
    let reason = run
        .events()
        .unwrap()
        .records
        .into_iter()
        .find_map(|e| match e {
            Event::MarkerInvalid { reason, .. } => Some(reason),
            _ => None,
        })
        .expect("a MARKER_INVALID event");
    assert!(reason.contains("index.html"), "{reason}");
    // The previous directory was replaced as a whole, not merged into.
    assert_eq!(read(f.exports.join("site/index.html")), "<h1>one</h1>");
    assert!(!f.exports.join("site/stray.txt").exists());
    assert!(staging_leftovers(&f.exports).is_empty());
}

#[test]
fn bad_outside_paths_are_refused_with_the_fix() {
    let f = fixture();
    let run = open(&f);
    let step = run.step("refusals").unwrap();
    let execution = step.begin().unwrap();
    let reason = |path: PathBuf| match execution.output_file_outside(&path) {
        Err(RunError::InvalidOutputPath { reason, .. }) => reason,
        other => panic!("{}: {other:?}", path.display()),
    };
    assert!(reason(PathBuf::from("exports/a.bin")).contains("absolute"));
    assert!(reason(f.run_dir.join("a.bin")).contains("use output_file or output_dir"));
    assert!(reason(f.run_dir.parent().unwrap().to_owned()).contains("contains the run directory"));
    assert!(reason(f.exports.join("missing/a.bin")).contains("does not exist"));
    assert!(reason(f.exports.join("../a.bin")).contains(".."));
    assert!(reason(f.exports.join(".recovery-staging-x")).contains("recovery's own"));
    // Declared twice in one step, or inside another output of the step.
    execution.output_dir_outside(f.exports.join("d")).unwrap();
    assert!(reason(f.exports.join("d/inner.bin")).contains("overlaps"));
    drop(execution);
    assert!(staging_leftovers(&f.exports).is_empty());
    assert!(!f.exports.join("d").exists());
}

#[test]
fn outside_places_must_be_allowed_by_the_program() {
    let f = fixture();
    let run = Run::open(&f.run_dir).unwrap();
    let mut runs = 0;
    let err = publish(&run, &f.exports, "one", &mut runs).unwrap_err();
    assert!(err.to_string().contains("call run.allow_outside("), "{err}");
    assert!(staging_leftovers(&f.exports).is_empty());

    // Allowed by one handle, the step runs; a handle that does not allow
    // the place does not read there, so the marker does not count.
    publish(&open(&f), &f.exports, "one", &mut runs).unwrap();
    let reason = match run.step("publish").unwrap().marker().unwrap() {
        MarkerState::Invalid(reason) => reason,
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("Run::allow_outside"), "{reason}");
    // An allowed place holds outputs; it is not one (the staging would
    // sit outside it).
    let err = {
        let step = open(&f).step("at-the-place").unwrap();
        let exec = step.begin().unwrap();
        exec.output_dir_outside(&f.exports).unwrap_err()
    };
    assert!(err.to_string().contains("allow_outside"), "{err}");
    // Places inside or above the run directory cannot be allowed.
    for bad in [
        f.run_dir.join("sub"),
        f.run_dir.parent().unwrap().to_owned(),
    ] {
        assert!(matches!(
            run.allow_outside(&bad),
            Err(RunError::InvalidOutputPath { .. })
        ));
    }
}

#[test]
fn a_failing_step_leaves_nothing_beside_its_outside_outputs() {
    #[resumable_step("fails")]
    fn fails(run: &Run, to: &Path) -> std::io::Result<()> {
        let out = run.output_file_outside(to.join("result.bin"))?;
        std::fs::write(out.path(), b"partial")?;
        Err(std::io::Error::other("the body failed"))
    }
    let f = fixture();
    let run = open(&f);
    std::fs::write(f.exports.join("result.bin"), b"the previous result").unwrap();
    assert!(fails(&run, &f.exports).is_err());
    // The old state stays, whole; nothing staged survives.
    assert_eq!(read(f.exports.join("result.bin")), "the previous result");
    assert!(staging_leftovers(&f.exports).is_empty());
}

#[test]
fn a_retried_step_keeps_only_the_last_attempts_outside_output() {
    #[resumable_step("flaky-export")]
    #[retryable(max_attempts = 3, base = "10ms")]
    fn flaky_export(run: &Run, to: &Path, calls: &mut u32) -> std::io::Result<u32> {
        *calls += 1;
        let dir = run.output_dir_outside(to.join("tree"))?;
        std::fs::write(dir.path().join(format!("attempt-{calls}")), b"x")?;
        if *calls < 3 {
            return Err(std::io::ErrorKind::ConnectionReset.into());
        }
        Ok(*calls)
    }
    let f = fixture();
    let run = open(&f);
    let clock = VirtualClock::new();
    let ctx = Context::builder().virtual_time(&clock).build();
    let mut calls = 0;
    assert_eq!(
        ctx.in_scope(|| flaky_export(&run, &f.exports, &mut calls))
            .unwrap(),
        3
    );
    let names: Vec<String> = std::fs::read_dir(f.exports.join("tree"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["attempt-3"]);
    assert!(staging_leftovers(&f.exports).is_empty());
}

#[test]
fn a_crash_before_the_commit_is_swept_from_beside_the_outputs() {
    let f = fixture();
    let out = Command::new(env!("CARGO_BIN_EXE_step-child"))
        .arg("crash-outside")
        .arg(&f.run_dir)
        .arg(&f.exports)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child was meant to be killed");
    // What it staged is there, under recovery's names, and nothing final.
    assert_eq!(staging_leftovers(&f.exports).len(), 2);
    assert!(!f.exports.join("site").exists());
    assert!(!f.exports.join("data.bin").exists());

    // The sweep needs no allowed place: the journal names what to remove.
    Run::open(&f.run_dir).unwrap();
    assert!(staging_leftovers(&f.exports).is_empty());
    assert!(
        std::fs::read_dir(f.run_dir.join("staging"))
            .unwrap()
            .next()
            .is_none()
    );
}
