//! Events: what happened during a run, one serialisable record each.
//!
//! Serialised as one JSON object with an `"event"` tag naming the kind in
//! SCREAMING_SNAKE_CASE (`RETRY_ATTEMPTED`, ...). Durations are whole
//! nanoseconds (`*_ns`), exact and the same on every platform.

use serde::{Deserialize, Serialize};

/// One event. New kinds may be added, so match with a wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Event {
    /// An attempt failed with a transient error and another will follow
    /// after `delay_ns`.
    RetryAttempted {
        /// The operation's name (the function's, unless `name = ...`).
        operation: String,
        /// The number of the attempt that failed, 1 for the first call.
        attempt: u32,
        /// The error's `Display` text.
        error: String,
        /// The delay chosen before the next attempt.
        delay_ns: u64,
        /// Time since the first attempt started when the policy has a
        /// deadline; otherwise since the first failure was seen (the
        /// successful path reads no clock, so the first attempt's start is
        /// unknown). Wall-clock (or virtual) time: not deterministic.
        elapsed_ns: u64,
    },
    /// A step's valid marker was found: its body did not run and its
    /// recorded value was returned.
    StepResumed {
        /// The step's name.
        step: String,
    },
    /// A step's body succeeded, its outputs were committed and its marker
    /// written.
    StepCompleted {
        /// The step's name.
        step: String,
        /// Entries in the marker's manifest.
        outputs: u32,
    },
    /// A step's marker exists but does not count; the step runs again.
    MarkerInvalid {
        /// The step's name.
        step: String,
        /// Why it does not count.
        reason: String,
    },
}

impl Event {
    /// The step or operation the event is about.
    pub fn subject(&self) -> &str {
        match self {
            Event::RetryAttempted { operation, .. } => operation,
            Event::StepResumed { step }
            | Event::StepCompleted { step, .. }
            | Event::MarkerInvalid { step, .. } => step,
        }
    }

    /// Whether the event is about a step (its [`subject`](Self::subject)
    /// is a step's name), not a retried operation.
    pub fn is_step_event(&self) -> bool {
        !matches!(self, Event::RetryAttempted { .. })
    }

    /// The kind as written in logs: `"RETRY_ATTEMPTED"`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RetryAttempted { .. } => "RETRY_ATTEMPTED",
            Event::StepResumed { .. } => "STEP_RESUMED",
            Event::StepCompleted { .. } => "STEP_COMPLETED",
            Event::MarkerInvalid { .. } => "MARKER_INVALID",
        }
    }
}
