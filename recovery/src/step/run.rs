//! The run directory: a [`Run`] handle, made by opening one. It keeps the
//! step state in its [`StepStore`] (the run directory itself, by default),
//! stages outputs under `staging/`, and knows which places outside the run
//! this program allows outputs in. The layout is in
//! [`layout`](crate::step::layout).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::RunError;
use crate::fs::{EntryKind, FileSystem, RealFs, atomic_write_with, is_temp, parent_of};
use crate::report::event::Event;
use crate::report::issue::IssueRecord;
use crate::report::log::LogRead;
use crate::report::observer::Observer;
use crate::retry::context::Context;
use crate::step::builder::RunBuilder;
use crate::step::layout::Layout;
use crate::step::local::LocalStore;
use crate::step::names::{check_outside_path, check_step_name};
use crate::step::staging::Claims;
use crate::step::store::StepStore;

/// The `run.json` format this version writes and reads.
pub const RUN_FORMAT: u32 = 1;

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
    layout: Layout,
    /// Where staging and outputs are written.
    fs: Arc<dyn FileSystem>,
    /// Where step state is kept.
    store: Arc<dyn StepStore>,
    /// Step name → the function that uses it, to catch two steps sharing a
    /// name.
    sites: Mutex<HashMap<String, (String, bool)>>,
    /// Outputs being written by running steps, by path.
    claims: Claims,
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
        Run::builder(dir).file_system(fs).open()
    }

    /// A [`RunBuilder`] for the run directory `dir`: to keep the run's
    /// step state in a shared store (object storage) rather than in `dir`.
    ///
    /// ```
    /// let tmp = tempfile::tempdir()?;
    /// let run = recovery::Run::builder(tmp.path().join("nightly")).open()?;
    /// assert!(run.dir().join("run.json").is_file());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(dir: impl AsRef<Path>) -> RunBuilder {
        RunBuilder::new(dir.as_ref())
    }

    /// Opens (creating) the run directory, with its store made by `store`.
    pub(crate) fn open_local(
        given: &Path,
        fs: Arc<dyn FileSystem>,
        store: impl FnOnce(LocalStore) -> Result<Arc<dyn StepStore>, RunError>,
    ) -> Result<Run, RunError> {
        let run = Run::handle(given, fs, store)?;
        run.create_durably()?;
        run.check_or_init()?;
        run.refuse_symlinks()?;
        let layout = run.layout();
        for sub in [layout.steps(), layout.staging()] {
            run.fs()
                .create_dir_all(&sub)
                .map_err(|e| RunError::io("create", &sub, e))?;
        }
        // The directories' own entries must be durable before anything is
        // renamed out of them or into them.
        for dir in [layout.dir().to_owned(), layout.state()] {
            run.fs()
                .sync_dir(&dir)
                .map_err(|e| RunError::io("fsync directory", &dir, e))?;
        }
        // Locks are kernel state, not durable data: they always live on the
        // real file system, whatever `fs` simulates.
        let locks = layout.locks();
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
            .map_err(|e| match fs.stat(self.dir()) {
                Ok(s) if s.kind != EntryKind::Dir => RunError::NotARun {
                    path: self.dir().to_owned(),
                    reason: "it is a file, not a directory; give a directory, new or empty",
                },
                _ => RunError::io("create run directory", self.dir(), e),
            })?;
        for created in missing.iter().rev() {
            let parent = parent_of(created);
            fs.sync_dir(parent)
                .map_err(|e| RunError::io("fsync directory", parent, e))?;
        }
        Ok(())
    }

    /// A handle on `dir` (made absolute), before any check; its store is
    /// made by `store` from the run directory's own.
    fn handle(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        store: impl FnOnce(LocalStore) -> Result<Arc<dyn StepStore>, RunError>,
    ) -> Result<Run, RunError> {
        let dir =
            std::path::absolute(dir).map_err(|e| RunError::io("resolve run directory", dir, e))?;
        let layout = Layout::new(dir);
        let store = store(LocalStore::new(layout.clone(), Arc::clone(&fs)))?;
        Ok(Run {
            inner: Arc::new(RunInner {
                layout,
                fs,
                store,
                sites: Mutex::new(HashMap::new()),
                claims: Claims::default(),
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
        Run::builder(dir).open_existing()
    }

    /// [`Run::open_existing`], with the store made by `store`.
    pub(crate) fn open_existing_with(
        given: &Path,
        store: impl FnOnce(LocalStore) -> Result<Arc<dyn StepStore>, RunError>,
    ) -> Result<Run, RunError> {
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
        let run_file = Layout::new(given.to_owned()).run_file();
        match fs.stat(&run_file) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let entries = fs
                    .read_dir(given)
                    .map_err(|e| RunError::io("list", given, e))?;
                // A creator killed while writing run.json leaves its
                // temporary file: the run is still not made, and the next
                // Run::open makes it.
                return Err(if entries.is_empty() {
                    not_a_run(
                        "it is empty: no run has been made here yet \
                         (a program's first Run::open makes one)",
                    )
                } else if entries.iter().all(|n| is_temp(n)) {
                    not_a_run(
                        "no run has been made here yet, only begun by a \
                         program that stopped before writing run.json \
                         (the next Run::open makes the run and removes \
                         the leftover)",
                    )
                } else {
                    RunError::NotARunDirectory {
                        path: given.to_owned(),
                    }
                });
            }
            Err(e) => return Err(RunError::io("inspect", &run_file, e)),
        }
        let run = Run::handle(given, fs, store)?;
        run.check_or_init()?;
        Ok(run)
    }

    /// Makes sure the directory is a run (or empty, and makes it one).
    ///
    /// Several processes may create one run at once: each writes the same
    /// `run.json` atomically (the last rename wins, with the same content),
    /// and none removes another's temporary file, whose rename would then
    /// fail; leftovers of crashed creators are swept once the run exists.
    fn check_or_init(&self) -> Result<(), RunError> {
        let fs = self.fs();
        let path = self.layout().run_file();
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
            if entries.iter().any(|n| !is_temp(n)) {
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
        let layout = self.layout();
        for dir in [
            layout.state(),
            layout.steps(),
            layout.locks(),
            layout.staging(),
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
        self.inner.layout.dir()
    }

    /// Where staging and outputs are written.
    pub(crate) fn fs(&self) -> &dyn FileSystem {
        &*self.inner.fs
    }

    /// Where the run keeps its step state: markers, leases, published
    /// outputs and logs.
    pub fn store(&self) -> &dyn StepStore {
        &*self.inner.store
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The event log.
    pub fn events_path(&self) -> PathBuf {
        self.layout().events()
    }

    /// The issue log.
    pub fn issues_path(&self) -> PathBuf {
        self.layout().issues()
    }

    /// Where the marker of the plain step `step` lives.
    pub fn marker_path(&self, step: &str) -> PathBuf {
        self.layout().join_steps(step)
    }

    /// Remembers that `site` uses the step name `name` (as a family when
    /// `family`); two different sites with one name are an error.
    pub(crate) fn register(&self, name: &str, site: &str, family: bool) -> Result<(), RunError> {
        check_step_name(name)?;
        let mut sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match sites.get(name) {
            Some((first, first_family)) if first != site => Err(match (*first_family, family) {
                (true, false) => RunError::FamilyAndPlainStep {
                    name: name.to_owned(),
                    family: first.clone(),
                    plain: site.to_owned(),
                },
                (false, true) => RunError::FamilyAndPlainStep {
                    name: name.to_owned(),
                    family: site.to_owned(),
                    plain: first.clone(),
                },
                _ => RunError::DuplicateStepName {
                    name: name.to_owned(),
                    first: first.clone(),
                    second: site.to_owned(),
                },
            }),
            Some(_) => Ok(()),
            None => {
                sites.insert(name.to_owned(), (site.to_owned(), family));
                Ok(())
            }
        }
    }

    /// The outputs the running steps of this handle are writing.
    pub(crate) fn claims(&self) -> &Claims {
        &self.inner.claims
    }

    /// Appends an event to the event log.
    pub fn log_event(&self, event: &Event) {
        self.store().append_event(event);
    }

    /// Appends an issue record to the issue log.
    pub fn log_issue(&self, issue: &IssueRecord) {
        self.store().append_issue(issue);
    }

    /// The events logged so far. Lines that do not parse (a line cut by a
    /// crash, a kind from a newer version) are skipped and counted.
    pub fn events(&self) -> Result<LogRead<Event>, RunError> {
        self.store().events()
    }

    /// The issue records logged so far; see [`Run::events`].
    pub fn issues(&self) -> Result<LogRead<IssueRecord>, RunError> {
        self.store().issues()
    }

    /// `outer`, with this run's logs as one more observer, for the body of
    /// a step (of `item`, for an item of a family).
    pub(crate) fn context(&self, outer: &Context, item: Option<Value>) -> Context {
        outer.for_step(Arc::new(RunLogs(self.clone())), item)
    }
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

/// Writes events and issues to the run's logs.
struct RunLogs(Run);

impl Observer for RunLogs {
    fn on_event(&self, event: &Event) {
        self.0.log_event(event);
    }

    fn on_issue(&self, issue: &IssueRecord) {
        self.0.log_issue(issue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::log::parse_log;

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
    fn a_run_whose_creator_was_killed_before_run_json_is_not_made_yet() {
        let tmp = tempfile::tempdir().unwrap();
        // What a creator killed between writing and renaming leaves.
        let leftover = crate::fs::temp_path(&tmp.path().join("run.json"));
        std::fs::write(&leftover, "{").unwrap();
        let err = Run::open_existing(tmp.path()).unwrap_err();
        assert!(matches!(err, RunError::NotARun { .. }), "{err}");
        assert!(err.to_string().contains("no run has been made"), "{err}");
        // And the next opener makes the run there, and sweeps the leftover.
        Run::open(tmp.path()).unwrap();
        Run::open_existing(tmp.path()).unwrap();
        assert!(!leftover.exists());
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
    fn a_file_given_as_the_run_directory_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("notes.txt");
        std::fs::write(&file, "precious").unwrap();
        let err = Run::open(&file).unwrap_err();
        // It said "create run directory ...: File exists (os error 17)".
        assert!(matches!(err, RunError::NotARun { .. }), "{err}");
        assert!(
            err.to_string().contains("it is a file, not a directory"),
            "{err}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
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
        run.log_event(&Event::StepResumed {
            step: "a".into(),
            item: None,
            fetched: 0,
        });
        // A crash cut the next line: no final newline.
        let mut bytes = std::fs::read(run.events_path()).unwrap();
        bytes.extend_from_slice(b"{\"event\":\"STEP_RES");
        std::fs::write(run.events_path(), &bytes).unwrap();
        run.log_event(&Event::StepResumed {
            step: "b".into(),
            item: None,
            fetched: 0,
        });
        run.log_event(&Event::StepResumed {
            step: "c".into(),
            item: None,
            fetched: 0,
        });
        let log = run.events().unwrap();
        let steps: Vec<_> = log
            .records
            .iter()
            .map(|e| match e {
                Event::StepResumed { step, .. } => step.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(steps, ["a", "b", "c"]);
        assert_eq!(log.skipped, 1, "only the cut line is lost");
    }
}
