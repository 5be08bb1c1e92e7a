//! A call that succeeds the first time: a plain function, `#[retryable]`
//! (sync, sync with a deadline, async) and backon's retry of the same
//! function, side by side.
//!
//! Async calls are measured two ways: awaited inside a task that is already
//! running (`*_awaited`: how an async fn is called, its future built in
//! place in the caller's), and as a fresh future moved into a poll and
//! polled once (`*_async`: this also pays for copying the future, which
//! grows with its size).

use std::hint::black_box;
use std::task::{Context as TaskContext, Poll, Waker};

use backon::{BlockingRetryable, ExponentialBuilder, Retryable};
use criterion::{Criterion, criterion_group, criterion_main};
use recovery::retryable;

#[inline(never)]
fn work(x: u64) -> Result<u64, std::io::Error> {
    Ok(black_box(x).wrapping_mul(31))
}

#[inline(never)]
fn plain(x: u64) -> Result<u64, std::io::Error> {
    work(x)
}

#[retryable(max_attempts = 5, base = "200ms", jitter)]
#[inline(never)]
fn ours(x: u64) -> Result<u64, std::io::Error> {
    work(x)
}

#[retryable(max_attempts = 5, base = "200ms", max_elapsed = "30s", jitter)]
#[inline(never)]
fn ours_deadline(x: u64) -> Result<u64, std::io::Error> {
    work(x)
}

#[retryable(max_attempts = 5, base = "200ms", jitter)]
async fn ours_async(x: u64) -> Result<u64, std::io::Error> {
    work(x)
}

async fn plain_async(x: u64) -> Result<u64, std::io::Error> {
    work(x)
}

// The same two again for the awaited benchmarks: each benchmark calls its
// own copy, so whether the compiler inlines one does not depend on how many
// benchmarks call it.
#[retryable(max_attempts = 5, base = "200ms", jitter)]
async fn ours_awaited(x: u64) -> Result<u64, std::io::Error> {
    work(x)
}

async fn plain_awaited(x: u64) -> Result<u64, std::io::Error> {
    work(x)
}

/// A task that calls `call` once per poll, then yields: polling it measures
/// one awaited call inside a running task (plus a yield, the same for all).
async fn awaiting<F: Fn(u64) -> Fut, Fut: std::future::Future>(call: F) {
    loop {
        black_box(call(black_box(7)).await);
        YieldOnce(false).await;
    }
}

/// Pending once, then ready.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

/// backon's retry of `work` as an async fn, as a caller would write it.
async fn backon_async(x: u64) -> Result<u64, std::io::Error> {
    (|| async move { work(x) })
        .retry(ExponentialBuilder::default().with_jitter())
        .sleep(|_| std::future::ready(()))
        .await
}

/// Benchmarks the task of [`awaiting`]`(call)`, one poll per iteration.
fn bench_awaited<F: Fn(u64) -> Fut, Fut: std::future::Future>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    call: F,
) {
    let mut task = std::pin::pin!(awaiting(call));
    let mut cx = TaskContext::from_waker(Waker::noop());
    g.bench_function(name, |b| {
        b.iter(|| task.as_mut().poll(&mut cx).is_pending())
    });
}

/// Polls a future that is ready at once.
fn poll_once<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the call succeeds at once"),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("happy_path");
    g.bench_function("plain", |b| b.iter(|| plain(black_box(7))));
    g.bench_function("retryable", |b| b.iter(|| ours(black_box(7))));
    // What a deadline costs at the least: one read of the monotonic clock.
    g.bench_function("instant_now", |b| b.iter(std::time::Instant::now));
    g.bench_function("retryable_deadline", |b| {
        b.iter(|| ours_deadline(black_box(7)))
    });
    g.bench_function("backon_blocking", |b| {
        b.iter(|| {
            let x = black_box(7);
            (|| work(x))
                .retry(ExponentialBuilder::default().with_jitter())
                .call()
        })
    });
    g.bench_function("plain_async", |b| {
        b.iter(|| poll_once(plain_async(black_box(7))))
    });
    g.bench_function("retryable_async", |b| {
        b.iter(|| poll_once(ours_async(black_box(7))))
    });
    g.bench_function("backon_async", |b| {
        b.iter(|| {
            let x = black_box(7);
            poll_once(
                (|| async move { work(x) })
                    .retry(ExponentialBuilder::default().with_jitter())
                    .sleep(|_| std::future::ready(())),
            )
        })
    });
    bench_awaited(&mut g, "plain_awaited", plain_awaited);
    bench_awaited(&mut g, "retryable_awaited", ours_awaited);
    bench_awaited(&mut g, "backon_awaited", backon_async);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
