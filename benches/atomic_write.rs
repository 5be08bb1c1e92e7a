//! An atomic write of 4 KiB and of 64 MiB: ours, the atomic-write-file
//! crate, tempfile's persist with manual fsyncs, and the bare syscall
//! sequence (write, fsync, rename, fsync of the directory): the physical
//! limit.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn bare(dir: &Path, target: &Path, data: &[u8]) {
    let tmp = dir.join(".bare.tmp");
    let mut f = File::create(&tmp).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, target).unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
}

fn awf(target: &Path, data: &[u8]) {
    let mut f = atomic_write_file::AtomicWriteFile::open(target).unwrap();
    f.write_all(data).unwrap();
    f.commit().unwrap();
}

fn tempfile_persist(dir: &Path, target: &Path, data: &[u8]) {
    let mut f = tempfile::NamedTempFile::new_in(dir).unwrap();
    f.write_all(data).unwrap();
    f.as_file().sync_all().unwrap();
    f.persist(target).unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
}

fn bench(c: &mut Criterion) {
    let dir =
        tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let target = dir.path().join("target.bin");
    for (label, size) in [("4KiB", 4usize << 10), ("64MiB", 64 << 20)] {
        let data = vec![0x5au8; size];
        let mut g = c.benchmark_group(format!("atomic_write_{label}"));
        if size > 1 << 20 {
            g.sample_size(10).measurement_time(Duration::from_secs(20));
        }
        g.bench_function(BenchmarkId::from_parameter("bare"), |b| {
            b.iter(|| bare(dir.path(), &target, &data))
        });
        g.bench_function(BenchmarkId::from_parameter("recovery"), |b| {
            b.iter(|| recovery::atomic_write(&target, &data).unwrap())
        });
        g.bench_function(BenchmarkId::from_parameter("atomic_write_file"), |b| {
            b.iter(|| awf(&target, &data))
        });
        g.bench_function(BenchmarkId::from_parameter("tempfile"), |b| {
            b.iter(|| tempfile_persist(dir.path(), &target, &data))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
