//! The retry side: how long to wait (backoff and jitter), when to stop
//! (policy, budget), what an error means (classify), the loop that puts
//! them together, and the context it reports to and tells time by.

pub(crate) mod backoff;
pub(crate) mod budget;
pub(crate) mod classify;
pub(crate) mod context;
pub(crate) mod policy;
pub(crate) mod retrier;
pub(crate) mod time;

pub use backoff::{Backoff, DEFAULT_BASE, DEFAULT_MAX_DELAY, DEFAULT_MULTIPLIER, Jitter, Schedule};
pub use budget::RetryBudget;
pub use classify::{Classify, Decision, IntoDecision};
pub use context::{Context, ContextBuilder, GlobalAlreadySet, WithContext};
pub use policy::{DEFAULT_MAX_ATTEMPTS, RetryPolicy};
pub use retrier::{Retrier, retry, retry_async};
pub use time::{Sleep, Sleeper, VirtualClock};
