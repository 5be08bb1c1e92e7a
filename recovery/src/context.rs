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
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::issue::IssueRecord;

/// Receives events and issue records. Called synchronously on the thread of
/// the failing call, so keep it quick; it is never called on success.
pub trait Observer: Send + Sync + 'static {
    /// An event happened.
    fn on_event(&self, event: &Event);
    /// An operation gave up.
    fn on_issue(&self, issue: &IssueRecord) {
        let _ = issue;
    }
}

/// An [`Observer`] that keeps everything in memory, for tests and summaries.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    issues: Mutex<Vec<IssueRecord>>,
}

impl Recorder {
    /// The events seen so far, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// The issue records seen so far, in order.
    pub fn issues(&self) -> Vec<IssueRecord> {
        lock(&self.issues).clone()
    }
}

impl Observer for Recorder {
    fn on_event(&self, event: &Event) {
        lock(&self.events).push(event.clone());
    }

    fn on_issue(&self, issue: &IssueRecord) {
        lock(&self.issues).push(issue.clone());
    }
}

/// A poisoned lock only means another thread panicked while pushing a
/// record; the data is still a valid list, so keep using it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes async retries wait. The default uses tokio's timer inside a tokio
/// runtime and a helper thread elsewhere; supply your own for another
/// executor.
pub trait Sleeper: Send + Sync + 'static {
    /// A future that completes after `delay`.
    fn sleep(&self, delay: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Virtual time for tests: sleeps return at once, advance this clock and are
/// recorded, so retrying code can be tested without waiting.
#[derive(Clone, Debug, Default)]
pub struct VirtualClock {
    state: Arc<Mutex<VirtualState>>,
}

#[derive(Debug, Default)]
struct VirtualState {
    now: Duration,
    slept: Vec<Duration>,
    reads: u64,
}

impl VirtualClock {
    /// A clock at zero with nothing slept.
    pub fn new() -> Self {
        Self::default()
    }

    /// Virtual time since the clock was made.
    pub fn now(&self) -> Duration {
        lock(&self.state).now
    }

    /// How many times retrying code under this clock read the time. A call
    /// that succeeds at once reads it only when its policy has a deadline.
    pub fn reads(&self) -> u64 {
        lock(&self.state).reads
    }

    fn read(&self) -> Duration {
        let mut s = lock(&self.state);
        s.reads += 1;
        s.now
    }

    /// Moves time forward without recording a sleep (as if work took time).
    pub fn advance(&self, by: Duration) {
        let mut s = lock(&self.state);
        s.now = s.now.saturating_add(by);
    }

    /// Every delay slept so far, in order.
    pub fn slept(&self) -> Vec<Duration> {
        lock(&self.state).slept.clone()
    }

    fn sleep(&self, delay: Duration) {
        let mut s = lock(&self.state);
        s.now = s.now.saturating_add(delay);
        s.slept.push(delay);
    }
}

/// Where events go, how time passes and where jitter comes from, for the
/// retrying calls made under it. Cheap to clone (one reference count).
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    observer: Option<Arc<dyn Observer>>,
    clock: Option<VirtualClock>,
    sleeper: Option<Arc<dyn Sleeper>>,
    seed: Option<u64>,
    /// Numbers the jittered calls under a seeded context, so each gets its own
    /// but reproducible sequence. Shared with derived contexts.
    calls: Arc<AtomicU64>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("observer", &self.inner.observer.is_some())
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
                observer: self.observer,
                clock: self.clock,
                sleeper: self.sleeper,
                seed: self.seed,
                calls: Arc::new(AtomicU64::new(0)),
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
        CURRENT
            .try_with(|c| c.borrow().clone())
            .ok()
            .flatten()
            .or_else(|| GLOBAL.get().cloned())
            .unwrap_or_else(|| FALLBACK.clone())
    }

    /// Makes this the process-wide default, once.
    pub fn set_global(self) -> Result<(), GlobalAlreadySet> {
        GLOBAL.set(self).map_err(|_| GlobalAlreadySet)
    }

    /// Runs `f` with this context in force on this thread.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = ScopeGuard::enter(self.clone());
        f()
    }

    /// The same clock, sleeper and seed sequence, with another observer.
    pub(crate) fn with_observer(&self, observer: Arc<dyn Observer>) -> Context {
        Context {
            inner: Arc::new(Inner {
                observer: Some(observer),
                clock: self.inner.clock.clone(),
                sleeper: self.inner.sleeper.clone(),
                seed: self.inner.seed,
                calls: Arc::clone(&self.inner.calls),
            }),
        }
    }

    /// Sends an event to the observer only (it went to `tracing` already).
    pub(crate) fn forward_event(&self, event: &Event) {
        if let Some(observer) = &self.inner.observer {
            observer.on_event(event);
        }
    }

    /// Sends an issue record to the observer only.
    pub(crate) fn forward_issue(&self, issue: &IssueRecord) {
        if let Some(observer) = &self.inner.observer {
            observer.on_issue(issue);
        }
    }

    /// Sends an event to the observer and to `tracing`.
    pub fn emit(&self, event: &Event) {
        #[cfg(feature = "tracing")]
        trace_event(event);
        self.forward_event(event);
    }

    /// Sends an issue record to the observer and to `tracing`.
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
        self.forward_issue(issue);
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
            return Sleep { inner: None };
        }
        let future = match &self.inner.sleeper {
            Some(sleeper) => sleeper.sleep(delay),
            None => default_sleep(delay),
        };
        Sleep {
            inner: Some(future),
        }
    }

    /// The jitter seed for one call of `operation`: derived from the
    /// context's seed, the name and a call counter when seeded, fresh entropy
    /// otherwise.
    pub(crate) fn jitter_seed(&self, operation: &str) -> u64 {
        match self.inner.seed {
            Some(seed) => {
                let n = self.inner.calls.fetch_add(1, Ordering::Relaxed);
                crate::backoff::splitmix(seed ^ fnv1a(operation) ^ crate::backoff::splitmix(n))
            }
            None => rand::random(),
        }
    }
}

#[cfg(feature = "tracing")]
fn trace_event(event: &Event) {
    match event {
        Event::RetryAttempted {
            operation,
            attempt,
            error,
            delay_ns,
            elapsed_ns,
        } => tracing::warn!(
            event = event.kind(),
            operation = operation.as_str(),
            attempt,
            error = error.as_str(),
            delay_ms = *delay_ns as f64 / 1e6,
            elapsed_ms = *elapsed_ns as f64 / 1e6,
            "attempt {attempt} of {operation} failed; retrying"
        ),
        Event::MarkerInvalid { step, reason } => tracing::warn!(
            event = event.kind(),
            step = step.as_str(),
            reason = reason.as_str(),
            "the marker of step {step} does not hold; running it again"
        ),
        Event::StepResumed { step } | Event::StepCompleted { step, .. } => {
            tracing::info!(event = event.kind(), step = step.as_str())
        }
    }
}

/// FNV-1a: a stable hash of a name (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Sets the thread's context and puts the previous one back when dropped,
/// even when the scope panics.
struct ScopeGuard {
    previous: Option<Context>,
}

impl ScopeGuard {
    fn enter(ctx: Context) -> Self {
        let previous = CURRENT
            .try_with(|c| c.borrow_mut().replace(ctx))
            .ok()
            .flatten();
        ScopeGuard { previous }
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = previous);
    }
}

/// The future of [`Context::sleep`].
pub struct Sleep {
    inner: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match &mut self.inner {
            Some(f) => f.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

fn default_sleep(delay: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    #[cfg(feature = "tokio")]
    if tokio::runtime::Handle::try_current().is_ok() {
        return Box::pin(tokio::time::sleep(delay));
    }
    Box::pin(ThreadTimer::start(delay))
}

/// A timer for executors other than tokio: a helper thread sleeps, then
/// wakes the task. Costs a thread per retry, which is small beside a delay.
struct ThreadTimer {
    shared: Arc<Mutex<(bool, Option<Waker>)>>,
}

impl ThreadTimer {
    fn start(delay: Duration) -> Self {
        let shared = Arc::new(Mutex::new((false, None::<Waker>)));
        let remote = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("recovery-timer".into())
            .spawn(move || {
                std::thread::sleep(delay);
                let waker = {
                    let mut s = lock(&remote);
                    s.0 = true;
                    s.1.take()
                };
                if let Some(w) = waker {
                    w.wake();
                }
            });
        if spawned.is_err() {
            // No thread to be had: do not wait rather than hang forever.
            lock(&shared).0 = true;
        }
        ThreadTimer { shared }
    }
}

impl Future for ThreadTimer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut s = lock(&self.shared);
        if s.0 {
            Poll::Ready(())
        } else {
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

pin_project_lite::pin_project! {
    /// A future that runs under a [`Context`] wherever it is polled; see
    /// [`WithContext::with_context`].
    pub struct Scoped<F> {
        #[pin]
        future: F,
        ctx: Context,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _guard = ScopeGuard::enter(this.ctx.clone());
        this.future.poll(cx)
    }
}

/// Attaches a [`Context`] to a future, so that the retrying calls inside it
/// use that context on whichever thread polls it.
pub trait WithContext: Future + Sized {
    /// Runs this future under `ctx`.
    fn with_context(self, ctx: Context) -> Scoped<Self> {
        Scoped { future: self, ctx }
    }
}

impl<F: Future> WithContext for F {}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_event(n: u32) -> Event {
        Event::RetryAttempted {
            operation: "op".into(),
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

    #[test]
    fn thread_timer_wakes_without_tokio() {
        let started = Instant::now();
        // A minimal executor: poll, park until woken.
        let mut fut = std::pin::pin!(ThreadTimer::start(Duration::from_millis(20)));
        let thread = std::thread::current();
        let waker = Waker::from(Arc::new(ThreadWaker(thread)));
        let mut cx = std::task::Context::from_waker(&waker);
        while fut.as_mut().poll(&mut cx).is_pending() {
            std::thread::park();
        }
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    struct ThreadWaker(std::thread::Thread);
    impl std::task::Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
}
