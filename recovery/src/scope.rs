//! One way to make a value current on a thread for a while: a guard that
//! swaps it into a thread-local slot and puts the previous value back when
//! dropped (even in a panic), and a future that does so around each poll.
//! The retry side uses it for its [`Context`](crate::Context), the step
//! side for the running step.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::thread::LocalKey;

/// A thread-local slot that holds the current value of `T`, if any.
pub(crate) type Slot<T> = LocalKey<RefCell<Option<T>>>;

/// Makes a value current in its slot until dropped.
pub(crate) struct ScopeGuard<T: 'static> {
    slot: &'static Slot<T>,
    previous: Option<T>,
}

impl<T: 'static> ScopeGuard<T> {
    /// Puts `value` in `slot`, keeping what was there.
    pub(crate) fn enter(slot: &'static Slot<T>, value: T) -> Self {
        // A slot being destroyed (thread exit) keeps nothing: no scope.
        let previous = slot
            .try_with(|c| c.borrow_mut().replace(value))
            .ok()
            .flatten();
        ScopeGuard { slot, previous }
    }
}

impl<T: 'static> Drop for ScopeGuard<T> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = self.slot.try_with(|c| *c.borrow_mut() = previous);
    }
}

/// The value current in `slot` on this thread, if any.
pub(crate) fn current<T: Clone + 'static>(slot: &'static Slot<T>) -> Option<T> {
    slot.try_with(|c| c.borrow().clone()).ok().flatten()
}

pin_project_lite::pin_project! {
    /// A future polled with a value current on whichever thread polls it;
    /// for a [`Context`](crate::Context) (the default), see
    /// [`WithContext::with_context`](crate::WithContext::with_context).
    pub struct Scoped<F, T: 'static = crate::Context> {
        #[pin]
        future: F,
        slot: &'static Slot<T>,
        value: T,
    }
}

impl<F, T: 'static> Scoped<F, T> {
    /// Polls `future` with `value` current in `slot`.
    pub(crate) fn new(future: F, slot: &'static Slot<T>, value: T) -> Self {
        Scoped {
            future,
            slot,
            value,
        }
    }
}

impl<F: Future, T: Clone + 'static> Future for Scoped<F, T> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _guard = ScopeGuard::enter(this.slot, this.value.clone());
        this.future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SLOT: RefCell<Option<u32>> = const { RefCell::new(None) };
    }

    #[test]
    fn guards_nest_and_restore_even_through_a_panic() {
        let _a = ScopeGuard::enter(&SLOT, 1);
        {
            let _b = ScopeGuard::enter(&SLOT, 2);
            assert_eq!(current(&SLOT), Some(2));
        }
        assert_eq!(current(&SLOT), Some(1));
        let result = std::panic::catch_unwind(|| {
            let _c = ScopeGuard::enter(&SLOT, 3);
            panic!("boom")
        });
        assert!(result.is_err());
        assert_eq!(current(&SLOT), Some(1));
    }

    #[test]
    fn a_scoped_future_sees_its_value_at_every_poll_and_leaves_none_behind() {
        let mut polls = 0;
        let fut = std::future::poll_fn(|cx| {
            polls += 1;
            assert_eq!(current(&SLOT), Some(7));
            if polls < 3 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        });
        let mut fut = std::pin::pin!(Scoped::new(fut, &SLOT, 7));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let out = loop {
            if let Poll::Ready(n) = fut.as_mut().poll(&mut cx) {
                break n;
            }
            assert_eq!(current(&SLOT), None);
        };
        assert_eq!(out, 3);
    }
}
