//! [`LocalStore`]: step state in the run directory on this machine. Markers
//! are files written atomically under `state/steps/`, a step's lease is an
//! `flock` on its file under `state/locks/` (released by the kernel when
//! its holder dies), outputs are renamed into place, and the logs are
//! JSON-lines files appended to.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::RunError;
use crate::fs::{
    EntryKind, FileSystem, atomic_write_with, is_temp, list_or_empty, parent_of, temp_target,
};
use crate::report::event::Event;
use crate::report::issue::IssueRecord;
use crate::report::log::{self, LogRead};
use crate::step::instance::StepId;
use crate::step::layout::{Layout, item_marker, lock_step, marker_step};
use crate::step::marker::{self, Marker};
use crate::step::names::check_step_name;
use crate::step::store::{ItemIds, Lease, MarkerVersion, Publish, Put, StepStore, StoredMarker};

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

    /// The run directory.
    #[cfg(feature = "s3")]
    pub(crate) fn dir(&self) -> &Path {
        self.layout.dir()
    }

    fn fs(&self) -> &dyn FileSystem {
        &*self.fs
    }

    /// Opens the step's lock file, and says whether this call created it
    /// (which alone does not make the lease the step's first: see
    /// [`held`](Self::held)).
    fn lock_file(&self, step: &StepId) -> Result<(File, bool), RunError> {
        let path = self.layout.lock(step);
        // Locks are kernel state, not durable data: they always live on
        // the real file system, whatever `fs` simulates.
        let open = |new: bool| {
            let mut options = OpenOptions::new();
            options.write(true);
            if new {
                options.create_new(true);
            } else {
                options.create(true).truncate(false);
            }
            options.open(&path).map(|file| (file, new))
        };
        let created = match open(true) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open(false),
            // An item's bucket of lock files is made by its first lease.
            Err(e) if e.kind() == io::ErrorKind::NotFound && step.item_id().is_some() => {
                let dir = parent_of(&path);
                std::fs::create_dir_all(dir).map_err(|e| RunError::io("create", dir, e))?;
                open(true).or_else(|_| open(false))
            }
            opened => opened,
        };
        created.map_err(|e| RunError::io("open lock", &path, e))
    }

    /// The lease on `step` whose lock file is `file`, locked now. It is the
    /// step's first when this process created the file and nobody held it
    /// since: every holder sets its length to 1 (metadata only, no data
    /// block), because another process may open the file and take the lock
    /// between its creation and the creator's lock.
    fn held(&self, step: &StepId, file: File, created: bool) -> Result<Lease, RunError> {
        let path = || self.layout.lock(step);
        let first = created
            && file
                .metadata()
                .map_err(|e| RunError::io("inspect", path(), e))?
                .len()
                == 0;
        file.set_len(1)
            .map_err(|e| RunError::io("mark lock", path(), e))?;
        let lease = Lease::new(step.clone(), 0, None, file);
        Ok(if first { lease.first_of_step() } else { lease })
    }

    /// Makes sure the marker can be written: an empty directory in its
    /// place (nothing of anyone's) is removed; a directory with files in
    /// it is an error before the step's body runs, not a commit that fails
    /// every time. The caller holds the step's lease.
    fn clear_marker_place(&self, step: &StepId) -> Result<(), RunError> {
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
                step: step.to_string(),
                path,
            });
        }
        fs.remove_dir_all(&path)
            .map_err(|e| RunError::io("remove empty directory", &path, e))?;
        let dir = parent_of(&path);
        fs.sync_dir(dir)
            .map_err(|e| RunError::io("fsync directory", dir, e))
    }

    /// Removes a marker's temporary file, left by a writer that died before
    /// its rename, if nobody holds that step now.
    fn remove_temp_marker(&self, id: &StepId, path: &Path) -> Result<(), RunError> {
        if let Some(_lease) = self.try_lease(id)? {
            self.fs()
                .remove_file(path)
                .map_err(|e| RunError::io("remove leftover", path, e))?;
        }
        Ok(())
    }

    /// Writes the marker, and takes it back if the write fails after its
    /// rename may have happened (a failed directory fsync): a step that
    /// reports failure must not be found done. Its outputs are durable
    /// either way, so a marker that cannot be removed is still safe.
    fn write_marker(&self, step: &StepId, path: &Path, bytes: &[u8]) -> Result<Put, RunError> {
        if let Some(item) = step.item_id() {
            // A family's bucket is made on its first marker, durably.
            let bucket = format!("{}/{}", step.name(), &item[..2]);
            self.ensure_dirs(&self.layout.steps(), &bucket, &bucket)?;
        }
        if let Err(e) = atomic_write_with(self.fs(), path, bytes) {
            let _ = self.fs().remove_file(path);
            return Err(RunError::io("write marker", path, e));
        }
        Ok(Put::Written(MarkerVersion::of_content(bytes)))
    }

    /// Creates the directories `rel` (`/`-separated) under `base`, each
    /// made durable in its parent, refusing to go through anything but a
    /// directory (a symlink could lead outside the run). `what` names the
    /// path in errors.
    fn ensure_dirs(&self, base: &Path, rel: &str, what: &str) -> Result<(), RunError> {
        let fs = self.fs();
        let mut dir = base.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let parent = dir.clone();
            dir.push(part);
            match fs.stat(&dir) {
                Ok(s) if s.kind == EntryKind::Dir => {}
                Ok(s) => {
                    return Err(RunError::InvalidOutputPath {
                        path: what.to_owned(),
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
    fn read_marker(&self, step: &StepId) -> Result<StoredMarker, RunError> {
        Ok(marker::load(self.fs(), &self.layout.marker(step)))
    }

    fn create_marker(&self, lease: &Lease, bytes: &[u8]) -> Result<Put, RunError> {
        let path = self.layout.marker(lease.step());
        match self.fs().stat(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.write_marker(lease.step(), &path, bytes)
            }
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
                self.write_marker(lease.step(), &self.layout.marker(lease.step()), bytes)
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
        let dir = parent_of(&path);
        fs.sync_dir(dir)
            .map_err(|e| RunError::io("fsync directory", dir, e))?;
        Ok(true)
    }

    fn marked_steps(&self) -> Result<Vec<String>, RunError> {
        Ok(list_or_empty(self.fs(), &self.layout.steps())?
            .iter()
            .filter(|n| !is_temp(n))
            .filter_map(|n| marker_step(n))
            .map(str::to_owned)
            .collect())
    }

    fn families(&self) -> Result<Vec<String>, RunError> {
        let steps = self.layout.steps();
        let mut names = Vec::new();
        for name in list_or_empty(self.fs(), &steps)? {
            let is_dir = self
                .fs()
                .stat(&steps.join(&name))
                .is_ok_and(|s| s.kind == EntryKind::Dir);
            if is_dir && check_step_name(&name).is_ok() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn marked_items<'a>(&'a self, name: &str) -> Result<ItemIds<'a>, RunError> {
        check_step_name(name)?;
        let family = self.layout.family_markers(name);
        let buckets = list_or_empty(self.fs(), &family)?;
        let name = name.to_owned();
        // At most 256 bucket names, and each bucket streamed: the listing
        // holds one entry at a time, however many items the family has.
        Ok(Box::new(buckets.into_iter().flat_map(move |bucket| {
            let dir = family.join(&bucket);
            let entries = match self.fs().read_dir_streamed(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Box::new(std::iter::empty()),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
            let name = name.clone();
            entries.filter_map(move |entry| match entry {
                Err(e) => Some(Err(RunError::io("list", &dir, e))),
                Ok(n) if is_temp(&n) => None,
                Ok(n) => item_marker(&n)
                    .filter(|id| id.starts_with(bucket.as_str()))
                    .and_then(|id| StepId::from_parts(&name, Some(id)))
                    .map(Ok),
            })
        })))
    }

    /// Each output replaces whatever is at its final path (moved aside into
    /// staging first); once all are renamed, each directory they landed in
    /// is synced, once: on a journaling file system the first sync commits
    /// every rename, so a step's outputs cost one journal commit, not one
    /// each.
    fn publish_outputs(&self, _lease: &Lease, outputs: &[Publish<'_>]) -> Result<(), RunError> {
        let fs = self.fs();
        // In the order first landed in; the set keeps 10,000 outputs cheap.
        let (mut landed, mut seen) = (Vec::new(), HashSet::new());
        for o in outputs {
            if !o.outside
                && let Some((parents, _)) = o.path.rsplit_once('/')
            {
                self.ensure_dirs(self.layout.dir(), parents, o.path)?;
            }
            if fs.stat(o.final_path).is_ok() {
                fs.rename(o.final_path, o.aside)
                    .map_err(|e| RunError::io("move aside", o.final_path, e))?;
            }
            fs.rename(o.staged, o.final_path)
                .map_err(|e| RunError::io("rename into place", o.final_path, e))?;
            let parent = parent_of(o.final_path);
            if seen.insert(parent) {
                landed.push(parent);
            }
        }
        for dir in landed {
            fs.sync_dir(dir)
                .map_err(|e| RunError::io("fsync directory", dir, e))?;
        }
        Ok(())
    }

    /// Outputs are renamed over their previous versions.
    fn outputs_in_place(&self) -> bool {
        true
    }

    /// The outputs are where the marker says, on this disk: nothing to
    /// fetch.
    fn fetch_outputs(&self, _marker: &Marker, _outside: &[PathBuf]) -> Result<u64, RunError> {
        Ok(0)
    }

    /// Takes the step's lock, waiting while another process (or thread)
    /// holds it; the kernel releases it if the holder dies. Then makes sure
    /// the marker's place can take a marker.
    fn lease(&self, step: &StepId) -> Result<Lease, RunError> {
        let (file, created) = self.lock_file(step)?;
        file.lock()
            .map_err(|e| RunError::io("lock", self.layout.lock(step), e))?;
        let lease = self.held(step, file, created)?;
        self.clear_marker_place(step)?;
        Ok(lease)
    }

    fn try_lease(&self, step: &StepId) -> Result<Option<Lease>, RunError> {
        let (file, created) = self.lock_file(step)?;
        match file.try_lock() {
            Ok(()) => self.held(step, file, created).map(Some),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(RunError::io("lock", self.layout.lock(step), e))
            }
        }
    }

    /// Reads only: a step that never ran has no lock file.
    fn is_leased(&self, step: &StepId) -> Result<bool, RunError> {
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

    /// Plain steps by their lock files, families by their directories of
    /// lock files.
    fn leased_steps(&self) -> Result<Vec<String>, RunError> {
        Ok(list_or_empty(self.fs(), &self.layout.locks())?
            .iter()
            .filter_map(|n| lock_step(n).or(check_step_name(n).ok().map(|()| n.as_str())))
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
        for name in list_or_empty(self.fs(), &steps)? {
            if let Some(step) = temp_target(&name).and_then(marker_step) {
                let id = StepId::plain(step)?;
                self.remove_temp_marker(&id, &steps.join(&name))?;
            }
        }
        for family in self.families()? {
            let dir = self.layout.family_markers(&family);
            for bucket in list_or_empty(self.fs(), &dir)? {
                let bucket = dir.join(bucket);
                for name in list_or_empty(self.fs(), &bucket)? {
                    let item = temp_target(&name).and_then(item_marker);
                    if let Some(id) = item.and_then(|i| StepId::from_parts(&family, Some(i))) {
                        self.remove_temp_marker(&id, &bucket.join(&name))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;

    fn store(dir: &Path) -> LocalStore {
        crate::Run::open(dir).unwrap();
        LocalStore::new(Layout::new(dir.to_owned()), Arc::new(RealFs))
    }

    #[test]
    fn only_the_first_lease_ever_taken_on_a_step_is_first() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        for id in [
            StepId::plain("fetch").unwrap(),
            StepId::item("page", &7).unwrap().0,
        ] {
            assert!(store.lease(&id).unwrap().is_first(), "{id}");
            assert!(!store.lease(&id).unwrap().is_first(), "{id}");
            assert!(!store.try_lease(&id).unwrap().unwrap().is_first(), "{id}");
        }
    }

    /// Another process opens the lock file its creator just made, and
    /// locks (and runs the step) before the creator does: the creator's
    /// lease is then not the first.
    #[test]
    fn a_lease_taken_between_the_lock_files_creation_and_its_lock_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let id = StepId::item("page", &7).unwrap().0;
        let (creators, created) = store.lock_file(&id).unwrap();
        assert!(created);
        let other = store.lease(&id).unwrap();
        assert!(!other.is_first());
        drop(other);
        creators.lock().unwrap();
        assert!(!store.held(&id, creators, created).unwrap().is_first());
    }
}
