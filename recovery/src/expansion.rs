//! Not public API: what the macros expand to, reached as
//! `::recovery::__private::...` so that a user's own names cannot shadow
//! it. Changes without notice.

pub use core::clone::Clone;
pub use core::default::Default;
pub use core::option::Option::{self, None, Some};
pub use core::result::Result::{self, Err, Ok};
pub use core::time::Duration;

pub use crate::retry::retrier::RetryState;
pub use crate::retry::{Backoff, Decision, IntoDecision, Jitter, RetryBudget, RetryPolicy};
pub use crate::step::driver::{
    StepCall, StepItem, discard_attempt_outputs, plain_step, record_attempts, run_step,
    run_step_async, step_error, step_item,
};
pub use crate::step::identity::fingerprint;
pub use crate::step::{Fingerprint, Run, StepDef, StepError, StepKey, StepResult, Verify};

/// The `&Run` behind whatever `run = ...` names (a `Run`, a `&Run`, an
/// `Arc<Run>`).
#[inline(always)]
pub fn borrow_run<R: core::borrow::Borrow<Run> + ?Sized>(run: &R) -> &Run {
    run.borrow()
}

/// The argument for one attempt: a clone, or the original on the last
/// attempt, which saves a clone (and its allocation) when there will be no
/// other attempt.
#[inline]
pub fn take_or_clone<T: RetryArgument>(slot: &mut Option<T>, last: bool) -> T {
    match (last, slot.as_ref()) {
        (false, Some(value)) => value.clone(),
        _ => match slot.take() {
            Some(value) => value,
            // The loop never starts an attempt after the last one, so the
            // slot is never empty here.
            None => unreachable!("recovery: argument taken twice"),
        },
    }
}

/// The bound on by-value arguments, with a message that says why.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `Clone`, so #[retryable] cannot hand a fresh copy to each attempt",
    label = "this argument is passed by value to every attempt",
    note = "derive or implement `Clone` for it, or take it by reference (`&{Self}`)"
)]
pub trait RetryArgument: Clone {}
impl<T: Clone> RetryArgument for T {}

/// Runs one attempt of a sync body. Typing the closure through this bound
/// (rather than a `-> T` annotation) lets elided lifetimes in `T` be
/// inferred, and tells `?` inside the body what to convert to.
#[inline(always)]
pub fn attempt<T, F: FnOnce() -> T>(body: F) -> T {
    body()
}

/// Fixes the output type of an attempt's `async` block, so `?` inside it
/// knows what to convert to.
#[inline(always)]
pub fn attempt_future<T, F: core::future::Future<Output = T>>(future: F) -> F {
    future
}

/// Runs `f` out of line: what a failed attempt does (classify, describe,
/// decide) stays out of the code a call that succeeds runs through.
#[cold]
#[inline(never)]
pub fn cold_path<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The error as the text that events and issue records carry, chosen at
/// the expansion site by autoref specialization: its `Display` where it
/// has one, else its `Debug`, else its type's name. No trait bound.
pub struct ErrorText<'a, E>(pub &'a E);

/// Text for an error, however it can be written.
pub enum Text<'a> {
    /// Through `Display`.
    Display(&'a dyn core::fmt::Display),
    /// Through `Debug`.
    Debug(&'a dyn core::fmt::Debug),
    /// Neither: the type's name.
    Name(&'static str),
}

impl core::fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Text::Display(e) => e.fmt(f),
            Text::Debug(e) => write!(f, "{e:?}"),
            Text::Name(name) => write!(f, "an error of type {name}"),
        }
    }
}

/// First choice: `Display` (the most references, found first).
pub trait ViaDisplay<'a> {
    /// The text.
    fn __recovery_error_text(&self) -> Text<'a>;
}
impl<'a, E: core::fmt::Display> ViaDisplay<'a> for &&ErrorText<'a, E> {
    #[inline(always)]
    fn __recovery_error_text(&self) -> Text<'a> {
        Text::Display(self.0)
    }
}

/// Second choice: `Debug`.
pub trait ViaDebug<'a> {
    /// The text.
    fn __recovery_error_text(&self) -> Text<'a>;
}
impl<'a, E: core::fmt::Debug> ViaDebug<'a> for &ErrorText<'a, E> {
    #[inline(always)]
    fn __recovery_error_text(&self) -> Text<'a> {
        Text::Debug(self.0)
    }
}

/// Last resort: the type's name.
pub trait ViaName<'a> {
    /// The text.
    fn __recovery_error_text(&self) -> Text<'a>;
}
impl<'a, E> ViaName<'a> for ErrorText<'a, E> {
    #[inline(always)]
    fn __recovery_error_text(&self) -> Text<'a> {
        Text::Name(core::any::type_name::<E>())
    }
}

/// The default classifier: every error is transient.
#[inline(always)]
pub fn always_retry<E: ?Sized>(_: &E) -> Decision {
    Decision::Retry
}
