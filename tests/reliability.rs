//! The reliability suite, part 2: real processes. Child processes running
//! a five-step pipeline are SIGKILLed at random moments (seeded) and rerun,
//! eight processes share one run directory, and the syscalls of the commits
//! are audited under strace. Each test prints `RELIABILITY name=value`
//! lines; `scripts/reliability-report` turns them into RELIABILITY.md.
//! `RECOVERY_TORTURE=1` raises the kills from 200 to 10,000.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use recovery::Run;
use recovery_suite::simfs::Rng;

fn torture() -> bool {
    std::env::var_os("RECOVERY_TORTURE").is_some_and(|v| v != "0")
}

fn report(name: &str, value: impl std::fmt::Display) {
    println!("RELIABILITY {name}={value}");
}

fn step_child() -> Command {
    Command::new(env!("CARGO_BIN_EXE_step-child"))
}

/// Every file under `dir`'s chain outputs, with its content.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot_of(dir, "chain")
}

/// Every file under `dir/sub`, with its content.
fn snapshot_of(dir: &Path, sub: &str) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(
                    path.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &dir.join(sub), &mut out);
    out
}

#[test]
fn kill_torture() {
    let kills_wanted = if torture() { 10_000 } else { 200 };
    let tmp = tempfile::tempdir().unwrap();
    // An uninterrupted run, to compare with, and its duration.
    let reference_dir = tmp.path().join("reference");
    let started = Instant::now();
    let out = step_child()
        .arg("chain")
        .arg(&reference_dir)
        .arg("-")
        .output()
        .unwrap();
    assert!(out.status.success());
    let full = started.elapsed();
    let expected = snapshot(&reference_dir);
    let expected_value = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let mut rng = Rng::new(2026);
    let (mut kills, mut completed_runs, mut cycle) = (0u64, 0u64, 0u64);
    while kills < kills_wanted {
        let dir = tmp.path().join(format!("run-{cycle}"));
        cycle += 1;
        // Kill this run again and again until a rerun completes.
        loop {
            let mut child = step_child()
                .arg("chain")
                .arg(&dir)
                .arg("-")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let wait = rng.below(full.as_micros() as u64 + 2_000);
            std::thread::sleep(Duration::from_micros(wait));
            let killed = child.try_wait().unwrap().is_none() && child.kill().is_ok();
            let out = child.wait_with_output().unwrap();
            if killed && !out.status.success() {
                kills += 1;
                if kills < kills_wanted {
                    continue;
                }
            }
            // Finish the run and check it against the reference.
            let out = step_child()
                .arg("chain")
                .arg(&dir)
                .arg("-")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected_value);
            assert_eq!(
                snapshot(&dir),
                expected,
                "outputs differ after {kills} kills"
            );
            assert_eq!(std::fs::read_dir(dir.join("staging")).unwrap().count(), 0);
            completed_runs += 1;
            break;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    report("kills_survived", kills);
    report("kill_torture_runs_compared", completed_runs);
}

/// Runs eight of `command` at once; each must succeed and print the same
/// value. Returns the bodies they ran, by step, from the side-effect log.
fn eight_at_once(side_effects: &Path, command: impl Fn() -> Command) -> Vec<String> {
    let children: Vec<_> = (0..8)
        .map(|_| command().stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    let values: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect();
    assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
    let log = std::fs::read_to_string(side_effects).unwrap();
    log.lines()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn eight_processes_on_one_run_directory_run_each_step_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let side_effects = tmp.path().join("side-effects.log");
    Run::open(&dir).unwrap();
    let mut links = eight_at_once(&side_effects, || {
        let mut child = step_child();
        child.arg("chain").arg(&dir).arg(&side_effects);
        child
    });
    links.sort();
    assert_eq!(links, ["link-1", "link-2", "link-3", "link-4", "link-5"]);
    report("concurrent_processes", 8);
    report("concurrent_step_bodies_run", links.len());
}

/// The family's child: `page` over `items` items on `threads` threads.
fn family_child(dir: &Path, side_effects: &Path, items: u32, threads: u32) -> Command {
    let mut child = step_child();
    child
        .arg("family")
        .arg(dir)
        .arg(side_effects)
        .env("RECOVERY_CHILD_ITEMS", items.to_string())
        .env("RECOVERY_CHILD_THREADS", threads.to_string());
    child
}

/// The items of the family whose markers hold: none when the run was
/// killed before it was made.
fn done_items(dir: &Path) -> std::collections::BTreeSet<u64> {
    let run = match Run::open_existing(dir) {
        Err(recovery::RunError::NotARun { .. }) => return Default::default(),
        opened => opened.unwrap(),
    };
    run.items("page")
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| matches!(e.marker, recovery::marker::MarkerState::Valid(_)))
        .map(|e| e.item.and_then(|i| i.as_u64()).expect("an item number"))
        .collect()
}

/// The items whose bodies the process `pid` ran, from the side-effect log.
fn bodies_run_by(log: &str, pid: u32) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, p)| p.parse() == Ok(pid))
        .filter_map(|(step, _)| step.strip_prefix("page-")?.parse().ok())
        .collect()
}

#[test]
fn family_kill_torture() {
    let kills_wanted = if torture() { 500 } else { 50 };
    let items = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let started = Instant::now();
    let out = family_child(&reference, Path::new("-"), items, 4)
        .output()
        .unwrap();
    assert!(out.status.success());
    let full = started.elapsed();
    let expected = snapshot_of(&reference, "pages");
    let expected_value = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let dir = tmp.path().join("run");
    let log_path = tmp.path().join("bodies.log");
    let mut rng = Rng::new(1_000);
    let (mut kills, mut done_before_kills) = (0u64, 0usize);
    while kills < kills_wanted {
        let done = if dir.exists() {
            done_items(&dir)
        } else {
            Default::default()
        };
        done_before_kills = done.len();
        let mut child = family_child(&dir, &log_path, items, 4)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Somewhere in the first half of a full run: most kills land with
        // items done, some running and some not started.
        let wait = rng.below(full.as_micros() as u64 / 2 + 1_000);
        std::thread::sleep(Duration::from_micros(wait));
        let killed = child.try_wait().unwrap().is_none() && child.kill().is_ok();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let rerun: Vec<u64> = bodies_run_by(&log, pid)
            .into_iter()
            .filter(|n| done.contains(n))
            .collect();
        assert!(rerun.is_empty(), "done items ran again: {rerun:?}");
        if killed && !out.status.success() {
            kills += 1;
        }
        if out.status.success() {
            // It finished before the kill: start the family afresh.
            assert_eq!(snapshot_of(&dir, "pages"), expected);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    // The last rerun finishes exactly the unfinished items.
    let done = done_items(&dir);
    let child = family_child(&dir, &log_path, items, 4)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected_value);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut ran = bodies_run_by(&log, pid);
    ran.sort_unstable();
    let unfinished: Vec<u64> = (0..u64::from(items))
        .filter(|n| !done.contains(n))
        .collect();
    assert_eq!(ran, unfinished);
    assert_eq!(
        snapshot_of(&dir, "pages"),
        expected,
        "outputs differ after {kills} kills"
    );
    assert_eq!(std::fs::read_dir(dir.join("staging")).unwrap().count(), 0);
    report("family_items", items);
    report("family_kills_survived", kills);
    report("family_items_done_at_last_kill", done_before_kills);
}

#[test]
fn eight_processes_of_four_threads_share_one_family() {
    let items = 200;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let side_effects = tmp.path().join("side-effects.log");
    Run::open(&dir).unwrap();
    let mut ran = eight_at_once(&side_effects, || {
        family_child(&dir, &side_effects, items, 4)
    });
    ran.sort_unstable();
    let total = ran.len();
    ran.dedup();
    assert_eq!(total, items as usize, "an item's body ran twice");
    assert_eq!(ran.len(), items as usize);
    assert_eq!(done_items(&dir).len(), items as usize);
    report("family_concurrent_workers", 8 * 4);
    report("family_bodies_run", total);
}

/// One parsed strace line of interest.
#[derive(Debug)]
enum Sys {
    Fsync(PathBuf),
    Rename(PathBuf, PathBuf),
}

/// Parses `strace -f -e trace=openat,fsync,rename,renameat,renameat2,close`
/// output into fsyncs (by path, through the open fds) and renames.
fn parse_strace(text: &str) -> Vec<Sys> {
    let mut fds: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    let quoted =
        |s: &str| -> Vec<String> { s.split('"').skip(1).step_by(2).map(str::to_owned).collect() };
    for line in text.lines() {
        let (pid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        let result = rest
            .rsplit_once("= ")
            .map(|(_, r)| r.split(' ').next().unwrap_or("").to_owned());
        if rest.starts_with("openat(") {
            if let (Some(path), Some(fd)) = (quoted(rest).first().cloned(), result)
                && fd.parse::<i32>().is_ok_and(|f| f >= 0)
            {
                fds.insert((pid.to_owned(), fd), PathBuf::from(path));
            }
        } else if let Some(args) = rest.strip_prefix("fsync(") {
            let fd = args.split(')').next().unwrap_or("").to_owned();
            if let Some(p) = fds.get(&(pid.to_owned(), fd)) {
                out.push(Sys::Fsync(p.clone()));
            }
        } else if rest.starts_with("rename") {
            let q = quoted(rest);
            if q.len() >= 2 {
                out.push(Sys::Rename(PathBuf::from(&q[0]), PathBuf::from(&q[1])));
            }
        }
    }
    out
}

#[test]
fn syscall_order_audit_under_strace() {
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is missing: .ci/run installs it (apt-get install strace)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let trace = tmp.path().join("trace.txt");
    let status = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=openat,fsync,rename,renameat,renameat2",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_step-child"))
        .arg("chain")
        .arg(&dir)
        .arg("-")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let calls = parse_strace(&std::fs::read_to_string(&trace).unwrap());
    let pos = |pred: &dyn Fn(&Sys) -> bool| calls.iter().position(pred);
    let mut checked = 0;
    for n in 1..=5 {
        let marker = dir.join(format!("state/steps/link-{n}.json"));
        let marker_rename = pos(&|c| matches!(c, Sys::Rename(_, to) if *to == marker))
            .unwrap_or_else(|| panic!("no rename onto {}", marker.display()));
        let Sys::Rename(marker_tmp, _) = &calls[marker_rename] else {
            unreachable!()
        };
        // The marker's own temporary file is synced before its rename ...
        let tmp_sync =
            pos(&|c| matches!(c, Sys::Fsync(p) if p == marker_tmp)).expect("marker fsync");
        assert!(tmp_sync < marker_rename);
        // ... and the steps directory after it.
        let steps_dir = dir.join("state/steps");
        assert!(
            calls[marker_rename..]
                .iter()
                .any(|c| matches!(c, Sys::Fsync(p) if *p == steps_dir)),
            "no directory fsync after the marker of link-{n}"
        );
        // Each output: every file synced before the output's rename into
        // place, the final directory synced after it, all before the marker.
        for (out, files) in [
            (format!("chain/{n}"), vec!["big.bin", "small.txt"]),
            (format!("chain/{n}.txt"), vec![]),
        ] {
            let final_path = dir.join(&out);
            let rename = pos(&|c| matches!(c, Sys::Rename(_, to) if *to == final_path))
                .unwrap_or_else(|| panic!("no rename onto {}", final_path.display()));
            let Sys::Rename(staged, _) = &calls[rename] else {
                unreachable!()
            };
            let synced: Vec<PathBuf> = if files.is_empty() {
                vec![staged.clone()]
            } else {
                files.iter().map(|f| staged.join(f)).collect()
            };
            for f in synced {
                let s = pos(&|c| matches!(c, Sys::Fsync(p) if *p == f))
                    .unwrap_or_else(|| panic!("{} never synced", f.display()));
                assert!(s < rename, "{} synced after its rename", f.display());
                checked += 1;
            }
            let parent = final_path.parent().unwrap().to_owned();
            let dir_sync = calls[rename..]
                .iter()
                .position(|c| matches!(c, Sys::Fsync(p) if *p == parent))
                .map(|i| i + rename)
                .expect("directory fsync after an output's rename");
            assert!(
                dir_sync < marker_rename,
                "the marker came before the output was durable"
            );
            assert!(rename < marker_rename);
            checked += 1;
        }
    }
    report("strace_orderings_checked", checked);
}
