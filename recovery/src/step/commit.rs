//! The commit protocol: a step being run ([`StepExecution`]) holds its
//! lease and its staging area; committing it makes its outputs durable,
//! hashes them into the manifest, and hands them with the marker to the
//! store, which writes the marker last:
//! 1. every output in staging is synced (files, then their directories) and
//!    hashed into the manifest;
//! 2. the store publishes the outputs and writes the marker, the single
//!    commit point, conditionally on the marker seen when the lease was
//!    taken (for the run directory: a stale marker is removed durably,
//!    each output is renamed into place with its directory synced, and the
//!    marker is written atomically).
//!
//! A crash before the marker is written leaves no valid marker, so the step
//! runs again; a crash after it leaves a marker whose outputs are all in
//! place.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::RunError;
use crate::fs::parent_of;
use crate::step::identity::Fingerprint;
use crate::step::leftover::{self, Expect};
use crate::step::manifest;
use crate::step::marker::{self, MARKER_FORMAT, Marker, Verify};
use crate::step::staging::{Active, StagedOutput};
use crate::step::store::{Lease, MarkerVersion, Publish, Put};

/// A step being run: holds its lease and its staging area. Dropped without
/// [`commit`](Self::commit), it removes its staging area and commits
/// nothing.
#[derive(Debug)]
pub struct StepExecution {
    pub(crate) active: Arc<Active>,
    lease: Lease,
    /// The marker's version when the lease was taken (`None`: no marker).
    seen: Option<MarkerVersion>,
}

impl StepExecution {
    pub(crate) fn new(active: Arc<Active>, lease: Lease, seen: Option<MarkerVersion>) -> Self {
        StepExecution {
            active,
            lease,
            seen,
        }
    }

    /// Declares a directory output; see [`Run::output_dir`](crate::Run::output_dir).
    pub fn output_dir(&self, path: &str) -> Result<StagedOutput, RunError> {
        self.active.stage(path, true)
    }

    /// Declares a file output; see [`Run::output_file`](crate::Run::output_file).
    pub fn output_file(&self, path: &str) -> Result<StagedOutput, RunError> {
        self.active.stage(path, false)
    }

    /// Declares a directory output outside the run directory; see
    /// [`Run::output_dir_outside`](crate::Run::output_dir_outside).
    pub fn output_dir_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        self.active.stage_outside(path.as_ref(), true)
    }

    /// Declares a file output outside the run directory; see
    /// [`Run::output_dir_outside`](crate::Run::output_dir_outside).
    pub fn output_file_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        self.active.stage_outside(path.as_ref(), false)
    }

    /// Runs `f` with this step current, so that
    /// [`Run::output_dir`](crate::Run::output_dir) and friends reach it.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.active.enter();
        f()
    }

    /// Commits the outputs and writes the marker: the step is done.
    ///
    /// # Errors
    /// A declared output that was never written, an output that is not a
    /// file, directory or symlink, a symlink among the run directory's own
    /// directories, a marker changed by someone outside the step's lease
    /// ([`RunError::CommitConflict`]), or any failed file operation (named,
    /// with its path). On error nothing is marked done.
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
    /// [`StepState::check_with`](crate::StepState::check_with) can trust an
    /// unchanged file unread.
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
            step: step.to_string(),
            what: "value",
            source,
        })?;
        // The body has returned: outputs declared from now on (by a thread
        // that outlived it) are refused, not lost.
        let outputs = self.active.end();

        // 1. Durable and hashed, still in staging.
        let mut entries = Vec::new();
        for o in &outputs {
            let stat = match fs.stat(&o.staging) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(RunError::OutputNotWritten {
                        step: step.to_string(),
                        path: o.rel.clone(),
                        staging: o.staging.clone(),
                    });
                }
                Err(e) => return Err(RunError::io("inspect", &o.staging, e)),
                Ok(stat) => stat,
            };
            manifest::record(fs, &o.staging, stat, &o.rel, mode, &mut entries)?;
        }
        if !outputs.is_empty() {
            // The staged entries, and this step's staging directory itself,
            // must be durable before they are published.
            for dir in [&self.active.staging, &run.layout().staging()] {
                fs.sync_dir(dir)
                    .map_err(|e| RunError::io("fsync directory", dir, e))?;
            }
        }

        // 2. Published, and the marker written last: the commit point.
        let marker = Marker {
            format: MARKER_FORMAT,
            step: step.name().to_owned(),
            item: self.active.item.clone(),
            version,
            fingerprint: fingerprint.as_str().to_owned(),
            site: site.to_owned(),
            value,
            outputs: entries,
            completed_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            published: self.lease.attempt().map(str::to_owned),
        };
        let bytes = marker::encode(&marker).map_err(|source| RunError::Serialize {
            step: step.to_string(),
            what: "marker",
            source,
        })?;
        let publish: Vec<Publish<'_>> = outputs
            .iter()
            .map(|o| Publish {
                path: &o.rel,
                staged: &o.staging,
                final_path: &o.final_path,
                aside: &o.trash,
                outside: o.outside,
            })
            .collect();
        match run
            .store()
            .commit(&self.lease, &publish, &bytes, self.seen.as_ref())?
        {
            Put::Written(_) => Ok(marker),
            Put::Conflict => Err(RunError::CommitConflict {
                step: step.to_string(),
            }),
        }
    }
}

impl Drop for StepExecution {
    fn drop(&mut self) {
        // Best effort: what is left here is swept when the run is reopened.
        // Outside first, durably: the journal that lists it goes with the
        // staging directory, and must outlive it.
        let fs = self.active.run.fs();
        let outputs = self.active.end();
        self.active.run.claims().release_all(&self.active.step);
        let mut cleared = true;
        for o in outputs.iter().filter(|o| o.outside) {
            cleared &= self.active.remove_staged(&o.staging).is_ok()
                && self.active.remove_staged(&o.trash).is_ok()
                && fs.sync_dir(parent_of(&o.final_path)).is_ok();
        }
        if cleared {
            let area = self.active.run.layout().staging();
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
