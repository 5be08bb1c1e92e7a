//! The retry loop's state: counts attempts, classifies, picks delays, keeps
//! the deadline, emits `RETRY_ATTEMPTED` and the issue record on giving up.
//!
//! `#[retryable]` writes the loop into the function itself (so `&mut self`
//! and by-value arguments work) and calls a `RetryState` between attempts,
//! handing it the function's `const` policy each time. For code without
//! the attribute, [`Retrier`] keeps the policy with the state, and
//! [`retry`] and [`retry_async`] run a closure under a policy.
//!
//! Cost of success: one empty word and, only when the policy has a
//! deadline, a clock read. Nothing else happens until an attempt fails: no
//! allocation, no RNG, no context look-up.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::report::event::Event;
use crate::report::issue::{IssueCode, IssueRecord, Severity};
use crate::retry::backoff::{Jitter, Schedule};
use crate::retry::classify::Decision;
use crate::retry::context::Context;
use crate::retry::policy::RetryPolicy;
use crate::retry::time::Sleep;

/// The state of one retrying call.
#[derive(Debug)]
pub struct Retrier<'p> {
    policy: &'p RetryPolicy,
    operation: &'static str,
    /// When the first attempt started, read only when the policy has a
    /// deadline (on the context's clock).
    started: Option<Instant>,
    state: RetryState,
}

impl<'p> Retrier<'p> {
    /// Starts a call of `operation` under `policy`.
    #[inline]
    pub fn new(policy: &'p RetryPolicy, operation: &'static str) -> Self {
        Retrier {
            policy,
            operation,
            started: RetryState::start(policy),
            state: RetryState::default(),
        }
    }

    /// Whether the attempt about to start is the last one `max_attempts`
    /// allows (the deadline may still end the call sooner).
    #[inline]
    pub fn is_last_attempt(&self) -> bool {
        self.state.is_last_attempt(self.policy)
    }

    /// Records a success: gives tokens back to the policy's retry budget, if
    /// it has one (a full budget is only read). Nothing else happens.
    #[inline]
    pub fn succeeded(&self) {
        self.state.succeeded(self.policy);
    }

    /// Attempts made so far (failed ones).
    pub fn failed_attempts(&self) -> u32 {
        self.state.failed_attempts()
    }

    /// The delays slept (or about to be slept) between attempts so far.
    pub fn slept(&self) -> Duration {
        self.state.slept()
    }

    /// Records a failed attempt and decides: `Some(delay)` to retry after
    /// `delay`, `None` to give up (the issue record is already reported).
    pub fn on_failure(&mut self, error: &dyn Display, decision: Decision) -> Option<Duration> {
        let call = (self.policy, self.operation, self.started);
        self.state.on_failure(call, error, decision)
    }

    /// [`on_failure`](Self::on_failure), then blocks for the delay. Returns
    /// whether to try again.
    pub fn retry_blocking(&mut self, error: &dyn Display, decision: Decision) -> bool {
        let call = (self.policy, self.operation, self.started);
        self.state.retry_blocking(call, error, decision)
    }

    /// [`on_failure`](Self::on_failure), then the future that waits for the
    /// delay, or `None` to give up.
    pub fn retry_async(&mut self, error: &dyn Display, decision: Decision) -> Option<Sleep> {
        let call = (self.policy, self.operation, self.started);
        self.state.retry_async(call, error, decision)
    }
}

/// A [`Retrier`] without its policy, name and start, which each call is
/// given instead. `#[retryable]` keeps this in the function and passes its
/// `const` policy at each call (and a start only when it has a deadline),
/// so what the policy does not use (a budget, a deadline) folds away at
/// compile time, even in an async fn's future, where a stored policy
/// reference would be read back from memory after every attempt. One word
/// until the first failure. Not public API.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RetryState {
    /// Everything the failure path needs, made on the first failure.
    slow: Option<Box<Slow>>,
}

/// What a failure needs to know of the call: its policy, its name, and
/// when its first attempt started if the policy has a deadline.
pub type Call<'p> = (&'p RetryPolicy, &'static str, Option<Instant>);

#[derive(Debug)]
struct Slow {
    /// Attempts that have failed so far.
    failed: u32,
    ctx: Context,
    schedule: Schedule,
    /// When timing started: the first attempt's start with a deadline, the
    /// first failure without one.
    start: Instant,
    slept: Duration,
    /// Tokens taken from the policy's retry budget, given back on success.
    taken: u32,
}

impl RetryState {
    /// When a call under `policy` starts: the clock, read only when the
    /// policy has a deadline.
    #[inline(always)]
    pub fn start(policy: &RetryPolicy) -> Option<Instant> {
        policy.deadline().map(|_| Context::stamp_in_force())
    }

    /// See [`Retrier::is_last_attempt`].
    #[inline(always)]
    pub fn is_last_attempt(&self, policy: &RetryPolicy) -> bool {
        self.failed_attempts() + 1 >= policy.attempts()
    }

    /// Whether a call's first attempt is also its last (`max_attempts = 1`),
    /// known before any state exists.
    #[inline(always)]
    pub fn first_is_last(policy: &RetryPolicy) -> bool {
        RetryState::default().is_last_attempt(policy)
    }

    /// [`succeeded`](Self::succeeded) for a call whose first attempt
    /// succeeded, with no state made: an async fn's future then holds none.
    #[inline(always)]
    pub fn first_succeeded(policy: &RetryPolicy) {
        RetryState::default().succeeded(policy);
    }

    /// See [`Retrier::succeeded`].
    #[inline(always)]
    pub fn succeeded(&self, policy: &RetryPolicy) {
        if let Some(budget) = policy.retry_budget() {
            budget.on_success(self.slow.as_ref().map(|s| s.taken).filter(|t| *t > 0));
        }
    }

    /// See [`Retrier::failed_attempts`].
    #[inline(always)]
    pub fn failed_attempts(&self) -> u32 {
        self.slow.as_ref().map_or(0, |s| s.failed)
    }

    /// See [`Retrier::slept`].
    pub fn slept(&self) -> Duration {
        self.slow.as_ref().map_or(Duration::ZERO, |s| s.slept)
    }

    /// See [`Retrier::on_failure`].
    #[cold]
    pub fn on_failure(
        &mut self,
        (policy, operation, started): Call<'_>,
        error: &dyn Display,
        decision: Decision,
    ) -> Option<Duration> {
        let slow = self.slow.get_or_insert_with(|| {
            let ctx = Context::current();
            let start = match started {
                Some(start) => start,
                None => ctx.stamp(),
            };
            let backoff = *policy.schedule();
            let seed = match backoff.jitter_kind() {
                Jitter::None => 0,
                _ => ctx.jitter_seed(operation),
            };
            Box::new(Slow {
                failed: 0,
                ctx,
                schedule: backoff.schedule(seed),
                start,
                slept: Duration::ZERO,
                taken: 0,
            })
        });
        slow.failed += 1;
        let elapsed = slow.ctx.since(slow.start);

        let verdict = if !decision.is_transient() {
            Err(IssueCode::PermanentError)
        } else if slow.failed >= policy.attempts() {
            Err(IssueCode::MaxRetriesExceeded)
        } else {
            let delay = slow.schedule.next_delay(decision.hint());
            match (policy.deadline(), policy.retry_budget()) {
                // Sleeping until (or past) the deadline would only lead to an
                // attempt that is not allowed to start: stop now instead.
                (Some(max), _) if elapsed.saturating_add(delay) >= max => {
                    Err(IssueCode::DeadlineExceeded)
                }
                (_, Some(budget)) => {
                    let cost = budget.cost(decision == Decision::Timeout);
                    if budget.try_acquire(cost) {
                        slow.taken += cost;
                        Ok(delay)
                    } else {
                        Err(IssueCode::RetryBudgetExhausted)
                    }
                }
                _ => Ok(delay),
            }
        };

        match verdict {
            Ok(delay) => {
                slow.ctx.emit(&Event::RetryAttempted {
                    operation: operation.to_owned(),
                    item: slow.ctx.item().cloned(),
                    attempt: slow.failed,
                    error: error.to_string(),
                    delay_ns: nanos(delay),
                    elapsed_ns: nanos(elapsed),
                });
                slow.slept = slow.slept.saturating_add(delay);
                Some(delay)
            }
            Err(code) => {
                slow.ctx.report(&IssueRecord {
                    error_code: code,
                    severity: Severity::Blocker,
                    operation: operation.to_owned(),
                    item: slow.ctx.item().cloned(),
                    attempts: slow.failed,
                    slept_ns: nanos(slow.slept),
                    last_error: error.to_string(),
                });
                None
            }
        }
    }

    /// See [`Retrier::retry_blocking`].
    #[cold]
    pub fn retry_blocking(
        &mut self,
        call: Call<'_>,
        error: &dyn Display,
        decision: Decision,
    ) -> bool {
        match self.on_failure(call, error, decision) {
            Some(delay) => {
                if let Some(slow) = &self.slow {
                    slow.ctx.sleep_blocking(delay);
                }
                true
            }
            None => false,
        }
    }

    /// See [`Retrier::retry_async`].
    #[cold]
    pub fn retry_async(
        &mut self,
        call: Call<'_>,
        error: &dyn Display,
        decision: Decision,
    ) -> Option<Sleep> {
        let delay = self.on_failure(call, error, decision)?;
        self.slow.as_ref().map(|slow| slow.ctx.sleep(delay))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Calls `op` until it succeeds or `policy` gives up, retrying every error
/// for which `classify` says transient; returns the last error unchanged.
///
/// ```
/// use recovery::{retry, Decision, RetryPolicy};
///
/// const POLICY: RetryPolicy = RetryPolicy::new().max_attempts(2);
/// let mut calls = 0;
/// let r: Result<(), &str> = retry(&POLICY, "demo", |_| Decision::Permanent, || {
///     calls += 1;
///     Err("bad input")
/// });
/// assert_eq!((r, calls), (Err("bad input"), 1));
/// ```
pub fn retry<T, E: Display>(
    policy: &RetryPolicy,
    operation: &'static str,
    mut classify: impl FnMut(&E) -> Decision,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut retrier = Retrier::new(policy, operation);
    loop {
        match op() {
            Ok(v) => {
                retrier.succeeded();
                return Ok(v);
            }
            Err(e) => {
                let decision = classify(&e);
                if !retrier.retry_blocking(&e, decision) {
                    return Err(e);
                }
            }
        }
    }
}

/// The async form of [`retry`]: `op` makes a fresh future per attempt.
pub async fn retry_async<T, E: Display, Fut: Future<Output = Result<T, E>>>(
    policy: &RetryPolicy,
    operation: &'static str,
    mut classify: impl FnMut(&E) -> Decision,
    mut op: impl FnMut() -> Fut,
) -> Result<T, E> {
    let mut retrier = Retrier::new(policy, operation);
    loop {
        match op().await {
            Ok(v) => {
                retrier.succeeded();
                return Ok(v);
            }
            Err(e) => {
                let decision = classify(&e);
                match retrier.retry_async(&e, decision) {
                    Some(sleep) => sleep.await,
                    None => return Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::report::observer::Recorder;
    use crate::retry::backoff::Backoff;
    use crate::retry::time::VirtualClock;

    const MS: Duration = Duration::from_millis(1);

    struct Harness {
        clock: VirtualClock,
        recorder: Arc<Recorder>,
        ctx: Context,
    }

    fn harness() -> Harness {
        let clock = VirtualClock::new();
        let recorder = Arc::new(Recorder::default());
        let ctx = Context::builder()
            .virtual_time(&clock)
            .observer(recorder.clone())
            .seed(1)
            .build();
        Harness {
            clock,
            recorder,
            ctx,
        }
    }

    /// Runs `retry` over a scripted list of outcomes; returns the result and
    /// the number of calls.
    fn run(
        h: &Harness,
        policy: &RetryPolicy,
        script: &[Result<u32, Decision>],
        work: Duration,
    ) -> (Result<u32, String>, usize) {
        let mut calls = 0;
        let r = h.ctx.in_scope(|| {
            retry(
                policy,
                "scripted",
                |e: &String| {
                    if e.starts_with("permanent") {
                        Decision::Permanent
                    } else if let Some(ms) = e.strip_prefix("after ") {
                        Decision::RetryAfter(MS * ms.parse::<u32>().unwrap_or(0))
                    } else {
                        Decision::Retry
                    }
                },
                || {
                    let step = script.get(calls).copied().unwrap_or(Ok(0));
                    calls += 1;
                    h.clock.advance(work);
                    step.map_err(|d| match d {
                        Decision::Permanent => "permanent".to_string(),
                        Decision::RetryAfter(x) => format!("after {}", x.as_millis()),
                        Decision::Retry | Decision::Timeout => format!("transient {calls}"),
                    })
                },
            )
        });
        (r, calls)
    }

    #[test]
    fn the_retry_state_stays_small_until_a_failure() {
        // What a call (and an async fn's future) carries on the path that
        // succeeds; the failure state is boxed on the first failure.
        assert!(std::mem::size_of::<RetryState>() <= 8);
        assert!(std::mem::size_of::<Retrier<'static>>() <= 48);
    }

    #[test]
    fn max_attempts_counts_every_call_including_the_first() {
        let h = harness();
        let policy = RetryPolicy::new().max_attempts(4);
        let (r, calls) = run(&h, &policy, &[Err(Decision::Retry); 10], Duration::ZERO);
        assert_eq!(r, Err("transient 4".into()));
        assert_eq!(calls, 4);
        assert_eq!(h.clock.slept(), [100 * MS, 200 * MS, 400 * MS]);
        let issues = h.recorder.issues();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].error_code, IssueCode::MaxRetriesExceeded);
        assert_eq!(issues[0].attempts, 4);
        assert_eq!(issues[0].slept_ns, 700_000_000);
        assert_eq!(issues[0].last_error, "transient 4");
    }

    #[test]
    fn success_after_failures_returns_the_value_and_emits_one_event_per_retry() {
        let h = harness();
        let policy = RetryPolicy::new().max_attempts(5);
        let script = [Err(Decision::Retry), Err(Decision::Retry), Ok(7)];
        let (r, calls) = run(&h, &policy, &script, Duration::ZERO);
        assert_eq!((r, calls), (Ok(7), 3));
        let events = h.recorder.events();
        assert_eq!(events.len(), 2);
        match &events[1] {
            Event::RetryAttempted {
                operation,
                attempt,
                error,
                delay_ns,
                ..
            } => {
                assert_eq!(operation, "scripted");
                assert_eq!(*attempt, 2);
                assert_eq!(error, "transient 2");
                assert_eq!(*delay_ns, 200_000_000);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(h.recorder.issues().is_empty());
    }

    #[test]
    fn a_permanent_error_is_returned_at_once() {
        let h = harness();
        let policy = RetryPolicy::new().max_attempts(5);
        let script = [Err(Decision::Retry), Err(Decision::Permanent), Ok(1)];
        let (r, calls) = run(&h, &policy, &script, Duration::ZERO);
        assert_eq!((r, calls), (Err("permanent".into()), 2));
        assert_eq!(h.recorder.issues()[0].error_code, IssueCode::PermanentError);
        assert_eq!(h.clock.slept().len(), 1);
    }

    #[test]
    fn the_deadline_stops_before_a_sleep_would_cross_it() {
        let h = harness();
        // Delays 100, 200, 400, 800 ms; each attempt takes 50 ms.
        let policy = RetryPolicy::new()
            .max_attempts(10)
            .max_elapsed(Duration::from_millis(1000));
        let (r, calls) = run(&h, &policy, &[Err(Decision::Retry); 10], 50 * MS);
        assert!(r.is_err());
        // t=50 fail, sleep 100 -> 150; 200 fail, sleep 200 -> 400; 450 fail,
        // 450 + 400 = 850 < 1000, sleep -> 850; 900 fail, 900 + 800 >= 1000: stop.
        assert_eq!(calls, 4);
        assert_eq!(h.clock.slept(), [100 * MS, 200 * MS, 400 * MS]);
        assert!(h.clock.now() <= Duration::from_millis(1000));
        assert_eq!(
            h.recorder.issues()[0].error_code,
            IssueCode::DeadlineExceeded
        );
    }

    #[test]
    fn an_attempt_ending_after_the_deadline_is_not_followed_by_another() {
        let h = harness();
        let policy = RetryPolicy::new()
            .max_attempts(10)
            .max_elapsed(Duration::from_millis(100));
        let (_, calls) = run(&h, &policy, &[Err(Decision::Retry); 10], 150 * MS);
        assert_eq!(calls, 1);
        assert!(h.clock.slept().is_empty());
    }

    #[test]
    fn retry_after_hints_are_honoured_within_the_cap() {
        let h = harness();
        let policy = RetryPolicy::new()
            .max_attempts(3)
            .backoff(Backoff::new(10 * MS).max_delay(500 * MS));
        let script = [
            Err(Decision::RetryAfter(300 * MS)),
            Err(Decision::RetryAfter(9000 * MS)),
            Ok(1),
        ];
        let (r, _) = run(&h, &policy, &script, Duration::ZERO);
        assert_eq!(r, Ok(1));
        assert_eq!(h.clock.slept(), [300 * MS, 500 * MS]);
    }

    #[test]
    fn seeded_jitter_is_reproducible_across_contexts() {
        let policy = RetryPolicy::new()
            .max_attempts(6)
            .backoff(Backoff::new(100 * MS).jitter(Jitter::Full));
        let slept = || {
            let h = harness();
            let (r, _) = run(&h, &policy, &[Err(Decision::Retry); 6], Duration::ZERO);
            assert!(r.is_err());
            h.clock.slept()
        };
        let a = slept();
        assert_eq!(a.len(), 5);
        assert_eq!(a, slept());
        assert_ne!(a, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1600 * MS]);
    }

    #[tokio::test]
    async fn async_retry_uses_virtual_time() {
        use crate::retry::context::WithContext;
        let h = harness();
        let policy = RetryPolicy::new().max_attempts(3);
        let mut calls = 0;
        let r: Result<(), String> = retry_async(
            &policy,
            "async",
            |_| Decision::Retry,
            || {
                calls += 1;
                async { Err("down".to_string()) }
            },
        )
        .with_context(h.ctx.clone())
        .await;
        assert_eq!(r, Err("down".into()));
        assert_eq!(calls, 3);
        assert_eq!(h.clock.slept(), [100 * MS, 200 * MS]);
    }

    #[tokio::test]
    async fn async_retry_really_sleeps_on_tokio_without_virtual_time() {
        let policy = RetryPolicy::new().max_attempts(2).backoff(Backoff::new(MS));
        let started = std::time::Instant::now();
        let mut calls = 0;
        let r: Result<(), &str> = retry_async(
            &policy,
            "sleepy",
            |_| Decision::Retry,
            || {
                calls += 1;
                async { Err("x") }
            },
        )
        .await;
        assert_eq!((r, calls), (Err("x"), 2));
        assert!(started.elapsed() >= MS);
    }
}
