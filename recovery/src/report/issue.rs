//! Issue records: why an operation gave up, one serialisable record each.

use serde::{Deserialize, Serialize};

/// A stable code naming why something failed. Codes are never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum IssueCode {
    /// Every attempt allowed by `max_attempts` failed with a transient error.
    MaxRetriesExceeded,
    /// The classifier called the error permanent: it was not retried.
    PermanentError,
    /// The `max_elapsed` deadline left no time for another attempt.
    DeadlineExceeded,
    /// A resumable step failed: no marker was written.
    StepFailed,
    /// The shared retry budget was empty: the error was not retried.
    RetryBudgetExhausted,
}

impl IssueCode {
    /// The code as written in logs: `"MAX_RETRIES_EXCEEDED"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::MaxRetriesExceeded => "MAX_RETRIES_EXCEEDED",
            IssueCode::PermanentError => "PERMANENT_ERROR",
            IssueCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            IssueCode::StepFailed => "STEP_FAILED",
            IssueCode::RetryBudgetExhausted => "RETRY_BUDGET_EXHAUSTED",
        }
    }
}

/// How bad an issue is for the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum Severity {
    /// The operation failed for good; whatever needed its result cannot go on.
    Blocker,
    /// Something went wrong but the work went on.
    Warning,
}

/// Why an operation gave up. The function still returns its own last error
/// unchanged; this record goes to the context's observer (and `tracing`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueRecord {
    /// Why it stopped.
    pub error_code: IssueCode,
    /// How bad it is.
    pub severity: Severity,
    /// The operation's name.
    pub operation: String,
    /// For a step that is an item of a family, or a retry given up in the
    /// body of one, the item as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<serde_json::Value>,
    /// Calls made, the first included.
    pub attempts: u32,
    /// Total time slept between attempts.
    pub slept_ns: u64,
    /// The last error's `Display` text.
    pub last_error: String,
}
