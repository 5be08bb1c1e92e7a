//! Where a retrying call sends its events and how it tells time.
//!
//! Routed the way `tracing` routes to its dispatcher: a process-wide default
//! ([`Context::set_global`]), overridden for a scope on one thread
//! ([`Context::in_scope`]) or for one future wherever it is polled
//! ([`WithContext::with_context`]), so parallel tests do not see each other's
//! events. With no set-up at all, events go to `tracing` only and time is the
//! real clock.
//!
//! ```
//! use std::sync::Arc;
//! use recovery::{retryable, Context, Recorder, VirtualClock};
//!
//! #[retryable(max_attempts = 3, base = "1s")]
//! fn flaky(calls: &mut u32) -> Result<u32, String> {
//!     *calls += 1;
//!     if *calls < 3 { Err(format!("try {calls}")) } else { Ok(*calls) }
//! }
//!
//! let recorder = Arc::new(Recorder::default());
//! let clock = VirtualClock::new();
//! let ctx = Context::builder().observer(recorder.clone()).virtual_time(&clock).build();
//! let mut calls = 0;
//! assert_eq!(ctx.in_scope(|| flaky(&mut calls)), Ok(3));
//! // Two retries, 1 s then 2 s, recorded but not waited for.
//! assert_eq!(clock.slept(), [std::time::Duration::from_secs(1), std::time::Duration::from_secs(2)]);
//! assert_eq!(recorder.events().len(), 2);
//! ```

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::report::event::Event;
use crate::report::issue::IssueRecord;
use crate::report::observer::Observer;
use crate::retry::backoff::splitmix;
use crate::retry::time::{Sleep, Sleeper, VirtualClock, default_sleep};
use crate::scope::{self, ScopeGuard, Scoped};

/// Where events go, how time passes and where jitter comes from, for the
/// retrying calls made under it. Cheap to clone (one reference count).
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every event and issue record goes to each of them, in order: the
    /// dispatcher fans out, so no observer calls back into it.
    observers: Vec<Arc<dyn Observer>>,
    clock: Option<VirtualClock>,
    sleeper: Option<Arc<dyn Sleeper>>,
    seed: Option<u64>,
    /// Numbers the jittered calls under a seeded context, so each gets its own
    /// but reproducible sequence. Shared with derived contexts.
    calls: Arc<AtomicU64>,
    /// The item of the family step this context runs, as JSON: its retries
    /// and give-ups name it, so items run at once can be told apart.
    item: Option<Value>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("observers", &self.inner.observers.len())
            .field("virtual_time", &self.inner.clock.is_some())
            .field("custom_sleeper", &self.inner.sleeper.is_some())
            .field("seed", &self.inner.seed)
            .finish()
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::builder().build()
    }
}

/// Builds a [`Context`]; see [`Context::builder`].
#[derive(Default)]
pub struct ContextBuilder {
    observer: Option<Arc<dyn Observer>>,
    clock: Option<VirtualClock>,
    sleeper: Option<Arc<dyn Sleeper>>,
    seed: Option<u64>,
}

impl ContextBuilder {
    /// Sends events and issue records to `observer` (besides `tracing`).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs on virtual time: sleeps return at once and advance `clock`.
    pub fn virtual_time(mut self, clock: &VirtualClock) -> Self {
        self.clock = Some(clock.clone());
        self
    }

    /// Makes async retries wait with `sleeper`.
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = Some(sleeper);
        self
    }

    /// Seeds jitter: the same seed and the same failures, in the same order,
    /// give the same delays. Without a seed each call draws fresh entropy.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The context.
    pub fn build(self) -> Context {
        Context {
            inner: Arc::new(Inner {
                observers: self.observer.into_iter().collect(),
                clock: self.clock,
                sleeper: self.sleeper,
                seed: self.seed,
                calls: Arc::new(AtomicU64::new(0)),
                item: None,
            }),
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

static GLOBAL: OnceLock<Context> = OnceLock::new();
static FALLBACK: LazyLock<Context> = LazyLock::new(Context::default);
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// [`Context::set_global`] was called before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalAlreadySet;

impl fmt::Display for GlobalAlreadySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the global recovery context is already set; use Context::in_scope or \
             with_context to override it for part of the program",
        )
    }
}

impl std::error::Error for GlobalAlreadySet {}

impl Context {
    /// Starts building a context.
    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// The context in force here: this thread's scope, else the global one,
    /// else the default (events to `tracing` only, real time).
    pub fn current() -> Context {
        scope::current(&CURRENT)
            .or_else(|| GLOBAL.get().cloned())
            .unwrap_or_else(|| FALLBACK.clone())
    }

    /// The time now on the clock of the context in force here, taken
    /// without a handle on that context: what a call with a deadline reads
    /// as it starts, on its success path (one clock read, no reference
    /// count touched). See [`stamp`](Self::stamp).
    pub(crate) fn stamp_in_force() -> Instant {
        let scoped = CURRENT
            .try_with(|c| c.borrow().as_ref().map(Context::stamp))
            .ok()
            .flatten();
        scoped.unwrap_or_else(|| GLOBAL.get().unwrap_or(&FALLBACK).stamp())
    }

    /// The time now on this context's clock as an `Instant`: the real one,
    /// or for virtual time the origin plus the virtual time (so a stamp is
    /// 16 bytes either way, and real time pays no origin lookup).
    pub(crate) fn stamp(&self) -> Instant {
        match &self.inner.clock {
            Some(clock) => *ORIGIN + clock.read(),
            None => Instant::now(),
        }
    }

    /// Time on this context's clock since `stamp`.
    pub(crate) fn since(&self, stamp: Instant) -> Duration {
        match &self.inner.clock {
            Some(clock) => clock
                .read()
                .saturating_sub(stamp.saturating_duration_since(*ORIGIN)),
            None => stamp.elapsed(),
        }
    }

    /// Makes this the process-wide default, once.
    pub fn set_global(self) -> Result<(), GlobalAlreadySet> {
        GLOBAL.set(self).map_err(|_| GlobalAlreadySet)
    }

    /// Runs `f` with this context in force on this thread.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = ScopeGuard::enter(&CURRENT, self.clone());
        f()
    }

    /// The same clock, sleeper and seed sequence for a step's body, with
    /// `observer` added after this context's observers; `item` is the
    /// step's item (`None` for a plain step: a step nested in an item's
    /// body does not inherit it).
    pub(crate) fn for_step(&self, observer: Arc<dyn Observer>, item: Option<Value>) -> Context {
        let mut observers = self.inner.observers.clone();
        observers.push(observer);
        Context {
            inner: Arc::new(Inner {
                observers,
                clock: self.inner.clock.clone(),
                sleeper: self.inner.sleeper.clone(),
                seed: self.inner.seed,
                calls: Arc::clone(&self.inner.calls),
                item,
            }),
        }
    }

    /// The item of the family step this context runs, if any.
    pub(crate) fn item(&self) -> Option<&Value> {
        self.inner.item.as_ref()
    }

    /// Sends an event to the observers and to `tracing`.
    pub fn emit(&self, event: &Event) {
        #[cfg(feature = "tracing")]
        trace_event(event);
        for observer in &self.inner.observers {
            observer.on_event(event);
        }
    }

    /// Sends an issue record to the observers and to `tracing`.
    pub fn report(&self, issue: &IssueRecord) {
        #[cfg(feature = "tracing")]
        tracing::error!(
            error_code = issue.error_code.as_str(),
            operation = issue.operation.as_str(),
            attempts = issue.attempts,
            last_error = issue.last_error.as_str(),
            "{} gave up",
            issue.operation
        );
        for observer in &self.inner.observers {
            observer.on_issue(issue);
        }
    }

    /// Time on this context's clock, from an arbitrary origin.
    pub fn now(&self) -> Duration {
        match &self.inner.clock {
            Some(clock) => clock.read(),
            None => ORIGIN.elapsed(),
        }
    }

    /// Blocks the thread for `delay` (or advances virtual time).
    pub fn sleep_blocking(&self, delay: Duration) {
        match &self.inner.clock {
            Some(clock) => clock.sleep(delay),
            None => std::thread::sleep(delay),
        }
    }

    /// Waits for `delay` without blocking the executor (or advances virtual
    /// time and completes at once).
    pub fn sleep(&self, delay: Duration) -> Sleep {
        if let Some(clock) = &self.inner.clock {
            clock.sleep(delay);
            return Sleep::done();
        }
        Sleep::until(match &self.inner.sleeper {
            Some(sleeper) => sleeper.sleep(delay),
            None => default_sleep(delay),
        })
    }

    /// The jitter seed for one call of `operation`: derived from the
    /// context's seed, the name and a call counter when seeded, fresh entropy
    /// otherwise.
    pub(crate) fn jitter_seed(&self, operation: &str) -> u64 {
        match self.inner.seed {
            Some(seed) => {
                let n = self.inner.calls.fetch_add(1, Ordering::Relaxed);
                splitmix(seed ^ fnv1a(operation) ^ splitmix(n))
            }
            None => rand::random(),
        }
    }
}

/// Events as `tracing` events: the kind and the subject as fields, the
/// event's own text as the message.
#[cfg(feature = "tracing")]
fn trace_event(event: &Event) {
    let (kind, subject) = (event.kind(), event.subject());
    match event {
        Event::RetryAttempted {
            attempt,
            error,
            delay_ns,
            elapsed_ns,
            ..
        } => tracing::warn!(
            event = kind,
            subject,
            attempt,
            error = error.as_str(),
            delay_ms = *delay_ns as f64 / 1e6,
            elapsed_ms = *elapsed_ns as f64 / 1e6,
            "{event}"
        ),
        Event::MarkerInvalid { .. } => tracing::warn!(event = kind, subject, "{event}"),
        _ => tracing::info!(event = kind, subject, "{event}"),
    }
}

/// FNV-1a: a stable hash of a name (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Attaches a [`Context`] to a future, so that the retrying calls inside it
/// use that context on whichever thread polls it.
pub trait WithContext: Future + Sized {
    /// Runs this future under `ctx`.
    fn with_context(self, ctx: Context) -> Scoped<Self> {
        Scoped::new(self, &CURRENT, ctx)
    }
}

impl<F: Future> WithContext for F {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::observer::Recorder;

    fn retry_event(n: u32) -> Event {
        Event::RetryAttempted {
            operation: "op".into(),
            item: None,
            attempt: n,
            error: "e".into(),
            delay_ns: 1,
            elapsed_ns: 2,
        }
    }

    #[test]
    fn scopes_nest_and_restore() {
        let outer = Arc::new(Recorder::default());
        let inner = Arc::new(Recorder::default());
        let a = Context::builder().observer(outer.clone()).build();
        let b = Context::builder().observer(inner.clone()).build();
        a.in_scope(|| {
            Context::current().emit(&retry_event(1));
            b.in_scope(|| Context::current().emit(&retry_event(2)));
            Context::current().emit(&retry_event(3));
        });
        Context::current().emit(&retry_event(4));
        assert_eq!(outer.events(), [retry_event(1), retry_event(3)]);
        assert_eq!(inner.events(), [retry_event(2)]);
    }

    #[test]
    fn a_panicking_scope_still_restores_the_previous_context() {
        let rec = Arc::new(Recorder::default());
        let ctx = Context::builder().observer(rec.clone()).build();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.in_scope(|| panic!("boom"))
        }));
        assert!(result.is_err());
        Context::current().emit(&retry_event(1));
        assert!(rec.events().is_empty());
    }

    #[test]
    fn virtual_clock_records_and_advances() {
        let clock = VirtualClock::new();
        let ctx = Context::builder().virtual_time(&clock).build();
        ctx.sleep_blocking(Duration::from_secs(5));
        clock.advance(Duration::from_secs(1));
        assert_eq!(ctx.now(), Duration::from_secs(6));
        assert_eq!(clock.slept(), [Duration::from_secs(5)]);
    }

    #[test]
    fn seeded_contexts_give_reproducible_but_distinct_seeds() {
        let a = Context::builder().seed(9).build();
        let b = Context::builder().seed(9).build();
        let sa: Vec<u64> = (0..3).map(|_| a.jitter_seed("op")).collect();
        let sb: Vec<u64> = (0..3).map(|_| b.jitter_seed("op")).collect();
        assert_eq!(sa, sb);
        assert_ne!(sa[0], sa[1]);
        assert_ne!(a.jitter_seed("x"), b.jitter_seed("y"));
    }
}
