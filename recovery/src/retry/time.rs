//! How retries tell time and wait: virtual time for tests
//! ([`VirtualClock`]), pluggable sleeping for async retries ([`Sleeper`]),
//! and the default timer (tokio's inside a tokio runtime, a helper thread
//! elsewhere).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::report::observer::lock;

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

    pub(crate) fn read(&self) -> Duration {
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

    pub(crate) fn sleep(&self, delay: Duration) {
        let mut s = lock(&self.state);
        s.now = s.now.saturating_add(delay);
        s.slept.push(delay);
    }
}

/// The future of [`Context::sleep`](crate::Context::sleep).
pub struct Sleep {
    inner: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Sleep {
    /// Done at once (virtual time has moved already).
    pub(crate) fn done() -> Self {
        Sleep { inner: None }
    }

    /// Done when `future` is.
    pub(crate) fn until(future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Self {
        Sleep {
            inner: Some(future),
        }
    }
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

pub(crate) fn default_sleep(delay: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
