//! A retry budget shared by many retrying calls: a token bucket in the
//! style of the AWS SDKs' retry quota. Each retry takes tokens (more for a
//! time-out); each success puts some back. When the bucket is empty, calls
//! still make their first attempt but do not retry, so an outage of a
//! downstream does not multiply the load on it.
//!
//! ```
//! use recovery::{retryable, RetryBudget};
//!
//! static DOWNSTREAM: RetryBudget = RetryBudget::new(500);
//!
//! #[retryable(max_attempts = 5, base = "1ms", budget = DOWNSTREAM)]
//! fn call() -> Result<(), String> { Err("down".into()) }
//!
//! assert!(call().is_err());
//! assert_eq!(DOWNSTREAM.available(), 500 - 4 * 5); // four retries, 5 tokens each
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

/// A shared, lock-free token bucket for retries. Put it in a `static`.
#[derive(Debug)]
pub struct RetryBudget {
    tokens: AtomicU32,
    capacity: u32,
    retry_cost: u32,
    timeout_cost: u32,
    success_refund: u32,
}

impl RetryBudget {
    /// A full bucket of `capacity` tokens; a retry costs 5, a retry after a
    /// time-out 10, and a success without retries gives back 1 (the AWS
    /// SDKs' defaults, with their capacity of 500).
    pub const fn new(capacity: u32) -> Self {
        RetryBudget {
            tokens: AtomicU32::new(capacity),
            capacity,
            retry_cost: 5,
            timeout_cost: 10,
            success_refund: 1,
        }
    }

    /// Tokens a retry takes.
    pub const fn retry_cost(mut self, cost: u32) -> Self {
        self.retry_cost = cost;
        self
    }

    /// Tokens a retry after [`Decision::Timeout`](crate::Decision::Timeout) takes.
    pub const fn timeout_cost(mut self, cost: u32) -> Self {
        self.timeout_cost = cost;
        self
    }

    /// Tokens a success without retries gives back. A success after retries
    /// gives back what its retries took.
    pub const fn success_refund(mut self, refund: u32) -> Self {
        self.success_refund = refund;
        self
    }

    /// Tokens in the bucket now.
    pub fn available(&self) -> u32 {
        self.tokens.load(Ordering::Relaxed)
    }

    /// The bucket's size.
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    pub(crate) fn cost(&self, timeout: bool) -> u32 {
        if timeout {
            self.timeout_cost
        } else {
            self.retry_cost
        }
    }

    /// Takes `cost` tokens if there are that many.
    pub fn try_acquire(&self, cost: u32) -> bool {
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(cost))
            .is_ok()
    }

    /// Records a success: gives back `returned` tokens (what its retries
    /// took), or the success refund when there were no retries, up to the
    /// capacity. A full bucket is only read, never written.
    #[inline]
    pub fn on_success(&self, returned: Option<u32>) {
        if self.tokens.load(Ordering::Relaxed) >= self.capacity {
            return;
        }
        let add = returned.unwrap_or(self.success_refund);
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < self.capacity).then(|| t.saturating_add(add).min(self.capacity))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_until_empty_then_refill_to_capacity() {
        let b = RetryBudget::new(12).retry_cost(5);
        assert!(b.try_acquire(5));
        assert!(b.try_acquire(5));
        assert!(!b.try_acquire(5), "2 tokens left");
        assert_eq!(b.available(), 2);
        b.on_success(Some(10));
        assert_eq!(b.available(), 12);
        b.on_success(Some(10));
        assert_eq!(b.available(), 12, "never above capacity");
        b.on_success(None);
        assert_eq!(b.available(), 12);
    }

    #[test]
    fn first_attempt_successes_refund_one() {
        let b = RetryBudget::new(10);
        assert!(b.try_acquire(10));
        for _ in 0..3 {
            b.on_success(None);
        }
        assert_eq!(b.available(), 3);
    }

    #[test]
    fn many_threads_never_overdraw() {
        static B: RetryBudget = RetryBudget::new(1000);
        let granted: u32 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..1000).filter(|_| B.try_acquire(3)).count() as u32))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 1000 / 3);
        assert_eq!(B.available(), 1000 % 3);
    }
}
