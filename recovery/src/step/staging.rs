//! Output staging: what a running step has declared, where each output is
//! written until the commit, and which step is current on a thread.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::error::RunError;
use crate::fs::{EntryKind, FileSystem, parent_of, remove_entry};
use crate::scope::{self, ScopeGuard, Scoped};
use crate::step::instance::StepId;
use crate::step::leftover::{self, Expect};
use crate::step::names::{check_output_path, check_outside_path};
use crate::step::outside;
use crate::step::run::Run;

/// An output being written in staging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedOutput {
    pub(crate) staging: PathBuf,
    pub(crate) final_path: PathBuf,
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

/// A running step's staging: its directory in the run's staging area and
/// the outputs declared so far.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) run: Run,
    pub(crate) step: StepId,
    /// The item as JSON, for an item of a family.
    pub(crate) item: Option<Value>,
    /// Set when the body has returned: no output may be declared after.
    ended: AtomicBool,
    /// This execution's directory in the staging area.
    pub(crate) staging: PathBuf,
    outputs: Mutex<Vec<Staged>>,
    next_output: AtomicU64,
    /// Attempts the body made and time slept between them, as a
    /// `#[retryable]` under the step reports them when it gives up.
    pub(crate) attempts: AtomicU32,
    pub(crate) slept_ns: AtomicU64,
}

/// One declared output.
#[derive(Clone, Debug)]
pub(crate) struct Staged {
    /// The path in the manifest: relative to the run directory, or
    /// absolute for an output outside it.
    pub(crate) rel: String,
    /// Where the body writes it.
    pub(crate) staging: PathBuf,
    /// Where the commit moves a previous version aside to.
    pub(crate) trash: PathBuf,
    pub(crate) final_path: PathBuf,
    /// Placed outside the run directory (staged beside its final path).
    pub(crate) outside: bool,
}

thread_local! {
    static CURRENT_STEP: RefCell<Option<Arc<Active>>> = const { RefCell::new(None) };
}

impl Active {
    /// A staging area at `staging` (created already) for `step`.
    pub(crate) fn new(run: Run, step: StepId, item: Option<Value>, staging: PathBuf) -> Self {
        Active {
            run,
            step,
            item,
            ended: AtomicBool::new(false),
            staging,
            outputs: Mutex::new(Vec::new()),
            next_output: AtomicU64::new(0),
            attempts: AtomicU32::new(1),
            slept_ns: AtomicU64::new(0),
        }
    }

    /// Declares an output inside the run directory.
    pub(crate) fn stage(&self, path: &str, dir: bool) -> Result<StagedOutput, RunError> {
        let rel = check_output_path(path)?;
        let final_path = self.run.dir().join(&rel);
        self.declare(rel, final_path, false, dir)
    }

    /// Declares an output outside the run directory, at an absolute path
    /// whose directory exists.
    pub(crate) fn stage_outside(&self, path: &Path, dir: bool) -> Result<StagedOutput, RunError> {
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
    pub(crate) fn remove_staged(&self, path: &Path) -> Result<(), RunError> {
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
    pub(crate) fn discard(&self) -> Result<(), RunError> {
        let mut outputs = self.outputs();
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
            self.run.claims().release(&o.rel, &self.step);
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
        let mut outputs = self.outputs();
        if self.ended.load(Ordering::Acquire) {
            return Err(RunError::StepEnded {
                step: self.step.to_string(),
                path: rel,
            });
        }
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
                self.run.claims().claim(&rel, &self.step)?;
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

/// The outputs being written by the running steps of one [`Run`] handle:
/// two items (or steps) running at once cannot declare one output.
#[derive(Debug, Default)]
pub(crate) struct Claims(Mutex<Vec<(String, StepId)>>);

impl Claims {
    /// Claims `rel` for `step`, unless another running step claimed it (or
    /// a path inside it, or around it).
    fn claim(&self, rel: &str, step: &StepId) -> Result<(), RunError> {
        let mut claims = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((theirs, other)) = claims
            .iter()
            .find(|(theirs, other)| other != step && overlaps(theirs, rel))
        {
            return Err(RunError::OutputClaimed {
                path: rel.to_owned(),
                step: step.to_string(),
                other_path: theirs.clone(),
                other: other.to_string(),
            });
        }
        claims.push((rel.to_owned(), step.clone()));
        Ok(())
    }

    /// Gives up `step`'s claim on `rel`.
    fn release(&self, rel: &str, step: &StepId) {
        let mut claims = self.0.lock().unwrap_or_else(|p| p.into_inner());
        claims.retain(|(r, s)| !(r == rel && s == step));
    }

    /// Gives up every claim of `step` (its execution ended).
    pub(crate) fn release_all(&self, step: &StepId) {
        let mut claims = self.0.lock().unwrap_or_else(|p| p.into_inner());
        claims.retain(|(_, s)| s != step);
    }
}

impl Active {
    /// The step running on this thread for `run`, if any.
    pub(crate) fn current(run: &Run) -> Result<Arc<Active>, RunError> {
        Active::on_this_thread()
            .filter(|a| a.run.dir() == run.dir())
            .ok_or(RunError::NoActiveStep)
    }

    /// The step running on this thread, of whichever run.
    pub(crate) fn on_this_thread() -> Option<Arc<Active>> {
        scope::current(&CURRENT_STEP)
    }

    /// Declares a file output and writes `data` to it.
    pub(crate) fn write(&self, path: &str, data: &[u8]) -> Result<PathBuf, RunError> {
        let staged = self.stage(path, false)?;
        self.run
            .fs()
            .write(&staged.staging, data)
            .map_err(|e| RunError::io("write", &staged.staging, e))?;
        Ok(staged.final_path)
    }

    /// Makes this step current on this thread until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> ScopeGuard<Arc<Active>> {
        ScopeGuard::enter(&CURRENT_STEP, Arc::clone(self))
    }

    /// Polls `future` with this step current, on whichever thread polls it.
    pub(crate) fn scoped<F>(self: &Arc<Self>, future: F) -> Scoped<F, Arc<Active>> {
        Scoped::new(future, &CURRENT_STEP, Arc::clone(self))
    }

    /// Ends the body: no output may be declared from now on. Returns the
    /// outputs declared, to commit.
    pub(crate) fn end(&self) -> Vec<Staged> {
        let outputs = self.outputs();
        self.ended.store(true, Ordering::Release);
        outputs.clone()
    }

    /// The outputs declared so far.
    pub(crate) fn outputs(&self) -> MutexGuard<'_, Vec<Staged>> {
        self.outputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
}
