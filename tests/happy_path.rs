//! A call that succeeds the first time costs nothing beyond the call: no
//! allocation, no clock read (unless the policy has a deadline), no random
//! number; with a shared retry budget that is full, no write either. And
//! checking a done step allocates only for reading its marker, not per
//! output. Checked with a counting global allocator and virtual time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll, Waker};

use std::sync::Arc;

use recovery::fs::RealFs;
use recovery::marker::{self, MarkerState};
use recovery::{Context, Fingerprint, RetryBudget, Run, VirtualClock, retryable};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Bytes allocated and not yet freed, and the most seen since a reset.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The most heap `f` held at once beyond what was live before it.
fn peak_heap_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let r = f();
    (r, PEAK.load(Ordering::SeqCst) - before)
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this test's thread. The tests in this file run
/// inside one #[test] (below), so no other test allocates meanwhile.
fn allocations_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let r = f();
    (r, ALLOCATIONS.load(Ordering::SeqCst) - before)
}

#[retryable(max_attempts = 5, base = "200ms", jitter)]
fn fetch(key: &str, n: u64) -> Result<u64, std::io::Error> {
    Ok(key.len() as u64 + n)
}

#[retryable(
    max_attempts = 5,
    base = "200ms",
    max_elapsed = "10s",
    jitter = "decorrelated"
)]
fn fetch_with_deadline(key: &str) -> Result<usize, String> {
    Ok(key.len())
}

static BUDGET: RetryBudget = RetryBudget::new(50);

#[retryable(max_attempts = 5, base = "200ms", budget = BUDGET)]
fn fetch_budgeted(key: &str) -> Result<usize, String> {
    Ok(key.len())
}

#[retryable(max_attempts = 3, base = "1ms", jitter)]
async fn fetch_async(key: &str) -> Result<usize, String> {
    Ok(key.len())
}

#[retryable(max_attempts = 3, base = "1s", jitter)]
fn sometimes(fail: bool, calls: &mut u32) -> Result<(), String> {
    *calls += 1;
    if fail && *calls == 1 {
        Err("once".into())
    } else {
        Ok(())
    }
}

/// A by-value argument whose clones are counted, and which owns a heap
/// buffer, so each clone also allocates.
struct Payload(Vec<u8>);

static CLONES: AtomicUsize = AtomicUsize::new(0);

impl Clone for Payload {
    fn clone(&self) -> Self {
        CLONES.fetch_add(1, Ordering::SeqCst);
        Payload(self.0.clone())
    }
}

#[retryable(max_attempts = 1)]
fn send_once(payload: Payload) -> Result<usize, String> {
    Ok(payload.0.len())
}

#[retryable(max_attempts = 3, base = "1ms")]
fn send_flaky(payload: Payload, calls: &mut u32) -> Result<usize, String> {
    *calls += 1;
    if *calls < 3 {
        return Err("try again".into());
    }
    Ok(payload.0.len())
}

/// Each attempt but the last gets a clone; the last gets the original.
fn by_value_arguments_are_cloned_only_for_attempts_that_may_fail() {
    let payload = Payload(vec![1, 2, 3]);
    CLONES.store(0, Ordering::SeqCst);
    let (r, n) = allocations_during(|| send_once(payload));
    assert_eq!(r, Ok(3));
    assert_eq!(CLONES.load(Ordering::SeqCst), 0, "max_attempts = 1 cloned");
    assert_eq!(n, 0, "max_attempts = 1 allocated");

    let clock = VirtualClock::new();
    let ctx = Context::builder().virtual_time(&clock).build();
    CLONES.store(0, Ordering::SeqCst);
    let mut calls = 0;
    let r = ctx.in_scope(|| send_flaky(Payload(vec![9; 4]), &mut calls));
    assert_eq!(r, Ok(4));
    assert_eq!(calls, 3);
    assert_eq!(CLONES.load(Ordering::SeqCst), 2, "3 attempts, 2 clones");
}

fn no_allocation_on_success() {
    // Warm up what the process sets up once (thread-locals, lazies).
    let _ = fetch("warm", 1);
    let _ = fetch_with_deadline("warm");

    let (r, n) = allocations_during(|| fetch("abc", 1));
    assert_eq!(r.unwrap(), 4);
    assert_eq!(n, 0, "a successful sync call allocated");

    let (r, n) = allocations_during(|| fetch_with_deadline("abcd"));
    assert_eq!(r, Ok(4));
    assert_eq!(n, 0, "a successful call with a deadline allocated");

    let (r, n) = allocations_during(|| fetch_budgeted("abcde"));
    assert_eq!(r, Ok(5));
    assert_eq!(n, 0, "a successful call with a retry budget allocated");
    assert_eq!(BUDGET.available(), 50, "a full budget stays full");

    let (r, n) = allocations_during(|| {
        let mut fut = std::pin::pin!(fetch_async("xy"));
        let mut cx = TaskContext::from_waker(Waker::noop());
        fut.as_mut().poll(&mut cx)
    });
    assert_eq!(r, Poll::Ready(Ok(2)));
    assert_eq!(n, 0, "a successful async call allocated");

    // The counter does count: a failing call allocates (event text, ...).
    let clock = VirtualClock::new();
    let ctx = Context::builder().virtual_time(&clock).build();
    let (_, n) = allocations_during(|| ctx.in_scope(|| sometimes(true, &mut 0)));
    assert!(
        n > 0,
        "the allocation counter saw nothing on the failure path"
    );
}

fn no_clock_read_on_success_without_deadline() {
    let clock = VirtualClock::new();
    let ctx = Context::builder().virtual_time(&clock).build();
    ctx.in_scope(|| fetch("abc", 1)).unwrap();
    assert_eq!(clock.reads(), 0);
    ctx.in_scope(|| fetch_with_deadline("abc")).unwrap();
    assert_eq!(clock.reads(), 1, "a deadline starts with one clock read");
    ctx.in_scope(|| sometimes(true, &mut 0)).unwrap();
    assert!(clock.reads() > 1, "the failure path reads the clock");
}

fn no_random_number_on_success() {
    // Under a seeded context every jittered retrying call that draws a seed
    // moves the context's counter, which changes later delays. A success in
    // between must not move it.
    let delays_after = |successes_first: bool| {
        let clock = VirtualClock::new();
        let ctx = Context::builder().virtual_time(&clock).seed(5).build();
        ctx.in_scope(|| {
            if successes_first {
                for _ in 0..10 {
                    sometimes(false, &mut 0).unwrap();
                }
            }
            sometimes(true, &mut 0).unwrap();
            // A second failing call draws the next seed.
            sometimes(true, &mut 0).unwrap();
        });
        clock.slept()
    };
    let plain = delays_after(false);
    assert_eq!(plain.len(), 2);
    assert_ne!(plain[0], plain[1], "the two calls draw different seeds");
    assert_eq!(delays_after(true), plain);
}

/// A done step with `n` file outputs; returns its run and fingerprint.
fn done_step(dir: &std::path::Path, n: usize) -> (Run, Fingerprint) {
    let run = Run::open(dir).unwrap();
    let step = run.step("many").unwrap();
    let exec = step.begin().unwrap();
    for i in 0..n {
        let out = exec.output_file(&format!("out/{i:05}.bin")).unwrap();
        std::fs::write(out.path(), vec![i as u8; 1024]).unwrap();
    }
    let fp = Fingerprint::of("many", &n, 1).unwrap();
    exec.commit(&fp, 1, "test", &n).unwrap();
    (run, fp)
}

/// Allocations of the full resume check minus those of reading the marker.
fn check_allocations_beyond_the_marker_read(n: usize) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let (run, fp) = done_step(tmp.path(), n);
    let step = run.step("many").unwrap();
    let path = run.marker_path("many");
    let (state, read) = allocations_during(|| marker::read(&RealFs, &path).unwrap());
    assert!(matches!(state, MarkerState::Valid(_)));
    let (state, full) = allocations_during(|| step.check(&fp).unwrap());
    assert!(matches!(state, MarkerState::Valid(_)), "{state:?}");
    full - read
}

fn resume_check_allocates_only_for_the_marker() {
    let one = check_allocations_beyond_the_marker_read(1);
    let many = check_allocations_beyond_the_marker_read(1000);
    // A few (the marker's path, one path buffer), whatever the output count.
    assert_eq!(
        one, many,
        "verification allocated per output: {one} vs {many}"
    );
    assert!(many <= 16, "{many} allocations beyond the marker read");
}

/// The heap `run.items` holds while going over a family of `n` items.
fn items_listing_peak(n: u32) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::builder(tmp.path())
        .file_system(Arc::new(recovery_suite::Unsynced))
        .open()
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let run = &run;
            s.spawn(move || {
                for i in (t..n).step_by(8) {
                    run.step_item("page", &i)
                        .unwrap()
                        .mark_done(&(), 1, &i)
                        .unwrap();
                }
            });
        }
    });
    let (count, peak) = peak_heap_during(|| run.items("page").unwrap().count());
    assert_eq!(count, n as usize);
    peak
}

fn listing_a_family_holds_memory_flat_in_its_items() {
    // 300 items: about one per bucket; 30,000: about 117 per bucket.
    let small = items_listing_peak(300);
    let large = items_listing_peak(30_000);
    // Beyond one item's marker, only the (at most 256) bucket names: a
    // listing of a bucket at a time would hold about 20 KiB more here.
    assert!(
        large < small + (8 << 10),
        "run.items held {large} bytes for 30,000 items, {small} for 300"
    );
}

// One test function, so that no parallel test allocates while counting.
#[test]
fn happy_path_costs_nothing() {
    no_allocation_on_success();
    by_value_arguments_are_cloned_only_for_attempts_that_may_fail();
    no_clock_read_on_success_without_deadline();
    no_random_number_on_success();
    resume_check_allocates_only_for_the_marker();
    listing_a_family_holds_memory_flat_in_its_items();
}
