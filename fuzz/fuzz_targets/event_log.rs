//! The event and issue log readers on arbitrary bytes: never a panic, and
//! never more records than lines. Run: `cargo +nightly fuzz run event_log`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery::{Event, IssueRecord, parse_log};

fuzz_target!(|data: &[u8]| {
    let lines = data.split(|b| *b == b'\n').count();
    let events = parse_log::<Event>(data);
    assert!(events.records.len() + events.skipped <= lines);
    let issues = parse_log::<IssueRecord>(data);
    assert!(issues.records.len() + issues.skipped <= lines);
});
