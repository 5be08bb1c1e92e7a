//! Marking steps done: a step commit with no outputs (lock, staging, stale
//! marker removal, atomic marker write) against the disk's fsync rate (write
//! and fsync of a small file) and the bare sequence of an atomic small write.

use std::fs::File;
use std::io::Write;

use criterion::{Criterion, criterion_group, criterion_main};
use recovery::{Fingerprint, Run};

fn bench(c: &mut Criterion) {
    let root =
        tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let run = Run::open(root.path().join("run")).unwrap();
    let step = run.step("mark").unwrap();
    let fp = Fingerprint::of("mark", &(), 1).unwrap();
    let small = root.path().join("small.bin");
    let mut g = c.benchmark_group("markers");
    g.bench_function("fsync_small_file", |b| {
        b.iter(|| {
            let mut f = File::create(&small).unwrap();
            f.write_all(&[1u8; 512]).unwrap();
            f.sync_all().unwrap();
        })
    });
    g.bench_function("bare_atomic_small_write", |b| {
        b.iter(|| {
            let tmp = root.path().join("small.tmp");
            let mut f = File::create(&tmp).unwrap();
            f.write_all(&[1u8; 512]).unwrap();
            f.sync_all().unwrap();
            std::fs::rename(&tmp, &small).unwrap();
            File::open(root.path()).unwrap().sync_all().unwrap();
        })
    });
    g.bench_function("mark_step_done", |b| {
        b.iter(|| {
            step.begin()
                .unwrap()
                .commit(&fp, 1, "bench", &42u32)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
