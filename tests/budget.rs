//! A retry budget shared by many calls and threads, during an outage of a
//! downstream and after it ends. Virtual time: nothing waits.
//! Prints `RELIABILITY`-style figures (`BUDGET name=value`) for BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use recovery::{Context, IssueCode, Recorder, RetryBudget, VirtualClock, retryable};

/// A downstream that is down while `DOWN` is set; counts every call.
struct Downstream {
    down: AtomicBool,
    calls: AtomicU64,
}

impl Downstream {
    fn call(&self) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            Err("503 service unavailable".into())
        } else {
            Ok(())
        }
    }
}

static WITH_BUDGET: RetryBudget = RetryBudget::new(500);

#[retryable(max_attempts = 5, base = "10ms", jitter)]
fn unbudgeted(d: &Downstream) -> Result<(), String> {
    d.call()
}

#[retryable(max_attempts = 5, base = "10ms", jitter, budget = WITH_BUDGET)]
fn budgeted(d: &Downstream) -> Result<(), String> {
    d.call()
}

fn ctx() -> (Context, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let ctx = Context::builder()
        .virtual_time(&VirtualClock::new())
        .observer(recorder.clone())
        .seed(1)
        .build();
    (ctx, recorder)
}

#[test]
fn an_outage_without_and_with_a_budget_then_recovery() {
    let (ctx, recorder) = ctx();
    let d = Downstream {
        down: AtomicBool::new(true),
        calls: AtomicU64::new(0),
    };
    // Without a budget: every call makes all five attempts.
    ctx.in_scope(|| {
        for _ in 0..1_000 {
            assert!(unbudgeted(&d).is_err());
        }
    });
    let without = d.calls.swap(0, Ordering::Relaxed);
    assert_eq!(without, 5_000);

    // With one: retries stop when the bucket is empty, first attempts go on.
    ctx.in_scope(|| {
        for _ in 0..1_000 {
            assert!(budgeted(&d).is_err());
        }
    });
    let with = d.calls.swap(0, Ordering::Relaxed);
    let bound = 1_100 + u64::from(WITH_BUDGET.capacity() / 5);
    assert!(with <= bound, "{with} attempts > {bound}");
    assert_eq!(
        with,
        1_000 + 500 / 5,
        "the initial capacity pays for 100 retries"
    );
    assert_eq!(WITH_BUDGET.available(), 0);
    let exhausted = recorder
        .issues()
        .iter()
        .filter(|i| i.error_code == IssueCode::RetryBudgetExhausted)
        .count();
    assert!(exhausted >= 900, "{exhausted}");
    println!("BUDGET outage_calls=1000");
    println!("BUDGET attempts_without_budget={without}");
    println!("BUDGET attempts_with_budget={with}");

    // The outage ends: successes refill the bucket, and retries come back.
    d.down.store(false, Ordering::Relaxed);
    ctx.in_scope(|| {
        for _ in 0..100 {
            budgeted(&d).unwrap();
        }
    });
    assert_eq!(WITH_BUDGET.available(), 100, "one token back per success");
    d.down.store(true, Ordering::Relaxed);
    d.calls.store(0, Ordering::Relaxed);
    ctx.in_scope(|| assert!(budgeted(&d).is_err()));
    assert_eq!(
        d.calls.load(Ordering::Relaxed),
        5,
        "a call retries fully again"
    );
    println!("BUDGET tokens_after_100_successes=100");
}

static SHARED: RetryBudget = RetryBudget::new(100).retry_cost(1).timeout_cost(3);

#[retryable(max_attempts = 3, base = "1ms", budget = SHARED, when = recovery::Classify::classify)]
fn io_call(kind: std::io::ErrorKind, calls: &AtomicU64) -> std::io::Result<()> {
    calls.fetch_add(1, Ordering::Relaxed);
    Err(kind.into())
}

#[test]
fn threads_share_one_budget_and_timeouts_cost_more() {
    let calls = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let calls = &calls;
            s.spawn(move || {
                let (ctx, _) = ctx();
                ctx.in_scope(|| {
                    for _ in 0..50 {
                        let kind = if t % 2 == 0 {
                            std::io::ErrorKind::TimedOut
                        } else {
                            std::io::ErrorKind::ConnectionReset
                        };
                        let _ = io_call(kind, calls);
                    }
                })
            });
        }
    });
    // 400 first attempts; retries paid from 100 tokens at 1 or 3 each.
    let retries = calls.load(Ordering::Relaxed) - 400;
    assert!((34..=100).contains(&retries), "{retries} retries");
    assert!(
        SHARED.available() < 3,
        "the bucket was drained: {}",
        SHARED.available()
    );
}
