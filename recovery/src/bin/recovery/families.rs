//! Families (steps with `item = ...`) in the CLI: one summary line per
//! family in `status`, each item with `--items`.

use std::collections::BTreeMap;
use std::io::Write;

use recovery::marker::MarkerState;
use recovery::{IssueCode, IssueRecord, Run, StepId};
use serde_json::Value;

use crate::{CliError, StepStatus, to_json, when};

/// A family's counts, as `recovery status` shows them.
#[derive(serde::Serialize, Default)]
struct FamilyStatus {
    step: String,
    family: bool,
    items: usize,
    done: usize,
    not_done: usize,
    failed: usize,
    invalid: usize,
}

/// Prints the family `name`: a summary line (and each item with `items`).
/// Returns how many of its items are invalid. Items are known from their
/// markers, and from the event and issue logs (an item that failed or
/// started and never finished).
pub fn status(
    run: &Run,
    name: &str,
    issues: &[IssueRecord],
    items: bool,
    json: bool,
) -> Result<usize, CliError> {
    let mut known: BTreeMap<String, StepStatus> = BTreeMap::new();
    for entry in run.items(name)? {
        let entry = entry?;
        let id = entry.state.id().item_id().unwrap_or_default().to_owned();
        let mut status = StepStatus {
            step: name.to_owned(),
            item: Some(entry.item),
            state: "done",
            completed_at_ms: None,
            outputs: None,
            detail: None,
        };
        match entry.marker {
            MarkerState::Valid(m) => {
                status.completed_at_ms = Some(m.completed_at_ms);
                status.outputs = Some(m.outputs.len());
            }
            MarkerState::Invalid(reason) => {
                status.state = "INVALID";
                status.detail = Some(reason);
            }
            MarkerState::Missing => status.state = "not done",
        }
        known.insert(id, status);
    }
    let mut mention = |item: &Value, failure: Option<&str>| -> Result<(), CliError> {
        let (id, _) = StepId::item(name, item)?;
        let id = id.item_id().unwrap_or_default().to_owned();
        let status = known.entry(id).or_insert_with(|| StepStatus {
            step: name.to_owned(),
            item: Some(Some(item.clone())),
            state: "not done",
            completed_at_ms: None,
            outputs: None,
            detail: None,
        });
        if let Some(error) = failure
            && matches!(status.state, "not done" | "failed")
        {
            // The last failure wins: issues are read oldest first.
            status.state = "failed";
            status.detail = Some(error.to_owned());
        }
        Ok(())
    };
    for event in run.events()?.records {
        if let Some(item) = event.item().filter(|_| event.subject() == name) {
            mention(item, None)?;
        }
    }
    for issue in issues {
        if issue.operation == name
            && issue.error_code == IssueCode::StepFailed
            && let Some(item) = &issue.item
        {
            mention(item, Some(&issue.last_error))?;
        }
    }
    let mut summary = FamilyStatus {
        step: name.to_owned(),
        family: true,
        items: known.len(),
        ..FamilyStatus::default()
    };
    for status in known.values() {
        match status.state {
            "done" => summary.done += 1,
            "failed" => summary.failed += 1,
            "INVALID" => summary.invalid += 1,
            _ => summary.not_done += 1,
        }
    }
    let mut out = std::io::stdout().lock();
    let write = |out: &mut std::io::StdoutLock<'_>, line: String| {
        writeln!(out, "{line}").map_err(CliError::Output)
    };
    if json {
        write(&mut out, to_json(&summary))?;
    } else {
        let mut text = format!(
            "{}/{} done, {} not done, {} failed",
            summary.done, summary.items, summary.not_done, summary.failed
        );
        if summary.invalid > 0 {
            text.push_str(&format!(", {} INVALID", summary.invalid));
        }
        write(&mut out, format!("{name:<24} {:<9} {text}", "family"))?;
    }
    if items {
        for status in known.values() {
            if json {
                write(&mut out, to_json(status))?;
                continue;
            }
            let item = match &status.item {
                Some(Some(item)) => item.to_string(),
                _ => "(unreadable)".to_owned(),
            };
            let completed = status.completed_at_ms.map_or_else(|| "-".to_owned(), when);
            let last = match (status.outputs, &status.detail) {
                (Some(n), _) => format!("{n} verified"),
                (None, Some(detail)) => detail.clone(),
                (None, None) => String::new(),
            };
            write(
                &mut out,
                format!("  {item:<22} {:<9} {completed:<26} {last}", status.state),
            )?;
        }
    }
    Ok(summary.invalid)
}
