//! The `recovery` command line on real run directories, bad input included.

use std::path::Path;
use std::process::{Command, Output};

use recovery::{Run, resumable_step, retryable};

#[resumable_step("fetch")]
#[retryable(max_attempts = 3, base = "1ms")]
fn fetch(run: &Run, calls: &mut u32) -> std::io::Result<u32> {
    *calls += 1;
    if *calls == 1 {
        return Err(std::io::ErrorKind::ConnectionReset.into());
    }
    run.write_output("data/fetched.txt", b"payload")?;
    Ok(*calls)
}

#[resumable_step("doomed")]
fn doomed(run: &Run) -> std::io::Result<()> {
    let _ = run;
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "bad input file",
    ))
}

fn cli(args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recovery"));
    if let Some((first, rest)) = args.split_first() {
        cmd.arg(first).arg(dir).args(rest);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A run with one done step (after a retry) and one failed step.
fn sample() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let mut calls = 0;
    fetch(&run, &mut calls).unwrap();
    assert!(doomed(&run).is_err());
    tmp
}

#[test]
fn status_lists_done_steps_and_fails_on_invalid_ones() {
    let tmp = sample();
    let o = cli(&["status"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("fetch") && text.contains("done") && text.contains("1 verified"),
        "{text}"
    );

    std::fs::write(tmp.path().join("data/fetched.txt"), b"tampered").unwrap();
    let o = cli(&["status"], tmp.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("INVALID"), "{}", stdout(&o));
}

#[test]
fn verify_rehashes_every_output() {
    let tmp = sample();
    let o = cli(&["verify"], tmp.path());
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("1 output of 1 step checked, 0 problems"),
        "{}",
        stdout(&o)
    );
    // Same size, other bytes: only a hash finds it.
    std::fs::write(tmp.path().join("data/fetched.txt"), b"PAYLOAD").unwrap();
    let o = cli(&["verify"], tmp.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o)
            .contains("MISMATCH fetch: output data/fetched.txt does not match its recorded hash")
    );
    assert!(stdout(&o).contains("1 output of 1 step checked, 1 problem\n"));
}

#[resumable_step("export")]
fn export(run: &Run, to: &Path) -> std::io::Result<()> {
    let out = run.output_file_outside(to.join("export.txt"))?;
    std::fs::write(out.path(), b"exported")
}

#[test]
fn outputs_outside_the_run_are_verified_only_where_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, exports) = (tmp.path().join("run"), tmp.path().join("exports"));
    std::fs::create_dir(&exports).unwrap();
    let run = Run::open(&dir).unwrap();
    run.allow_outside(&exports).unwrap();
    export(&run, &exports).unwrap();
    let allow = exports.to_str().unwrap();

    let o = cli(&["verify", "--allow-outside", allow], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("1 output of 1 step checked, 0 problems"));
    let o = cli(&["status", "--allow-outside", allow], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // Without the place: reported, not read.
    let o = cli(&["verify"], &dir);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("--allow-outside DIR"), "{}", stdout(&o));
    // A place inside the run directory is a usage error.
    let inside = dir.join("x");
    let o = cli(
        &["status", "--allow-outside", inside.to_str().unwrap()],
        &dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("inside the run directory"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn events_filter_by_type_and_step_and_speak_json() {
    let tmp = sample();
    let all = stdout(&cli(&["events"], tmp.path()));
    assert_eq!(all.lines().count(), 2, "{all}");
    let retries = stdout(&cli(&["events", "--type", "RETRY_ATTEMPTED"], tmp.path()));
    assert_eq!(retries.lines().count(), 1);
    // Written as typed in a hurry, the type is the same type.
    let lower = cli(&["events", "--type", "retry_attempted"], tmp.path());
    assert_eq!(lower.status.code(), Some(0), "{}", stderr(&lower));
    assert_eq!(stdout(&lower), retries);
    assert!(
        retries.starts_with("RETRY_ATTEMPTED [fetch] attempt 1 failed"),
        "{retries}"
    );
    let none = stdout(&cli(&["events", "--step", "doomed"], tmp.path()));
    assert_eq!(none, "");
    let json = stdout(&cli(
        &["events", "--json", "--type", "STEP_COMPLETED"],
        tmp.path(),
    ));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["event"], "STEP_COMPLETED");
    assert_eq!(v["step"], "fetch");
    let bad = cli(&["events", "--type", "NOPE"], tmp.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("unknown event type \"NOPE\""));
}

#[test]
fn issues_show_failed_steps() {
    let tmp = sample();
    let text = stdout(&cli(&["issues"], tmp.path()));
    assert!(text.contains("STEP_FAILED Blocker doomed"), "{text}");
    assert!(text.contains("bad input file"));
    let json = stdout(&cli(&["issues", "--json"], tmp.path()));
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(v["error_code"], "STEP_FAILED");
}

#[test]
fn a_torn_last_log_line_is_skipped_with_a_warning() {
    let tmp = sample();
    let mut events = std::fs::read(tmp.path().join("events.jsonl")).unwrap();
    events.extend_from_slice(b"{\"event\":\"STEP_COMP");
    std::fs::write(tmp.path().join("events.jsonl"), events).unwrap();
    let o = cli(&["events"], tmp.path());
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).lines().count(), 2);
    assert!(stderr(&o).contains("1 line(s)"), "{}", stderr(&o));
}

#[test]
fn reset_invalidates_one_step() {
    let tmp = sample();
    let o = cli(&["reset", "fetch"], tmp.path());
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("reset fetch"));
    assert!(!tmp.path().join("state/steps/fetch.json").exists());
    let again = cli(&["reset", "fetch"], tmp.path());
    assert!(stdout(&again).contains("had no marker"));
    // A step this run never had (a typo): nothing to reset, and it leaves
    // nothing behind that would make status list it (it left a lock file).
    let typo = cli(&["reset", "fecth"], tmp.path());
    assert_eq!(typo.status.code(), Some(0), "{}", stderr(&typo));
    assert!(
        stdout(&typo).contains("fecth had no marker"),
        "{}",
        stdout(&typo)
    );
    let status = stdout(&cli(&["status"], tmp.path()));
    assert!(
        status.contains("fetch") && !status.contains("fecth"),
        "{status}"
    );
    // The step runs again.
    let run = Run::open(tmp.path()).unwrap();
    let mut calls = 10;
    assert_eq!(fetch(&run, &mut calls).unwrap(), 11);
}

#[test]
fn bad_input_is_a_clear_error_never_a_panic() {
    let tmp = sample();
    let bad_step = cli(&["reset", "../etc"], tmp.path());
    assert_eq!(bad_step.status.code(), Some(2));
    assert!(
        stderr(&bad_step).contains("invalid step name \"../etc\""),
        "{}",
        stderr(&bad_step)
    );

    let missing = tmp.path().join("nope");
    let o = cli(&["status"], &missing);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("No such file"), "{}", stderr(&o));
    assert!(!missing.exists(), "inspecting does not create a run");

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    let o = cli(&["verify"], foreign.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a recovery run directory"),
        "{}",
        stderr(&o)
    );

    let file = foreign.path().join("notes.txt");
    let o = cli(&["events"], &file);
    assert_eq!(o.status.code(), Some(2));

    std::fs::write(tmp.path().join("run.json"), "{").unwrap();
    let o = cli(&["status"], tmp.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a run file"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));

    let usage = Command::new(env!("CARGO_BIN_EXE_recovery"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("unrecognized subcommand"));
}

#[test]
fn status_of_an_empty_run() {
    let tmp = tempfile::tempdir().unwrap();
    Run::open(tmp.path()).unwrap();
    let o = cli(&["status"], tmp.path());
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("no step has completed"));
}

#[test]
fn a_closed_stdout_pipe_ends_the_command_quietly() {
    let tmp = sample();
    let run = Run::open(tmp.path()).unwrap();
    // Enough events that the reader is gone before the writer is done.
    for _ in 0..20_000 {
        run.log_event(&recovery::Event::StepResumed {
            step: "fetch".into(),
            item: None,
            fetched: 0,
        });
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_recovery"))
        .arg("events")
        .arg(tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe, as `| head -1` does.
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn a_path_that_holds_no_run_is_named_for_what_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = cli(&["status"], &empty);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("it is empty: no run has been made here yet"),
        "{}",
        stderr(&o)
    );

    let file = tmp.path().join("file.txt");
    std::fs::write(&file, b"x").unwrap();
    let o = cli(&["status"], &file);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("it is a file, not a directory"),
        "{}",
        stderr(&o)
    );

    std::fs::write(empty.join("thesis.tex"), b"x").unwrap();
    let o = cli(&["status"], &empty);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("it has files but no run.json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn events_of_a_bad_step_name_is_a_usage_error() {
    let tmp = sample();
    let o = cli(&["events", "--step", "../x"], tmp.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid step name"), "{}", stderr(&o));
}

#[test]
fn reset_of_a_running_step_says_whom_it_waits_for_or_does_not_wait() {
    let tmp = sample();
    let run = Run::open(tmp.path()).unwrap();
    // This process is inside the step: it holds the lock.
    let execution = run.step("fetch").unwrap().begin().unwrap();
    let o = cli(&["reset", "fetch", "--no-wait"], tmp.path());
    assert_eq!(o.status.code(), Some(2));
    let pid = std::process::id().to_string();
    assert!(
        stderr(&o).contains(&pid) && stderr(&o).contains("not reset"),
        "{}",
        stderr(&o)
    );
    assert!(
        run.step("fetch").unwrap().is_done(&(), 1).unwrap(),
        "left alone"
    );

    // Without --no-wait it says whom it waits for, then resets once free.
    let mut child = Command::new(env!("CARGO_BIN_EXE_recovery"))
        .args(["reset"])
        .arg(tmp.path())
        .arg("fetch")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.contains("waiting for process") && line.contains(&pid),
        "{line}"
    );
    drop(execution);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("reset fetch"), "{}", stdout(&out));
}

#[test]
fn status_shows_every_step_the_run_knows_of() {
    let tmp = sample();
    let run = Run::open(tmp.path()).unwrap();
    assert!(run.step("fetch").unwrap().reset().unwrap());
    // This process is inside a step that has never completed.
    let running = run.step("crawl").unwrap().begin().unwrap();

    let o = cli(&["status", "--json"], tmp.path());
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let state = |step: &str| {
        lines
            .iter()
            .find(|l| l["step"] == step)
            .unwrap_or_else(|| panic!("{step} missing from {lines:?}"))
            .clone()
    };
    assert_eq!(
        state("fetch")["state"],
        "not done",
        "a reset step stays listed"
    );
    assert_eq!(state("doomed")["state"], "failed");
    assert_eq!(state("doomed")["detail"], "bad input file");
    assert_eq!(state("crawl")["state"], "running");
    let pid = std::process::id().to_string();
    assert!(state("crawl")["detail"].as_str().unwrap().contains(&pid));
    assert_eq!(o.status.code(), Some(0));

    // The table says the same.
    let text = stdout(&cli(&["status"], tmp.path()));
    assert!(text.contains("doomed") && text.contains("failed"), "{text}");
    assert!(text.contains("crawl") && text.contains("running"), "{text}");
    drop(running);
}

#[test]
fn every_subcommand_speaks_json() {
    let tmp = sample();
    let parse = |o: &Output| -> Vec<serde_json::Value> {
        stdout(o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    };
    std::fs::write(tmp.path().join("data/fetched.txt"), b"PAYLOAD").unwrap();
    let o = cli(&["verify", "--json"], tmp.path());
    assert_eq!(o.status.code(), Some(1));
    let lines = parse(&o);
    assert_eq!(lines[0]["step"], "fetch");
    assert_eq!(lines[0]["state"], "MISMATCH");
    assert_eq!(lines[1]["problems"], 1);

    let o = cli(&["reset", "fetch", "--json"], tmp.path());
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        parse(&o),
        [serde_json::json!({"step": "fetch", "reset": true})]
    );
    let o = cli(&["reset", "fetch", "--json"], tmp.path());
    assert_eq!(
        parse(&o),
        [serde_json::json!({"step": "fetch", "reset": false})]
    );

    for command in ["status", "events", "issues"] {
        let o = cli(&[command, "--json"], tmp.path());
        assert!(!parse(&o).is_empty(), "{command}");
    }
}

#[resumable_step("page", item = n)]
fn page(run: &Run, n: u32) -> std::io::Result<u32> {
    if n == 4 {
        return Err(std::io::Error::other("page 4 is missing"));
    }
    run.write_output(&format!("pages/{n}.txt"), b"page")?;
    Ok(n)
}

/// A family of five items: 0..=3 done, 4 failed.
fn family() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    for n in 0..5 {
        let _ = page(&run, n);
    }
    tmp
}

#[test]
fn status_sums_up_a_family_and_lists_its_items() {
    let tmp = family();
    let text = stdout(&cli(&["status"], tmp.path()));
    assert!(text.contains("4/5 done, 0 not done, 1 failed"), "{text}");
    let text = stdout(&cli(&["status", "--items"], tmp.path()));
    let failed: Vec<&str> = text.lines().filter(|l| l.contains("failed ")).collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(failed[0].contains("page 4 is missing"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(" done ")).count(),
        4,
        "{text}"
    );
    let json = stdout(&cli(&["status", "--json", "--items"], tmp.path()));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["family"], true);
    assert_eq!(
        (lines[0]["done"].as_u64(), lines[0]["failed"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(lines.len(), 6);
    assert!(
        lines[1..]
            .iter()
            .any(|l| l["item"] == 4 && l["state"] == "failed")
    );
}

#[test]
fn reset_takes_one_item_or_all_of_them() {
    let tmp = family();
    // The family's name alone names no item: nothing is reset, and it says
    // what to write instead (it said "page had no marker: nothing to
    // reset", and exited 0).
    let o = cli(&["reset", "page"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("page is a step family")
            && stderr(&o).contains("--item")
            && stderr(&o).contains("--all"),
        "{}",
        stderr(&o)
    );
    let text = stdout(&cli(&["status"], tmp.path()));
    assert!(text.contains("4/5 done, 0 not done, 1 failed"), "{text}");
    let o = cli(&["reset", "page", "--item", "2"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "reset page 2: it will run again");
    let text = stdout(&cli(&["status"], tmp.path()));
    assert!(text.contains("3/5 done, 1 not done, 1 failed"), "{text}");
    let o = cli(&["reset", "page", "--item", "not json"], tmp.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not JSON"), "{}", stderr(&o));
    let o = cli(&["reset", "page", "--all", "--json"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    let text = stdout(&cli(&["status"], tmp.path()));
    assert!(text.contains("0/5 done"), "{text}");
    // Verify reads every item's marker too.
    let tmp = family();
    std::fs::write(tmp.path().join("pages/1.txt"), b"tampered").unwrap();
    let o = cli(&["verify"], tmp.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("MISMATCH page 1"), "{}", stdout(&o));
}
