//! A retry storm, simulated deterministically in virtual time, after Marc
//! Brooker's "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015).
//!
//! N clients start at once and each wants one write to a resource with
//! optimistic concurrency: a write takes `work`; one that starts while
//! another is in flight conflicts and fails (having done the work), and
//! its client backs off with the project's own [`Backoff`] schedule, then
//! tries again. The simulation counts every call and the time at which the
//! last client succeeds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use recovery::{Backoff, Jitter, Schedule};

/// How the clients wait between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Try again as soon as the failed attempt ends.
    NoBackoff,
    /// Exponential backoff, no jitter.
    Exponential,
    /// Exponential with full jitter.
    Full,
    /// Exponential with equal jitter.
    Equal,
    /// Decorrelated jitter.
    Decorrelated,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::NoBackoff,
        Strategy::Exponential,
        Strategy::Full,
        Strategy::Equal,
        Strategy::Decorrelated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::NoBackoff => "no backoff",
            Strategy::Exponential => "exponential",
            Strategy::Full => "full jitter",
            Strategy::Equal => "equal jitter",
            Strategy::Decorrelated => "decorrelated",
        }
    }

    fn schedule(self, config: &Config, seed: u64) -> Option<Schedule> {
        let jitter = match self {
            Strategy::NoBackoff => return None,
            Strategy::Exponential => Jitter::None,
            Strategy::Full => Jitter::Full,
            Strategy::Equal => Jitter::Equal,
            Strategy::Decorrelated => Jitter::Decorrelated,
        };
        Some(
            Backoff::new(config.base)
                .max_delay(config.cap)
                .jitter(jitter)
                .schedule(seed),
        )
    }
}

/// The simulation's constants.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How long one write takes.
    pub work: Duration,
    /// The first backoff delay.
    pub base: Duration,
    /// The cap on a delay.
    pub cap: Duration,
    /// Seeds the clients' jitter.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            work: Duration::from_millis(10),
            base: Duration::from_millis(10),
            cap: Duration::from_secs(60),
            seed: 2015,
        }
    }
}

/// What one simulation measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub clients: u32,
    /// Calls made by all clients, failed ones included.
    pub calls: u64,
    /// When the last client succeeded.
    pub completion: Duration,
}

/// Runs the storm for `clients` clients with `strategy`.
pub fn simulate(clients: u32, strategy: Strategy, config: &Config) -> Outcome {
    // (time of the next attempt, client): a min-heap, ties by client index.
    let mut queue: BinaryHeap<Reverse<(Duration, u32)>> =
        (0..clients).map(|c| Reverse((Duration::ZERO, c))).collect();
    let mut schedules: Vec<Option<Schedule>> = (0..clients)
        .map(|c| strategy.schedule(config, config.seed ^ u64::from(c).wrapping_mul(0x9E37_79B9)))
        .collect();
    let mut busy_until = Duration::ZERO;
    let (mut calls, mut completion) = (0u64, Duration::ZERO);
    while let Some(Reverse((at, client))) = queue.pop() {
        calls += 1;
        let done = at + config.work;
        if at >= busy_until {
            busy_until = done;
            completion = completion.max(done);
        } else {
            let delay = schedules[client as usize]
                .as_mut()
                .map_or(Duration::ZERO, |s| s.next_delay(None));
            queue.push(Reverse((done + delay, client)));
        }
    }
    Outcome {
        clients,
        calls,
        completion,
    }
}
