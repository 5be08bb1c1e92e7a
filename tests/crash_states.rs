//! The reliability suite, part 1: a simulated file system behind the
//! durable-I/O seam. A step's commit is crashed after every operation and
//! every possible disk state is derived (unsynced data lost, kept, or torn
//! at 4 KiB; renames not yet durable) and checked; then I/O errors (ENOSPC,
//! EIO, EACCES) are injected at every operation, once and from then on.
//! Each test prints `RELIABILITY name=value` lines; `scripts/reliability-report`
//! turns them into RELIABILITY.md. `RECOVERY_TORTURE=1` explores ten times
//! more random crash states.
//!
//! This file spawns no process: a child forked by another test while a step
//! lock is open would hold that lock until it execs, and make the sweep
//! (rightly) leave that step's staging alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use recovery::fs::FileSystem;
use recovery::marker::{self, MarkerState};
use recovery::{Fingerprint, Run, StepId, resumable_step};
use recovery_suite::simfs::{Fault, FaultMode, Node, SimFs, Survival, Tree};

fn torture() -> bool {
    std::env::var_os("RECOVERY_TORTURE").is_some_and(|v| v != "0")
}

fn report(name: &str, value: impl std::fmt::Display) {
    println!("RELIABILITY {name}={value}");
}

/// Content that differs per tag, long enough to span 4 KiB blocks.
fn block(len: usize, tag: &str) -> Vec<u8> {
    tag.bytes().cycle().take(len).collect()
}

/// The step under test: a directory output with two files (one over three
/// 4 KiB blocks), a file output, and a file output outside the run
/// directory, all written through the seam.
#[resumable_step("commit-me", key = (tag, outside))]
fn produce_plain(
    run: &Run,
    fs: &SimFs,
    tag: &str,
    outside: bool,
    body_runs: &mut u32,
) -> std::io::Result<u64> {
    body(run, fs, tag, outside, body_runs)
}

/// The same body as one item of a family: its marker sits in the family's
/// bucket directories, made on the first commit.
#[resumable_step("commit-item", item = item, key = (tag, outside))]
fn produce_item(
    run: &Run,
    fs: &SimFs,
    item: u32,
    tag: &str,
    outside: bool,
    body_runs: &mut u32,
) -> std::io::Result<u64> {
    body(run, fs, tag, outside, body_runs)
}

/// The item the family tests commit.
const ITEM: u32 = 7;

/// The plain step, or the family's item.
fn produce(
    run: &Run,
    fs: &SimFs,
    tag: &str,
    outside: bool,
    family: bool,
    body_runs: &mut u32,
) -> std::io::Result<u64> {
    if family {
        produce_item(run, fs, ITEM, tag, outside, body_runs)
    } else {
        produce_plain(run, fs, tag, outside, body_runs)
    }
}

thread_local! {
    /// The body writes no outputs: its commit replaces the marker alone.
    static BARE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn body(
    run: &Run,
    fs: &SimFs,
    tag: &str,
    outside: bool,
    body_runs: &mut u32,
) -> std::io::Result<u64> {
    *body_runs += 1;
    if BARE.get() {
        return Ok(10_000 + tag.len() as u64);
    }
    let dir = run.output_dir("data")?;
    // The body's own writes name their path in errors, as a user's should.
    let write = |path: PathBuf, data: &[u8]| {
        fs.write(&path, data)
            .map_err(|e| std::io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
    };
    write(dir.path().join("a.bin"), &block(10_000, tag))?;
    write(dir.path().join("b.txt"), format!("tag {tag}\n").as_bytes())?;
    run.write_output("report.txt", &block(5_000, &format!("{tag}!")))?;
    // Without it, nothing syncs the staging directories as a side effect
    // (the outside journal's write does): the commit must on its own.
    if outside {
        let export = run.output_file_outside(exports(run.dir()).join("export.bin"))?;
        write(export.path().to_owned(), &block(6_000, &format!("{tag}>")))?;
    }
    Ok(10_000 + tag.len() as u64)
}

/// The directory beside the run where the step places an output of its own.
fn exports(root: &Path) -> PathBuf {
    root.parent().unwrap().join("exports")
}

/// The outputs of a step, as they are in `tree`, by path in the run (the
/// one outside by its path from the run's parent).
fn outputs(tree: &Tree, root: &Path) -> BTreeMap<PathBuf, Node> {
    let export = exports(root).join("export.bin");
    let mut found: BTreeMap<PathBuf, Node> = tree
        .iter()
        .filter(|(k, _)| k.starts_with(root.join("data")) || *k == &root.join("report.txt"))
        .map(|(k, v)| (k.strip_prefix(root).unwrap().to_owned(), v.clone()))
        .collect();
    if let Some(node) = tree.get(&export) {
        found.insert(PathBuf::from("../exports/export.bin"), node.clone());
    }
    found
}

/// What a step left in staging, in the run or beside its outside output.
fn garbage(tree: &Tree, root: &Path) -> Vec<PathBuf> {
    let staging = root.join("staging");
    let exports = exports(root);
    tree.keys()
        .filter(|k| {
            (k.starts_with(&staging) && **k != staging)
                || (k.starts_with(&exports) && **k != exports && **k != exports.join("export.bin"))
        })
        .cloned()
        .collect()
}

/// A fresh run on a fresh simulated disk, at a real (empty) directory so
/// the kernel locks have somewhere to live.
struct Sim {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn sim_root() -> Sim {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("run");
    Sim { _tmp: tmp, root }
}

/// A simulated disk on which the directories above the run already exist
/// (durably), as the real temporary directory does.
fn disk(root: &Path) -> Arc<SimFs> {
    let tree: Tree = root
        .ancestors()
        .skip(1)
        .chain([exports(root).as_path()])
        .map(|a| (a.to_owned(), Node::Dir))
        .collect();
    Arc::new(SimFs::from_tree(tree))
}

fn open(root: &Path, fs: &Arc<SimFs>) -> Run {
    let run = Run::open_with(root, fs.clone() as Arc<dyn FileSystem>).unwrap();
    run.allow_outside(exports(root)).unwrap();
    run
}

/// What a complete, uninterrupted `produce(tag)` leaves on disk.
fn reference(tag: &str, outside: bool, family: bool) -> BTreeMap<PathBuf, Node> {
    let sim = sim_root();
    let fs = disk(&sim.root);
    let run = open(&sim.root, &fs);
    produce(&run, &fs, tag, outside, family, &mut 0).unwrap();
    outputs(&fs.view(), &sim.root)
}

/// Checks one crash state: a durable valid marker vouches only for intact
/// outputs; without one the step reruns to the reference; no staging
/// garbage survives. Returns the violations found.
fn check_crash_state(
    root: &Path,
    tree: Tree,
    tag: &str,
    outside: bool,
    family: bool,
    expected: &BTreeMap<PathBuf, Node>,
) -> Vec<String> {
    let mut violations = Vec::new();
    let fs = Arc::new(SimFs::from_tree(tree));
    let (name, marker_path) = if family {
        let id = StepId::item("commit-item", &ITEM).unwrap().0;
        let hex = id.item_id().unwrap().to_owned();
        let bucket = root.join("state/steps/commit-item").join(&hex[..2]);
        ("commit-item", bucket.join(format!("{hex}.json")))
    } else {
        ("commit-me", root.join("state/steps/commit-me.json"))
    };
    // The durable marker, if it holds, must vouch for intact outputs.
    if fs.stat(root).is_ok()
        && let Ok(MarkerState::Valid(m)) = marker::read(&*fs, &marker_path)
        && let Err(reason) =
            recovery::manifest::verify(&*fs, root, &[exports(root)], &m, marker::Verify::Hash)
    {
        violations.push(format!("a valid marker with a broken output: {reason}"));
    }
    let run = match Run::open_with(root, fs.clone() as Arc<dyn FileSystem>) {
        Ok(run) => run,
        Err(e) => return vec![format!("reopening failed: {e}")],
    };
    run.allow_outside(exports(root)).unwrap();
    let fp = Fingerprint::of(name, &(tag, outside), 1).unwrap();
    let state = if family {
        run.step_item(name, &ITEM).unwrap()
    } else {
        run.step(name).unwrap()
    };
    let done_before = matches!(state.check(&fp), Ok(MarkerState::Valid(_)));
    let mut body_runs = 0;
    match produce(&run, &fs, tag, outside, family, &mut body_runs) {
        Ok(v) if v == 10_000 + tag.len() as u64 => {}
        other => violations.push(format!("the rerun returned {other:?}")),
    }
    if done_before && body_runs != 0 {
        violations.push("a done step ran again".into());
    }
    if !done_before && body_runs != 1 {
        violations.push("a step without a valid marker was not rerun".into());
    }
    let after = fs.view();
    if &outputs(&after, root) != expected {
        violations.push("the final outputs differ from an uninterrupted run".into());
    }
    let staging = garbage(&after, root);
    if !staging.is_empty() {
        violations.push(format!("staging garbage survived: {staging:?}"));
    }
    violations
}

/// Crashes `produce(tag)` after every operation, with `before` run first
/// (a previous commit to replace), and checks each derived disk state.
fn explore(
    before: Option<&str>,
    tag: &str,
    outside: bool,
    family: bool,
    random_states: u64,
) -> (u64, Vec<String>) {
    let expected = reference(tag, outside, family);
    // How many operations does the step take?
    let total = {
        let sim = sim_root();
        let fs = disk(&sim.root);
        let run = open(&sim.root, &fs);
        if let Some(b) = before {
            produce(&run, &fs, b, outside, family, &mut 0).unwrap();
        }
        let start = fs.ops();
        produce(&run, &fs, tag, outside, family, &mut 0).unwrap();
        fs.ops() - start
    };
    let (mut states, mut violations) = (0, Vec::new());
    for k in 0..=total {
        let sim = sim_root();
        let fs = disk(&sim.root);
        let run = open(&sim.root, &fs);
        if let Some(b) = before {
            produce(&run, &fs, b, outside, family, &mut 0).unwrap();
        }
        fs.crash_after(k);
        let _ = produce(&run, &fs, tag, outside, family, &mut 0);
        drop(run);
        let mut survivals = vec![Survival::AllLost, Survival::AllKept];
        survivals.extend((0..random_states).map(|i| Survival::Random(k * 1_000_003 + i)));
        for survival in survivals {
            let tree = fs.crash_state(survival);
            for v in check_crash_state(&sim.root, tree, tag, outside, family, &expected) {
                violations.push(format!("crash after op {k}/{total}, {survival:?}: {v}"));
            }
            states += 1;
        }
    }
    (states, violations)
}

#[test]
fn crash_state_exploration() {
    let random = if torture() { 400 } else { 40 };
    let (a, mut violations) = explore(None, "first", true, false, random);
    let (b, v) = explore(Some("old"), "new", true, false, random);
    violations.extend(v);
    // Every output inside the run: no outside journal syncs anything.
    let (c, v) = explore(None, "first", false, false, random);
    violations.extend(v);
    let (d, v) = explore(Some("old"), "new", false, false, random);
    violations.extend(v);
    // An item of a family: its bucket directories are made by the commit.
    let (e, v) = explore(None, "first", false, true, random);
    violations.extend(v);
    let (f, v) = explore(Some("old"), "new", true, true, random);
    violations.extend(v);
    report("item_crash_states_checked", e + f);
    // No outputs: the new marker replaces the old in one atomic write.
    BARE.set(true);
    let (g, v) = explore(Some("old"), "new", false, false, random);
    BARE.set(false);
    violations.extend(v);
    report("bare_crash_states_checked", g);
    let (a, b) = (a + c + e, b + d + f + g);
    report("crash_states_checked", a + b);
    report("crash_state_violations", violations.len());
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations[..violations.len().min(20)].join("\n")
    );
    assert!(a + b >= 2_000, "explored only {} states", a + b);
}

#[test]
fn injected_io_errors_at_every_operation() {
    let (mut injected, mut failed_visibly) = (0u64, 0u64);
    let mut violations = Vec::new();
    // A plain step, then an item of a family.
    for family in [false, true] {
        let (i, f, v) = inject_everywhere(family);
        injected += i;
        failed_visibly += f;
        violations.extend(v);
    }
    report("io_faults_injected", injected);
    report("io_faults_surfaced_as_errors", failed_visibly);
    report("io_fault_violations", violations.len());
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(failed_visibly > injected / 2, "most faults must surface");
}

/// Injects each errno at every operation of a commit, once and from then
/// on; returns the faults injected, those that surfaced, and violations.
fn inject_everywhere(family: bool) -> (u64, u64, Vec<String>) {
    let expected = reference("faulty", true, family);
    let total = {
        let sim = sim_root();
        let fs = disk(&sim.root);
        let run = open(&sim.root, &fs);
        let start = fs.ops();
        produce(&run, &fs, "faulty", true, family, &mut 0).unwrap();
        fs.ops() - start
    };
    let (mut injected, mut failed_visibly) = (0u64, 0u64);
    let mut violations = Vec::new();
    for (errno, name) in [(28, "ENOSPC"), (5, "EIO"), (13, "EACCES")] {
        for mode in [FaultMode::Once, FaultMode::FromThenOn] {
            for n in 1..=total {
                injected += 1;
                let sim = sim_root();
                let fs = disk(&sim.root);
                let run = open(&sim.root, &fs);
                fs.inject(Fault {
                    at: fs.ops() + n,
                    errno,
                    mode,
                });
                let result = produce(&run, &fs, "faulty", true, family, &mut 0);
                let calls = fs.calls();
                fs.heal();
                let case = format!("{name} {mode:?} at op {n}/{total}");
                if let Err(e) = &result {
                    failed_visibly += 1;
                    let text = e.to_string();
                    // The run directory, or the outside output beside it.
                    if !text.contains(sim.root.parent().unwrap().to_str().unwrap()) {
                        violations.push(format!("{case}: the error does not name a path: {text}"));
                    }
                    if !text.contains(&std::io::Error::from_raw_os_error(errno).to_string()) {
                        violations.push(format!("{case}: the error hides the cause: {text}"));
                    }
                    let name = if family { "commit-item" } else { "commit-me" };
                    let fp = Fingerprint::of(name, &("faulty", true), 1).unwrap();
                    let step = if family {
                        run.step_item(name, &ITEM).unwrap()
                    } else {
                        run.step(name).unwrap()
                    };
                    let state = step.check(&fp);
                    // With every later operation failing, a marker that was
                    // renamed into place cannot be taken back; it must then
                    // still vouch only for intact outputs (check verifies).
                    let stuck = mode == FaultMode::FromThenOn;
                    if matches!(state, Ok(MarkerState::Valid(_))) && !stuck {
                        violations.push(format!("{case}: a failed step is marked done"));
                    }
                }
                // A failed fsync is never retried: no file is synced twice.
                let mut synced = std::collections::HashSet::new();
                for c in calls.iter().filter(|c| c.starts_with("fsync ")) {
                    if !synced.insert(c.clone()) {
                        violations.push(format!("{case}: {c} was called twice"));
                    }
                }
                drop(run);
                // With the fault gone: no garbage after reopening, and a rerun succeeds.
                let run = open(&sim.root, &fs);
                let left = garbage(&fs.view(), &sim.root);
                if !left.is_empty() {
                    violations.push(format!("{case}: staging garbage after reopening: {left:?}"));
                }
                match produce(&run, &fs, "faulty", true, family, &mut 0) {
                    Ok(_) if outputs(&fs.view(), &sim.root) == expected => {}
                    other => violations.push(format!("{case}: the rerun gave {other:?}")),
                }
            }
        }
    }
    (injected, failed_visibly, violations)
}
