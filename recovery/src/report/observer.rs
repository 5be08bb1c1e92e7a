//! Where events and issue records go: the [`Observer`] trait, and
//! [`Recorder`], which keeps them in memory.

use std::sync::{Mutex, MutexGuard};

use crate::report::event::Event;
use crate::report::issue::IssueRecord;

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
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
