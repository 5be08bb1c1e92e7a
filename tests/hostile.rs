//! Hostile inputs: markers, event logs and issue logs that are truncated,
//! empty, garbage, of another format or huge; symlinks where a marker or an
//! output should be, and inside the run directory pointing out of it; step
//! names and output paths with `..`, absolute paths and NUL bytes. Each
//! gives a clear error or a rerun: never a panic, never a read or write
//! outside the run directory. Property tests feed the parsers arbitrary
//! and mutated bytes. Prints `RELIABILITY hostile_inputs_tried=N`.

use std::path::Path;

use proptest::prelude::*;
use recovery::marker::{self, MarkerState};
use recovery::{Event, IssueRecord, Run, RunError, parse_log, resumable_step};

/// Counts one hostile input tried (summed by scripts/reliability-report).
fn tried() {
    println!("RELIABILITY hostile_inputs_tried+=1");
}

#[resumable_step("victim")]
fn victim(run: &Run, runs: &mut u32) -> std::io::Result<u32> {
    *runs += 1;
    run.write_output("out/victim.txt", b"victim output")?;
    Ok(7)
}

fn done_run() -> (tempfile::TempDir, Run) {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path().join("run")).unwrap();
    victim(&run, &mut 0).unwrap();
    (tmp, run)
}

fn marker_path(run: &Run) -> std::path::PathBuf {
    run.marker_path("victim")
}

/// The marker replaced by `bytes`: the step must rerun (or, for a newer
/// format, fail clearly), never panic.
fn with_marker(bytes: &[u8]) -> Result<u32, String> {
    let (_tmp, run) = done_run();
    std::fs::write(marker_path(&run), bytes).unwrap();
    let mut runs = 0;
    let r = victim(&run, &mut runs).map_err(|e| e.to_string());
    tried();
    r.map(|_| runs)
}

#[test]
fn damaged_markers_rerun_the_step() {
    let (_tmp, run) = done_run();
    let good = std::fs::read(marker_path(&run)).unwrap();
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        b"garbage".to_vec(),
        b"\x00\x00\x00".to_vec(),
        b"null".to_vec(),
        b"{\"checksum\":\"x\",\"marker\":null}".to_vec(),
        b"[1,2,3]".to_vec(),
        "{\"k\":\"\u{fffd}\u{202e}\"}".as_bytes().to_vec(),
        vec![b'['; 100_000], // deep nesting
    ];
    for len in [1, good.len() / 3, good.len() / 2, good.len() - 2] {
        cases.push(good[..len].to_vec());
    }
    for case in cases {
        assert_eq!(
            with_marker(&case),
            Ok(1),
            "{:?}",
            String::from_utf8_lossy(&case[..case.len().min(40)])
        );
    }
}

/// A marker rewritten (checksum and all) to vouch for files outside the run
/// directory, with their true size and hash: were they read, the step
/// would resume. It reruns instead, for `..`, an absolute path, and an
/// absolute path outside the places the program allowed.
#[test]
fn a_marker_pointing_outside_the_run_is_not_read() {
    let (tmp, run) = done_run();
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, b"not the run's").unwrap();
    let allowed = tmp.path().join("exports");
    std::fs::create_dir(&allowed).unwrap();
    run.allow_outside(&allowed).unwrap();
    let good = match marker::read(&recovery::fs::RealFs, &marker_path(&run)).unwrap() {
        marker::MarkerState::Valid(m) => m,
        other => panic!("{other:?}"),
    };
    let hash = blake3::hash(b"not the run's").to_hex().to_string();
    for path in [
        "../secret.txt".to_owned(),
        "out/../../secret.txt".to_owned(),
        secret.display().to_string(),
        format!("{}/../secret.txt", allowed.display()),
    ] {
        let mut m = good.clone();
        m.outputs.push(marker::OutputEntry {
            path: path.clone(),
            kind: marker::OutputKind::File,
            size: 13,
            blake3: Some(hash.clone()),
            mtime_ns: None,
        });
        std::fs::write(marker_path(&run), marker::encode(&m).unwrap()).unwrap();
        let reason = match run.step("victim").unwrap().marker().unwrap() {
            marker::MarkerState::Invalid(reason) => reason,
            other => panic!("{path}: {other:?}"),
        };
        assert!(reason.contains(&format!("{path:?}")), "{reason}");
        let mut runs = 0;
        victim(&run, &mut runs).unwrap();
        assert_eq!(runs, 1, "{path}: the step must rerun");
        tried();
    }
}

/// A planted journal in a leftover staging directory lists files outside
/// the run: the sweep removes the directory, and nothing it did not name
/// itself for that step execution. Every planted path lies inside this
/// test's temporary directory (a "victim" directory beside the run, the
/// temporary directory itself, climbs back into it), so a regression in the
/// product's check removes test files, never a real one.
#[test]
fn a_hostile_outside_journal_removes_nothing_of_anyone_else() {
    let (tmp, run) = done_run();
    let leftover = run.dir().join("staging/victim@1.0");
    std::fs::create_dir(&leftover).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let precious = victim.join("precious.txt");
    let lookalike = victim.join(".recovery-staging-other@1.0-o0");
    let climbing = victim.join("sub/../.recovery-staging-victim@1.0-o0");
    for file in [&precious, &lookalike] {
        std::fs::write(file, b"keep me").unwrap();
    }
    std::fs::create_dir(victim.join("sub")).unwrap();
    let planted = [
        precious.clone(),
        lookalike.clone(),
        victim.clone(),
        tmp.path().to_path_buf(),
        victim.join(".."),
        climbing,
    ];
    let journal: String = planted
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    std::fs::write(leftover.join("outside"), journal).unwrap();
    drop(run);
    Run::open(tmp.path().join("run")).unwrap();
    assert!(!leftover.exists(), "the leftover is swept");
    for file in [&precious, &lookalike] {
        assert_eq!(std::fs::read(file).unwrap(), b"keep me");
    }
    assert!(victim.join("sub").is_dir());
    tried();
}

#[test]
fn a_marker_of_another_format() {
    let (_tmp, run) = done_run();
    let text = std::fs::read_to_string(marker_path(&run)).unwrap();
    // Older (0): not ours to read; rerun.
    assert_eq!(
        with_marker(text.replace("\"format\":1", "\"format\":0").as_bytes()),
        Ok(1)
    );
    // Newer: an error that says so, not a silent rerun.
    let err = with_marker(text.replace("\"format\":1", "\"format\":2").as_bytes()).unwrap_err();
    assert!(
        err.contains("newer") && err.contains("victim.json"),
        "{err}"
    );
}

#[test]
fn a_huge_marker_is_refused_without_reading_it() {
    let (_tmp, run) = done_run();
    let file = std::fs::File::create(marker_path(&run)).unwrap();
    file.set_len(marker::MARKER_LIMIT + 1).unwrap(); // sparse: costs no disk
    match marker::read(&recovery::fs::RealFs, &marker_path(&run)).unwrap() {
        MarkerState::Invalid(reason) => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut runs = 0;
    victim(&run, &mut runs).unwrap();
    assert_eq!(runs, 1);
    tried();
}

#[test]
fn symlinks_where_a_marker_or_an_output_should_be() {
    // A marker that is a symlink to a valid marker elsewhere: not trusted.
    let (tmp, run) = done_run();
    let elsewhere = tmp.path().join("copy.json");
    std::fs::copy(marker_path(&run), &elsewhere).unwrap();
    std::fs::remove_file(marker_path(&run)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, marker_path(&run)).unwrap();
    let mut runs = 0;
    victim(&run, &mut runs).unwrap();
    assert_eq!(runs, 1, "a symlinked marker is not trusted");
    tried();

    // An output replaced by a symlink to an outside file: rerun, and the
    // outside file is not written through the link.
    let (tmp, run) = done_run();
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, b"not yours").unwrap();
    let out = run.dir().join("out/victim.txt");
    std::fs::remove_file(&out).unwrap();
    std::os::unix::fs::symlink(&outside, &out).unwrap();
    let mut runs = 0;
    victim(&run, &mut runs).unwrap();
    assert_eq!(runs, 1);
    assert_eq!(std::fs::read(&outside).unwrap(), b"not yours");
    assert!(!std::fs::symlink_metadata(&out).unwrap().is_symlink());
    tried();
}

#[test]
fn a_symlink_inside_the_run_directory_pointing_out_is_refused() {
    for sub in ["staging", "state/steps", "state"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        Run::open(&dir).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // Something that a sweep would remove if it followed the link.
        std::fs::write(outside.join("victim@1.0"), b"precious").unwrap();
        std::fs::remove_dir_all(dir.join(sub)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join(sub)).unwrap();
        let err = Run::open(&dir).unwrap_err();
        assert!(
            err.to_string().contains("refusing to write outside"),
            "{sub}: {err}"
        );
        assert_eq!(
            std::fs::read(outside.join("victim@1.0")).unwrap(),
            b"precious"
        );
        tried();
    }
}

#[test]
fn bad_step_names_and_output_paths() {
    let (_tmp, run) = done_run();
    for name in [
        "",
        ".",
        "..",
        "../x",
        "/abs",
        "a/b",
        "a\\b",
        "nul\0",
        "tab\t",
        "é",
        &"x".repeat(101),
    ] {
        assert!(
            matches!(run.step(name), Err(RunError::InvalidStepName { .. })),
            "{name:?}"
        );
        tried();
    }
    let exec = run.step("paths").unwrap().begin().unwrap();
    for path in [
        "",
        "/etc/passwd",
        "../up",
        "a/../../up",
        "./here",
        "nul\0byte",
        "run.json",
        "state/steps/x.json",
        "staging/x",
    ] {
        assert!(
            matches!(
                exec.output_file(path),
                Err(RunError::InvalidOutputPath { .. })
            ),
            "{path:?}"
        );
        tried();
    }
}

#[test]
fn damaged_logs_are_read_without_panicking() {
    let (_tmp, run) = done_run();
    for bytes in [
        &b""[..],
        b"\n\n\n",
        b"garbage\n{\"event\":\"STEP_RESUMED\",\"step\":\"a\"}\n",
        b"{\"event\":\"FUTURE_KIND\",\"x\":1}\n",
        b"{\"event\":\"STEP_COMPLETED\",\"step\":\"a\",\"outputs\":-1}\n",
        b"\xff\xfe\x00\x01",
        b"{\"event\":\"STEP_RESUMED\",\"step\":\"a\"}", // cut, no newline
    ] {
        std::fs::write(run.events_path(), bytes).unwrap();
        std::fs::write(run.issues_path(), bytes).unwrap();
        let events = run.events().unwrap();
        let issues = run.issues().unwrap();
        assert!(events.records.len() + events.skipped <= bytes.split(|b| *b == b'\n').count());
        assert_eq!(issues.records.len(), 0);
        tried();
    }
    // Huge: refused with an error naming the file, before reading it.
    let file = std::fs::File::create(run.events_path()).unwrap();
    file.set_len(recovery::LOG_LIMIT + 1).unwrap();
    let err = run.events().unwrap_err().to_string();
    assert!(
        err.contains("events.jsonl") && err.contains("limit"),
        "{err}"
    );
    tried();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn the_marker_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        // Random bytes are never a valid marker (the checksum would have to match).
        let state = marker::decode(&bytes, Path::new("m.json"));
        prop_assert!(!matches!(state, Ok(MarkerState::Valid(_))));
    }

    #[test]
    fn a_mutated_marker_is_invalid_or_means_the_same(at in 0usize..4_000, byte in any::<u8>()) {
        let m = sample_marker();
        let mut bytes = marker::encode(&m).unwrap();
        let at = at % bytes.len();
        bytes[at] = byte;
        match marker::decode(&bytes, Path::new("m.json")) {
            Ok(MarkerState::Valid(parsed)) => prop_assert_eq!(parsed, m),
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().contains("newer")),
        }
    }

    #[test]
    fn the_log_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        let events = parse_log::<Event>(&bytes);
        let issues = parse_log::<IssueRecord>(&bytes);
        let lines = bytes.split(|b| *b == b'\n').count();
        prop_assert!(events.records.len() + events.skipped <= lines);
        prop_assert!(issues.records.len() + issues.skipped <= lines);
    }
}

fn sample_marker() -> marker::Marker {
    marker::Marker {
        format: marker::MARKER_FORMAT,
        step: "s".into(),
        item: None,
        version: 1,
        fingerprint: "blake3:ab".into(),
        site: "m::f".into(),
        value: serde_json::json!({"n": 1, "s": "text"}),
        outputs: vec![marker::OutputEntry {
            path: "a/b".into(),
            kind: marker::OutputKind::File,
            size: 10,
            blake3: Some("cd".into()),
            mtime_ns: None,
        }],
        completed_at_ms: 5,
        published: None,
    }
}
