//! Torture of the shared store with injected request faults
//! (`tests/support/objects.rs`): every request of a step's commit and of
//! its resume, failed in every way in turn (refused, timed out, applied
//! with its reply lost, applied and a retry answered), then seeded random
//! faults under several workers; on `InMemory` and on the real servers.
//! After each case the history checker (`tests/support/history.rs`) holds
//! what the workers saw against the store: each step commits at most once,
//! nothing committed is lost, no resume is false, and the outputs that
//! stand are the committing attempt's own; a calm rerun finishes.
//!
//! Prints `TORTURE key=value` lines for scripts/reliability-report.
//! `RECOVERY_TORTURE=1` runs ten times more random faults.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::ObjectStore;
use recovery::marker::MarkerState;
use recovery::{Run, resumable_step};
use recovery_suite::history::{self, History};
use recovery_suite::objects::{Fault, Injected, Instrumented, s3_client, total};
use recovery_suite::s3_servers::{S3Server, Server};

const TTL: Duration = Duration::from_millis(600);

thread_local! {
    /// The token of the body this thread ran last.
    static RAN: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn new_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let token = format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    RAN.with(|r| *r.borrow_mut() = Some(token.clone()));
    token
}

/// A plain step with a file and a directory of two files, each carrying
/// the attempt's token.
#[resumable_step("work", key = version)]
fn work(run: &Run, version: u32, h: &History) -> std::io::Result<String> {
    let token = new_token();
    h.record("attempt", "work", &token);
    run.write_output("work/a.txt", token.repeat(50).as_bytes())?;
    let dir = run.output_dir("work/d")?;
    std::fs::write(dir.path().join("x"), format!("x {token} {version}"))?;
    std::fs::write(dir.path().join("y"), format!("y {token}"))?;
    Ok(token)
}

/// One item of a family, with one output carrying the token.
#[resumable_step("item", item = n)]
fn item(run: &Run, n: u32, h: &History) -> std::io::Result<String> {
    let token = new_token();
    h.record("attempt", &format!("item/{n}"), &token);
    run.write_output(&format!("items/{n}.txt"), token.as_bytes())?;
    Ok(token)
}

/// Calls a step and records whether it committed its own body's value or
/// returned another's.
fn call(h: &History, step: &str, f: impl FnOnce() -> std::io::Result<String>) -> Option<String> {
    RAN.with(|r| *r.borrow_mut() = None);
    let result = f().ok()?;
    let ran = RAN.with(|r| r.borrow_mut().take());
    let what = if ran.as_deref() == Some(result.as_str()) {
        "committed"
    } else {
        "resumed"
    };
    h.record(what, step, &result);
    Some(result)
}

fn open(dir: &Path, objects: Arc<dyn ObjectStore>, prefix: &str) -> Run {
    Run::builder(dir)
        .object_store(objects, prefix)
        .lease_ttl(TTL)
        .open()
        .unwrap()
}

/// The token of each step's standing marker, read on a new machine with a
/// calm store: the marker must verify (its outputs fetched and hashed),
/// and its outputs must carry its own token.
fn standing(
    objects: Arc<dyn ObjectStore>,
    prefix: &str,
    items: &[u32],
) -> BTreeMap<String, Option<String>> {
    let tmp = tempfile::tempdir().unwrap();
    let run = open(tmp.path(), objects, prefix);
    let mut out = BTreeMap::new();
    let token_of = |state: MarkerState, files: &[String]| match state {
        MarkerState::Valid(m) => {
            let token = m.value.as_str().unwrap().to_owned();
            for f in files {
                let text = std::fs::read_to_string(run.dir().join(f)).unwrap();
                assert!(text.contains(&token), "{f} does not carry {token}: {text}");
            }
            Some(token)
        }
        MarkerState::Missing => None,
        MarkerState::Invalid(reason) => panic!("a marker that does not hold: {reason}"),
    };
    let work_files = ["work/a.txt", "work/d/x", "work/d/y"].map(String::from);
    out.insert(
        "work".into(),
        token_of(run.step("work").unwrap().marker().unwrap(), &work_files),
    );
    for n in items {
        let state = run.step_item("item", n).unwrap().marker().unwrap();
        out.insert(
            format!("item/{n}"),
            token_of(state, &[format!("items/{n}.txt")]),
        );
    }
    out
}

fn check(
    h: &History,
    objects: &Arc<dyn ObjectStore>,
    prefix: &str,
    items: &[u32],
) -> history::Verdict {
    let markers = standing(objects.clone(), prefix, items);
    history::check(&h.lines(), &markers)
        .unwrap_or_else(|e| panic!("{prefix}: {e}\n{:#?}", h.lines()))
}

/// What a case of the sweep does, given the machine it runs on.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Commits the plain step, from nothing.
    Commit,
    /// Commits one item of the family.
    CommitItem,
    /// Commits the plain step over a marker of another version (If-Match).
    Replace,
    /// Resumes the committed step on a machine without its outputs.
    ColdResume,
}

#[derive(Default)]
struct Tally {
    cases: u64,
    injected: Injected,
}

/// Every request of `phase`, failed in every way in turn.
fn sweep(inner: &Arc<dyn ObjectStore>, label: &str, phase: Phase, tally: &mut Tally) {
    let tmp = tempfile::tempdir().unwrap();
    // A case's history starts with the attempts made to set it up (what
    // they committed may be replaced by the case: not checked).
    let prepare = |case: &str, objects: Arc<dyn ObjectStore>| {
        let prefix = S3Server::prefix(&format!("{label}-{phase:?}-{case}"));
        let a = open(
            &tmp.path().join(format!("{case}-a")),
            objects.clone(),
            &prefix,
        );
        let setup = History::default();
        if let Phase::Replace | Phase::ColdResume = phase {
            call(&setup, "work", || work(&a, 1, &setup)).unwrap();
        }
        let h = History::default();
        for line in setup.lines() {
            if let Some(rest) = line.strip_prefix("attempt ") {
                let (step, token) = rest.split_once(' ').unwrap();
                h.record("attempt", step, token);
            }
        }
        (prefix, a, h)
    };
    let act = |run: &Run, h: &History| match phase {
        Phase::Commit | Phase::ColdResume => call(h, "work", || work(run, 1, h)),
        Phase::Replace => call(h, "work", || work(run, 2, h)),
        Phase::CommitItem => call(h, "item/7", || item(run, 7, h)),
    };
    let machine = |case: &str, objects: Arc<dyn ObjectStore>, prefix: &str, a: Run| match phase {
        Phase::ColdResume => open(&tmp.path().join(format!("{case}-b")), objects, prefix),
        _ => a,
    };

    // How many requests the phase makes when nothing fails.
    let counting = Instrumented::new(inner.clone());
    let (prefix, a, _) = prepare("count", counting.clone());
    let run = machine("count", counting.clone(), &prefix, a);
    counting.take();
    act(&run, &History::default()).unwrap();
    let requests = total(&counting.take());
    drop(run);

    for n in 1..=requests {
        for fault in Fault::ALL {
            let case = format!("{n}-{fault:?}");
            let objects = Instrumented::new(inner.clone());
            let (prefix, a, h) = prepare(&case, objects.clone());
            let run = machine(&case, objects.clone(), &prefix, a);
            let set_up = h.lines().len();
            objects.fail_nth(n, fault);
            let first = act(&run, &h);
            objects.calm();
            let injected = objects.injected();
            assert_eq!(injected.faults, 1, "{case}: the fault was not injected");
            // A calm rerun finishes, and returns what the first call
            // returned if it returned.
            let again = act(&run, &h)
                .unwrap_or_else(|| panic!("{label} {phase:?} {case}: the rerun failed"));
            if let Some(first) = first {
                assert_eq!(first, again, "{label} {phase:?} {case}");
            }
            if let Phase::ColdResume = phase {
                assert!(
                    !h.lines()[set_up..].iter().any(|l| l.starts_with("attempt")),
                    "{case}: a resume ran the body: {:#?}",
                    h.lines()
                );
            }
            drop(run);
            let calm: Arc<dyn ObjectStore> = inner.clone();
            let items: &[u32] = if let Phase::CommitItem = phase {
                &[7]
            } else {
                &[]
            };
            check(&h, &calm, &prefix, items);
            tally.cases += 1;
            tally.injected.faults += injected.faults;
            tally.injected.ambiguous += injected.ambiguous;
        }
    }
}

/// Workers on two machines run a family while requests fail at random;
/// then a calm machine finishes it.
fn random_faults(inner: &Arc<dyn ObjectStore>, label: &str, seed: u64, tally: &mut Tally) {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = S3Server::prefix(&format!("{label}-random-{seed}"));
    let objects = Instrumented::new(inner.clone());
    let items: Vec<u32> = (0..16).collect();
    let h = History::default();
    let machines: Vec<Run> = (0..2)
        .map(|m| open(&tmp.path().join(format!("m{m}")), objects.clone(), &prefix))
        .collect();
    objects.fail_randomly(seed, 120);
    objects.hide_fresh(4);
    std::thread::scope(|scope| {
        for (m, run) in machines.iter().enumerate() {
            for t in 0..2 {
                let (h, items) = (&h, &items);
                scope.spawn(move || {
                    let start = (m * 2 + t) * 4;
                    for i in 0..items.len() {
                        let n = items[(start + i) % items.len()];
                        call(h, &format!("item/{n}"), || item(run, n, h));
                    }
                });
            }
        }
    });
    objects.calm();
    let injected = objects.injected();
    drop(machines);
    let finisher = open(&tmp.path().join("calm"), objects.clone(), &prefix);
    for &n in &items {
        call(&h, &format!("item/{n}"), || item(&finisher, n, &h)).expect("a calm run finishes");
    }
    drop(finisher);
    let calm: Arc<dyn ObjectStore> = inner.clone();
    let markers = standing(calm, &prefix, &items);
    assert!(
        markers
            .iter()
            .filter(|(k, _)| k.starts_with("item"))
            .all(|(_, v)| v.is_some())
    );
    history::check(&h.lines(), &markers).unwrap_or_else(|e| panic!("{label} seed {seed}: {e}"));
    tally.cases += 1;
    tally.injected.faults += injected.faults;
    tally.injected.ambiguous += injected.ambiguous;
}

fn scale() -> u64 {
    if std::env::var_os("RECOVERY_TORTURE").is_some() {
        10
    } else {
        1
    }
}

fn torture(inner: Arc<dyn ObjectStore>, label: &str, random_target: u64) {
    let mut tally = Tally::default();
    for phase in [
        Phase::Commit,
        Phase::CommitItem,
        Phase::Replace,
        Phase::ColdResume,
    ] {
        sweep(&inner, label, phase, &mut tally);
    }
    let swept = tally.injected;
    let mut seed = 1;
    while tally.injected.faults - swept.faults < random_target * scale() {
        random_faults(&inner, label, seed, &mut tally);
        seed += 1;
    }
    println!(
        "TORTURE store={label} cases={} faults={} ambiguous={} swept={} random={}",
        tally.cases,
        tally.injected.faults,
        tally.injected.ambiguous,
        swept.faults,
        tally.injected.faults - swept.faults
    );
}

#[test]
fn request_faults_on_in_memory_storage() {
    torture(
        Arc::new(object_store::memory::InMemory::new()),
        "in-memory",
        400,
    );
}

#[test]
fn request_faults_on_moto() {
    let server = S3Server::shared(Server::Moto);
    torture(s3_client(&server.bucket, &server.options()), "moto", 100);
}

#[test]
fn request_faults_on_seaweedfs() {
    let server = S3Server::shared(Server::Seaweed);
    torture(
        s3_client(&server.bucket, &server.options()),
        "seaweedfs",
        100,
    );
}
