//! Resumable steps: run a step's body once, commit its outputs atomically,
//! and on a later run return its recorded value instead of running again.
//!
//! The commit of a step, in order:
//! 1. every output in staging is synced (files, then their directories) and
//!    hashed into the manifest;
//! 2. a stale marker, if any, is removed (and its directory synced), so it
//!    can vouch for nothing while outputs change;
//! 3. each output is renamed to its final place (a previous version is
//!    first renamed away into staging), and the final directory is synced;
//! 4. the marker is written atomically: the single commit point.
//!
//! A crash before 4 leaves no valid marker, so the step runs again; a crash
//! after it leaves a marker whose outputs are all in place.

use std::cell::RefCell;
use std::fmt::Display;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{Context, WithContext};
use crate::error::RunError;
use crate::event::Event;
use crate::fs::{EntryKind, FileSystem, atomic_write_with, parent_of, remove_entry};
use crate::issue::{IssueCode, IssueRecord, Severity};
use crate::leftover::{self, Expect};
use crate::marker::{self, MARKER_FORMAT, Marker, MarkerState, OutputEntry, OutputKind, Verify};
use crate::names::{check_output_path, check_outside_path, check_step_name};
use crate::outside;
use crate::run::Run;

/// What `#[resumable_step]` knows about a step at compile time.
#[derive(Clone, Copy, Debug)]
pub struct StepDef {
    /// The step's name, unique in a run.
    pub name: &'static str,
    /// Bumped to rerun the step after its code changed.
    pub version: u32,
    /// Where it is defined (`module::path::function`).
    pub site: &'static str,
    /// How its outputs are checked before it is resumed
    /// (`verify = "size_mtime"`; hashing by default).
    pub verify: Verify,
}

/// The BLAKE3 of a step's key and version: a different key or version
/// means the recorded result is not for this call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Fingerprints `key` (as JSON) with `version`. Keys must serialise the
    /// same way every time: use `BTreeMap`, not `HashMap`.
    pub fn of<K: Serialize + ?Sized>(step: &str, key: &K, version: u32) -> Result<Self, RunError> {
        #[derive(Serialize)]
        struct Keyed<'a, K: ?Sized> {
            key: &'a K,
            version: u32,
        }
        let bytes =
            serde_json::to_vec(&Keyed { key, version }).map_err(|source| RunError::Serialize {
                step: step.to_owned(),
                what: "key",
                source,
            })?;
        Ok(Fingerprint(format!(
            "blake3:{}",
            blake3::hash(&bytes).to_hex()
        )))
    }

    /// `blake3:` and the hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Run {
    /// The state of the step `name` in this run.
    ///
    /// # Errors
    /// When `name` is not a valid step name (see `#[resumable_step]`).
    pub fn step(&self, name: &str) -> Result<StepState, RunError> {
        check_step_name(name)?;
        Ok(StepState {
            run: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Declares a directory output of the running step at `path` (relative
    /// to the run directory) and creates it in staging; write into
    /// [`StagedOutput::path`]. It moves to its final place when the step
    /// succeeds.
    pub fn output_dir(&self, path: &str) -> Result<StagedOutput, RunError> {
        self.active()?.stage(path, true)
    }

    /// Declares a file output of the running step at `path`; write the file
    /// at [`StagedOutput::path`] (its directory exists).
    pub fn output_file(&self, path: &str) -> Result<StagedOutput, RunError> {
        self.active()?.stage(path, false)
    }

    /// Declares a directory output outside the run directory, at the
    /// absolute `path` under a place allowed with [`Run::allow_outside`],
    /// and creates it in staging beside that path (a rename is atomic only
    /// within one file system). Its directory must exist. When the step
    /// succeeds it replaces whatever is at `path`; the marker records it
    /// by its absolute path.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let tmp = tempfile::tempdir()?;
    /// # let run_dir = tmp.path().join("run");
    /// # let exports = tmp.path().join("exports");
    /// # std::fs::create_dir(&exports)?;
    /// use recovery::{Run, resumable_step};
    ///
    /// #[resumable_step("export")]
    /// fn export(run: &Run, to: &std::path::Path) -> std::io::Result<()> {
    ///     let site = run.output_dir_outside(to.join("site"))?;
    ///     std::fs::write(site.path().join("index.html"), "<h1>done</h1>")
    /// }
    ///
    /// let run = Run::open(&run_dir)?;
    /// run.allow_outside(&exports)?;
    /// export(&run, &exports)?;
    /// assert!(exports.join("site/index.html").is_file());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// A relative path, `.` or `..` components, a path inside the run
    /// directory (use [`output_dir`](Self::output_dir)) or above it, a path
    /// in no allowed place, or a directory that does not exist:
    /// [`RunError::InvalidOutputPath`], saying which.
    pub fn output_dir_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        self.active()?.stage_outside(path.as_ref(), true)
    }

    /// Declares a file output outside the run directory; see
    /// [`output_dir_outside`](Self::output_dir_outside).
    pub fn output_file_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        self.active()?.stage_outside(path.as_ref(), false)
    }

    /// Declares a file output and writes `data` to it; returns its final
    /// path.
    pub fn write_output(&self, path: &str, data: &[u8]) -> Result<PathBuf, RunError> {
        let staged = self.output_file(path)?;
        self.fs()
            .write(&staged.staging, data)
            .map_err(|e| RunError::io("write", &staged.staging, e))?;
        Ok(staged.final_path)
    }

    fn active(&self) -> Result<Arc<Active>, RunError> {
        CURRENT_STEP
            .try_with(|c| c.borrow().clone())
            .ok()
            .flatten()
            .filter(|a| a.run.dir() == self.dir())
            .ok_or(RunError::NoActiveStep)
    }
}

/// An output being written in staging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedOutput {
    staging: PathBuf,
    final_path: PathBuf,
}

impl StagedOutput {
    /// Where to write it now (in the run's staging area, or beside the
    /// final path for an output outside the run directory).
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Where it will be once the step has succeeded.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }
}

/// One step of a run: check, load, run and reset it by hand.
/// `#[resumable_step]` does all of this for you.
#[derive(Clone, Debug)]
pub struct StepState {
    run: Run,
    name: String,
}

impl StepState {
    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the step's marker lives.
    pub fn marker_path(&self) -> PathBuf {
        self.run.marker_path(&self.name)
    }

    /// The marker as it is on disk, its outputs verified (hashed), the
    /// fingerprint not compared (what `recovery status` shows).
    pub fn marker(&self) -> Result<MarkerState, RunError> {
        self.marker_with(Verify::Hash)
    }

    fn marker_with(&self, mode: Verify) -> Result<MarkerState, RunError> {
        let fs = self.run.fs();
        match marker::read(fs, &self.run.marker_path(&self.name))? {
            MarkerState::Valid(m) if m.step != self.name => Ok(MarkerState::Invalid(format!(
                "the marker belongs to step {:?}",
                m.step
            ))),
            MarkerState::Valid(m) => {
                let verified = self.run.with_outside(|places| {
                    marker::verify_outputs(fs, self.run.dir(), places, &m, mode)
                });
                match verified {
                    Ok(()) => Ok(MarkerState::Valid(m)),
                    Err(reason) => Ok(MarkerState::Invalid(reason)),
                }
            }
            other => Ok(other),
        }
    }

    /// Whether the step is done for this fingerprint: the marker parses,
    /// its checksum holds, the fingerprint matches and every output is
    /// intact.
    pub fn check(&self, fingerprint: &Fingerprint) -> Result<MarkerState, RunError> {
        self.check_with(fingerprint, Verify::Hash)
    }

    /// [`check`](Self::check), with the outputs checked as `mode` says.
    pub fn check_with(
        &self,
        fingerprint: &Fingerprint,
        mode: Verify,
    ) -> Result<MarkerState, RunError> {
        Ok(match self.marker_with(mode)? {
            MarkerState::Valid(m) if m.fingerprint != fingerprint.as_str() => {
                MarkerState::Invalid("the step's key or version changed".into())
            }
            other => other,
        })
    }

    /// [`check`](Self::check) for a key and version.
    pub fn is_done<K: Serialize + ?Sized>(&self, key: &K, version: u32) -> Result<bool, RunError> {
        let fp = Fingerprint::of(&self.name, key, version)?;
        Ok(matches!(self.check(&fp)?, MarkerState::Valid(_)))
    }

    /// The recorded value, if the step is done for this key and version and
    /// the value still reads as a `T`.
    pub fn load<T: DeserializeOwned, K: Serialize + ?Sized>(
        &self,
        key: &K,
        version: u32,
    ) -> Result<Option<T>, RunError> {
        let fp = Fingerprint::of(&self.name, key, version)?;
        Ok(match self.check(&fp)? {
            MarkerState::Valid(m) => serde_json::from_value(m.value).ok(),
            _ => None,
        })
    }

    /// Takes the step's lock (waiting while another process holds it) and
    /// opens a staging area for its outputs.
    pub fn begin(&self) -> Result<StepExecution, RunError> {
        let lock = self.run.lock_step(&self.name)?;
        // What a dead worker left of this step is ours now.
        self.run.sweep_step(&self.name)?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let staging = self.run.staging_dir().join(leftover::execution_name(
            &self.name,
            std::process::id(),
            n,
        ));
        self.run
            .fs()
            .create_dir_all(&staging)
            .map_err(|e| RunError::io("create staging", &staging, e))?;
        Ok(StepExecution {
            active: Arc::new(Active {
                run: self.run.clone(),
                step: self.name.clone(),
                staging,
                outputs: Mutex::new(Vec::new()),
                next_output: AtomicU64::new(0),
                attempts: AtomicU32::new(1),
                slept_ns: AtomicU64::new(0),
            }),
            _lock: lock,
        })
    }

    /// Makes sure the marker can be written: an empty directory in its
    /// place (nothing of anyone's) is removed; a directory with files in
    /// it is an error before the body runs, not a commit that fails every
    /// time. The caller holds the step's lock.
    fn clear_marker_place(&self) -> Result<(), RunError> {
        let fs = self.run.fs();
        let path = self.run.marker_path(&self.name);
        match fs.stat(&path) {
            Ok(s) if s.kind == EntryKind::Dir => {}
            _ => return Ok(()),
        }
        let entries = fs
            .read_dir(&path)
            .map_err(|e| RunError::io("list", &path, e))?;
        if !entries.is_empty() {
            return Err(RunError::MarkerPlaceTaken {
                step: self.name.clone(),
                path,
            });
        }
        fs.remove_dir_all(&path)
            .map_err(|e| RunError::io("remove empty directory", &path, e))?;
        let dir = self.run.steps_dir();
        fs.sync_dir(&dir)
            .map_err(|e| RunError::io("fsync directory", &dir, e))
    }

    /// Invalidates the step: removes its marker atomically, under the
    /// step's lock (waiting while another process runs the step). Its
    /// outputs stay until the step runs again. Returns whether there was a
    /// marker.
    pub fn reset(&self) -> Result<bool, RunError> {
        let lock = self.run.lock_step(&self.name)?;
        self.reset_locked(lock)
    }

    /// [`reset`](Self::reset) without waiting: `None` when another process
    /// is running the step right now ([`running_pids`](Self::running_pids)
    /// says which).
    pub fn try_reset(&self) -> Result<Option<bool>, RunError> {
        match self.run.try_lock_step(&self.name)? {
            Some(lock) => self.reset_locked(lock).map(Some),
            None => Ok(None),
        }
    }

    /// The processes with an execution of this step under way (or dead
    /// without a sweep since), read from the names of its staging
    /// directories.
    pub fn running_pids(&self) -> Result<Vec<u32>, RunError> {
        let names = self.run.list_or_empty(&self.run.staging_dir())?;
        let mut pids: Vec<u32> = names
            .iter()
            .filter_map(|n| leftover::parse_execution(n))
            .filter(|(step, _)| *step == self.name)
            .map(|(_, pid)| pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn reset_locked(&self, _lock: File) -> Result<bool, RunError> {
        let fs = self.run.fs();
        let path = self.run.marker_path(&self.name);
        match fs.remove_file(&path) {
            Ok(()) => {
                let dir = self.run.steps_dir();
                fs.sync_dir(&dir)
                    .map_err(|e| RunError::io("fsync directory", &dir, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(RunError::io("remove marker", &path, e)),
        }
    }
}

/// A step being run: holds its lock and its staging area. Dropped without
/// [`commit`](Self::commit), it removes its staging area and commits
/// nothing.
#[derive(Debug)]
pub struct StepExecution {
    active: Arc<Active>,
    _lock: File,
}

#[derive(Debug)]
struct Active {
    run: Run,
    step: String,
    staging: PathBuf,
    outputs: Mutex<Vec<Staged>>,
    next_output: AtomicU64,
    /// Attempts the body made and time slept between them, as a
    /// `#[retryable]` under the step reports them when it gives up.
    attempts: AtomicU32,
    slept_ns: AtomicU64,
}

#[derive(Clone, Debug)]
struct Staged {
    /// The path in the manifest: relative to the run directory, or
    /// absolute for an output outside it.
    rel: String,
    /// Where the body writes it.
    staging: PathBuf,
    /// Where the commit moves a previous version aside to.
    trash: PathBuf,
    final_path: PathBuf,
    /// Placed outside the run directory (staged beside its final path).
    outside: bool,
}

thread_local! {
    static CURRENT_STEP: RefCell<Option<Arc<Active>>> = const { RefCell::new(None) };
}

impl Active {
    /// Declares an output inside the run directory.
    fn stage(&self, path: &str, dir: bool) -> Result<StagedOutput, RunError> {
        let rel = check_output_path(path)?;
        let final_path = self.run.dir().join(&rel);
        self.declare(rel, final_path, false, dir)
    }

    /// Declares an output outside the run directory, at an absolute path
    /// whose directory exists.
    fn stage_outside(&self, path: &Path, dir: bool) -> Result<StagedOutput, RunError> {
        let rel = check_outside_path(self.run.dir(), path)?;
        let final_path = PathBuf::from(&rel);
        let allowed = self
            .run
            // Strictly inside: its staging sits beside it, in the place too.
            .with_outside(|places| {
                places
                    .iter()
                    .any(|p| final_path.starts_with(p) && final_path != *p)
            });
        if !allowed {
            return Err(RunError::InvalidOutputPath {
                reason: format!(
                    "it is outside the run directory, in no place this program allows; \
                     call run.allow_outside({:?}) first",
                    parent_of(&final_path)
                ),
                path: rel,
            });
        }
        self.declare(rel, final_path, true, dir)
    }

    /// Removes something this execution staged beside an output outside
    /// the run, checked at the removal (see [`leftover::remove`]).
    fn remove_staged(&self, path: &Path) -> Result<(), RunError> {
        let execution = self
            .staging
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        leftover::remove(self.run.fs(), path, Expect::Outside { execution })
    }

    /// Forgets every output declared so far and removes what was staged
    /// for them: a retried attempt starts from nothing, so nothing a
    /// failed attempt half-wrote can be committed.
    fn discard(&self) -> Result<(), RunError> {
        let mut outputs = self
            .outputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fs = self.run.fs();
        while let Some(o) = outputs.last() {
            if o.outside {
                self.remove_staged(&o.staging)?;
                let parent = parent_of(&o.final_path);
                fs.sync_dir(parent)
                    .map_err(|e| RunError::io("fsync directory", parent, e))?;
            } else {
                remove_entry(fs, &o.staging).map_err(|e| RunError::io("discard", &o.staging, e))?;
            }
            outputs.pop();
        }
        Ok(())
    }

    fn declare(
        &self,
        rel: String,
        final_path: PathBuf,
        outside: bool,
        dir: bool,
    ) -> Result<StagedOutput, RunError> {
        let mut outputs = self
            .outputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fs = self.run.fs();
        let staged = match outputs.iter().position(|o| o.rel == rel) {
            // Declared again (a retried attempt): start it afresh, so a
            // retry never leaves the first attempt's files behind.
            // Kept in the list until cleared, so that a failure here still
            // leaves it for the clean-up.
            Some(i) => {
                let staging = &outputs[i].staging;
                remove_entry(fs, staging).map_err(|e| RunError::io("clear", staging, e))?;
                outputs.remove(i)
            }
            None => {
                if let Some(other) = outputs.iter().find(|o| overlaps(&o.rel, &rel)) {
                    return Err(RunError::InvalidOutputPath {
                        path: rel,
                        reason: format!("it overlaps the output {:?} of this step", other.rel),
                    });
                }
                if outside {
                    check_outside_parent(fs, &rel, &final_path)?;
                }
                let n = self.next_output.fetch_add(1, Ordering::Relaxed);
                let (staging, trash) = if outside {
                    outside::staging_paths(&final_path, &self.staging, n)
                } else {
                    (
                        self.staging.join(format!("o{n}")),
                        self.staging.join(format!("t{n}")),
                    )
                };
                let staged = Staged {
                    rel,
                    staging,
                    trash,
                    final_path,
                    outside,
                };
                if outside {
                    // Journaled before anything exists there, so that the
                    // sweep finds it after a crash.
                    let listed = outputs.iter().chain([&staged]).filter(|o| o.outside);
                    outside::write_journal(
                        fs,
                        &self.staging,
                        listed.flat_map(|o| [o.staging.as_path(), o.trash.as_path()]),
                    )
                    .map_err(|e| RunError::io("journal", &self.staging, e))?;
                }
                staged
            }
        };
        if dir {
            fs.create_dir_all(&staged.staging)
                .map_err(|e| RunError::io("create", &staged.staging, e))?;
        }
        let out = StagedOutput {
            staging: staged.staging.clone(),
            final_path: staged.final_path.clone(),
        };
        outputs.push(staged);
        Ok(out)
    }
}

/// An output outside the run directory is staged beside its final path,
/// so that directory must exist: recovery creates no directories outside
/// the run.
fn check_outside_parent(fs: &dyn FileSystem, rel: &str, final_path: &Path) -> Result<(), RunError> {
    let parent = parent_of(final_path);
    let reason = match fs.stat(parent) {
        Ok(s) if s.kind == EntryKind::Dir => return Ok(()),
        Ok(s) => format!("{} is a {:?}, not a directory", parent.display(), s.kind),
        Err(e) if e.kind() == io::ErrorKind::NotFound => format!(
            "its directory {} does not exist; create it before the step runs",
            parent.display()
        ),
        Err(e) => return Err(RunError::io("inspect", parent, e)),
    };
    Err(RunError::InvalidOutputPath {
        path: rel.to_owned(),
        reason,
    })
}

/// Whether one output path is the other or inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| x == y || x.starts_with(&format!("{y}/"));
    inside(a, b) || inside(b, a)
}

/// Makes the step current on this thread until dropped.
struct StepGuard {
    previous: Option<Arc<Active>>,
}

impl StepGuard {
    fn enter(active: &Arc<Active>) -> Self {
        let previous = CURRENT_STEP
            .try_with(|c| c.borrow_mut().replace(Arc::clone(active)))
            .ok()
            .flatten();
        StepGuard { previous }
    }
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = CURRENT_STEP.try_with(|c| *c.borrow_mut() = previous);
    }
}

impl StepExecution {
    /// Declares a directory output; see [`Run::output_dir`].
    pub fn output_dir(&self, path: &str) -> Result<StagedOutput, RunError> {
        self.active.stage(path, true)
    }

    /// Declares a file output; see [`Run::output_file`].
    pub fn output_file(&self, path: &str) -> Result<StagedOutput, RunError> {
        self.active.stage(path, false)
    }

    /// Declares a directory output outside the run directory; see
    /// [`Run::output_dir_outside`].
    pub fn output_dir_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        self.active.stage_outside(path.as_ref(), true)
    }

    /// Declares a file output outside the run directory; see
    /// [`Run::output_dir_outside`].
    pub fn output_file_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        self.active.stage_outside(path.as_ref(), false)
    }

    /// Runs `f` with this step current, so that [`Run::output_dir`] and
    /// friends reach it.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = StepGuard::enter(&self.active);
        f()
    }

    /// Commits the outputs and writes the marker: the step is done.
    ///
    /// # Errors
    /// A declared output that was never written, an output that is not a
    /// file, directory or symlink, a symlink among the run directory's own
    /// directories, or any failed file operation (named, with its path). On
    /// error nothing is marked done.
    pub fn commit<T: Serialize + ?Sized>(
        self,
        fingerprint: &Fingerprint,
        version: u32,
        site: &str,
        value: &T,
    ) -> Result<Marker, RunError> {
        self.commit_with(fingerprint, version, site, value, Verify::Hash)
    }

    /// [`commit`](Self::commit); with [`Verify::SizeMtime`] the manifest
    /// also records each file's modification time, so that
    /// [`StepState::check_with`] can trust an unchanged file unread.
    pub fn commit_with<T: Serialize + ?Sized>(
        self,
        fingerprint: &Fingerprint,
        version: u32,
        site: &str,
        value: &T,
        mode: Verify,
    ) -> Result<Marker, RunError> {
        let run = &self.active.run;
        let fs = run.fs();
        let step = &self.active.step;
        let value = serde_json::to_value(value).map_err(|source| RunError::Serialize {
            step: step.clone(),
            what: "value",
            source,
        })?;
        let outputs = self
            .active
            .outputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();

        // 1. Durable and hashed, still in staging.
        let mut manifest = Vec::new();
        for o in &outputs {
            match fs.stat(&o.staging) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(RunError::OutputNotWritten {
                        step: step.clone(),
                        path: o.rel.clone(),
                        staging: o.staging.clone(),
                    });
                }
                Err(e) => return Err(RunError::io("inspect", &o.staging, e)),
                Ok(_) => {}
            }
            record(fs, &o.staging, &o.rel, mode, &mut manifest)?;
        }
        if !outputs.is_empty() {
            // The staged entries, and this step's staging directory itself,
            // must be durable before they are renamed into place.
            for dir in [&self.active.staging, &run.staging_dir()] {
                fs.sync_dir(dir)
                    .map_err(|e| RunError::io("fsync directory", dir, e))?;
            }
        }

        // 2. A stale marker must not vouch for outputs about to change.
        let marker_path = run.marker_path(step);
        let steps_dir = run.steps_dir();
        if fs.stat(&marker_path).is_ok() {
            fs.remove_file(&marker_path)
                .map_err(|e| RunError::io("remove stale marker", &marker_path, e))?;
            fs.sync_dir(&steps_dir)
                .map_err(|e| RunError::io("fsync directory", &steps_dir, e))?;
        }

        // 3. Into place.
        for o in &outputs {
            let final_path = &o.final_path;
            if !o.outside {
                ensure_parents(run, &o.rel)?;
            }
            if fs.stat(final_path).is_ok() {
                fs.rename(final_path, &o.trash)
                    .map_err(|e| RunError::io("move aside", final_path, e))?;
            }
            fs.rename(&o.staging, final_path)
                .map_err(|e| RunError::io("rename into place", final_path, e))?;
            let parent = parent_of(final_path);
            fs.sync_dir(parent)
                .map_err(|e| RunError::io("fsync directory", parent, e))?;
        }

        // 4. The commit point.
        let marker = Marker {
            format: MARKER_FORMAT,
            step: step.clone(),
            version,
            fingerprint: fingerprint.as_str().to_owned(),
            site: site.to_owned(),
            value,
            outputs: manifest,
            completed_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let bytes = marker::encode(&marker).map_err(|source| RunError::Serialize {
            step: step.clone(),
            what: "marker",
            source,
        })?;
        if let Err(e) = atomic_write_with(fs, &marker_path, &bytes) {
            // The rename may have happened before the failure (a failed
            // directory fsync): take the marker back, so that a step that
            // reports failure is not found done. Its outputs are durable
            // either way, so a marker that cannot be removed is still safe.
            let _ = fs.remove_file(&marker_path);
            return Err(RunError::io("write marker", &marker_path, e));
        }
        Ok(marker)
    }
}

impl Drop for StepExecution {
    fn drop(&mut self) {
        // Best effort: what is left here is swept when the run is reopened.
        // Outside first, durably: the journal that lists it goes with the
        // staging directory, and must outlive it.
        let fs = self.active.run.fs();
        let outputs = self
            .active
            .outputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut cleared = true;
        for o in outputs.iter().filter(|o| o.outside) {
            cleared &= self.active.remove_staged(&o.staging).is_ok()
                && self.active.remove_staged(&o.trash).is_ok()
                && fs.sync_dir(parent_of(&o.final_path)).is_ok();
        }
        if cleared {
            let area = self.active.run.staging_dir();
            let _ = leftover::remove(
                fs,
                &self.active.staging,
                Expect::InRun {
                    staging_area: &area,
                },
            );
        }
    }
}

/// Creates the directories above an output inside the run directory,
/// refusing to go through a symlink (which could lead outside it).
fn ensure_parents(run: &Run, rel: &str) -> Result<(), RunError> {
    let fs = run.fs();
    let mut dir = run.dir().to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        let parent = dir.clone();
        dir.push(part);
        match fs.stat(&dir) {
            Ok(s) if s.kind == EntryKind::Dir => {}
            Ok(s) => {
                return Err(RunError::InvalidOutputPath {
                    path: rel.to_owned(),
                    reason: format!("{} is a {:?}, not a directory", dir.display(), s.kind),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs.create_dir_all(&dir)
                    .map_err(|e| RunError::io("create", &dir, e))?;
                fs.sync_dir(&parent)
                    .map_err(|e| RunError::io("fsync directory", &parent, e))?;
            }
            Err(e) => return Err(RunError::io("inspect", &dir, e)),
        }
    }
    Ok(())
}

/// Syncs and hashes one staged output (recursively for a directory) into
/// the manifest, in a fixed order.
fn record(
    fs: &dyn FileSystem,
    path: &Path,
    rel: &str,
    mode: Verify,
    manifest: &mut Vec<OutputEntry>,
) -> Result<(), RunError> {
    let stat = fs
        .stat(path)
        .map_err(|e| RunError::io("inspect", path, e))?;
    match stat.kind {
        EntryKind::File => {
            let hash = marker::hash_file(fs, path).map_err(|e| RunError::io("read", path, e))?;
            fs.sync_file(path)
                .map_err(|e| RunError::io("fsync", path, e))?;
            manifest.push(OutputEntry {
                path: rel.to_owned(),
                kind: OutputKind::File,
                size: stat.len,
                blake3: Some(hash),
                mtime_ns: stat.mtime_ns.filter(|_| mode == Verify::SizeMtime),
            });
        }
        EntryKind::Dir => {
            manifest.push(OutputEntry {
                path: rel.to_owned(),
                kind: OutputKind::Dir,
                size: 0,
                blake3: None,
                mtime_ns: None,
            });
            let names = fs
                .read_dir(path)
                .map_err(|e| RunError::io("list", path, e))?;
            for name in names {
                record(
                    fs,
                    &path.join(&name),
                    &format!("{rel}/{name}"),
                    mode,
                    manifest,
                )?;
            }
            fs.sync_dir(path)
                .map_err(|e| RunError::io("fsync directory", path, e))?;
        }
        EntryKind::Symlink => {
            let target = fs
                .read_link(path)
                .map_err(|e| RunError::io("read link", path, e))?;
            manifest.push(OutputEntry {
                path: rel.to_owned(),
                kind: OutputKind::Symlink,
                size: 0,
                blake3: Some(
                    blake3::hash(target.as_os_str().as_encoded_bytes())
                        .to_hex()
                        .to_string(),
                ),
                mtime_ns: None,
            });
        }
        EntryKind::Other => {
            return Err(RunError::InvalidOutputPath {
                path: rel.to_owned(),
                reason: "it is not a file, a directory or a symlink".into(),
            });
        }
    }
    Ok(())
}

/// A step function's error type: it must carry a [`RunError`] (the step
/// fails with one when its outputs cannot be committed) and have a text.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` of a #[resumable_step] must implement `From<recovery::RunError>` and `Display`",
    label = "a step fails with a RunError when its outputs cannot be committed, so its error type must hold one",
    note = "add `impl From<recovery::RunError> for {Self}` (e.g. a variant `Run(recovery::RunError)`), or return `std::io::Result` / `anyhow::Result`, which have it"
)]
pub trait StepError: From<RunError> + Display {}
impl<E: From<RunError> + Display> StepError for E {}

/// A step's key: serialised into its fingerprint.
#[diagnostic::on_unimplemented(
    message = "the key `{Self}` of a #[resumable_step] must implement `serde::Serialize`",
    label = "the key is serialised (as JSON) into the step's fingerprint",
    note = "derive `serde::Serialize` for it, or key the step on values that have it (strings, numbers, tuples of them)"
)]
pub trait StepKey: Serialize {}
impl<K: Serialize + ?Sized> StepKey for K {}

/// What `#[resumable_step]` fingerprints its key with: [`Fingerprint::of`]
/// with a bound that names the key when it is not serialisable.
pub fn fingerprint<K: StepKey + ?Sized>(
    step: &str,
    key: &K,
    version: u32,
) -> Result<Fingerprint, RunError> {
    Fingerprint::of(step, key, version)
}

/// A step function's return type: `Result<T, E>` with a serialisable `T`
/// and an `E` that can carry a [`RunError`].
#[diagnostic::on_unimplemented(
    message = "a #[resumable_step] must return `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<recovery::RunError> + Display`; `{Self}` is not such a type",
    label = "the step's value is recorded in its marker and its errors must hold a RunError",
    note = "derive serde's Serialize and Deserialize for the value, and add a `From<recovery::RunError>` conversion to the error (std::io::Error and anyhow::Error have one)"
)]
pub trait StepResult: Sized {
    /// `T`.
    type Value: Serialize + DeserializeOwned;
    /// `E`.
    type Error: From<RunError> + Display;
    /// Splits it.
    fn into_result(self) -> Result<Self::Value, Self::Error>;
    /// Builds it.
    fn from_result(r: Result<Self::Value, Self::Error>) -> Self;
}

impl<T, E> StepResult for Result<T, E>
where
    T: Serialize + DeserializeOwned,
    E: StepError,
{
    type Value = T;
    type Error = E;

    fn into_result(self) -> Self {
        self
    }

    fn from_result(r: Self) -> Self {
        r
    }
}

enum Prepared<T> {
    Resumed(T),
    Run(StepExecution),
}

/// Registers the step, checks its marker, and if it is not done takes the
/// lock and checks again (another process may have finished it meanwhile).
fn prepare<T: DeserializeOwned>(
    run: &Run,
    def: &StepDef,
    fingerprint: &Fingerprint,
    ctx: &Context,
) -> Result<Prepared<T>, RunError> {
    run.register(def.name, def.site)?;
    let state = run.step(def.name)?;
    let check = |state: &StepState| -> Result<Result<T, Option<String>>, RunError> {
        Ok(match state.check_with(fingerprint, def.verify)? {
            MarkerState::Valid(m) => serde_json::from_value(m.value).map_err(|e| {
                Some(format!(
                    "the recorded value no longer reads as the step's type ({e})"
                ))
            }),
            MarkerState::Invalid(reason) => Err(Some(reason)),
            MarkerState::Missing => Err(None),
        })
    };
    let resumed = |value| {
        ctx.emit(&Event::StepResumed {
            step: def.name.to_owned(),
        });
        Ok(Prepared::Resumed(value))
    };
    if let Ok(value) = check(&state)? {
        return resumed(value);
    }
    let execution = state.begin()?;
    state.clear_marker_place()?;
    match check(&state)? {
        Ok(value) => resumed(value),
        Err(reason) => {
            if let Some(reason) = reason {
                ctx.emit(&Event::MarkerInvalid {
                    step: def.name.to_owned(),
                    reason,
                });
            }
            Ok(Prepared::Run(execution))
        }
    }
}

/// Commits a successful body, or records the failure.
fn finish<R: StepResult>(
    def: &StepDef,
    fingerprint: &Fingerprint,
    execution: StepExecution,
    outcome: R,
    ctx: &Context,
) -> R {
    let active = Arc::clone(&execution.active);
    let result = match outcome.into_result() {
        Ok(value) => {
            match execution.commit_with(fingerprint, def.version, def.site, &value, def.verify) {
                Ok(marker) => {
                    ctx.emit(&Event::StepCompleted {
                        step: def.name.to_owned(),
                        outputs: marker.outputs.len() as u32,
                    });
                    return R::from_result(Ok(value));
                }
                Err(e) => {
                    report_failure(ctx, def, Some(&active), &e);
                    <R::Error as From<RunError>>::from(e)
                }
            }
        }
        Err(e) => {
            drop(execution);
            report_failure(ctx, def, Some(&active), &e);
            e
        }
    };
    R::from_result(Err(result))
}

fn report_failure(ctx: &Context, def: &StepDef, active: Option<&Active>, error: &dyn Display) {
    let (attempts, slept_ns) = active.map_or((1, 0), |a| {
        (
            a.attempts.load(Ordering::Relaxed),
            a.slept_ns.load(Ordering::Relaxed),
        )
    });
    ctx.report(&IssueRecord {
        error_code: IssueCode::StepFailed,
        severity: Severity::Blocker,
        operation: def.name.to_owned(),
        attempts,
        slept_ns,
        last_error: error.to_string(),
    });
}

/// What `#[resumable_step]` runs before each retried attempt of its body:
/// drops every output the failed attempt declared.
pub fn discard_attempt_outputs(run: &Run) -> Result<(), RunError> {
    run.active()?.discard()
}

/// What `#[resumable_step]` runs when the `#[retryable]` under it gives
/// up: the step's `STEP_FAILED` record carries these figures.
pub fn record_attempts(run: &Run, attempts: u32, slept: std::time::Duration) {
    if let Ok(active) = run.active() {
        active.attempts.store(attempts.max(1), Ordering::Relaxed);
        let ns = u64::try_from(slept.as_nanos()).unwrap_or(u64::MAX);
        active.slept_ns.store(ns, Ordering::Relaxed);
    }
}

/// A step's own error type made from a [`RunError`].
pub fn step_error<R: StepResult>(error: RunError) -> R {
    R::from_result(Err(error.into()))
}

/// What a step does before its body: the step's result already (resumed,
/// or failed to start), or the execution to run the body in.
fn start<R: StepResult>(
    run: &Run,
    def: &StepDef,
    fingerprint: Result<Fingerprint, RunError>,
    ctx: &Context,
) -> Result<(Fingerprint, StepExecution), R> {
    let prepared = fingerprint.and_then(|fp| {
        let p = ctx.in_scope(|| prepare::<R::Value>(run, def, &fp, ctx))?;
        Ok((fp, p))
    });
    match prepared {
        Err(e) => {
            report_failure(ctx, def, None, &e);
            Err(R::from_result(Err(e.into())))
        }
        Ok((_, Prepared::Resumed(value))) => Err(R::from_result(Ok(value))),
        Ok((fp, Prepared::Run(execution))) => Ok((fp, execution)),
    }
}

/// Runs a step: returns its recorded value if it is done, else runs `body`
/// with the step current, commits its outputs and writes its marker.
/// What `#[resumable_step]` expands to for a sync function.
pub fn run_step<R: StepResult, F: FnOnce() -> R>(
    run: &Run,
    def: &StepDef,
    fingerprint: Result<Fingerprint, RunError>,
    body: F,
) -> R {
    let ctx = run.context(&Context::current());
    let (fp, execution) = match start::<R>(run, def, fingerprint, &ctx) {
        Ok(started) => started,
        Err(result) => return result,
    };
    let outcome = execution.in_scope(|| ctx.in_scope(body));
    finish(def, &fp, execution, outcome, &ctx)
}

/// The async form of [`run_step`]: `body` is polled with the step current
/// and the run's context in force, on whichever thread polls it.
pub async fn run_step_async<R: StepResult, F: Future<Output = R>>(
    run: &Run,
    def: &StepDef,
    fingerprint: Result<Fingerprint, RunError>,
    body: F,
) -> R {
    let ctx = run.context(&Context::current());
    let (fp, execution) = match start::<R>(run, def, fingerprint, &ctx) {
        Ok(started) => started,
        Err(result) => return result,
    };
    let outcome = InStep {
        future: body.with_context(ctx.clone()),
        active: Arc::clone(&execution.active),
    }
    .await;
    finish(def, &fp, execution, outcome, &ctx)
}

pin_project_lite::pin_project! {
    /// Polls a future with a step current.
    struct InStep<F> {
        #[pin]
        future: F,
        active: Arc<Active>,
    }
}

impl<F: Future> Future for InStep<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _guard = StepGuard::enter(this.active);
        this.future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_outputs() {
        assert!(overlaps("a", "a"));
        assert!(overlaps("a", "a/b"));
        assert!(overlaps("a/b", "a"));
        assert!(!overlaps("a", "ab"));
        assert!(!overlaps("a/b", "a/c"));
    }

    #[test]
    fn fingerprints_depend_on_key_and_version() {
        let a = Fingerprint::of("s", &("url", "rev"), 1).unwrap();
        assert_eq!(a, Fingerprint::of("s", &("url", "rev"), 1).unwrap());
        assert_ne!(a, Fingerprint::of("s", &("url", "rev2"), 1).unwrap());
        assert_ne!(a, Fingerprint::of("s", &("url", "rev"), 2).unwrap());
    }

    #[test]
    fn manual_steps_commit_and_resume() {
        let tmp = tempfile::tempdir().unwrap();
        let run = Run::open(tmp.path()).unwrap();
        let step = run.step("build").unwrap();
        assert!(!step.is_done(&"k", 1).unwrap());
        let exec = step.begin().unwrap();
        let out = exec.output_file("out/a.txt").unwrap();
        std::fs::write(out.path(), b"hello").unwrap();
        let marker = exec
            .commit(
                &Fingerprint::of("build", &"k", 1).unwrap(),
                1,
                "here",
                &42u32,
            )
            .unwrap();
        assert_eq!(marker.outputs.len(), 1);
        assert_eq!(
            std::fs::read(tmp.path().join("out/a.txt")).unwrap(),
            b"hello"
        );
        assert!(step.is_done(&"k", 1).unwrap());
        assert_eq!(step.load::<u32, _>(&"k", 1).unwrap(), Some(42));
        assert!(!step.is_done(&"other", 1).unwrap());
        assert!(step.reset().unwrap());
        assert!(!step.is_done(&"k", 1).unwrap());
        assert!(!step.reset().unwrap());
    }

    #[test]
    fn a_declared_but_unwritten_output_fails_the_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let run = Run::open(tmp.path()).unwrap();
        let exec = run.step("s").unwrap().begin().unwrap();
        exec.output_file("never").unwrap();
        let err = exec
            .commit(&Fingerprint::of("s", &(), 1).unwrap(), 1, "x", &())
            .unwrap_err();
        assert!(matches!(err, RunError::OutputNotWritten { .. }), "{err}");
        assert!(!run.marker_path("s").exists());
    }

    #[test]
    fn outputs_outside_a_step_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let run = Run::open(tmp.path()).unwrap();
        assert!(matches!(run.output_dir("x"), Err(RunError::NoActiveStep)));
    }
}
