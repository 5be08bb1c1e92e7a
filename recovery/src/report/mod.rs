//! What a run tells: events (what happened) and issue records (what gave
//! up), the observers they go to, and the JSON-lines logs they are kept in.

pub(crate) mod event;
pub(crate) mod issue;

pub use event::Event;
pub use issue::{IssueCode, IssueRecord, Severity};
pub(crate) mod log;
pub(crate) mod observer;

pub use log::{LOG_LIMIT, LogRead, parse_log};
pub use observer::{Observer, Recorder};
