//! The run directory: where a pipeline keeps its step markers, its staging
//! area, its event log and its issue log.
//!
//! ```text
//! RUN_DIR/
//!   run.json            identifies the directory as a run (format version)
//!   state/steps/*.json  one marker per completed step
//!   state/locks/*.lock  one lock file per step (flock: held while it runs)
//!   staging/            outputs being written; swept when the run is opened
//!   events.jsonl        append-only event log, one JSON object per line
//!   issues.jsonl        append-only issue log, one JSON object per line
//!   ...                 the steps' outputs, at the paths they chose
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::context::{Context, Observer};
use crate::error::RunError;
use crate::event::Event;
use crate::fs::{EntryKind, FileSystem, RealFs, TEMP_PREFIX, atomic_write_with, parent_of};
use crate::issue::IssueRecord;
use crate::leftover::{self, Expect, execution_step};
use crate::names::{check_outside_path, check_step_name};
use crate::outside;

/// The `run.json` format this version writes and reads.
pub const RUN_FORMAT: u32 = 1;

/// Event and issue logs longer than this are refused when read back.
pub const LOG_LIMIT: u64 = 256 << 20;

#[derive(Serialize, Deserialize)]
struct RunFile {
    format: u32,
    kind: String,
}

const RUN_KIND: &str = "recovery-run";

/// An open run directory. Cheap to clone; clones share one directory.
#[derive(Clone, Debug)]
pub struct Run {
    inner: Arc<RunInner>,
}

#[derive(Debug)]
struct RunInner {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    /// Step name → the function that uses it, to catch two steps sharing a
    /// name.
    sites: Mutex<HashMap<String, String>>,
    /// Directories outside the run where this program allows outputs
    /// ([`Run::allow_outside`]); kept in the program, not the run, so a
    /// damaged run directory cannot widen them.
    outside: Mutex<Vec<PathBuf>>,
}

impl Run {
    /// Creates or reopens the run directory `dir` on the real file system,
    /// and sweeps what a crash left in its staging area.
    ///
    /// ```
    /// let tmp = tempfile::tempdir()?;
    /// let run = recovery::Run::open(tmp.path().join("nightly"))?;
    /// assert!(run.dir().join("run.json").is_file());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// When `dir` cannot be created, is a non-empty directory that is not a
    /// run, or holds a `run.json` of a newer format.
    pub fn open(dir: impl AsRef<Path>) -> Result<Run, RunError> {
        Run::open_with(dir, Arc::new(RealFs))
    }

    /// [`Run::open`] through a given [`FileSystem`] (fault injection, tests).
    pub fn open_with(dir: impl AsRef<Path>, fs: Arc<dyn FileSystem>) -> Result<Run, RunError> {
        let given = dir.as_ref();
        let run = Run::handle(given, fs)?;
        run.create_durably()?;
        run.check_or_init()?;
        run.refuse_symlinks()?;
        for sub in [run.steps_dir(), run.staging_dir()] {
            run.fs()
                .create_dir_all(&sub)
                .map_err(|e| RunError::io("create", &sub, e))?;
        }
        // The directories' own entries must be durable before anything is
        // renamed out of them or into them.
        for dir in [run.dir().to_owned(), run.dir().join("state")] {
            run.fs()
                .sync_dir(&dir)
                .map_err(|e| RunError::io("fsync directory", &dir, e))?;
        }
        // Locks are kernel state, not durable data: they always live on the
        // real file system, whatever `fs` simulates.
        let locks = run.locks_dir();
        std::fs::create_dir_all(&locks).map_err(|e| RunError::io("create", &locks, e))?;
        run.sweep()?;
        Ok(run)
    }

    /// Creates the run directory and any missing directory above it, and
    /// makes each new entry durable in its parent: a run that vanished in
    /// a crash would leave whatever its steps placed outside it unswept.
    fn create_durably(&self) -> Result<(), RunError> {
        let fs = self.fs();
        let missing: Vec<&Path> = self
            .dir()
            .ancestors()
            .take_while(|a| matches!(fs.stat(a), Err(e) if e.kind() == io::ErrorKind::NotFound))
            .collect();
        fs.create_dir_all(self.dir())
            .map_err(|e| RunError::io("create run directory", self.dir(), e))?;
        for created in missing.iter().rev() {
            let parent = parent_of(created);
            fs.sync_dir(parent)
                .map_err(|e| RunError::io("fsync directory", parent, e))?;
        }
        Ok(())
    }

    /// A handle on `dir` (made absolute), before any check.
    fn handle(dir: &Path, fs: Arc<dyn FileSystem>) -> Result<Run, RunError> {
        let dir =
            std::path::absolute(dir).map_err(|e| RunError::io("resolve run directory", dir, e))?;
        Ok(Run {
            inner: Arc::new(RunInner {
                dir,
                fs,
                sites: Mutex::new(HashMap::new()),
                outside: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Opens a run directory that must already exist, without creating or
    /// sweeping anything: for tools that inspect runs (`recovery status`).
    ///
    /// # Errors
    /// When `dir` is missing, not a directory, or not a run.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Run, RunError> {
        let given = dir.as_ref();
        let fs: Arc<dyn FileSystem> = Arc::new(RealFs);
        let not_a_run = |reason: &'static str| RunError::NotARun {
            path: given.to_owned(),
            reason,
        };
        match fs.stat(given) {
            Ok(s) if s.kind == EntryKind::Dir => {}
            Ok(_) => return Err(not_a_run("it is a file, not a directory")),
            Err(e) => return Err(RunError::io("open run directory", given, e)),
        }
        let run_file = given.join("run.json");
        match fs.stat(&run_file) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let entries = fs
                    .read_dir(given)
                    .map_err(|e| RunError::io("list", given, e))?;
                return Err(if entries.is_empty() {
                    not_a_run(
                        "it is empty: no run has been made here yet \
                         (a program's first Run::open makes one)",
                    )
                } else {
                    RunError::NotARunDirectory {
                        path: given.to_owned(),
                    }
                });
            }
            Err(e) => return Err(RunError::io("inspect", &run_file, e)),
        }
        let run = Run::handle(given, fs)?;
        run.check_or_init()?;
        Ok(run)
    }

    /// The names of the steps that have a marker file, sorted.
    pub fn steps(&self) -> Result<Vec<String>, RunError> {
        let names = self.list_or_empty(&self.steps_dir())?;
        Ok(names
            .iter()
            .filter(|n| !n.starts_with(TEMP_PREFIX))
            .filter_map(|n| n.strip_suffix(".json"))
            .filter(|n| check_step_name(n).is_ok())
            .map(str::to_owned)
            .collect())
    }

    /// Every step this run knows of, sorted: those with a marker, a lock
    /// file, a staging directory (running, or dead mid-step), or a mention
    /// in the event or issue log (failed, reset, or not yet done). Reads
    /// only; creates nothing.
    pub fn known_steps(&self) -> Result<Vec<String>, RunError> {
        let mut names: std::collections::BTreeSet<String> = self.steps()?.into_iter().collect();
        for name in self.list_or_empty(&self.locks_dir())? {
            if let Some(step) = name.strip_suffix(".lock") {
                names.insert(step.to_owned());
            }
        }
        for name in self.list_or_empty(&self.staging_dir())? {
            if let Some(step) = execution_step(&name) {
                names.insert(step.to_owned());
            }
        }
        for event in self.events()?.records {
            if event.is_step_event() {
                names.insert(event.subject().to_owned());
            }
        }
        for issue in self.issues()?.records {
            if issue.error_code == crate::issue::IssueCode::StepFailed {
                names.insert(issue.operation);
            }
        }
        Ok(names
            .into_iter()
            .filter(|n| check_step_name(n).is_ok())
            .collect())
    }

    /// The names in `dir`, sorted; none when it does not exist (a run being
    /// inspected may lack a directory that opening it would create).
    pub(crate) fn list_or_empty(&self, dir: &Path) -> Result<Vec<String>, RunError> {
        match self.fs().read_dir(dir) {
            Ok(names) => Ok(names),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(RunError::io("list", dir, e)),
        }
    }

    /// Whether a process holds the step's lock right now (it is running
    /// the step). Reads only: a step that never ran has no lock file.
    pub fn is_running(&self, step: &str) -> Result<bool, RunError> {
        check_step_name(step)?;
        let path = self.locks_dir().join(format!("{step}.lock"));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(RunError::io("open lock", path, e)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(RunError::io("lock", path, e)),
        }
    }

    /// Makes sure the directory is a run (or empty, and makes it one).
    ///
    /// Several processes may create one run at once: each writes the same
    /// `run.json` atomically (the last rename wins, with the same content),
    /// and none removes another's temporary file, whose rename would then
    /// fail; leftovers of crashed creators are swept once the run exists.
    fn check_or_init(&self) -> Result<(), RunError> {
        let fs = self.fs();
        let path = self.dir().join("run.json");
        // Each round either returns or saw another opener's run.json appear
        // since its own look, which happens at most once per opener.
        for _ in 0..8 {
            match fs.stat(&path) {
                Ok(stat) => return check_run_file(fs, &path, stat.kind),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(RunError::io("inspect", &path, e)),
            }
            let entries = fs
                .read_dir(self.dir())
                .map_err(|e| RunError::io("list", self.dir(), e))?;
            // Temporary files are other openers' (or a crashed one's).
            if entries.iter().any(|n| !n.starts_with(TEMP_PREFIX)) {
                if fs.stat(&path).is_ok() {
                    continue; // made by another opener since we looked
                }
                return Err(RunError::NotARunDirectory {
                    path: self.dir().to_owned(),
                });
            }
            let bytes = serde_json::to_vec_pretty(&RunFile {
                format: RUN_FORMAT,
                kind: RUN_KIND.into(),
            })
            .map_err(|e| RunError::BadRunFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            match atomic_write_with(fs, &path, &bytes) {
                Ok(()) => return Ok(()),
                // Our temporary was swept by an opener that found the run
                // made meanwhile: check that run.json instead.
                Err(_) if fs.stat(&path).is_ok() => continue,
                Err(e) => return Err(RunError::io("write", &path, e)),
            }
        }
        Err(RunError::BadRunFile {
            path,
            reason: "it keeps appearing and vanishing; is another program removing it?".into(),
        })
    }

    /// The run's own directories must be real directories: a symlink there
    /// would send writes (and the sweep's removals) outside the run.
    fn refuse_symlinks(&self) -> Result<(), RunError> {
        let state = self.dir().join("state");
        for dir in [
            state,
            self.steps_dir(),
            self.locks_dir(),
            self.staging_dir(),
        ] {
            match self.fs().stat(&dir) {
                Ok(s) if s.kind != EntryKind::Dir => {
                    return Err(RunError::BadRunFile {
                        path: dir,
                        reason: format!(
                            "is a {:?}, not a directory; refusing to write outside the run \
                             directory (remove it, or start a new run)",
                            s.kind
                        ),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes what crashed steps left behind: their staging directories
    /// and half-written markers. A step that another process is running
    /// right now holds its lock, and its files are left alone.
    fn sweep(&self) -> Result<(), RunError> {
        let fs = self.fs();
        let staging = self.staging_dir();
        let names = fs
            .read_dir(&staging)
            .map_err(|e| RunError::io("list", &staging, e))?;
        for name in names {
            let Some(step) = execution_step(&name) else {
                continue;
            };
            if let Some(_lock) = self.try_lock_step(step)? {
                self.remove_execution_leftovers(&name)?;
            }
        }
        // A creator that crashed before its rename left its temporary
        // run.json; the run exists now, so no opener still needs one.
        let names = fs
            .read_dir(self.dir())
            .map_err(|e| RunError::io("list", self.dir(), e))?;
        for name in names.iter().filter(|n| is_temp_run_file(n)) {
            let path = self.dir().join(name);
            match fs.remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(RunError::io("remove leftover", &path, e));
                }
                _ => {}
            }
        }
        let steps = self.steps_dir();
        let names = fs
            .read_dir(&steps)
            .map_err(|e| RunError::io("list", &steps, e))?;
        for name in names {
            let Some(step) = temp_marker_step(&name) else {
                continue;
            };
            if let Some(_lock) = self.try_lock_step(step)? {
                let path = steps.join(&name);
                fs.remove_file(&path)
                    .map_err(|e| RunError::io("remove leftover", &path, e))?;
            }
        }
        Ok(())
    }

    /// Removes what earlier executions of `step` left in staging (a worker
    /// killed inside the step): whoever takes a step's lock owns its
    /// leftovers. The caller holds the lock.
    pub(crate) fn sweep_step(&self, step: &str) -> Result<(), RunError> {
        let staging = self.staging_dir();
        let names = self
            .fs()
            .read_dir(&staging)
            .map_err(|e| RunError::io("list", &staging, e))?;
        for name in names.iter().filter(|n| execution_step(n) == Some(step)) {
            self.remove_execution_leftovers(name)?;
        }
        Ok(())
    }

    /// Removes one execution's staging directory, and first what its
    /// journal says it staged outside the run (the journal goes with the
    /// directory). Each removal is checked at the removal itself; an entry
    /// that fails the check is reported and left alone.
    fn remove_execution_leftovers(&self, name: &str) -> Result<(), RunError> {
        let fs = self.fs();
        let area = self.staging_dir();
        let path = area.join(name);
        for outside in outside::leftovers(fs, &path) {
            match leftover::remove(fs, &outside, Expect::Outside { execution: name }) {
                Err(refused @ RunError::RefusedRemoval { .. }) => report_refusal(&refused),
                other => other?,
            }
        }
        leftover::remove(
            fs,
            &path,
            Expect::InRun {
                staging_area: &area,
            },
        )
    }

    /// Allows steps to place outputs inside `dir` (not at `dir` itself:
    /// each output is staged beside its final path), outside the run
    /// directory ([`Run::output_dir_outside`]), and markers to vouch for
    /// outputs there. Allowed places belong to this handle (and its
    /// clones), not to the run directory: a marker that names an output
    /// anywhere else outside the run is not read, and does not count.
    ///
    /// # Errors
    /// A relative path, `.` or `..` components, or a directory inside the
    /// run directory or above it: [`RunError::InvalidOutputPath`].
    pub fn allow_outside(&self, dir: impl AsRef<Path>) -> Result<(), RunError> {
        let place = PathBuf::from(check_outside_path(self.dir(), dir.as_ref())?);
        let mut places = self
            .inner
            .outside
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !places.contains(&place) {
            places.push(place);
        }
        Ok(())
    }

    /// The places outside the run this handle allows, in the order given.
    pub fn outside_places(&self) -> Vec<PathBuf> {
        self.with_outside(<[PathBuf]>::to_vec)
    }

    /// Runs `f` with the places outside the run this handle allows.
    pub(crate) fn with_outside<R>(&self, f: impl FnOnce(&[PathBuf]) -> R) -> R {
        let places = self
            .inner
            .outside
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&places)
    }

    /// The run directory, absolute.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn fs(&self) -> &dyn FileSystem {
        &*self.inner.fs
    }

    pub(crate) fn steps_dir(&self) -> PathBuf {
        self.dir().join("state").join("steps")
    }

    fn locks_dir(&self) -> PathBuf {
        self.dir().join("state").join("locks")
    }

    pub(crate) fn staging_dir(&self) -> PathBuf {
        self.dir().join("staging")
    }

    /// The event log.
    pub fn events_path(&self) -> PathBuf {
        self.dir().join("events.jsonl")
    }

    /// The issue log.
    pub fn issues_path(&self) -> PathBuf {
        self.dir().join("issues.jsonl")
    }

    /// Where the marker of `step` lives.
    pub fn marker_path(&self, step: &str) -> PathBuf {
        self.steps_dir().join(format!("{step}.json"))
    }

    /// Remembers that `site` uses the step name `name`; two different sites
    /// with one name are an error.
    pub(crate) fn register(&self, name: &str, site: &str) -> Result<(), RunError> {
        check_step_name(name)?;
        let mut sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match sites.get(name) {
            Some(first) if first != site => Err(RunError::DuplicateStepName {
                name: name.to_owned(),
                first: first.clone(),
                second: site.to_owned(),
            }),
            Some(_) => Ok(()),
            None => {
                sites.insert(name.to_owned(), site.to_owned());
                Ok(())
            }
        }
    }

    fn lock_file(&self, step: &str) -> Result<File, RunError> {
        check_step_name(step)?;
        let path = self.locks_dir().join(format!("{step}.lock"));
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| RunError::io("open lock", path, e))
    }

    /// Takes the step's lock, waiting while another process (or thread)
    /// holds it. The kernel releases it if the holder dies.
    pub(crate) fn lock_step(&self, step: &str) -> Result<File, RunError> {
        let file = self.lock_file(step)?;
        file.lock()
            .map_err(|e| RunError::io("lock", self.locks_dir().join(step), e))?;
        Ok(file)
    }

    /// Takes the step's lock if it is free.
    pub(crate) fn try_lock_step(&self, step: &str) -> Result<Option<File>, RunError> {
        if check_step_name(step).is_err() {
            // Not a name we would have written: leave it alone.
            return Ok(None);
        }
        let file = self.lock_file(step)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(RunError::io("lock", self.locks_dir().join(step), e))
            }
        }
    }

    /// Appends one record to a log. Logs are records of what happened, not
    /// commit points: a line is written with one `write` and not synced; a
    /// crash may cut the last line, which readers skip.
    fn append(&self, path: &Path, record: &impl Serialize) {
        let line = match serde_json::to_vec(record) {
            Ok(mut line) => {
                line.push(b'\n');
                line
            }
            Err(_) => return,
        };
        if let Err(_e) = self.fs().append(path, &line) {
            #[cfg(feature = "tracing")]
            tracing::warn!(path = %path.display(), error = %_e, "could not append to the run's log");
        }
    }

    /// Appends an event to the event log.
    pub fn log_event(&self, event: &Event) {
        self.append(&self.events_path(), event);
    }

    /// Appends an issue record to the issue log.
    pub fn log_issue(&self, issue: &IssueRecord) {
        self.append(&self.issues_path(), issue);
    }

    /// The events logged so far. Lines that do not parse (a line cut by a
    /// crash, a kind from a newer version) are skipped and counted.
    pub fn events(&self) -> Result<LogRead<Event>, RunError> {
        self.read_log(&self.events_path())
    }

    /// The issue records logged so far; see [`Run::events`].
    pub fn issues(&self) -> Result<LogRead<IssueRecord>, RunError> {
        self.read_log(&self.issues_path())
    }

    fn read_log<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<LogRead<T>, RunError> {
        let bytes = match self.fs().read(path, LOG_LIMIT) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(RunError::io("read", path, e)),
        };
        Ok(parse_log(&bytes))
    }

    /// A context whose observer writes to this run's logs and forwards to
    /// the observer of `outer`.
    pub(crate) fn context(&self, outer: &Context) -> Context {
        outer.with_observer(Arc::new(RunObserver {
            run: self.clone(),
            outer: outer.clone(),
        }))
    }
}

/// Records read back from a log.
#[derive(Debug)]
pub struct LogRead<T> {
    /// The records that parsed, in order.
    pub records: Vec<T>,
    /// Lines that did not parse (a line cut by a crash, garbage).
    pub skipped: usize,
}

/// Parses JSON lines, skipping the ones that do not parse.
pub fn parse_log<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> LogRead<T> {
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => records.push(r),
            Err(_) => skipped += 1,
        }
    }
    LogRead { records, skipped }
}

/// Checks an existing `run.json`.
fn check_run_file(fs: &dyn FileSystem, path: &Path, kind: EntryKind) -> Result<(), RunError> {
    let bad = |reason: String| RunError::BadRunFile {
        path: path.to_owned(),
        reason,
    };
    if kind != EntryKind::File {
        return Err(bad("is not a regular file".into()));
    }
    let bytes = fs
        .read(path, 1 << 20)
        .map_err(|e| RunError::io("read", path, e))?;
    let file: RunFile = serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "not a run file ({e}); restore it or start a new run"
        ))
    })?;
    if file.kind != RUN_KIND {
        return Err(bad(format!("kind {:?} is not {RUN_KIND:?}", file.kind)));
    }
    if file.format > RUN_FORMAT {
        return Err(bad(format!(
            "format {} is newer than the {RUN_FORMAT} this program reads; upgrade recovery",
            file.format
        )));
    }
    Ok(())
}

/// A leftover the sweep would not remove: not ours, so not ours to delete,
/// but worth a look.
fn report_refusal(_refused: &RunError) {
    #[cfg(feature = "tracing")]
    tracing::warn!(error = %_refused, "left a damaged staging journal's entry alone");
}

/// A temporary `run.json` of a creator: `.recovery-tmp.<pid>.<n>.run.json`.
fn is_temp_run_file(name: &str) -> bool {
    temp_marker_step(name) == Some("run")
}

/// The step whose marker a leftover temporary file was meant to become:
/// `.recovery-tmp.<pid>.<n>.<step>.json`.
fn temp_marker_step(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.splitn(3, '.');
    let (_pid, _n, file) = (parts.next()?, parts.next()?, parts.next()?);
    file.strip_suffix(".json")
}

/// Writes events and issues to the run's logs, then passes them on.
struct RunObserver {
    run: Run,
    outer: Context,
}

impl Observer for RunObserver {
    fn on_event(&self, event: &Event) {
        self.run.log_event(event);
        self.outer.forward_event(event);
    }

    fn on_issue(&self, issue: &IssueRecord) {
        self.run.log_issue(issue);
        self.outer.forward_issue(issue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_creates_the_layout_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let run = Run::open(&dir).unwrap();
        for p in ["run.json", "state/steps", "state/locks", "staging"] {
            assert!(dir.join(p).exists(), "{p}");
        }
        drop(run);
        Run::open(&dir).unwrap();
    }

    #[test]
    fn openers_racing_to_create_one_run_all_succeed() {
        let tmp = tempfile::tempdir().unwrap();
        for round in 0..40 {
            let dir = tmp.path().join(format!("run{round}"));
            // Half the rounds start from an existing empty directory.
            if round % 2 == 1 {
                std::fs::create_dir(&dir).unwrap();
            }
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                let openers: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Run::open(&dir).map(|run| run.dir().to_owned())
                        })
                    })
                    .collect();
                for opener in openers {
                    let opened = opener.join().unwrap();
                    assert_eq!(opened.as_deref().ok(), Some(dir.as_path()), "{opened:?}");
                }
            });
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            // One run, and no opener's temporary file left behind.
            assert_eq!(names, ["run.json", "staging", "state"], "round {round}");
        }
    }

    #[test]
    fn a_foreign_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("thesis.tex"), "precious").unwrap();
        let err = Run::open(tmp.path()).unwrap_err();
        assert!(matches!(err, RunError::NotARunDirectory { .. }), "{err}");
        assert_eq!(
            std::fs::read(tmp.path().join("thesis.tex")).unwrap(),
            b"precious"
        );
    }

    #[test]
    fn a_corrupt_or_newer_run_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        Run::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("run.json"), "{garbage").unwrap();
        assert!(
            Run::open(tmp.path())
                .unwrap_err()
                .to_string()
                .contains("not a run file")
        );
        std::fs::write(
            tmp.path().join("run.json"),
            r#"{"format":99,"kind":"recovery-run"}"#,
        )
        .unwrap();
        assert!(
            Run::open(tmp.path())
                .unwrap_err()
                .to_string()
                .contains("newer")
        );
    }

    #[test]
    fn logs_skip_cut_and_garbage_lines() {
        let log: LogRead<Event> = parse_log(
            b"{\"event\":\"STEP_RESUMED\",\"step\":\"a\"}\n\ngarbage\n{\"event\":\"STEP_RES",
        );
        assert_eq!(log.records.len(), 1);
        assert_eq!(log.skipped, 2);
    }

    #[test]
    fn a_record_appended_after_a_cut_line_is_kept_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let run = Run::open(tmp.path()).unwrap();
        run.log_event(&Event::StepResumed { step: "a".into() });
        // A crash cut the next line: no final newline.
        let mut bytes = std::fs::read(run.events_path()).unwrap();
        bytes.extend_from_slice(b"{\"event\":\"STEP_RES");
        std::fs::write(run.events_path(), &bytes).unwrap();
        run.log_event(&Event::StepResumed { step: "b".into() });
        run.log_event(&Event::StepResumed { step: "c".into() });
        let log = run.events().unwrap();
        let steps: Vec<_> = log
            .records
            .iter()
            .map(|e| match e {
                Event::StepResumed { step } => step.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(steps, ["a", "b", "c"]);
        assert_eq!(log.skipped, 1, "only the cut line is lost");
    }

    #[test]
    fn temp_marker_names_are_recognised() {
        assert_eq!(
            temp_marker_step(".recovery-tmp.12.3.clone.json"),
            Some("clone")
        );
        assert_eq!(temp_marker_step(".recovery-tmp.12.3.a.b.json"), Some("a.b"));
        assert_eq!(temp_marker_step("clone.json"), None);
    }
}
