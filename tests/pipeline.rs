//! The example pipeline end to end, as a user runs it: the real `git`, a
//! loopback git server, the flaky proxy, real SIGKILLs, then resume.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The example's binary, built once for this test run.
fn pipeline() -> Command {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "pipeline"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the pipeline example failed");
        // target/<profile>/deps/pipeline-<hash> -> target/<profile>/examples/pipeline
        let exe = std::env::current_exe().unwrap();
        exe.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples/pipeline")
    });
    Command::new(bin)
}

fn run_pipeline(dir: &Path, extra: &[&str]) -> Output {
    pipeline()
        .arg("--run-dir")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pipeline failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn log(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("artifacts/recovery_log.json")).unwrap())
        .unwrap()
}

fn step<'a>(log: &'a Value, name: &str) -> &'a Value {
    log["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {log:#}"))
}

/// The step outputs of a finished run.
fn artifacts(dir: &Path) -> Vec<Vec<u8>> {
    ["artifacts/manifest.json", "artifacts/summary.json"]
        .iter()
        .map(|p| std::fs::read(dir.join(p)).unwrap())
        .collect()
}

/// An uninterrupted run with simulated failures, to compare others with.
fn reference() -> &'static (tempfile::TempDir, PathBuf) {
    static REFERENCE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        ok(run_pipeline(&dir, &["--simulate-failure"]));
        (tmp, dir)
    })
}

#[test]
fn transient_failures_of_real_operations_are_retried() {
    let (_, dir) = reference();
    let log = log(dir);
    assert_eq!(log["outcome"], "success");
    let clone = step(&log, "clone");
    assert_eq!(clone["outcome"], "ran");
    let attempts = clone["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "the proxy dropped two connections: {clone:#}"
    );
    for a in attempts {
        assert_eq!(a["error"], "git clone failed: the connection was dropped");
    }
    let manifest = step(&log, "manifest");
    assert_eq!(manifest["attempts"].as_array().unwrap().len(), 2);
    // The clone crossed a real connection and checked out the demo.
    assert!(dir.join("repo/.git").is_dir());
    assert!(dir.join("repo/src/lib.rs").is_file());
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.join("artifacts/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["files"], 4);
}

#[test]
fn a_second_invocation_resumes_every_step_and_redoes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    ok(run_pipeline(&dir, &[]));
    let before = artifacts(&dir);
    let stdout = ok(run_pipeline(&dir, &["--simulate-failure"]));
    let log = log(&dir);
    for name in ["clone", "manifest", "summary"] {
        assert_eq!(step(&log, name)["outcome"], "resumed", "{name}: {stdout}");
        assert!(step(&log, name)["attempts"].as_array().unwrap().is_empty());
    }
    assert_eq!(artifacts(&dir), before);
}

#[test]
fn two_runs_from_scratch_with_one_seed_are_byte_identical() {
    let (_, reference_dir) = reference();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    ok(run_pipeline(&dir, &["--simulate-failure"]));
    assert_eq!(artifacts(&dir), artifacts(reference_dir));
    assert_eq!(
        std::fs::read(dir.join("artifacts/recovery_log.json")).unwrap(),
        std::fs::read(reference_dir.join("artifacts/recovery_log.json")).unwrap()
    );
    // Another seed: other delays, same outputs.
    let other = tmp.path().join("other");
    ok(run_pipeline(&other, &["--simulate-failure", "--seed", "7"]));
    assert_eq!(artifacts(&other), artifacts(reference_dir));
    assert_ne!(
        step(&log(&other), "clone")["delays_ms"],
        step(&log(reference_dir), "clone")["delays_ms"]
    );
}

/// Starts the pipeline paused inside `step`, SIGKILLs it there, then runs
/// it again to the end.
fn kill_inside_then_rerun(step_name: &str) -> PathBuf {
    let tmp = tempfile::tempdir().unwrap().keep();
    let dir = tmp.join("run");
    let mut child = pipeline()
        .arg("--run-dir")
        .arg(&dir)
        .args(["--simulate-failure", "--pause-inside", step_name])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let paused = tmp.join("run.paused");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !paused.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the pipeline ended before pausing: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline never reached {step_name}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    assert!(!child.wait().unwrap().success());
    assert!(
        !dir.join(format!("state/steps/{step_name}.json")).exists(),
        "a killed step has no marker"
    );
    ok(run_pipeline(&dir, &["--simulate-failure"]));
    dir
}

#[test]
fn killed_during_the_clone_the_rerun_completes_with_identical_outputs() {
    let dir = kill_inside_then_rerun("clone");
    let log = log(&dir);
    assert_eq!(step(&log, "clone")["outcome"], "ran");
    assert_eq!(artifacts(&dir), artifacts(&reference().1));
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn killed_during_the_worker_stage_the_rerun_resumes_the_clone() {
    let dir = kill_inside_then_rerun("manifest");
    let log = log(&dir);
    assert_eq!(step(&log, "clone")["outcome"], "resumed");
    assert_eq!(step(&log, "manifest")["outcome"], "ran");
    assert_eq!(artifacts(&dir), artifacts(&reference().1));
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn crashing_right_after_a_step_keeps_that_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = run_pipeline(&dir, &["--crash-after", "manifest"]);
    assert!(!out.status.success());
    ok(run_pipeline(&dir, &[]));
    let log = log(&dir);
    assert_eq!(step(&log, "clone")["outcome"], "resumed");
    assert_eq!(step(&log, "manifest")["outcome"], "resumed");
    assert_eq!(step(&log, "summary")["outcome"], "ran");
}

#[test]
fn a_missing_repository_fails_at_once_with_a_clear_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let missing = tmp.path().join("no-such-repo");
    let out = run_pipeline(&dir, &["--repo", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    let log = log(&dir);
    assert_eq!(log["outcome"], "failed");
    assert_eq!(step(&log, "clone")["outcome"], "failed");
    assert!(
        step(&log, "clone")["attempts"]
            .as_array()
            .unwrap()
            .is_empty(),
        "not retried"
    );
    assert!(
        !dir.join("repo").exists(),
        "no partial clone at the final path"
    );
}

#[test]
fn two_pipelines_started_at_once_on_a_new_run_directory_both_succeed() {
    for round in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let spawn = || {
            pipeline()
                .arg("--run-dir")
                .arg(&dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        for child in [a, b] {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            artifacts(&dir),
            artifacts(&reference_plain()),
            "round {round}"
        );
    }
}

/// An uninterrupted run without simulated failures.
fn reference_plain() -> PathBuf {
    static PLAIN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    PLAIN
        .get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("run");
            ok(run_pipeline(&dir, &[]));
            (tmp, dir)
        })
        .1
        .clone()
}

/// Runs git in `dir` with a fixed identity.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn new_commits_on_the_remote_rerun_the_clone() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("upstream");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(repo.join("a.txt"), "one\n").unwrap();
    git(&repo, &["add", "a.txt"]);
    git(&repo, &["commit", "--quiet", "-m", "one"]);
    let dir = tmp.path().join("run");
    let url = repo.to_str().unwrap();
    ok(run_pipeline(&dir, &["--repo", url]));
    assert_eq!(step(&log(&dir), "clone")["outcome"], "ran");
    ok(run_pipeline(&dir, &["--repo", url]));
    assert_eq!(
        step(&log(&dir), "clone")["outcome"],
        "resumed",
        "nothing moved"
    );

    std::fs::write(repo.join("b.txt"), "two\n").unwrap();
    git(&repo, &["add", "b.txt"]);
    git(&repo, &["commit", "--quiet", "-m", "two"]);
    ok(run_pipeline(&dir, &["--repo", url]));
    assert_eq!(
        step(&log(&dir), "clone")["outcome"],
        "ran",
        "the branch moved"
    );
    assert!(
        dir.join("repo/b.txt").is_file(),
        "the new commit is checked out"
    );
}

#[test]
fn a_bad_argument_is_a_clear_error() {
    let out = pipeline()
        .args(["--crash-after", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("possible values: clone, manifest, summary"),
        "{stderr}"
    );
}

/// `n` small local repositories (repository `i` has `i` files).
fn local_repos(root: &Path, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| {
            let dir = root.join(format!("repo-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            git(&dir, &["init", "-q"]);
            for j in 1..=i {
                std::fs::write(dir.join(format!("f{j}.txt")), format!("line {j}\n")).unwrap();
            }
            git(&dir, &["add", "."]);
            git(&dir, &["commit", "-qm", "files"]);
            dir.display().to_string()
        })
        .collect()
}

/// The lines of a run's output that say an item of `family` was done
/// (`done`) or resumed (`already done`), by repository.
fn items_said(stdout: &str, family: &str, what: &str) -> Vec<String> {
    let mut repos: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with(&format!("[{family} ")) && l.contains(what))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .collect();
    repos.sort();
    repos
}

#[test]
fn a_pool_of_repositories_killed_part_way_resumes_exactly_the_unfinished_items() {
    let tmp = tempfile::tempdir().unwrap();
    let repos = local_repos(tmp.path(), 8);
    let mut args: Vec<&str> = repos.iter().flat_map(|r| ["--repo", r.as_str()]).collect();
    args.extend(["--jobs", "3"]);
    // Uninterrupted, for comparison.
    let reference = tmp.path().join("reference");
    ok(run_pipeline(&reference, &args));
    let expected = std::fs::read(reference.join("artifacts/pool.json")).unwrap();

    let dir = tmp.path().join("run");
    let mut crash = args.clone();
    crash.extend(["--crash-after-items", "2"]);
    let out = run_pipeline(&dir, &crash);
    assert!(!out.status.success(), "it should have been killed");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.matches("crashing after 2 items").count(),
        1,
        "one thread ends the process, and no other gets as far: {said}"
    );
    // What the kill left done, as the run directory says.
    let run = recovery::Run::open_existing(&dir).unwrap();
    let mut indexed: Vec<String> = run
        .items("index-repo")
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| matches!(e.marker, recovery::marker::MarkerState::Valid(_)))
        .map(|e| e.item.unwrap().as_str().unwrap().to_owned())
        .collect();
    indexed.sort();
    // Exactly K: no other thread indexes an item while the K-th ends the
    // process (the three threads race for the last ones).
    assert_eq!(indexed.len(), 2, "{indexed:?}");

    let second = ok(run_pipeline(&dir, &args));
    // The items indexed before the kill resume; every other one runs.
    assert_eq!(
        items_said(&second, "index-repo", "already done"),
        indexed,
        "{second}"
    );
    let mut all = indexed.clone();
    all.extend(items_said(&second, "index-repo", "done ("));
    all.sort();
    let mut want = repos.clone();
    want.sort();
    assert_eq!(all, want, "{second}");
    assert_eq!(
        std::fs::read(dir.join("artifacts/pool.json")).unwrap(),
        expected
    );
    // A third run redoes nothing.
    let third = ok(run_pipeline(&dir, &args));
    assert!(
        items_said(&third, "index-repo", "done (").is_empty(),
        "{third}"
    );
    assert_eq!(items_said(&third, "index-repo", "already done"), want);
}

#[test]
fn a_pool_killed_after_one_item_while_every_thread_is_at_work_keeps_one() {
    // Three repositories alike on three threads: all reach their index at
    // about the same moment, and only the first may commit.
    let tmp = tempfile::tempdir().unwrap();
    let repos: Vec<String> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("same-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            git(&dir, &["init", "-q"]);
            std::fs::write(dir.join("f.txt"), "line\n").unwrap();
            git(&dir, &["add", "."]);
            git(&dir, &["commit", "-qm", "one file"]);
            dir.display().to_string()
        })
        .collect();
    let mut args: Vec<&str> = repos.iter().flat_map(|r| ["--repo", r.as_str()]).collect();
    args.extend(["--jobs", "3", "--crash-after-items", "1"]);
    let dir = tmp.path().join("run");
    let out = run_pipeline(&dir, &args);
    assert!(!out.status.success(), "it should have been killed");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.matches("crashing after 1 item (").count(), 1, "{said}");
    let run = recovery::Run::open_existing(&dir).unwrap();
    let indexed = run
        .items("index-repo")
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| matches!(e.marker, recovery::marker::MarkerState::Valid(_)))
        .count();
    assert_eq!(indexed, 1, "{said}");
}

#[test]
fn a_pool_from_a_file_and_bad_pool_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let repos = local_repos(tmp.path(), 2);
    let list = tmp.path().join("repos.txt");
    std::fs::write(&list, format!("# two\n{}\n\n{}\n", repos[0], repos[1])).unwrap();
    let dir = tmp.path().join("run");
    let out = ok(run_pipeline(&dir, &["--repos", list.to_str().unwrap()]));
    assert_eq!(items_said(&out, "index-repo", "done (").len(), 2, "{out}");
    let out = run_pipeline(&dir, &["--jobs", "0"]);
    assert!(!out.status.success());
    // A bad argument is refused before the run directory is made.
    let other = tmp.path().join("other");
    let out = run_pipeline(&other, &["--crash-after-items", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--crash-after-items is for a pool"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!other.exists());
    let missing = tmp.path().join("no-such-list.txt");
    let out = run_pipeline(&other, &["--repos", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the repository list"),
        "{stderr}"
    );
    assert!(!other.exists(), "{stderr}");
    let out = run_pipeline(&other, &["--jobs", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a pool needs repositories"), "{stderr}");
    assert!(!other.exists(), "{stderr}");
    // A pool of one says so in the singular.
    let one = tmp.path().join("one.txt");
    std::fs::write(&one, format!("{}\n", repos[0])).unwrap();
    let out = ok(run_pipeline(&other, &["--repos", one.to_str().unwrap()]));
    assert!(out.contains("1 repository on 1 thread\n"), "{out}");
    // Its one repository has one file of one line.
    assert!(out.contains(" 1 file, 1 line\n"), "{out}");
    // Crashing after no items at all is no plan: refused, not read as 1.
    let mut zero: Vec<&str> = repos.iter().flat_map(|r| ["--repo", r.as_str()]).collect();
    zero.extend(["--crash-after-items", "0"]);
    let out = run_pipeline(&tmp.path().join("zero"), &zero);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--crash-after-items"), "{stderr}");
    assert!(!tmp.path().join("zero").exists(), "{stderr}");
}

#[test]
fn a_reader_that_goes_away_does_not_stop_the_job() {
    // `cargo run --example pipeline | head -1`: the pipe closes after the
    // first line, and the job panicked at its next `println!`.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut child = pipeline()
        .arg("--run-dir")
        .arg(&dir)
        .arg("--simulate-failure")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The job went on, unheard, and did all its work.
    assert_eq!(artifacts(&dir), artifacts(&reference().1));
}
