//! The step driver: what `#[resumable_step]` expands to. Before the body,
//! the step is registered and its marker checked (and checked again under
//! the lease: another process may have finished it meanwhile); a done step
//! returns its recorded value. Otherwise the body runs with the step
//! current, and its result is committed or its failure recorded.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::RunError;
use crate::report::event::Event;
use crate::report::issue::{IssueCode, IssueRecord, Severity};
use crate::retry::context::{Context, WithContext};
use crate::step::commit::StepExecution;
use crate::step::identity::{Fingerprint, StepDef};
use crate::step::instance::StepId;
use crate::step::marker::MarkerState;
use crate::step::run::Run;
use crate::step::staging::Active;
use crate::step::state::StepState;
use crate::step::store::StoredMarker;

/// A step function's error type: it must carry a [`RunError`] (the step
/// fails with one when its outputs cannot be committed) and have a text.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` of a #[resumable_step] must implement `From<recovery::RunError>` and `Display`",
    label = "a step fails with a RunError when its outputs cannot be committed, so its error type must hold one",
    note = "add `impl From<recovery::RunError> for {Self}` (e.g. a variant `Run(recovery::RunError)`), or return `std::io::Result` / `anyhow::Result`, which have it"
)]
pub trait StepError: From<RunError> + Display {}
impl<E: From<RunError> + Display> StepError for E {}

/// A step function's return type: `Result<T, E>` with a serialisable `T`
/// and an `E` that can carry a [`RunError`].
#[diagnostic::on_unimplemented(
    message = "a #[resumable_step] must return `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<recovery::RunError> + Display`; `{Self}` is not such a type",
    label = "the step's value is recorded in its marker and its errors must hold a RunError",
    note = "derive serde's Serialize and Deserialize for the value, and add a `From<recovery::RunError>` conversion to the error (std::io::Error and anyhow::Error have one)"
)]
pub trait StepResult: Sized {
    /// `T`.
    type Value: Serialize + DeserializeOwned;
    /// `E`.
    type Error: From<RunError> + Display;
    /// Splits it.
    fn into_result(self) -> Result<Self::Value, Self::Error>;
    /// Builds it.
    fn from_result(r: Result<Self::Value, Self::Error>) -> Self;
}

impl<T, E> StepResult for Result<T, E>
where
    T: Serialize + DeserializeOwned,
    E: StepError,
{
    type Value = T;
    type Error = E;

    fn into_result(self) -> Self {
        self
    }

    fn from_result(r: Self) -> Self {
        r
    }
}

/// One call of a step, as the expansion describes it: the step, which
/// instance, and the fingerprint of the call's key.
pub struct StepCall<'a> {
    /// The step.
    pub def: &'a StepDef,
    /// Which instance ([`plain_step`] or [`step_item`]).
    pub instance: Result<Instance, RunError>,
    /// The key's fingerprint ([`fingerprint`](crate::step::identity::fingerprint)).
    pub fingerprint: Result<Fingerprint, RunError>,
}

/// Which instance a call is, and its item as JSON: what
/// [`plain_step`] and [`step_item`] give the expansion.
pub type Instance = (StepId, Option<Value>);

/// The instance of a plain step (no `item = ...`).
pub fn plain_step(name: &str) -> Result<Instance, RunError> {
    Ok((StepId::plain(name)?, None))
}

/// The instance of a family's step for `item` (`item = ...`), with a
/// bound that names the item when it is not serialisable.
pub fn step_item<I: StepItem + ?Sized>(name: &str, item: &I) -> Result<Instance, RunError> {
    let (id, value) = StepId::item(name, item)?;
    Ok((id, Some(value)))
}

/// A family's item: serialised to JSON, which identifies the instance.
#[diagnostic::on_unimplemented(
    message = "the item `{Self}` of a #[resumable_step] must implement `serde::Serialize`",
    label = "the item is serialised (as JSON) to tell one instance of the step from another",
    note = "derive `serde::Serialize` for it, or name the item by a value that has it (a string, a number, a tuple of them)"
)]
pub trait StepItem: Serialize {}
impl<I: Serialize + ?Sized> StepItem for I {}

enum Prepared<T> {
    Resumed(T),
    Run(StepExecution),
}

/// Registers the step, checks its marker, and if it is not done takes the
/// lock and checks again (another process may have finished it meanwhile).
fn prepare<T: DeserializeOwned>(
    run: &Run,
    def: &StepDef,
    state: &StepState,
    fingerprint: &Fingerprint,
    ctx: &Context,
) -> Result<Prepared<T>, RunError> {
    run.register(def.name, def.site, def.family)?;
    let value_of = |(marker, fetched): (MarkerState, u64)| -> Result<(T, u64), Option<String>> {
        match marker {
            MarkerState::Valid(m) => match serde_json::from_value(m.value) {
                Ok(value) => Ok((value, fetched)),
                Err(e) => Err(Some(format!(
                    "the recorded value no longer reads as the step's type ({e})"
                ))),
            },
            MarkerState::Invalid(reason) => Err(Some(reason)),
            MarkerState::Missing => Err(None),
        }
    };
    let resumed = |(value, fetched)| {
        ctx.emit(&Event::StepResumed {
            step: def.name.to_owned(),
            item: state.item().cloned(),
            fetched,
        });
        Ok(Prepared::Resumed(value))
    };
    let before = run.store().read_marker(state.id())?;
    let missing = matches!(before, StoredMarker::Missing);
    if let Ok(found) = value_of(state.check_stored(before, fingerprint, def.verify)?) {
        return resumed(found);
    }
    // Under the lease, the marker read when it was taken decides.
    let (execution, stored) = state.begin_seen(missing.then_some(StoredMarker::Missing))?;
    match value_of(state.check_stored(stored, fingerprint, def.verify)?) {
        Ok(found) => resumed(found),
        Err(reason) => {
            if let Some(reason) = reason {
                ctx.emit(&Event::MarkerInvalid {
                    step: def.name.to_owned(),
                    item: state.item().cloned(),
                    reason,
                });
            }
            Ok(Prepared::Run(execution))
        }
    }
}

/// Commits a successful body, or records the failure.
fn finish<R: StepResult>(
    def: &StepDef,
    fingerprint: &Fingerprint,
    execution: StepExecution,
    outcome: R,
    ctx: &Context,
) -> R {
    let active = Arc::clone(&execution.active);
    let result = match outcome.into_result() {
        Ok(value) => {
            match execution.commit_with(fingerprint, def.version, def.site, &value, def.verify) {
                Ok(marker) => {
                    ctx.emit(&Event::StepCompleted {
                        step: def.name.to_owned(),
                        item: active.item.clone(),
                        outputs: marker.outputs.len() as u32,
                    });
                    return R::from_result(Ok(value));
                }
                Err(e @ (RunError::CommitConflict { .. } | RunError::LeaseLost { .. })) => {
                    // Another worker committed (or is committing) the step:
                    // its result, once it holds, is this call's result too.
                    let state = active.run.step_of(active.step.clone(), active.item.clone());
                    let won = state.check_fetching(fingerprint, def.verify).ok().and_then(
                        |(marker, fetched)| match marker {
                            MarkerState::Valid(m) => serde_json::from_value::<R::Value>(m.value)
                                .ok()
                                .map(|v| (v, fetched)),
                            _ => None,
                        },
                    );
                    if let Some((value, fetched)) = won {
                        ctx.emit(&Event::StepResumed {
                            step: def.name.to_owned(),
                            item: active.item.clone(),
                            fetched,
                        });
                        return R::from_result(Ok(value));
                    }
                    report_failure(ctx, def, Failed::Ran(&active), &e);
                    <R::Error as From<RunError>>::from(e)
                }
                Err(e) => {
                    report_failure(ctx, def, Failed::Ran(&active), &e);
                    <R::Error as From<RunError>>::from(e)
                }
            }
        }
        Err(e) => {
            drop(execution);
            report_failure(ctx, def, Failed::Ran(&active), &e);
            e
        }
    };
    R::from_result(Err(result))
}

/// How far a failed step got.
enum Failed<'a> {
    /// Its body ran (and maybe retried) in this execution.
    Ran(&'a Active),
    /// It failed before its body, for this item (if known).
    Before(Option<&'a Value>),
}

fn report_failure(ctx: &Context, def: &StepDef, failed: Failed<'_>, error: &dyn Display) {
    let (attempts, slept_ns, item) = match failed {
        Failed::Ran(a) => (
            a.attempts.load(Ordering::Relaxed),
            a.slept_ns.load(Ordering::Relaxed),
            a.item.clone(),
        ),
        Failed::Before(item) => (1, 0, item.cloned()),
    };
    ctx.report(&IssueRecord {
        error_code: IssueCode::StepFailed,
        severity: Severity::Blocker,
        operation: def.name.to_owned(),
        item,
        attempts,
        slept_ns,
        last_error: error.to_string(),
    });
}

/// What `#[resumable_step]` runs before each retried attempt of its body:
/// drops every output the failed attempt declared.
pub fn discard_attempt_outputs(run: &Run) -> Result<(), RunError> {
    Active::current(run)?.discard()
}

/// What `#[resumable_step]` runs when the `#[retryable]` under it gives
/// up: the step's `STEP_FAILED` record carries these figures.
pub fn record_attempts(run: &Run, attempts: u32, slept: std::time::Duration) {
    if let Ok(active) = Active::current(run) {
        active.attempts.store(attempts.max(1), Ordering::Relaxed);
        let ns = u64::try_from(slept.as_nanos()).unwrap_or(u64::MAX);
        active.slept_ns.store(ns, Ordering::Relaxed);
    }
}

/// A step's own error type made from a [`RunError`].
pub fn step_error<R: StepResult>(error: RunError) -> R {
    R::from_result(Err(error.into()))
}

/// What a step does before its body, sync or async: the step's result
/// already (resumed, or failed to start), or the run's context and the
/// execution to run the body in.
fn start<R: StepResult>(
    run: &Run,
    call: StepCall<'_>,
) -> Result<(Context, Fingerprint, StepExecution), R> {
    let StepCall {
        def,
        instance,
        fingerprint,
    } = call;
    let fail = |item: Option<&Value>, e: RunError| {
        let ctx = run.context(&Context::current(), item.cloned());
        report_failure(&ctx, def, Failed::Before(item), &e);
        Err(R::from_result(Err(e.into())))
    };
    let (state, fp) = match (instance, fingerprint) {
        (Ok((id, item)), Ok(fp)) => (run.step_of(id, item), fp),
        (Ok((_, item)), Err(e)) => return fail(item.as_ref(), e),
        (Err(e), _) => return fail(None, e),
    };
    // Retries in the body name its item.
    let ctx = run.context(&Context::current(), state.item().cloned());
    match ctx.in_scope(|| prepare::<R::Value>(run, def, &state, &fp, &ctx)) {
        Err(e) => fail(state.item(), e),
        Ok(Prepared::Resumed(value)) => Err(R::from_result(Ok(value))),
        Ok(Prepared::Run(execution)) => Ok((ctx, fp, execution)),
    }
}

/// Runs a step: returns its recorded value if it is done, else runs `body`
/// with the step current, commits its outputs and writes its marker.
/// What `#[resumable_step]` expands to for a sync function.
pub fn run_step<R: StepResult, F: FnOnce() -> R>(run: &Run, call: StepCall<'_>, body: F) -> R {
    let def = call.def;
    match start::<R>(run, call) {
        Ok((ctx, fp, execution)) => {
            let outcome = execution.in_scope(|| ctx.in_scope(body));
            finish(def, &fp, execution, outcome, &ctx)
        }
        Err(result) => result,
    }
}

/// The async form of [`run_step`]: `body` is polled with the step current
/// and the run's context in force, on whichever thread polls it.
pub async fn run_step_async<R: StepResult, F: Future<Output = R>>(
    run: &Run,
    call: StepCall<'_>,
    body: F,
) -> R {
    let def = call.def;
    let started = start::<R>(run, call);
    let (ctx, fp, execution) = match started {
        Ok(started) => started,
        Err(result) => return result,
    };
    let in_step = execution.active.scoped(body.with_context(ctx.clone()));
    finish(def, &fp, execution, in_step.await, &ctx)
}
