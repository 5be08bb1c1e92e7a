//! The shared store against a real S3 server (SeaweedFS on loopback):
//! requests per committed step, bytes moved on resume with a warm and a
//! cold local directory, and items committed per second by 1, 4 and 8
//! workers (threads, each with its own run directory: a machine each).
//!
//!     cargo bench --bench store --features s3
//!
//! Prints one `STORE key=value` line per figure, for scripts/bench-report.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use object_store::ObjectStore;
use recovery::{Event, Run, resumable_step};
use recovery_suite::objects::{Instrumented, s3_client, total};
use recovery_suite::s3_servers::{S3Server, Server};

/// A step of two outputs: a 1 MiB file and a directory of four 256 KiB files.
#[resumable_step("build")]
fn build(run: &Run) -> std::io::Result<u32> {
    run.write_output("big.bin", &vec![7u8; 1 << 20])?;
    let dir = run.output_dir("parts")?;
    for i in 0..4u8 {
        std::fs::write(dir.path().join(format!("{i}.bin")), vec![i; 256 << 10])?;
    }
    Ok(5)
}

/// One item of a family: a 1 KiB output.
#[resumable_step("page", item = n)]
fn page(run: &Run, n: u32) -> std::io::Result<u32> {
    run.write_output(&format!("pages/{n:05}.txt"), &[b'a' + (n % 26) as u8; 1024])?;
    Ok(n)
}

fn client(server: &S3Server) -> Arc<dyn ObjectStore> {
    s3_client(&server.bucket, &server.options())
}

fn open(dir: &Path, objects: Arc<dyn ObjectStore>, prefix: &str) -> Run {
    Run::builder(dir)
        .object_store(objects, prefix)
        .open()
        .unwrap()
}

fn fetched(run: &Run, step: &str) -> u64 {
    run.events()
        .unwrap()
        .records
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::StepResumed {
                step: s, fetched, ..
            } if s == step => Some(*fetched),
            _ => None,
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; a test run of benches passes nothing.
    let server = S3Server::shared(Server::Seaweed);
    let tmp = tempfile::tempdir().unwrap();
    let counted = Instrumented::new(client(server));
    let prefix = S3Server::prefix("bench-requests");

    // Requests for one committed step with 5 files, then its resumes.
    let a = open(&tmp.path().join("a"), counted.clone(), &prefix);
    counted.take();
    build(&a).unwrap();
    let commit = counted.take();
    println!("STORE commit_requests={}", total(&commit));
    println!("STORE commit_detail={commit:?}");
    build(&a).unwrap();
    let warm = counted.take();
    println!("STORE warm_requests={}", total(&warm));
    println!("STORE warm_bytes={}", fetched(&a, "build"));
    let b = open(&tmp.path().join("b"), counted.clone(), &prefix);
    counted.take();
    build(&b).unwrap();
    let cold = counted.take();
    println!("STORE cold_requests={}", total(&cold));
    println!("STORE cold_bytes={}", fetched(&b, "build"));
    println!("STORE output_bytes={}", (1u64 << 20) + 4 * (256 << 10));

    // Items per second: `workers` threads, each a machine of its own, run
    // one family of `items` items, each starting at its own place.
    let items: u32 = std::env::var("STORE_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    println!("STORE items={items}");
    for workers in [1u32, 4, 8] {
        let prefix = S3Server::prefix(&format!("bench-w{workers}"));
        let runs: Vec<Run> = (0..workers)
            .map(|w| {
                open(
                    &tmp.path().join(format!("w{workers}-{w}")),
                    client(server),
                    &prefix,
                )
            })
            .collect();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for (w, run) in runs.iter().enumerate() {
                scope.spawn(move || {
                    let start = w as u32 * items / workers;
                    for i in 0..items {
                        page(run, (start + i) % items).unwrap();
                    }
                });
            }
        });
        let secs = started.elapsed().as_secs_f64();
        println!("STORE items_per_s_{workers}={:.1}", f64::from(items) / secs);
    }
}
