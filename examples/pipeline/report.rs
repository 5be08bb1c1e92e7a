//! What the pipeline prints while it works, and `artifacts/recovery_log.json`
//! at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use indicatif::{ProgressBar, ProgressStyle};
use recovery::{Event, IssueCode, IssueRecord, Observer};
use recovery_suite::say;
use serde::Serialize;

/// Prints each step and each retry as it happens, and keeps the events for
/// the log. For a pool of repositories on a terminal, a progress bar of
/// the items done, resumed and failed stands in for the lines.
#[derive(Default)]
pub struct Progress {
    events: Mutex<Vec<Event>>,
    issues: Mutex<Vec<IssueRecord>>,
    bar: OnceLock<Bar>,
}

/// The progress bar of a pool, counting items of the family `step`.
struct Bar {
    bar: ProgressBar,
    step: &'static str,
    done: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
}

impl Bar {
    fn show(&self) {
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
        self.bar.set_message(format!(
            "{} done, {} resumed, {} failed",
            count(&self.done),
            count(&self.resumed),
            count(&self.failed)
        ));
    }
}

impl Progress {
    /// Shows a progress bar of `items` items of the family `step` instead
    /// of a line per event, when standard output is a terminal.
    pub fn bar_for(&self, step: &'static str, items: u64) {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() {
            return;
        }
        let bar = ProgressBar::new(items);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
            bar.set_style(style);
        }
        let _ = self.bar.set(Bar {
            bar,
            step,
            done: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
    }

    /// Ends the progress bar, if one is shown.
    pub fn finish(&self) {
        if let Some(b) = self.bar.get() {
            b.bar.finish();
        }
    }

    fn line(&self, text: String) {
        match self.bar.get() {
            Some(b) => b.bar.println(text),
            None => say!("{text}"),
        }
    }
}

impl Observer for Progress {
    fn on_event(&self, event: &Event) {
        match self.bar.get() {
            Some(b) if event.subject() == b.step => {
                let counter = match event {
                    Event::StepCompleted { .. } => Some(&b.done),
                    Event::StepResumed { .. } => Some(&b.resumed),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                    b.bar.inc(1);
                    b.show();
                }
            }
            // Retries and other steps' events stay visible above the bar.
            _ => self.line(event.to_string()),
        }
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
    }

    fn on_issue(&self, issue: &IssueRecord) {
        if let Some(b) = self.bar.get()
            && issue.error_code == IssueCode::StepFailed
        {
            b.failed.fetch_add(1, Ordering::Relaxed);
            b.bar.inc(1);
            b.show();
        }
        self.line(format!(
            "[{}] gave up: {} after {} attempt(s): {}",
            issue.operation,
            issue.error_code.as_str(),
            issue.attempts,
            issue.last_error
        ));
        self.issues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(issue.clone());
    }
}

#[derive(Serialize)]
pub struct RecoveryLog {
    /// The jitter seed.
    pub seed: u64,
    /// "demo" for the built-in repository, else the URL given.
    pub source: String,
    pub steps: Vec<StepLog>,
    /// "success" or "failed".
    pub outcome: String,
}

#[derive(Serialize)]
pub struct StepLog {
    pub step: String,
    /// "ran", "resumed" or "failed".
    pub outcome: String,
    pub attempts: Vec<AttemptLog>,
    /// The delays before each retry, in ms.
    pub delays_ms: Vec<f64>,
    /// Each delay divided by the previous one: the backoff's growth.
    pub growth: Vec<f64>,
}

#[derive(Serialize)]
pub struct AttemptLog {
    pub attempt: u32,
    pub error: String,
    pub delay_ms: f64,
}

impl Progress {
    /// The log of this invocation, step by step. Wall-clock times (the
    /// events' `elapsed_ns`) are left out, so the same seed and the same
    /// failures give the same bytes.
    pub fn log(&self, seed: u64, source: &str, steps: &[&str], outcome: &str) -> RecoveryLog {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let issues = self.issues.lock().unwrap_or_else(|p| p.into_inner());
        let steps = steps
            .iter()
            .filter_map(|step| {
                let attempts: Vec<AttemptLog> = events
                    .iter()
                    .filter_map(|e| match e {
                        Event::RetryAttempted {
                            operation,
                            attempt,
                            error,
                            delay_ns,
                            ..
                        } if operation == step => Some(AttemptLog {
                            attempt: *attempt,
                            error: error.clone(),
                            delay_ms: *delay_ns as f64 / 1e6,
                        }),
                        _ => None,
                    })
                    .collect();
                let has = |kind: &str| {
                    events
                        .iter()
                        .any(|e| e.kind() == kind && e.subject() == *step)
                };
                let outcome = if has("STEP_RESUMED") {
                    "resumed"
                } else if has("STEP_COMPLETED") {
                    "ran"
                } else if issues.iter().any(|i| i.operation == *step) {
                    "failed"
                } else {
                    return None;
                };
                let delays_ms: Vec<f64> = attempts.iter().map(|a| a.delay_ms).collect();
                let growth = delays_ms
                    .windows(2)
                    .map(|w| {
                        if w[0] > 0.0 {
                            (w[1] / w[0] * 1000.0).round() / 1000.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Some(StepLog {
                    step: (*step).to_owned(),
                    outcome: outcome.to_owned(),
                    attempts,
                    delays_ms,
                    growth,
                })
            })
            .collect();
        RecoveryLog {
            seed,
            source: source.to_owned(),
            steps,
            outcome: outcome.to_owned(),
        }
    }
}
