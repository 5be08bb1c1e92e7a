//! Step families at scale, side by side with the bare work they wrap:
//! - the resume check of a family's done items (each: marker read and
//!   checked, output stat and BLAKE3) against reading each marker file,
//!   stat-ing and hashing each output by hand;
//! - committing items from 8 threads (a marker and one small output each)
//!   against writing one file per item with one fsync each, from 8 threads
//!   and from one, and with none; the same commits with their fsyncs
//!   skipped (the ceiling of any group commit of this layout); and a group
//!   commit with no layout at all (items in place in one preallocated file,
//!   one data sync per round of 8): the cheapest commit durable on return.
//!
//! `FAMILY_ITEMS` sets the family's size (default 100,000: building it
//! takes about a minute).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use recovery::marker::MarkerState;
use recovery::{Fingerprint, Run};

fn items() -> u32 {
    std::env::var("FAMILY_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Commits item `i` of the family `page`: one 1 KiB output.
fn commit_item(run: &Run, i: u32) {
    let exec = run.step_item("page", &i).unwrap().begin().unwrap();
    exec.output_file(&format!("pages/{:02}/{i}.bin", i % 97))
        .map(|o| std::fs::write(o.path(), vec![(i % 251) as u8; 1024]).unwrap())
        .unwrap();
    let fp = Fingerprint::of("page", &(), 1).unwrap();
    exec.commit(&fp, 1, "bench", &i).unwrap();
}

/// Runs `f(i)` for every `i` below `n` on 8 threads.
fn on_eight_threads(n: u32, f: impl Fn(u32) + Sync) {
    std::thread::scope(|s| {
        for t in 0..8 {
            let f = &f;
            s.spawn(move || (t..n).step_by(8).for_each(f));
        }
    });
}

fn resume_check(c: &mut Criterion) {
    let n = items();
    let root =
        tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let run = Run::open(root.path()).unwrap();
    on_eight_threads(n, |i| commit_item(&run, i));
    let fp = Fingerprint::of("page", &(), 1).unwrap();
    let markers: Vec<PathBuf> = (0..n)
        .map(|i| run.step_item("page", &i).unwrap().marker_path())
        .collect();
    let outputs: Vec<PathBuf> = (0..n)
        .map(|i| root.path().join(format!("pages/{:02}/{i}.bin", i % 97)))
        .collect();

    let mut g = c.benchmark_group("family_resume");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(u64::from(n)));
    g.bench_function("bare_read_stat_hash", |b| {
        b.iter(|| bare_check(&markers, &outputs))
    });
    g.bench_function("recovery_items_check", |b| {
        b.iter(|| {
            (0..n)
                .filter(|i| {
                    let state = run.step_item("page", i).unwrap();
                    matches!(state.check(&fp).unwrap(), MarkerState::Valid(_))
                })
                .count()
        })
    });
    g.finish();
}

/// What a resume check must do at the least, by hand: read the marker,
/// stat the output, hash it.
fn bare_check(markers: &[PathBuf], outputs: &[PathBuf]) -> u64 {
    let mut acc = 0u64;
    for (m, o) in markers.iter().zip(outputs) {
        acc += std::fs::read(m).unwrap().len() as u64;
        acc += std::fs::symlink_metadata(o).unwrap().len();
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(o).unwrap()).unwrap();
        acc ^= u64::from(h.finalize().as_bytes()[0]);
    }
    acc
}

fn commit_throughput(c: &mut Criterion) {
    const BATCH: u32 = 800;
    // The shared journal's rounds take one item from each of 8 threads.
    const _: () = assert!(BATCH.is_multiple_of(8));
    let root =
        tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let mut g = c.benchmark_group("family_commit");
    g.sample_size(10);
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    // Each iteration writes into a directory of its own.
    let round = AtomicU64::new(0);
    let fresh = |kind: &str| {
        let n = round.fetch_add(1, Ordering::Relaxed);
        root.path().join(format!("{kind}-{n}"))
    };
    let bare_dir = |kind: &str| {
        let dir = fresh(kind);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    g.bench_function("bare_file_fsync_per_item", |b| {
        b.iter(|| {
            let dir = bare_dir("bare");
            on_eight_threads(BATCH, |i| bare_write(&dir, i));
        })
    });
    // One thread: the latency of one durable write, which a commit that
    // returns only once its item is durable must wait for at least once.
    g.bench_function("bare_file_fsync_one_thread", |b| {
        b.iter(|| {
            let dir = bare_dir("bare1");
            (0..BATCH).for_each(|i| bare_write(&dir, i));
        })
    });
    // A group commit with no layout and nothing but data to sync: each
    // thread writes its item (1 KiB) in place into one preallocated file, so
    // a sync flushes data and has no metadata to journal, and each round of
    // 8 items, one from every thread, shares one fdatasync that all of them
    // wait for. No file per item, no lease, no batch smaller than the
    // threads: the cheapest commit durable on return we know of. (A probe
    // appending to the file instead ran 1.7x slower on the journaled ext4
    // of 2026-12-05: an append also changes the size, which is journaled.)
    g.bench_function("preallocated_journal_one_sync_per_8_items", |b| {
        const RECORD: u64 = 1024 + 4;
        b.iter_batched(
            || {
                let journal = std::fs::File::options()
                    .create_new(true)
                    .read(true)
                    .write(true)
                    .open(bare_dir("journal").join("journal"))
                    .unwrap();
                journal
                    .write_all_at(&vec![0; (RECORD * u64::from(BATCH)) as usize], 0)
                    .unwrap();
                journal.sync_all().unwrap();
                journal
            },
            |journal| {
                let round = std::sync::Barrier::new(8);
                on_eight_threads(BATCH, |i| {
                    let mut record = vec![(i % 251) as u8; 1024];
                    record.extend_from_slice(&i.to_le_bytes());
                    journal
                        .write_all_at(&record, u64::from(i) * RECORD)
                        .unwrap();
                    if round.wait().is_leader() {
                        journal.sync_data().unwrap();
                    }
                    round.wait();
                });
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("recovery_item_commits", |b| {
        b.iter(|| {
            let run = Run::open(fresh("run")).unwrap();
            on_eight_threads(BATCH, |i| commit_item(&run, i));
        })
    });
    // The unsynced rows run last: the dirty pages they leave are written
    // back while later rows run, and on a journaled file system the later
    // rows' syncs wait for them. On the journaled ext4 of 2026-12-05 a group
    // commit appending to its file took 75 ms (95% interval 51–153 ms) run
    // after them, and 47 ms (46–47 ms) run before.
    // The same files with no fsync: the least any commit that leaves one
    // output file per item can cost, with no layout and no durability.
    g.bench_function("bare_file_unsynced", |b| {
        b.iter(|| {
            let dir = bare_dir("bare0");
            on_eight_threads(BATCH, |i| bare_write_with(&dir, i, false));
        })
    });
    // The same commits with every fsync skipped: not durable, but the most
    // any group commit of this layout (a marker file and a lock file per
    // item) could reach, since group commit only shares the fsyncs.
    g.bench_function("recovery_item_commits_unsynced", |b| {
        b.iter(|| {
            let run = Run::builder(fresh("unsynced"))
                .file_system(std::sync::Arc::new(recovery_suite::Unsynced))
                .open()
                .unwrap();
            on_eight_threads(BATCH, |i| commit_item(&run, i));
        })
    });
    g.finish();
}

/// One file per item, written and fsynced.
fn bare_write(dir: &Path, i: u32) {
    bare_write_with(dir, i, true)
}

fn bare_write_with(dir: &Path, i: u32, fsync: bool) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(format!("{i}.bin"))).unwrap();
    f.write_all(&vec![(i % 251) as u8; 1024]).unwrap();
    if fsync {
        f.sync_all().unwrap();
    }
}

// Commits first: the resume check's family (100,000 items, 400,000 files
// and directories) is deleted when it ends, and for minutes after a mass
// deletion ext4 scans past the recently freed inodes at every inode it
// allocates. Measured after it (one run each way, on the machine of
// 2026-12-05), bare fsynced files were 5.8× slower and commits 1.9×: a
// figure of the previous group's teardown, not of either.
criterion_group!(benches, commit_throughput, resume_check);
criterion_main!(benches);
