//! Events: what happened during a run, one serialisable record each.
//!
//! Serialised as one JSON object with an `"event"` tag naming the kind in
//! SCREAMING_SNAKE_CASE (`RETRY_ATTEMPTED`, ...). Durations are whole
//! nanoseconds (`*_ns`), exact and the same on every platform.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
        /// When the retrying code runs in the body of an item of a step
        /// family, that item as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<Value>,
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
        /// For an item of a family, the item as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<Value>,
        /// Bytes of outputs brought onto this machine from the run's store
        /// to resume it (another machine committed the step); 0 when every
        /// output was here already.
        #[serde(default, skip_serializing_if = "is_zero")]
        fetched: u64,
    },
    /// A step's body succeeded, its outputs were committed and its marker
    /// written.
    StepCompleted {
        /// The step's name.
        step: String,
        /// For an item of a family, the item as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<Value>,
        /// Entries in the marker's manifest.
        outputs: u32,
    },
    /// A step's marker exists but does not count; the step runs again.
    MarkerInvalid {
        /// The step's name.
        step: String,
        /// For an item of a family, the item as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<Value>,
        /// Why it does not count.
        reason: String,
    },
}

impl Event {
    /// The step or operation the event is about.
    pub fn subject(&self) -> &str {
        match self {
            Event::RetryAttempted { operation, .. } => operation,
            Event::StepResumed { step, .. }
            | Event::StepCompleted { step, .. }
            | Event::MarkerInvalid { step, .. } => step,
        }
    }

    /// The item, for an event about an item of a family (for a retry, the
    /// item in whose body it was made).
    pub fn item(&self) -> Option<&Value> {
        match self {
            Event::RetryAttempted { item, .. }
            | Event::StepResumed { item, .. }
            | Event::StepCompleted { item, .. }
            | Event::MarkerInvalid { item, .. } => item.as_ref(),
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

/// The event as one line of text, the same wherever it is shown (the
/// CLI, `tracing`, a program's progress output):
/// `[clone] attempt 1 failed: connection reset; retrying in 149ms`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.item() {
            None => write!(f, "[{}] ", self.subject())?,
            Some(item) => write!(f, "[{} {item}] ", self.subject())?,
        }
        match self {
            Event::RetryAttempted {
                attempt,
                error,
                delay_ns,
                ..
            } => write!(
                f,
                "attempt {attempt} failed: {error}; retrying in {:.0?}",
                Duration::from_nanos(*delay_ns)
            ),
            Event::StepResumed { fetched: 0, .. } => f.write_str("already done: resumed"),
            Event::StepResumed { fetched, .. } => write!(
                f,
                "already done: resumed ({fetched} byte{} of outputs fetched)",
                plural(*fetched)
            ),
            Event::StepCompleted { outputs, .. } => {
                write!(
                    f,
                    "done ({outputs} output{} committed)",
                    plural(u64::from(*outputs))
                )
            }
            Event::MarkerInvalid { reason, .. } => {
                write!(f, "the marker does not hold ({reason}); running it again")
            }
        }
    }
}

/// The noun's ending for a count: `1 output`, `2 outputs`.
fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reads_as_one_line_naming_its_subject() {
        let retry = Event::RetryAttempted {
            operation: "clone".into(),
            item: None,
            attempt: 2,
            error: "connection reset".into(),
            delay_ns: 149_400_000,
            elapsed_ns: 7,
        };
        assert_eq!(
            retry.to_string(),
            "[clone] attempt 2 failed: connection reset; retrying in 149ms"
        );
        let done = Event::StepCompleted {
            step: "index".into(),
            item: None,
            outputs: 3,
        };
        assert_eq!(done.to_string(), "[index] done (3 outputs committed)");
        let item = Event::StepCompleted {
            step: "index".into(),
            item: Some(serde_json::json!("repo-a")),
            outputs: 3,
        };
        assert_eq!(
            item.to_string(),
            "[index \"repo-a\"] done (3 outputs committed)"
        );
        let invalid = Event::MarkerInvalid {
            step: "index".into(),
            item: None,
            reason: "the step's key or version changed".into(),
        };
        assert_eq!(
            invalid.to_string(),
            "[index] the marker does not hold (the step's key or version changed); running it again"
        );
        let one = Event::StepCompleted {
            step: "summary".into(),
            item: None,
            outputs: 1,
        };
        assert_eq!(one.to_string(), "[summary] done (1 output committed)");
        let resumed = Event::StepResumed {
            step: "a".into(),
            item: None,
            fetched: 0,
        };
        assert!(!resumed.to_string().contains('\n'));
        let fetched = |fetched| Event::StepResumed {
            step: "a".into(),
            item: None,
            fetched,
        };
        assert_eq!(
            fetched(1).to_string(),
            "[a] already done: resumed (1 byte of outputs fetched)"
        );
        assert_eq!(
            fetched(2).to_string(),
            "[a] already done: resumed (2 bytes of outputs fetched)"
        );
    }
}
