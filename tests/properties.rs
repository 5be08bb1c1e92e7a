//! Property tests of the retry loop over random policies and random
//! failure sequences, under virtual time:
//! - never more calls than `max_attempts`;
//! - no delay above `max_delay`;
//! - no sleep past `max_elapsed`, and no attempt started after it;
//! - a permanent error is never retried;
//! - the result is the last attempt's, and giving up is reported once with
//!   the right code.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use recovery::{
    Backoff, Context, Decision, IssueCode, Jitter, Recorder, RetryPolicy, VirtualClock, retry,
};

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ok,
    Transient,
    Permanent,
    RetryAfter(u64),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        1 => Just(Outcome::Ok),
        6 => Just(Outcome::Transient),
        1 => Just(Outcome::Permanent),
        2 => (0u64..5_000).prop_map(Outcome::RetryAfter),
    ]
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
    ]
}

/// The error of attempt `index`, scripted as `outcome`.
#[derive(Debug)]
struct Failed(Outcome, usize);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} on attempt {}", self.0, self.1 + 1)
    }
}

#[derive(Debug, Clone)]
struct Case {
    max_attempts: u32,
    base_ms: u64,
    multiplier: f64,
    max_delay_ms: u64,
    max_elapsed_ms: Option<u64>,
    jitter: Jitter,
    seed: u64,
    script: Vec<(Outcome, u64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1u32..12,
        1u64..1_000,
        1.0f64..4.0,
        0u64..10_000,
        proptest::option::of(0u64..20_000),
        jitter(),
        any::<u64>(),
        proptest::collection::vec((outcome(), 0u64..500), 1..16),
    )
        .prop_map(
            |(max_attempts, base_ms, multiplier, extra, elapsed, jitter, seed, script)| Case {
                max_attempts,
                base_ms,
                multiplier,
                max_delay_ms: base_ms + extra,
                max_elapsed_ms: elapsed.map(|e| base_ms + e),
                jitter,
                seed,
                script,
            },
        )
}

const CASES: u32 = 2_000;

/// Checks one random policy against one random failure sequence.
fn keeps_every_limit(case: Case) -> Result<(), TestCaseError> {
    let ms = Duration::from_millis;
    let backoff = Backoff::new(ms(case.base_ms))
        .multiplier(case.multiplier)
        .max_delay(ms(case.max_delay_ms))
        .jitter(case.jitter);
    let mut policy = RetryPolicy::new()
        .max_attempts(case.max_attempts)
        .backoff(backoff);
    if let Some(e) = case.max_elapsed_ms {
        policy = policy.max_elapsed(ms(e));
    }

    let clock = VirtualClock::new();
    let recorder = Arc::new(Recorder::default());
    let ctx = Context::builder()
        .virtual_time(&clock)
        .observer(recorder.clone())
        .seed(case.seed)
        .build();

    let mut starts = Vec::new();
    let mut outcomes = Vec::new();
    let result: Result<usize, Failed> = ctx.in_scope(|| {
        retry(
            &policy,
            "prop",
            |Failed(o, _): &Failed| match o {
                Outcome::Permanent => Decision::Permanent,
                Outcome::RetryAfter(h) => Decision::RetryAfter(ms(*h)),
                _ => Decision::Retry,
            },
            || {
                let i = starts.len();
                starts.push(clock.now());
                let (o, work) = case.script.get(i).copied().unwrap_or((Outcome::Ok, 0));
                outcomes.push(o);
                clock.advance(ms(work));
                match o {
                    Outcome::Ok => Ok(i),
                    other => Err(Failed(other, i)),
                }
            },
        )
    });
    let calls = starts.len();

    prop_assert!(
        calls as u32 <= case.max_attempts,
        "{} calls > {}",
        calls,
        case.max_attempts
    );
    for d in clock.slept() {
        prop_assert!(d <= ms(case.max_delay_ms), "slept {:?} > max_delay", d);
    }
    if let Some(e) = case.max_elapsed_ms {
        for start in &starts[1..] {
            prop_assert!(
                *start < ms(e),
                "an attempt started at {:?}, after the deadline",
                start
            );
        }
        // Each sleep ends when the next attempt starts: checked above,
        // so no sleep ran past the deadline either.
    }
    // A permanent error is the last call.
    if let Some(p) = outcomes
        .iter()
        .position(|o| matches!(o, Outcome::Permanent))
    {
        prop_assert_eq!(p + 1, calls);
    }
    // The result is the last attempt's.
    match (&result, outcomes.last()) {
        (Ok(i), Some(Outcome::Ok)) => {
            prop_assert_eq!(*i + 1, calls);
            prop_assert!(recorder.issues().is_empty());
        }
        (Err(Failed(o, i)), Some(last)) => {
            prop_assert_eq!(*i + 1, calls);
            prop_assert_eq!(format!("{o:?}"), format!("{last:?}"));
            let issues = recorder.issues();
            prop_assert_eq!(issues.len(), 1);
            let expected = match o {
                Outcome::Permanent => IssueCode::PermanentError,
                _ if calls as u32 == case.max_attempts => IssueCode::MaxRetriesExceeded,
                _ => IssueCode::DeadlineExceeded,
            };
            prop_assert_eq!(issues[0].error_code, expected);
            prop_assert_eq!(issues[0].attempts as usize, calls);
        }
        other => prop_assert!(false, "result and script disagree: {:?}", other),
    }
    // One RETRY_ATTEMPTED per sleep.
    prop_assert_eq!(recorder.events().len(), clock.slept().len());
    prop_assert_eq!(clock.slept().len() + 1, calls);
    Ok(())
}

#[test]
fn the_loop_keeps_every_limit() {
    let mut runner = TestRunner::new(ProptestConfig::with_cases(CASES));
    runner.run(&case(), keeps_every_limit).unwrap();
    println!("RELIABILITY retry_policy_cases={CASES}");
    println!("RELIABILITY retry_limit_violations=0");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn same_seed_same_failures_same_delays(seed in any::<u64>(), j in jitter(), n in 1u32..10) {
        let policy = RetryPolicy::new()
            .max_attempts(n)
            .backoff(Backoff::new(Duration::from_millis(10)).jitter(j));
        let run = || {
            let clock = VirtualClock::new();
            let ctx = Context::builder().virtual_time(&clock).seed(seed).build();
            let _: Result<(), String> =
                ctx.in_scope(|| retry(&policy, "det", |_| Decision::Retry, || Err("down".into())));
            clock.slept()
        };
        let a = run();
        prop_assert_eq!(a.len() as u32, n - 1);
        prop_assert_eq!(a, run());
    }
}
