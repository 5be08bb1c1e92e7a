//! Step state on object storage (`S3Store`): the store contract on
//! `InMemory` and on two real S3 servers on loopback (moto and SeaweedFS),
//! two machines sharing one run, many processes on one family, a paused
//! lease holder, and the CLI reading a run from the store.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recovery::{Event, Run, resumable_step};
use recovery_suite::s3_servers::{S3Server, Server};
use recovery_suite::store_contract::check_run_store;

fn open(dir: &Path, server: &S3Server, prefix: &str, ttl: Duration) -> Run {
    let mut builder = Run::builder(dir).store(server.url(prefix)).lease_ttl(ttl);
    for (k, v) in server.options() {
        builder = builder.store_option(k, v);
    }
    builder.open().unwrap()
}

#[test]
fn in_memory_object_storage_keeps_the_store_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = Arc::new(object_store::memory::InMemory::new());
    let run = Run::builder(tmp.path().join("run"))
        .object_store(objects, "runs/contract")
        .open()
        .unwrap();
    check_run_store(&run);
}

fn contract_on(kind: Server) {
    let server = S3Server::shared(kind);
    let tmp = tempfile::tempdir().unwrap();
    let prefix = S3Server::prefix("contract");
    check_run_store(&open(tmp.path(), server, &prefix, Duration::from_secs(30)));
}

#[test]
fn moto_keeps_the_store_contract() {
    contract_on(Server::Moto);
}

#[test]
fn seaweedfs_keeps_the_store_contract() {
    contract_on(Server::Seaweed);
}

#[test]
fn a_store_url_that_cannot_be_used_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for (url, says) in [
        ("gs://bucket/p", "only s3:// URLs"),
        ("s3:///p", "names no bucket"),
    ] {
        let err = Run::builder(tmp.path()).store(url).open().unwrap_err();
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
    let err = Run::builder(tmp.path())
        .store("s3://b/p")
        .store_option("no_such_option", "1")
        .open()
        .unwrap_err();
    assert!(err.to_string().contains("unknown store option"), "{err}");
}

/// What a step of the two-machine pipeline writes: a directory and a file.
#[resumable_step("fetch-sources")]
fn fetch_sources(run: &Run) -> std::io::Result<u64> {
    let dir = run.output_dir("src")?;
    std::fs::create_dir_all(dir.path().join("deep"))?;
    std::fs::write(dir.path().join("deep/a.txt"), b"alpha".repeat(1000))?;
    std::fs::write(
        dir.path().join("b.bin"),
        (0..=255u8).cycle().take(300_000).collect::<Vec<_>>(),
    )?;
    std::os::unix::fs::symlink("deep/a.txt", dir.path().join("link"))?;
    Ok(5000)
}

#[resumable_step("count")]
fn count(run: &Run, sources: u64) -> std::io::Result<u64> {
    let text = std::fs::read(run.dir().join("src/deep/a.txt"))?;
    run.write_output(
        "count.txt",
        format!("{} {}", text.len(), sources).as_bytes(),
    )?;
    Ok(text.len() as u64 + sources)
}

fn pipeline(run: &Run) -> u64 {
    let sources = fetch_sources(run).unwrap();
    count(run, sources).unwrap()
}

fn resumed(run: &Run, step: &str) -> Option<u64> {
    run.events().unwrap().records.iter().find_map(|e| match e {
        Event::StepResumed {
            step: s, fetched, ..
        } if s == step => Some(*fetched),
        _ => None,
    })
}

/// Every file under `dir`: relative path → BLAKE3 of its bytes (of its
/// target, for a symlink).
fn tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, hash(target.as_os_str().as_encoded_bytes()));
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                out.insert(rel, hash(&std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn two_machines(server: &S3Server) {
    let ttl = Duration::from_secs(30);
    let prefix = S3Server::prefix("machines");
    let (a, b, alone) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );

    // Machine A finishes the first step, then is gone: only the store
    // knows.
    {
        let run = open(a.path(), server, &prefix, ttl);
        assert_eq!(fetch_sources(&run).unwrap(), 5000);
    }
    drop(a);

    // Machine B resumes the first step from the store (fetching its
    // outputs) and runs the second.
    let run_b = open(b.path(), server, &prefix, ttl);
    let value = pipeline(&run_b);
    let fetched = resumed(&run_b, "fetch-sources").expect("B resumed the first step");
    assert_eq!(fetched, 5000 + 300_000 + "deep/a.txt".len() as u64);

    // The same pipeline on one machine gives the same outputs.
    let run_alone = open(alone.path(), server, &S3Server::prefix("alone"), ttl);
    assert_eq!(pipeline(&run_alone), value);
    let outputs = |run: &Run| {
        let mut t = tree(run.dir());
        t.retain(|k, _| k.starts_with("src") || k == "count.txt");
        t
    };
    assert_eq!(outputs(&run_b), outputs(&run_alone));
    assert_eq!(outputs(&run_b).len(), 4);

    // A warm local copy moves no bytes; a damaged one is fetched again.
    drop(run_b);
    let run_b = open(b.path(), server, &prefix, ttl);
    assert_eq!(pipeline(&run_b), value);
    let again: Vec<u64> = run_b
        .events()
        .unwrap()
        .records
        .iter()
        .filter_map(|e| match e {
            Event::StepResumed { step, fetched, .. } if step == "fetch-sources" => Some(*fetched),
            _ => None,
        })
        .collect();
    assert_eq!(again, [fetched, 0], "{again:?}");
    std::fs::write(b.path().join("src/b.bin"), b"damaged").unwrap();
    drop(run_b);
    let run_b = open(b.path(), server, &prefix, ttl);
    assert_eq!(pipeline(&run_b), value);
    assert_eq!(outputs(&run_b), outputs(&run_alone));
}

#[test]
fn a_step_done_on_one_machine_resumes_on_another_with_moto() {
    two_machines(S3Server::shared(Server::Moto));
}

#[test]
fn a_step_done_on_one_machine_resumes_on_another_with_seaweedfs() {
    two_machines(S3Server::shared(Server::Seaweed));
}

fn child(
    mode: &str,
    dir: &Path,
    extra: &Path,
    server: &S3Server,
    url: &str,
    ttl_ms: u64,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_step-child"));
    cmd.args([mode, dir.to_str().unwrap(), extra.to_str().unwrap()])
        .env("RECOVERY_CHILD_STORE", url)
        .env("RECOVERY_CHILD_TTL_MS", ttl_ms.to_string())
        .envs(server.env());
    cmd
}

/// Eight processes, each with its own run directory (its own "machine"),
/// run one family of 200 items on one bucket.
#[test]
fn eight_processes_on_one_family_commit_each_item_once() {
    let server = S3Server::shared(Server::Seaweed);
    let url = server.url(&S3Server::prefix("eight"));
    let tmp = tempfile::tempdir().unwrap();
    let effects = tmp.path().join("bodies.txt");
    let children: Vec<_> = (0..8)
        .map(|i| {
            child(
                "family",
                &tmp.path().join(format!("m{i}")),
                &effects,
                server,
                &url,
                10_000,
            )
            .env("RECOVERY_CHILD_ITEMS", "200")
            .env("RECOVERY_CHILD_THREADS", "2")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let expected: u64 = (0..200u64).map(|n| n * 3).sum();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expected.to_string()
        );
    }
    // Each body ran once (nobody was killed), and each item has one marker.
    let bodies = std::fs::read_to_string(&effects).unwrap();
    let mut runs: HashMap<&str, u32> = HashMap::new();
    for line in bodies.lines() {
        *runs.entry(line.split(' ').next().unwrap()).or_default() += 1;
    }
    assert_eq!(runs.len(), 200);
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    let reader = {
        let mut b = Run::builder(tmp.path().join("reader")).store(&url);
        for (k, v) in server.options() {
            b = b.store_option(k, v);
        }
        b.open().unwrap()
    };
    assert_eq!(reader.items("page").unwrap().count(), 200);
    let completed = reader
        .events()
        .unwrap()
        .records
        .iter()
        .filter(|e| matches!(e, Event::StepCompleted { .. }))
        .count();
    assert_eq!(completed, 200);
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A holder stopped (SIGSTOP) past its lease's TTL loses the step to
/// another worker; woken, it commits nothing and takes the winner's result.
#[test]
fn a_holder_paused_past_its_ttl_cannot_commit_over_the_new_holder() {
    let server = S3Server::shared(Server::Moto);
    let prefix = S3Server::prefix("paused");
    let url = server.url(&prefix);
    let tmp = tempfile::tempdir().unwrap();
    let signal_path = tmp.path().join("held");
    let paused = child(
        "held",
        &tmp.path().join("a"),
        &signal_path,
        server,
        &url,
        1000,
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(&signal_path.with_extension("started"));
    signal(paused.id(), "-STOP");

    // Another machine takes the step over once the lease has been still for
    // its TTL, and commits.
    let b = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let winner = {
        let mut cmd = child(
            "held",
            b.path(),
            &tmp.path().join("winner"),
            server,
            &url,
            1000,
        );
        std::fs::write(tmp.path().join("winner.go"), b"").unwrap();
        cmd.output().unwrap()
    };
    assert!(winner.status.success(), "{winner:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "taken over before the TTL ran out"
    );
    let winner_value = String::from_utf8(winner.stdout).unwrap();
    let winner_output = std::fs::read(b.path().join("held.txt")).unwrap();

    // The paused holder wakes and finishes its body: its commit is refused
    // and it returns the winner's value, with the winner's output.
    std::fs::write(signal_path.with_extension("go"), b"").unwrap();
    signal(paused.id(), "-CONT");
    let out = paused.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), winner_value);
    assert_eq!(
        std::fs::read(tmp.path().join("a/held.txt")).unwrap(),
        winner_output
    );

    // The store holds the winner's marker and outputs only.
    let c = tempfile::tempdir().unwrap();
    let reader = open(c.path(), server, &prefix, Duration::from_secs(30));
    let step = reader.step("held").unwrap();
    let recovery::marker::MarkerState::Valid(marker) = step.marker().unwrap() else {
        panic!("no valid marker");
    };
    assert_eq!(
        serde_json::to_string(&marker.value)
            .unwrap()
            .trim_matches('"'),
        winner_value.trim()
    );
    assert_eq!(
        std::fs::read(c.path().join("held.txt")).unwrap(),
        winner_output
    );
    let completed: Vec<_> = reader
        .events()
        .unwrap()
        .records
        .into_iter()
        .filter(|e| matches!(e, Event::StepCompleted { .. }))
        .collect();
    assert_eq!(completed.len(), 1, "{completed:?}");
}

#[resumable_step("two-files", key = k)]
fn two_files(run: &Run, k: u32) -> std::io::Result<u32> {
    run.write_output("one.txt", b"one")?;
    run.write_output("two.txt", format!("two {k}").as_bytes())?;
    Ok(2)
}

/// The requests a step costs, counted at the store: committing a step
/// with two file outputs, resuming it with the outputs here (warm) and on
/// a machine without them (cold).
#[test]
fn requests_per_committed_step() {
    use recovery_suite::objects::{Instrumented, Request::*};
    use std::collections::BTreeMap;
    let objects = Instrumented::new(Arc::new(object_store::memory::InMemory::new()));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: &Path| {
        let run = Run::builder(dir)
            .object_store(objects.clone(), "p")
            .open()
            .unwrap();
        objects.take();
        run
    };
    let run = open(a.path());
    assert_eq!(two_files(&run, 1).unwrap(), 2);
    // One PUT per output, the marker's create, the lease's create and its
    // release: the minimum. Then the log piece of the step's end, and one
    // read of the marker, before the lease (a done step resumes on that one
    // read; under the step's first lease it need not be read again).
    assert_eq!(
        objects.take(),
        BTreeMap::from([(Put, 2 + 1), (PutCreate, 2), (PutUpdate, 1), (Get, 1)])
    );
    // Run again under a new key (the marker no longer holds): the lease's
    // create is refused, its released record read and taken over, the
    // marker read again under it and replaced.
    assert_eq!(two_files(&run, 2).unwrap(), 2);
    assert_eq!(
        objects.take(),
        BTreeMap::from([(Put, 2 + 1), (PutCreate, 1), (PutUpdate, 3), (Get, 3)])
    );
    // Warm: one read of the marker; the outputs here hash as it says.
    assert_eq!(two_files(&run, 2).unwrap(), 2);
    assert_eq!(objects.take(), BTreeMap::from([(Get, 1)]));
    drop(run);
    objects.take();
    // Cold: the marker, then each output once.
    let run = open(b.path());
    assert_eq!(two_files(&run, 2).unwrap(), 2);
    assert_eq!(objects.take(), BTreeMap::from([(Get, 1 + 2)]));
}

/// The `recovery` CLI, with every feature (`cli` and `s3` among them): as
/// the README's test command builds it, so nothing is built again.
fn recovery_cli() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("recovery");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "recovery",
            "--all-features",
            "--bin",
            "recovery",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    bin
}

#[test]
fn the_cli_reads_a_run_from_the_store() {
    let server = S3Server::shared(Server::Moto);
    let prefix = S3Server::prefix("cli");
    let tmp = tempfile::tempdir().unwrap();
    let run = open(tmp.path(), server, &prefix, Duration::from_secs(30));
    pipeline(&run);
    drop(run);
    let url = server.url(&prefix);
    let cli = |args: &[&str], url: &str| {
        let out = Command::new(recovery_cli())
            .args(args)
            .args(["--store", url])
            .envs(server.env())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No run directory here: a scratch one, where the outputs are fetched
    // to be verified.
    let (code, out, err) = cli(&["status"], &url);
    assert_eq!(code, Some(0), "{out}{err}");
    for step in ["fetch-sources", "count"] {
        assert!(
            out.lines().any(|l| l.contains(step) && l.contains("done")),
            "{out}"
        );
    }
    let (code, out, err) = cli(&["verify", "--json"], &url);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = cli(&["events", "--type", "STEP_COMPLETED"], &url);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 2, "{out}");
    // A URL it cannot use, or one where no run is kept, is refused with
    // the reason; nothing is made there.
    let (code, _, err) = cli(&["status"], "gs://elsewhere");
    assert_eq!(code, Some(2));
    assert!(err.contains("only s3:// URLs"), "{err}");
    let typo = server.url(&format!("{prefix}-typo"));
    let (code, _, err) = cli(&["status"], &typo);
    assert_eq!(code, Some(2));
    assert!(err.contains("no run is kept there"), "{err}");
    let (code, _, _) = cli(&["status"], &typo);
    assert_eq!(code, Some(2), "the first look made a run at the typo");
}

/// The example pipeline, with every feature (`s3` among them): as the
/// README's test command builds it, so nothing is built again.
fn pipeline_example() -> Command {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--example",
            "pipeline",
            "--all-features",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building the pipeline example failed");
    let exe = std::env::current_exe().unwrap();
    Command::new(
        exe.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples/pipeline"),
    )
}

/// The example pipeline, real git and all: machine A is killed (SIGKILL)
/// right after its clone; machine B, with a directory of its own, resumes
/// the clone from the store (fetching it) and finishes; its artifacts are
/// byte-identical to a run on one machine with no store.
#[test]
fn the_pipeline_killed_on_one_machine_finishes_on_another() {
    let server = S3Server::shared(Server::Seaweed);
    let url = server.url(&S3Server::prefix("pipeline"));
    let tmp = tempfile::tempdir().unwrap();
    let run = |dir: &str, extra: &[&str]| {
        pipeline_example()
            .arg("--run-dir")
            .arg(tmp.path().join(dir))
            .args(extra)
            .envs(server.env())
            .output()
            .unwrap()
    };
    let a = run("a", &["--store", &url, "--crash-after", "clone"]);
    assert!(!a.status.success(), "A was to be killed: {a:?}");
    let b = run("b", &["--store", &url]);
    let b_out = String::from_utf8_lossy(&b.stdout);
    assert!(
        b.status.success(),
        "{b_out}{}",
        String::from_utf8_lossy(&b.stderr)
    );
    assert!(
        b_out.contains("[clone] already done: resumed (")
            && b_out.contains("bytes of outputs fetched"),
        "{b_out}"
    );
    let alone = run("alone", &[]);
    assert!(alone.status.success(), "{alone:?}");
    for artifact in ["artifacts/manifest.json", "artifacts/summary.json"] {
        assert_eq!(
            std::fs::read(tmp.path().join("b").join(artifact)).unwrap(),
            std::fs::read(tmp.path().join("alone").join(artifact)).unwrap(),
            "{artifact}"
        );
    }
    // The checkout, .git aside (its config names each run's server port).
    let checkout = |run: &str| {
        let mut t = tree(&tmp.path().join(run).join("repo"));
        t.retain(|k, _| !k.starts_with(".git"));
        t
    };
    assert!(!checkout("b").is_empty());
    assert_eq!(checkout("b"), checkout("alone"));
}

#[resumable_step("stamped", verify = "size_mtime")]
fn stamped(run: &Run) -> std::io::Result<u32> {
    run.write_output("stamped.txt", b"stamped")?;
    Ok(1)
}

/// A fetched copy takes the modification time the committing machine
/// recorded, so a `size_mtime` check on this machine trusts it unread.
#[test]
fn a_fetched_output_keeps_its_recorded_modification_time() {
    let objects: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let on = |dir: &Path| {
        Run::builder(dir)
            .object_store(objects.clone(), "p")
            .open()
            .unwrap()
    };
    // The clock moves on between the commit and the fetch.
    assert_eq!(stamped(&on(a.path())).unwrap(), 1);
    std::thread::sleep(Duration::from_millis(20));
    let run = on(b.path());
    assert_eq!(stamped(&run).unwrap(), 1);
    assert!(resumed(&run, "stamped").is_some_and(|n| n == 7));
    let recovery::marker::MarkerState::Valid(marker) =
        run.step("stamped").unwrap().read_marker().unwrap()
    else {
        panic!("no valid marker");
    };
    let recorded = marker.outputs[0]
        .mtime_ns
        .expect("size_mtime records the mtime");
    let fetched = std::fs::metadata(b.path().join("stamped.txt"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert_eq!(fetched, recorded);
}
