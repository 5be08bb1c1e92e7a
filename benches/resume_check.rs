//! The resume check of a done step (marker read, checksum, fingerprint,
//! every output's size and BLAKE3) against the bare cost of hashing the
//! same bytes with the same hash, and against the fair bare baseline of
//! issue 14 (read the marker file, stat and hash each output); the opt-in
//! size-and-mtime check against a bare stat of each file, and against
//! reading the marker file and stat-ing each output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use recovery::marker::{MarkerState, Verify};
use recovery::{Fingerprint, Run};

/// A done step with `n` outputs of `size` bytes.
fn done_step(dir: &Path, n: usize, size: usize) -> (Run, Fingerprint, Vec<PathBuf>) {
    let run = Run::open(dir).unwrap();
    let exec = run.step("bench").unwrap().begin().unwrap();
    for i in 0..n {
        let out = exec.output_file(&format!("out/{i:05}.bin")).unwrap();
        let mut data = vec![(i % 251) as u8; size];
        data[0] = (i / 251) as u8;
        std::fs::write(out.path(), data).unwrap();
    }
    let fp = Fingerprint::of("bench", &(n, size), 1).unwrap();
    // Modification times recorded, so both checks can run on one marker.
    exec.commit_with(&fp, 1, "bench", &n, Verify::SizeMtime)
        .unwrap();
    let paths = (0..n)
        .map(|i| run.dir().join(format!("out/{i:05}.bin")))
        .collect();
    (run, fp, paths)
}

fn bare_hash(paths: &[PathBuf]) -> u8 {
    let mut acc = 0;
    for p in paths {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
        acc ^= h.finalize().as_bytes()[0];
    }
    acc
}

/// What a resume check must do at the least, by hand: read the marker
/// file, then stat and hash every output.
fn bare_read_hash(marker: &Path, paths: &[PathBuf]) -> u8 {
    let bytes = std::fs::read(marker).unwrap();
    let mut acc = bytes[0];
    for p in paths {
        acc ^= std::fs::symlink_metadata(p).unwrap().len() as u8;
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
        acc ^= h.finalize().as_bytes()[0];
    }
    acc
}

/// The same for the size-and-mtime check: read the marker, stat each.
fn bare_read_stat(marker: &Path, paths: &[PathBuf]) -> u64 {
    std::fs::read(marker).unwrap().len() as u64 + bare_stat(paths)
}

fn bare_stat(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .map(|p| std::fs::symlink_metadata(p).unwrap().len())
        .sum()
}

fn bench(c: &mut Criterion) {
    let root =
        tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    for (n, size, label) in [
        (1, 1 << 10, "1x1KiB"),
        (100, 1 << 10, "100x1KiB"),
        (10_000, 1 << 10, "10000x1KiB"),
        (1, 16 << 20, "1x16MiB"),
        (8, 16 << 20, "8x16MiB"),
    ] {
        let dir = root.path().join(label);
        let (run, fp, paths) = done_step(&dir, n, size);
        let step = run.step("bench").unwrap();
        let marker = step.marker_path();
        let mut g = c.benchmark_group(format!("resume_check_{label}"));
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        g.bench_function(BenchmarkId::from_parameter("bare_hash"), |b| {
            b.iter(|| bare_hash(&paths))
        });
        g.bench_function(BenchmarkId::from_parameter("bare_read_hash"), |b| {
            b.iter(|| bare_read_hash(&marker, &paths))
        });
        g.bench_function(BenchmarkId::from_parameter("recovery"), |b| {
            b.iter(|| assert!(matches!(step.check(&fp).unwrap(), MarkerState::Valid(_))))
        });
        g.bench_function(BenchmarkId::from_parameter("bare_stat"), |b| {
            b.iter(|| bare_stat(&paths))
        });
        g.bench_function(BenchmarkId::from_parameter("bare_read_stat"), |b| {
            b.iter(|| bare_read_stat(&marker, &paths))
        });
        g.bench_function(BenchmarkId::from_parameter("recovery_size_mtime"), |b| {
            b.iter(|| {
                let state = step.check_with(&fp, Verify::SizeMtime).unwrap();
                assert!(matches!(state, MarkerState::Valid(_)))
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
