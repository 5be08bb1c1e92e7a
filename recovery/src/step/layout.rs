//! Every name in a run directory, in one place: the layout below, the
//! names of step executions' staging directories, and of what they stage
//! beside outputs outside the run. Temporary files of atomic writes are
//! named by [`crate::fs`].
//!
//! ```text
//! RUN_DIR/
//!   run.json            identifies the directory as a run (format version)
//!   state/steps/*.json  one marker per completed plain step
//!   state/steps/<family>/<ab>/<id>.json
//!                       one marker per completed item of a family: <id> is
//!                       the item's id, <ab> its first two digits (256
//!                       buckets keep directories small at a million items)
//!   state/locks/...     one lock file per step or item, laid out the same
//!                       way (flock: held while it runs)
//!   staging/            outputs being written, one <step>@<pid>.<n> (or
//!                       <step>#<id>@<pid>.<n>) directory per execution;
//!                       swept when the run is opened
//!   events.jsonl        append-only event log, one JSON object per line
//!   issues.jsonl        append-only issue log, one JSON object per line
//!   ...                 the steps' outputs, at the paths they chose
//! ```

use std::path::{Path, PathBuf};

use crate::step::instance::StepId;
use crate::step::names::check_step_name;

/// The file that makes a directory a run.
pub const RUN_FILE: &str = "run.json";
/// The directory of markers and locks.
pub const STATE: &str = "state";
/// The staging area.
pub const STAGING: &str = "staging";
/// The event log.
pub const EVENTS: &str = "events.jsonl";
/// The issue log.
pub const ISSUES: &str = "issues.jsonl";

/// Names at the top of a run directory that outputs may not take.
pub const RESERVED: &[&str] = &[RUN_FILE, STATE, STAGING, EVENTS, ISSUES];

/// The prefix of what a step stages beside an output outside the run.
pub const OUTSIDE_STAGING_PREFIX: &str = ".recovery-staging-";

const MARKER_SUFFIX: &str = ".json";
const LOCK_SUFFIX: &str = ".lock";

/// The paths of one run directory.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    dir: PathBuf,
    /// Made once: a resume check should not allocate to find a marker.
    steps: PathBuf,
}

impl Layout {
    /// The layout of the run at `dir` (absolute).
    pub(crate) fn new(dir: PathBuf) -> Self {
        let steps = dir.join(STATE).join("steps");
        Layout { dir, steps }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn run_file(&self) -> PathBuf {
        self.dir.join(RUN_FILE)
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }

    pub(crate) fn steps(&self) -> PathBuf {
        self.steps.clone()
    }

    pub(crate) fn locks(&self) -> PathBuf {
        self.dir.join(STATE).join("locks")
    }

    pub(crate) fn staging(&self) -> PathBuf {
        self.dir.join(STAGING)
    }

    pub(crate) fn events(&self) -> PathBuf {
        self.dir.join(EVENTS)
    }

    pub(crate) fn issues(&self) -> PathBuf {
        self.dir.join(ISSUES)
    }

    pub(crate) fn marker(&self, id: &StepId) -> PathBuf {
        place(&self.steps, id.name(), id.item_id(), MARKER_SUFFIX)
    }

    pub(crate) fn lock(&self, id: &StepId) -> PathBuf {
        place(&self.locks(), id.name(), id.item_id(), LOCK_SUFFIX)
    }

    /// Where the marker of the plain step `name` is (the name unchecked).
    pub(crate) fn join_steps(&self, name: &str) -> PathBuf {
        place(&self.steps, name, None, MARKER_SUFFIX)
    }

    /// The directory of a family's markers (its buckets are inside).
    pub(crate) fn family_markers(&self, name: &str) -> PathBuf {
        self.steps.join(name)
    }
}

/// `<dir>/<name><suffix>`, or `<dir>/<name>/<ab>/<id><suffix>` for an item,
/// built in one allocation (every resume check of an item makes one).
fn place(dir: &Path, name: &str, item: Option<&str>, suffix: &str) -> PathBuf {
    let len = dir.as_os_str().len() + name.len() + item.map_or(0, |i| i.len() + 4) + suffix.len();
    let mut path = PathBuf::with_capacity(len + 2);
    path.push(dir);
    path.push(name);
    if let Some(item) = item {
        path.push(&item[..2]);
        path.push(item);
    }
    path.as_mut_os_string().push(suffix);
    path
}

/// The item id whose marker file in a family bucket is `name`.
pub(crate) fn item_marker(name: &str) -> Option<&str> {
    name.strip_suffix(MARKER_SUFFIX)
}

/// The step whose marker file is `name` (`<step>.json`), if it is one.
pub(crate) fn marker_step(name: &str) -> Option<&str> {
    name.strip_suffix(MARKER_SUFFIX)
        .filter(|step| check_step_name(step).is_ok())
}

/// The step whose lock file is `name` (`<step>.lock`), if it is one.
pub(crate) fn lock_step(name: &str) -> Option<&str> {
    name.strip_suffix(LOCK_SUFFIX)
        .filter(|step| check_step_name(step).is_ok())
}

/// The name of a step execution's staging directory: `<step>@<pid>.<n>`,
/// or `<step>#<id>@<pid>.<n>` for an item, in the run's staging area.
pub(crate) fn execution_name(id: &StepId, pid: u32, n: u64) -> String {
    match id.item_id() {
        None => format!("{}@{pid}.{n}", id.name()),
        Some(item) => format!("{}#{item}@{pid}.{n}", id.name()),
    }
}

/// The instance and the process whose execution staged into `name`, if
/// `name` is a staging directory name ([`execution_name`]).
pub(crate) fn parse_execution(name: &str) -> Option<(StepId, u32)> {
    let (who, rest) = name.rsplit_once('@')?;
    let (pid, n) = rest.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(pid) && digits(n)) {
        return None;
    }
    let id = match who.split_once('#') {
        None => StepId::from_parts(who, None)?,
        Some((step, item)) => StepId::from_parts(step, Some(item))?,
    };
    Some((id, pid.parse().ok()?))
}

/// The instance whose execution staged into `name`; see
/// [`parse_execution`].
pub(crate) fn execution_step(name: &str) -> Option<StepId> {
    parse_execution(name).map(|(id, _)| id)
}

/// Where output number `n` of the execution `execution` is staged beside
/// its final place outside the run, and where the commit moves a previous
/// version aside to: `.recovery-staging-<execution>-o<n>` and `-t<n>`.
pub(crate) fn outside_staging_names(execution: &str, n: u64) -> (String, String) {
    (
        format!("{OUTSIDE_STAGING_PREFIX}{execution}-o{n}"),
        format!("{OUTSIDE_STAGING_PREFIX}{execution}-t{n}"),
    )
}

/// Whether `name` is something the execution `execution` staged outside
/// the run ([`outside_staging_names`]).
pub(crate) fn is_outside_staging_of(name: &str, execution: &str) -> bool {
    name.strip_prefix(OUTSIDE_STAGING_PREFIX)
        .and_then(|rest| rest.strip_prefix(execution))
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_prefix(['o', 't']))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_names_round_trip() {
        let clone = StepId::plain("clone").unwrap();
        assert_eq!(
            execution_step(&execution_name(&clone, 42, 7)),
            Some(clone.clone())
        );
        let (item, _) = StepId::item("index", &"repo-a").unwrap();
        assert_eq!(
            parse_execution(&execution_name(&item, 42, 7)),
            Some((item, 42))
        );
        assert_eq!(
            execution_step("a.b@1.2").map(|id| id.name().to_owned()),
            Some("a.b".to_owned())
        );
        assert_eq!(parse_execution("clone@42.7"), Some((clone, 42)));
        for bad in [
            "clone",
            "clone@",
            "clone@1",
            "clone@x.1",
            "@1.2",
            "../x@1.2",
            "a b@1.2",
            "index#12@1.2",
        ] {
            assert_eq!(execution_step(bad), None, "{bad}");
        }
    }

    #[test]
    fn marker_lock_and_outside_names_round_trip() {
        let layout = Layout::new(PathBuf::from("/r"));
        let name = |p: PathBuf| p.file_name().unwrap().to_str().unwrap().to_owned();
        let fetch = StepId::plain("fetch").unwrap();
        assert_eq!(marker_step(&name(layout.marker(&fetch))), Some("fetch"));
        assert_eq!(lock_step(&name(layout.lock(&fetch))), Some("fetch"));
        let (item, _) = StepId::item("index", &3).unwrap();
        let hex = item.item_id().unwrap();
        let marker = layout.marker(&item);
        assert_eq!(
            marker,
            PathBuf::from(format!("/r/state/steps/index/{}/{hex}.json", &hex[..2]))
        );
        assert_eq!(item_marker(&name(marker)), Some(hex));
        assert_eq!(marker_step("a b.json"), None);
        assert_eq!(lock_step("fetch.json"), None);
        let (staged, aside) = outside_staging_names("s@1.0", 3);
        assert!(is_outside_staging_of(&staged, "s@1.0"));
        assert!(is_outside_staging_of(&aside, "s@1.0"));
        assert!(!is_outside_staging_of(&staged, "s@1.1"));
        assert!(!is_outside_staging_of(
            ".recovery-staging-s@1.0-x3",
            "s@1.0"
        ));
    }
}
