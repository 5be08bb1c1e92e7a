//! A retry policy: how many attempts, how long to wait between them, and the
//! wall-clock deadline. A `Copy` value built by `const fn`s; `#[retryable]`
//! expands to a `const` of this type.

use std::time::Duration;

use crate::retry::backoff::Backoff;
use crate::retry::budget::RetryBudget;

/// The default number of attempts (the first call included): 3.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// How a retrying call behaves when it fails.
///
/// ```
/// use std::time::Duration;
/// use recovery::{Backoff, Jitter, RetryPolicy};
///
/// const POLICY: RetryPolicy = RetryPolicy::new()
///     .max_attempts(5)
///     .backoff(Backoff::new(Duration::from_millis(200)).jitter(Jitter::Full))
///     .max_elapsed(Duration::from_secs(10));
/// assert_eq!(POLICY.attempts(), 5);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    max_elapsed: Option<Duration>,
    budget: Option<&'static RetryBudget>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// Three attempts, the default [`Backoff`], no deadline.
    pub const fn new() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::new(crate::retry::backoff::DEFAULT_BASE),
            max_elapsed: None,
            budget: None,
        }
    }

    /// Sets how many calls may be made in all, the first one included.
    ///
    /// # Panics
    /// When `max_attempts` is 0 (a compile error in a `const`).
    pub const fn max_attempts(mut self, max_attempts: u32) -> Self {
        assert!(
            max_attempts >= 1,
            "RetryPolicy::max_attempts must be at least 1"
        );
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the schedule of delays between attempts.
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets a wall-clock deadline counted from the start of the first
    /// attempt: no sleep runs past it and no attempt starts after it.
    pub const fn max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// Shares `budget` with every other policy that names it: retries take
    /// tokens from it, and stop (the first attempt still runs) when it is
    /// empty.
    pub const fn budget(mut self, budget: &'static RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The shared retry budget, if any.
    pub const fn retry_budget(&self) -> Option<&'static RetryBudget> {
        self.budget
    }

    /// The number of attempts allowed, the first included.
    pub const fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The schedule of delays.
    pub const fn schedule(&self) -> &Backoff {
        &self.backoff
    }

    /// The deadline, if any.
    pub const fn deadline(&self) -> Option<Duration> {
        self.max_elapsed
    }
}
