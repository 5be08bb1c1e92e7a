//! Step families (`#[resumable_step("page", item = n)]`): one marker per
//! item, outputs from any thread of the body, and the errors that keep
//! items apart.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use rayon::prelude::*;
use recovery::marker::MarkerState;
use recovery::{Context, Event, Recorder, Run, RunError, Step, resumable_step};

static BODIES: AtomicU32 = AtomicU32::new(0);

#[resumable_step("page", item = n, key = "v1")]
fn page(run: &Run, n: u32) -> std::io::Result<u32> {
    BODIES.fetch_add(1, Ordering::SeqCst);
    run.write_output(&format!("pages/{n:05}.txt"), n.to_string().as_bytes())?;
    Ok(n * 2)
}

/// Items counted by their own counter, so tests in parallel do not mix.
#[resumable_step("counted", item = n)]
fn counted(run: &Run, n: u32, bodies: &Mutex<Vec<u32>>) -> std::io::Result<u32> {
    bodies.lock().unwrap().push(n);
    run.write_output(&format!("counted/{n}.txt"), b"x")?;
    Ok(n)
}

#[test]
fn each_item_resumes_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let bodies = Mutex::new(Vec::new());
    for n in 1..=3 {
        assert_eq!(counted(&run, n, &bodies).unwrap(), n);
    }
    for n in 1..=3 {
        assert_eq!(counted(&run, n, &bodies).unwrap(), n);
    }
    // Before families, each call invalidated the previous key's marker and
    // every call ran: six bodies.
    assert_eq!(*bodies.lock().unwrap(), [1, 2, 3]);
    let recorder = std::sync::Arc::new(Recorder::default());
    let ctx = Context::builder().observer(recorder.clone()).build();
    ctx.in_scope(|| counted(&run, 2, &bodies)).unwrap();
    assert_eq!(
        recorder.events(),
        [Event::StepResumed {
            step: "counted".into(),
            item: Some(serde_json::json!(2)),
            fetched: 0,
        }]
    );
    let logged = run.events().unwrap().records;
    assert!(logged.iter().any(|e| matches!(e,
        Event::StepCompleted { step, item: Some(i), .. } if step == "counted" && *i == 3)));
}

#[test]
fn a_thousand_items_from_a_thread_pool_each_run_once() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let before = BODIES.load(Ordering::SeqCst);
    let sum: u32 = (0..1000u32)
        .into_par_iter()
        .map(|n| page(&run, n).unwrap())
        .sum();
    assert_eq!(sum, 999 * 1000);
    assert_eq!(BODIES.load(Ordering::SeqCst) - before, 1000);
    // Again, in parallel: every item resumes.
    let again: u32 = (0..1000u32)
        .into_par_iter()
        .map(|n| page(&run, n).unwrap())
        .sum();
    assert_eq!(again, sum);
    assert_eq!(BODIES.load(Ordering::SeqCst) - before, 1000);
    assert_eq!(run.items("page").unwrap().count(), 1000);
    let all_valid = run
        .items("page")
        .unwrap()
        .all(|e| matches!(e.unwrap().marker, MarkerState::Valid(_)));
    assert!(all_valid);
    // A marker per item, spread over buckets, and no plain marker.
    assert!(!run.marker_path("page").exists());
    let buckets = std::fs::read_dir(tmp.path().join("state/steps/page"))
        .unwrap()
        .count();
    assert!(buckets > 200, "{buckets} buckets");
}

/// Writes one output per part from scoped threads and a rayon pool; fails
/// after writing when `fail` is set.
#[resumable_step("split", item = name)]
fn split(run: &Run, name: &str, parts: u32, fail: bool) -> std::io::Result<u32> {
    let step = Step::current().expect("inside a step");
    std::thread::scope(|s| {
        for i in 0..parts / 2 {
            let step = step.clone();
            s.spawn(move || step.write_output(&format!("{name}/scoped-{i}"), b"scoped"));
        }
    });
    (parts / 2..parts).into_par_iter().try_for_each(|i| {
        step.write_output(&format!("{name}/pool-{i}"), b"pool")
            .map(drop)
    })?;
    if fail {
        return Err(std::io::Error::other("failed after writing"));
    }
    Ok(parts)
}

#[test]
fn outputs_from_scoped_threads_and_a_pool_commit_with_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    assert_eq!(split(&run, "ok", 16, false).unwrap(), 16);
    let written = std::fs::read_dir(tmp.path().join("ok")).unwrap().count();
    assert_eq!(written, 16);
    let state = run.step_item("split", &"ok").unwrap();
    match state.marker().unwrap() {
        MarkerState::Valid(m) => assert_eq!(m.outputs.len(), 16),
        other => panic!("{other:?}"),
    }
    // A failing body leaves none of its threads' outputs behind.
    assert!(split(&run, "bad", 16, true).is_err());
    assert!(!tmp.path().join("bad").exists());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("staging"))
            .unwrap()
            .count(),
        0
    );
    assert!(matches!(
        run.step_item("split", &"bad").unwrap().marker().unwrap(),
        MarkerState::Missing
    ));
}

#[resumable_step("leaky")]
fn leaky(run: &Run, keep: &Mutex<Option<Step>>) -> std::io::Result<()> {
    *keep.lock().unwrap() = Step::current();
    run.write_output("leaky/in-time", b"ok")?;
    Ok(())
}

#[test]
fn an_output_declared_after_the_body_returned_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let kept = Mutex::new(None);
    leaky(&run, &kept).unwrap();
    let step = kept.lock().unwrap().take().unwrap();
    let err = step.write_output("leaky/late", b"late").unwrap_err();
    assert!(matches!(err, RunError::StepEnded { .. }), "{err}");
    assert!(
        err.to_string().contains("after the step's body returned"),
        "{err}"
    );
    assert!(!tmp.path().join("leaky/late").exists());
    assert!(tmp.path().join("leaky/in-time").exists());
}

#[test]
fn a_thread_without_a_step_is_told_about_step_current() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let err = std::thread::scope(|s| s.spawn(|| run.write_output("x", b"x")).join().unwrap())
        .unwrap_err();
    assert!(matches!(err, RunError::NoActiveStep));
    let text = err.to_string();
    assert!(
        text.contains("Step::current()") && text.contains("thread"),
        "{text}"
    );
}

#[resumable_step("shared", item = n)]
fn shared(run: &Run, n: u32, path: &str, gate: &std::sync::Barrier) -> std::io::Result<u32> {
    let out = run.write_output(path, n.to_string().as_bytes());
    gate.wait(); // both items declared (or failed to) before either ends
    out?;
    Ok(n)
}

#[test]
fn two_items_writing_one_output_at_once_are_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let gate = std::sync::Barrier::new(2);
    let results: Vec<std::io::Result<u32>> = std::thread::scope(|s| {
        let a = s.spawn(|| shared(&run, 1, "same.txt", &gate));
        let b = s.spawn(|| shared(&run, 2, "same.txt", &gate));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    assert!(failed[0].contains("shared#"), "{}", failed[0]);
    assert!(
        failed[0].contains("is being written by shared#"),
        "{}",
        failed[0]
    );
    // One after the other, the later item replaces the output, and the
    // earlier one's marker no longer holds (documented).
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let gate = std::sync::Barrier::new(1);
    shared(&run, 1, "same.txt", &gate).unwrap();
    shared(&run, 2, "same.txt", &gate).unwrap();
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("same.txt")).unwrap(),
        "2"
    );
    assert!(
        !run.step_item("shared", &1)
            .unwrap()
            .is_done(&(), 1)
            .unwrap()
    );
    assert!(
        run.step_item("shared", &2)
            .unwrap()
            .is_done(&(), 1)
            .unwrap()
    );
}

#[resumable_step("mixed", item = n)]
fn mixed_family(run: &Run, n: u32) -> std::io::Result<u32> {
    let _ = run;
    Ok(n)
}

#[resumable_step("mixed")]
fn mixed_plain(run: &Run) -> std::io::Result<u32> {
    let _ = run;
    Ok(0)
}

#[test]
fn a_family_and_a_plain_step_of_one_name_are_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    mixed_family(&run, 1).unwrap();
    let err = mixed_plain(&run).unwrap_err().to_string();
    assert!(err.contains("families::mixed_family"), "{err}");
    assert!(err.contains("families::mixed_plain"), "{err}");
    assert!(err.contains("is a family"), "{err}");
}

#[test]
fn the_manual_api_marks_items_done_and_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    for n in ["a", "b"] {
        run.step_item("manual", &n)
            .unwrap()
            .mark_done(&1, 1, &n)
            .unwrap();
    }
    let b = run.step_item("manual", &"b").unwrap();
    assert_eq!(b.load::<String, _>(&1, 1).unwrap().as_deref(), Some("b"));
    assert!(b.reset().unwrap());
    let items: Vec<serde_json::Value> = run
        .items("manual")
        .unwrap()
        .filter_map(|e| e.unwrap().item)
        .collect();
    assert_eq!(items, [serde_json::json!("a")]);
    // An item's marker copied to another item's place does not count.
    let a = run.step_item("manual", &"a").unwrap();
    std::fs::create_dir_all(b.marker_path().parent().unwrap()).unwrap();
    std::fs::copy(a.marker_path(), b.marker_path()).unwrap();
    match b.marker().unwrap() {
        MarkerState::Invalid(reason) => assert!(reason.contains("item \"a\""), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!Path::new(&b.marker_path()).is_dir());
}

/// Fails its first attempt; with `give_up`, every attempt.
#[resumable_step("flaky-page", item = n)]
#[recovery::retryable(max_attempts = 2, base = "1ms")]
fn flaky_page(run: &Run, n: u32, give_up: bool, tries: &Mutex<Vec<u32>>) -> std::io::Result<u32> {
    let mut tries = tries.lock().unwrap();
    let first = !tries.contains(&n);
    tries.push(n);
    if first || give_up {
        return Err(std::io::Error::other(format!("page {n} not yet")));
    }
    run.write_output(&format!("flaky/{n}.txt"), b"x")?;
    Ok(n)
}

#[test]
fn retries_inside_an_item_name_the_item() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path()).unwrap();
    let recorder = std::sync::Arc::new(Recorder::default());
    let ctx = Context::builder().observer(recorder.clone()).build();
    let tries = Mutex::new(Vec::new());
    ctx.in_scope(|| {
        assert_eq!(flaky_page(&run, 7, false, &tries).unwrap(), 7);
        flaky_page(&run, 8, true, &tries).unwrap_err();
    });
    // Items run at once would otherwise print "[flaky-page] attempt 1
    // failed" for each, with no way to tell them apart.
    let retries: Vec<String> = recorder
        .events()
        .iter()
        .filter(|e| e.kind() == "RETRY_ATTEMPTED")
        .map(|e| e.to_string())
        .collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(
        retries[0].starts_with("[flaky-page 7] attempt 1 failed: page 7 not yet"),
        "{retries:?}"
    );
    assert!(
        retries[1].starts_with("[flaky-page 8] attempt 1 failed"),
        "{retries:?}"
    );
    // The run's own log keeps the item, and so does the give-up record.
    let logged = run.events().unwrap().records;
    let items: Vec<_> = logged
        .iter()
        .filter(|e| e.kind() == "RETRY_ATTEMPTED")
        .map(|e| e.item().cloned())
        .collect();
    assert_eq!(
        items,
        [Some(serde_json::json!(7)), Some(serde_json::json!(8))]
    );
    let gave_up: Vec<_> = run
        .issues()
        .unwrap()
        .records
        .into_iter()
        .filter(|i| i.error_code == recovery::IssueCode::MaxRetriesExceeded)
        .collect();
    assert_eq!(gave_up.len(), 1, "{gave_up:?}");
    assert_eq!(gave_up[0].item, Some(serde_json::json!(8)));
}
