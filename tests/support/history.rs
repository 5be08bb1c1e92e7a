//! The history checker of the shared-store torture tests. Every worker
//! (thread or process) appends what it did, one line at a time:
//!
//! ```text
//! attempt   <step> <token>   a body started; its outputs and value carry the token
//! committed <step> <token>   a call returned its own body's value: it committed
//! resumed   <step> <token>   a call returned another attempt's value
//! failed    <step> <error>   a call returned an error (what the worker observed)
//! ```
//!
//! [`check`] holds them against what the store ended with: no step has two
//! commits, a commit that was reported is the marker that stands (nothing
//! committed was lost), every resume returned the marker that stands, and
//! that marker's outputs are its own attempt's (no loser's upload replaced
//! them).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A worker's history, kept in memory and, if given a file, appended to it
/// line by line (one `write` each, so processes may share nothing and be
/// killed at any moment).
#[derive(Debug, Default)]
pub struct History {
    lines: Mutex<Vec<String>>,
    file: Option<PathBuf>,
}

impl History {
    pub fn in_file(file: &Path) -> Self {
        History {
            lines: Mutex::default(),
            file: Some(file.to_owned()),
        }
    }

    pub fn record(&self, what: &str, step: &str, token: &str) {
        let line = format!("{what} {step} {token}");
        if let Some(file) = &self.file {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .expect("the history file opens");
            f.write_all(format!("{line}\n").as_bytes())
                .expect("the history line is written");
        }
        self.lines.lock().unwrap().push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Every line of the history files in `dir`.
pub fn read_dir(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

/// What the checker counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub attempts: usize,
    pub commits: usize,
    pub resumes: usize,
    pub failures: usize,
}

/// Checks `lines` against the store's end state: `markers` gives, for every
/// step, the token of the marker that stands (its outputs verified and
/// carrying that token), or `None` when it has no valid marker.
pub fn check(
    lines: &[String],
    markers: &BTreeMap<String, Option<String>>,
) -> Result<Verdict, String> {
    let mut verdict = Verdict::default();
    let mut committed: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut attempted: BTreeSet<(&str, &str)> = BTreeSet::new();
    for line in lines {
        let mut parts = line.splitn(3, ' ');
        let (Some(what), Some(step), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("a history line that does not read: {line:?}"));
        };
        let stands = markers
            .get(step)
            .ok_or_else(|| format!("{step}: in the history, not among the steps checked"))?;
        match what {
            "attempt" => {
                verdict.attempts += 1;
                attempted.insert((step, token));
            }
            "committed" => {
                verdict.commits += 1;
                committed.entry(step).or_default().push(token);
                if stands.as_deref() != Some(token) {
                    return Err(format!(
                        "{step}: attempt {token} reported its commit, but the marker that \
                         stands is {stands:?}: a committed result was lost or replaced"
                    ));
                }
            }
            "resumed" => {
                verdict.resumes += 1;
                if stands.as_deref() != Some(token) {
                    return Err(format!(
                        "{step}: a call resumed {token}, but the marker that stands is \
                         {stands:?}: a false resume"
                    ));
                }
            }
            "failed" => verdict.failures += 1,
            other => return Err(format!("unknown history entry {other:?} in {line:?}")),
        }
    }
    for (step, tokens) in &committed {
        if tokens.len() > 1 {
            return Err(format!("{step}: committed twice: {tokens:?}"));
        }
    }
    for (step, stands) in markers {
        if let Some(token) = stands
            && !attempted.contains(&(step.as_str(), token.as_str()))
        {
            return Err(format!(
                "{step}: the marker names {token}, an attempt no history started"
            ));
        }
    }
    Ok(verdict)
}
