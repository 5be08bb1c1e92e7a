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
//! Also: worker processes SIGKILLed and SIGSTOPped past their leases' TTL
//! at seeded moments, and workers reaching SeaweedFS through a flaky TCP
//! proxy (`tests/support/tcp_proxy.rs`).
//!
//! Prints `RELIABILITY name+=value` lines for scripts/reliability-report.
//! `RECOVERY_TORTURE=1` runs ten times more random faults, kills, pauses
//! and proxy drops.

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
    let result = match f() {
        Ok(result) => result,
        Err(e) => {
            h.record("failed", step, &e.to_string().replace('\n', " "));
            return None;
        }
    };
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
    if seed.is_multiple_of(2) {
        // Slow requests: leases renew and steps overlap more.
        objects.delay(Duration::from_millis(2));
    }
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
    // Only reached when every case held: a violation panics.
    println!("RELIABILITY store_fault_cases+={}", tally.cases);
    println!(
        "RELIABILITY store_request_faults+={}",
        tally.injected.faults
    );
    println!(
        "RELIABILITY store_ambiguous_replies+={}",
        tally.injected.ambiguous
    );
    println!("RELIABILITY store_history_violations+=0");
    eprintln!(
        "{label}: {} cases, {} faults ({} ambiguous), {} swept, {} at random",
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
        500,
    );
}

#[test]
fn request_faults_on_moto() {
    let server = S3Server::shared(Server::Moto);
    torture(s3_client(&server.bucket, &server.options()), "moto", 150);
}

#[test]
fn request_faults_on_seaweedfs() {
    let server = S3Server::shared(Server::Seaweed);
    torture(
        s3_client(&server.bucket, &server.options()),
        "seaweedfs",
        150,
    );
}

/// A small seeded generator for the controller's choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

const PROCESSES: usize = 8;
const ITEMS: u32 = 60;
const CHILD_TTL_MS: u64 = 400;

/// One round: eight processes, a machine each, run one family of items on
/// one bucket while the controller SIGKILLs some (and starts them again)
/// and SIGSTOPs others past their leases' TTL (and lets them go on).
/// Returns the kills and pauses made.
fn kill_and_pause_round(server: &S3Server, rng: &mut Rng, wanted: (u64, u64)) -> (u64, u64) {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let prefix = S3Server::prefix("kills");
    let url = server.url(&prefix);
    let tmp = tempfile::tempdir().unwrap();
    let histories = tmp.path().join("histories");
    std::fs::create_dir_all(&histories).unwrap();
    let mut generation = 0;
    let mut spawn = |slot: usize| {
        generation += 1;
        Command::new(env!("CARGO_BIN_EXE_step-child"))
            .arg("torture")
            .arg(tmp.path().join(format!("m{slot}")))
            .arg(histories.join(format!("m{slot}-{generation}.txt")))
            .env("RECOVERY_CHILD_STORE", &url)
            .env("RECOVERY_CHILD_TTL_MS", CHILD_TTL_MS.to_string())
            .env("RECOVERY_CHILD_ITEMS", ITEMS.to_string())
            .env("RECOVERY_CHILD_THREADS", "2")
            .env("RECOVERY_CHILD_BODY_MS", "40")
            .envs(server.env())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut slots: Vec<Option<std::process::Child>> =
        (0..PROCESSES).map(|s| Some(spawn(s))).collect();
    let mut paused: Vec<Option<Instant>> = vec![None; PROCESSES];
    let (mut kills, mut pauses) = (0, 0);
    while kills < wanted.0 || pauses < wanted.1 {
        std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
        for (slot, until) in paused.iter_mut().enumerate() {
            if until.is_some_and(|t| Instant::now() >= t) {
                signal(slots[slot].as_ref().unwrap(), "-CONT");
                *until = None;
            }
        }
        for slot in slots.iter_mut() {
            if let Some(child) = slot
                && let Some(status) = child.try_wait().unwrap()
            {
                if !status.success() {
                    let mut said = String::new();
                    if let Some(mut err) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut err, &mut said);
                    }
                    panic!("a worker failed: {status}\n{said}");
                }
                *slot = None;
            }
        }
        let live: Vec<usize> = (0..PROCESSES)
            .filter(|&s| slots[s].is_some() && paused[s].is_none())
            .collect();
        if live.is_empty() {
            if slots.iter().all(Option::is_none) {
                break; // the family is done
            }
            continue;
        }
        let slot = live[rng.below(live.len() as u64) as usize];
        if rng.below(4) < 3 {
            let mut child = slots[slot].take().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            slots[slot] = Some(spawn(slot));
        } else {
            signal(slots[slot].as_ref().unwrap(), "-STOP");
            let ttl = Duration::from_millis(CHILD_TTL_MS);
            paused[slot] = Some(Instant::now() + ttl * 3 / 2 + ttl * rng.below(3) as u32 / 2);
            pauses += 1;
        }
    }
    for (slot, until) in paused.iter().enumerate() {
        if until.is_some() {
            signal(slots[slot].as_ref().unwrap(), "-CONT");
        }
    }
    for child in slots.into_iter().flatten() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let items: Vec<u32> = (0..ITEMS).collect();
    let markers = standing(
        s3_client(&server.bucket, &server.options()),
        &prefix,
        &items,
    );
    let missing: Vec<_> = markers
        .iter()
        .filter(|(k, v)| k.starts_with("item") && v.is_none())
        .collect();
    assert!(missing.is_empty(), "items left undone: {missing:?}");
    let lines = history::read_dir(&histories);
    history::check(&lines, &markers).unwrap_or_else(|e| panic!("{prefix}: {e}"));
    (kills, pauses)
}

/// Holders killed and paused at seeded moments, rounds until the wanted
/// numbers are reached.
#[test]
fn killed_and_paused_holders_on_seaweedfs() {
    let server = S3Server::shared(Server::Seaweed);
    let wanted = (200 * scale(), 50 * scale());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut kills, mut pauses, mut rounds) = (0, 0, 0);
    while kills < wanted.0 || pauses < wanted.1 {
        let per_round = (
            25.min(wanted.0.saturating_sub(kills)),
            7.min(wanted.1.saturating_sub(pauses)),
        );
        let (k, p) = kill_and_pause_round(server, &mut rng, per_round);
        kills += k;
        pauses += p;
        rounds += 1;
    }
    println!("RELIABILITY store_holder_kills+={kills}");
    println!("RELIABILITY store_paused_holders+={pauses}");
    println!("RELIABILITY store_kill_rounds+={rounds}");
    println!("RELIABILITY store_history_violations+=0");
}

/// Workers reach SeaweedFS through a flaky proxy that drops connections
/// mid-request and mid-reply and stalls others past the client's time-out;
/// then a calm machine finishes the family. Rounds until enough drops.
#[test]
fn dropped_and_stalled_connections_to_seaweedfs() {
    use object_store::{BackoffConfig, ClientOptions, RetryConfig};
    use recovery_suite::tcp_proxy::{Flakiness, FlakyProxy};
    let server = S3Server::shared(Server::Seaweed);
    let target = server
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let flakiness = Flakiness {
        request_drop: 250,
        reply_drop: 250,
        stall: 100,
        stall_for: Duration::from_millis(1500),
    };
    let wanted = 50 * scale();
    let (mut seed, mut drops, mut rounds) = (1u64, 0u64, 0u64);
    let mut kinds = [0u64; 3];
    while drops < wanted {
        let proxy = FlakyProxy::start(target, seed, flakiness);
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&server.bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(Duration::from_millis(800))
                    .with_connect_timeout(Duration::from_millis(500)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(100),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
            });
        for (k, v) in server.options() {
            let v = if k == "aws_endpoint" {
                format!("http://{}", proxy.addr)
            } else {
                v
            };
            builder = builder.with_config(k.parse().unwrap(), v);
        }
        let flaky: Arc<dyn ObjectStore> = Arc::new(builder.build().unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let prefix = S3Server::prefix(&format!("proxy-{seed}"));
        let items: Vec<u32> = (0..24).collect();
        let h = History::default();
        std::thread::scope(|scope| {
            for m in 0..3usize {
                let (h, items, flaky, prefix, dir) =
                    (&h, &items, flaky.clone(), &prefix, tmp.path());
                scope.spawn(move || {
                    let Ok(run) = Run::builder(dir.join(format!("m{m}")))
                        .object_store(flaky, prefix.as_str())
                        .lease_ttl(TTL)
                        .open()
                    else {
                        return; // the store could not be reached through the proxy
                    };
                    for i in 0..items.len() {
                        let n = items[(m * 8 + i) % items.len()];
                        call(h, &format!("item/{n}"), || item(&run, n, h));
                    }
                });
            }
        });
        proxy.calm();
        let direct = s3_client(&server.bucket, &server.options());
        let finisher = open(&tmp.path().join("calm"), direct.clone(), &prefix);
        for &n in &items {
            call(&h, &format!("item/{n}"), || item(&finisher, n, &h)).expect("a calm run finishes");
        }
        drop(finisher);
        let markers = standing(direct, &prefix, &items);
        history::check(&h.lines(), &markers).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        let s = &proxy.stats;
        kinds[0] += s.request_drops.load(Ordering::Relaxed);
        kinds[1] += s.reply_drops.load(Ordering::Relaxed);
        kinds[2] += s.stalls.load(Ordering::Relaxed);
        drops += s.drops();
        seed += 1;
        rounds += 1;
    }
    println!("RELIABILITY store_proxy_drops+={drops}");
    println!("RELIABILITY store_proxy_request_drops+={}", kinds[0]);
    println!("RELIABILITY store_proxy_reply_drops+={}", kinds[1]);
    println!("RELIABILITY store_proxy_stalls+={}", kinds[2]);
    println!("RELIABILITY store_proxy_rounds+={rounds}");
    println!("RELIABILITY store_history_violations+=0");
}
