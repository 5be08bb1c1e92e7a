//! [`LocalStore`]: step state in the run directory on this machine. Markers
//! are files written atomically under `state/steps/`, a step's lease is an
//! `flock` on its file under `state/locks/` (released by the kernel when
//! its holder dies), outputs are renamed into place, and the logs are
//! JSON-lines files appended to.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::error::RunError;
use crate::fs::{
    EntryKind, FileSystem, atomic_write_with, is_temp, list_or_empty, parent_of, temp_target,
};
use crate::report::event::Event;
use crate::report::issue::IssueRecord;
use crate::report::log::{self, LogRead};
use crate::step::layout::{Layout, lock_step, marker_step};
use crate::step::marker::{self, Marker, version_of};
use crate::step::names::check_step_name;
use crate::step::store::{Lease, MarkerVersion, Publish, Put, StepStore, StoredMarker};

/// Step state in a run directory, through a [`FileSystem`] (so that the
/// crash-state and fault-injection tests reach every durable operation).
///
/// Its conditional writes are atomic among holders of a step's lease,
/// which is an `flock`: while a process lives it cannot lose its lease, so
/// the epoch is always 0 and the lock itself is the fence. A marker's
/// version is the BLAKE3 of its bytes.
#[derive(Debug)]
pub struct LocalStore {
    layout: Layout,
    fs: Arc<dyn FileSystem>,
}

impl LocalStore {
    /// The store of the run directory at `dir` (absolute; the run's
    /// directories exist).
    pub(crate) fn new(layout: Layout, fs: Arc<dyn FileSystem>) -> Self {
        LocalStore { layout, fs }
    }

    fn fs(&self) -> &dyn FileSystem {
        &*self.fs
    }

    fn lock_file(&self, step: &str) -> Result<File, RunError> {
        check_step_name(step)?;
        let path = self.layout.lock(step);
        // Locks are kernel state, not durable data: they always live on
        // the real file system, whatever `fs` simulates.
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| RunError::io("open lock", path, e))
    }

    /// Makes sure the marker can be written: an empty directory in its
    /// place (nothing of anyone's) is removed; a directory with files in
    /// it is an error before the step's body runs, not a commit that fails
    /// every time. The caller holds the step's lease.
    fn clear_marker_place(&self, step: &str) -> Result<(), RunError> {
        let fs = self.fs();
        let path = self.layout.marker(step);
        match fs.stat(&path) {
            Ok(s) if s.kind == EntryKind::Dir => {}
            _ => return Ok(()),
        }
        let entries = fs
            .read_dir(&path)
            .map_err(|e| RunError::io("list", &path, e))?;
        if !entries.is_empty() {
            return Err(RunError::MarkerPlaceTaken {
                step: step.to_owned(),
                path,
            });
        }
        fs.remove_dir_all(&path)
            .map_err(|e| RunError::io("remove empty directory", &path, e))?;
        let dir = self.layout.steps();
        fs.sync_dir(&dir)
            .map_err(|e| RunError::io("fsync directory", &dir, e))
    }

    /// Writes the marker, and takes it back if the write fails after its
    /// rename may have happened (a failed directory fsync): a step that
    /// reports failure must not be found done. Its outputs are durable
    /// either way, so a marker that cannot be removed is still safe.
    fn write_marker(&self, path: &Path, bytes: &[u8]) -> Result<Put, RunError> {
        if let Err(e) = atomic_write_with(self.fs(), path, bytes) {
            let _ = self.fs().remove_file(path);
            return Err(RunError::io("write marker", path, e));
        }
        Ok(Put::Written(version_of(bytes)))
    }

    /// Creates the directories above an output inside the run directory,
    /// refusing to go through anything but a directory (a symlink could
    /// lead outside it).
    fn ensure_parents(&self, rel: &str) -> Result<(), RunError> {
        let fs = self.fs();
        let mut dir = self.layout.dir().to_path_buf();
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
}

impl StepStore for LocalStore {
    fn read_marker(&self, step: &str) -> Result<StoredMarker, RunError> {
        check_step_name(step)?;
        Ok(marker::load(self.fs(), &self.layout.marker(step)))
    }

    fn create_marker(&self, lease: &Lease, bytes: &[u8]) -> Result<Put, RunError> {
        let path = self.layout.marker(lease.step());
        match self.fs().stat(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.write_marker(&path, bytes),
            Err(e) => Err(RunError::io("inspect", &path, e)),
            Ok(_) => Ok(Put::Conflict),
        }
    }

    fn replace_marker(
        &self,
        lease: &Lease,
        bytes: &[u8],
        expected: &MarkerVersion,
    ) -> Result<Put, RunError> {
        match self.read_marker(lease.step())?.version() {
            Some(now) if now == expected => {
                self.write_marker(&self.layout.marker(lease.step()), bytes)
            }
            _ => Ok(Put::Conflict),
        }
    }

    fn remove_marker(&self, lease: &Lease, expected: &MarkerVersion) -> Result<bool, RunError> {
        if self.read_marker(lease.step())?.version() != Some(expected) {
            return Ok(false);
        }
        let fs = self.fs();
        let path = self.layout.marker(lease.step());
        match fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(RunError::io("remove marker", &path, e)),
        }
        let dir = self.layout.steps();
        fs.sync_dir(&dir)
            .map_err(|e| RunError::io("fsync directory", &dir, e))?;
        Ok(true)
    }

    fn marked_steps(&self) -> Result<Vec<String>, RunError> {
        let dir = self.layout.steps();
        let names = list_or_empty(self.fs(), &dir).map_err(|e| RunError::io("list", &dir, e))?;
        Ok(names
            .iter()
            .filter(|n| !is_temp(n))
            .filter_map(|n| marker_step(n))
            .map(str::to_owned)
            .collect())
    }

    /// Each output replaces whatever is at its final path (moved aside into
    /// staging first), and the directory it lands in is synced.
    fn publish_outputs(&self, _lease: &Lease, outputs: &[Publish<'_>]) -> Result<(), RunError> {
        let fs = self.fs();
        for o in outputs {
            if !o.outside {
                self.ensure_parents(o.path)?;
            }
            if fs.stat(o.final_path).is_ok() {
                fs.rename(o.final_path, o.aside)
                    .map_err(|e| RunError::io("move aside", o.final_path, e))?;
            }
            fs.rename(o.staged, o.final_path)
                .map_err(|e| RunError::io("rename into place", o.final_path, e))?;
            let parent = parent_of(o.final_path);
            fs.sync_dir(parent)
                .map_err(|e| RunError::io("fsync directory", parent, e))?;
        }
        Ok(())
    }

    /// Outputs are renamed over their previous versions.
    fn outputs_in_place(&self) -> bool {
        true
    }

    /// The outputs are where the marker says, on this disk: nothing to
    /// fetch.
    fn fetch_outputs(&self, _marker: &Marker) -> Result<u64, RunError> {
        Ok(0)
    }

    /// Takes the step's lock, waiting while another process (or thread)
    /// holds it; the kernel releases it if the holder dies. Then makes sure
    /// the marker's place can take a marker.
    fn lease(&self, step: &str) -> Result<Lease, RunError> {
        let file = self.lock_file(step)?;
        file.lock()
            .map_err(|e| RunError::io("lock", self.layout.lock(step), e))?;
        let lease = Lease::new(step, 0, None, file);
        self.clear_marker_place(step)?;
        Ok(lease)
    }

    fn try_lease(&self, step: &str) -> Result<Option<Lease>, RunError> {
        let file = self.lock_file(step)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lease::new(step, 0, None, file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(RunError::io("lock", self.layout.lock(step), e))
            }
        }
    }

    /// Reads only: a step that never ran has no lock file.
    fn is_leased(&self, step: &str) -> Result<bool, RunError> {
        check_step_name(step)?;
        let path = self.layout.lock(step);
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

    fn leased_steps(&self) -> Result<Vec<String>, RunError> {
        let dir = self.layout.locks();
        let names = list_or_empty(self.fs(), &dir).map_err(|e| RunError::io("list", &dir, e))?;
        Ok(names
            .iter()
            .filter_map(|n| lock_step(n))
            .map(str::to_owned)
            .collect())
    }

    fn append_event(&self, event: &Event) {
        log::append(self.fs(), &self.layout.events(), event);
    }

    fn append_issue(&self, issue: &IssueRecord) {
        log::append(self.fs(), &self.layout.issues(), issue);
    }

    fn events(&self) -> Result<LogRead<Event>, RunError> {
        log::read(self.fs(), &self.layout.events())
    }

    fn issues(&self) -> Result<LogRead<IssueRecord>, RunError> {
        log::read(self.fs(), &self.layout.issues())
    }

    /// A marker's temporary file is left by a writer that died before its
    /// rename; one whose step nobody holds is nobody's.
    fn tidy(&self) -> Result<(), RunError> {
        let steps = self.layout.steps();
        let names =
            list_or_empty(self.fs(), &steps).map_err(|e| RunError::io("list", &steps, e))?;
        for name in names {
            let Some(step) = temp_target(&name).and_then(marker_step) else {
                continue;
            };
            if let Some(_lease) = self.try_lease(step)? {
                let path = steps.join(&name);
                self.fs()
                    .remove_file(&path)
                    .map_err(|e| RunError::io("remove leftover", &path, e))?;
            }
        }
        Ok(())
    }
}
