//! The manual API: one step of a run, to check, load, begin and reset by
//! hand ([`StepState`]). `#[resumable_step]` does all of this for you.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::RunError;
use crate::fs::list_or_empty;
use crate::step::commit::StepExecution;
use crate::step::identity::Fingerprint;
use crate::step::instance::StepId;
use crate::step::layout::{execution_name, parse_execution};
use crate::step::manifest;
use crate::step::marker::{Marker, MarkerState, Verify, state_of};
use crate::step::run::Run;
use crate::step::staging::Active;
use crate::step::store::StoredMarker;

impl Run {
    /// The state of the step `name` in this run.
    ///
    /// # Errors
    /// When `name` is not a valid step name (see `#[resumable_step]`).
    pub fn step(&self, name: &str) -> Result<StepState, RunError> {
        Ok(StepState {
            run: self.clone(),
            id: StepId::plain(name)?,
            item: None,
        })
    }

    /// The state of one item of the family `name` (a step with
    /// `item = ...`): its own marker, lease and outputs.
    ///
    /// ```
    /// let tmp = tempfile::tempdir()?;
    /// let run = recovery::Run::open(tmp.path())?;
    /// let page = run.step_item("page", &3)?;
    /// page.mark_done(&"v1", 1, &"indexed")?;
    /// assert!(page.is_done(&"v1", 1)?);
    /// assert!(!run.step_item("page", &4)?.is_done(&"v1", 1)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// When `name` is not a valid step name, or `item` does not serialise.
    pub fn step_item<I: Serialize + ?Sized>(
        &self,
        name: &str,
        item: &I,
    ) -> Result<StepState, RunError> {
        let (id, item) = StepId::item(name, item)?;
        Ok(StepState {
            run: self.clone(),
            id,
            item: Some(item),
        })
    }

    /// A step's state by its id, with its item as recorded where known.
    pub(crate) fn step_of(&self, id: StepId, item: Option<Value>) -> StepState {
        StepState {
            run: self.clone(),
            id,
            item,
        }
    }
}

/// One step of a run: check, load, run and reset it by hand.
/// `#[resumable_step]` does all of this for you.
#[derive(Clone, Debug)]
pub struct StepState {
    run: Run,
    id: StepId,
    /// The item as JSON, for an item of a family.
    item: Option<Value>,
}

impl StepState {
    /// The step's name.
    pub fn name(&self) -> &str {
        self.id.name()
    }

    /// Which step (and item) it is.
    pub fn id(&self) -> &StepId {
        &self.id
    }

    /// The item, as JSON, for an item of a family.
    pub fn item(&self) -> Option<&Value> {
        self.item.as_ref()
    }

    /// Where the step's marker lives.
    pub fn marker_path(&self) -> PathBuf {
        self.run.layout().marker(&self.id)
    }

    /// The marker as it is on disk, its outputs verified (hashed), the
    /// fingerprint not compared (what `recovery status` shows).
    pub fn marker(&self) -> Result<MarkerState, RunError> {
        Ok(self.marker_with(Verify::Hash)?.0)
    }

    /// The marker as it is in the store, decoded and checked (checksum,
    /// format, step name), its outputs not verified: with
    /// [`verify_outputs`](Self::verify_outputs), what
    /// [`marker`](Self::marker) does in one call.
    pub fn read_marker(&self) -> Result<MarkerState, RunError> {
        self.decoded(self.run.store().read_marker(&self.id)?)
    }

    /// A marker as read from the store, decoded and checked.
    fn decoded(&self, stored: StoredMarker) -> Result<MarkerState, RunError> {
        Ok(match state_of(stored, &self.marker_path())? {
            MarkerState::Valid(m) if m.step != self.id.name() => {
                MarkerState::Invalid(format!("the marker belongs to step {:?}", m.step))
            }
            MarkerState::Valid(m) if !self.id.is_item(m.item.as_ref()) => {
                MarkerState::Invalid(match &m.item {
                    Some(item) => format!("the marker belongs to the item {item}"),
                    None => "the marker is a plain step's, not an item's".into(),
                })
            }
            other => other,
        })
    }

    /// Checks the outputs a marker lists, fetched first where the store
    /// keeps them elsewhere: `Err` says which output does not match, how.
    /// Only places the run allows are read (the run directory, and
    /// [`Run::allow_outside`]).
    pub fn verify_outputs(
        &self,
        marker: &Marker,
        mode: Verify,
    ) -> Result<Result<(), String>, RunError> {
        self.fetch_and_verify(marker, mode)
            .map(|(verdict, _)| verdict)
    }

    /// [`verify_outputs`](Self::verify_outputs), with the bytes fetched.
    fn fetch_and_verify(
        &self,
        marker: &Marker,
        mode: Verify,
    ) -> Result<(Result<(), String>, u64), RunError> {
        let places = self.run.with_outside(<[PathBuf]>::to_vec);
        let fetched = self.run.store().fetch_outputs(marker, &places)?;
        let verdict = manifest::verify(self.run.fs(), self.run.dir(), &places, marker, mode);
        Ok((verdict, fetched))
    }

    fn marker_with(&self, mode: Verify) -> Result<(MarkerState, u64), RunError> {
        self.marker_from(self.run.store().read_marker(&self.id)?, mode)
    }

    fn marker_from(
        &self,
        stored: StoredMarker,
        mode: Verify,
    ) -> Result<(MarkerState, u64), RunError> {
        Ok(match self.decoded(stored)? {
            MarkerState::Valid(m) => match self.fetch_and_verify(&m, mode)? {
                (Ok(()), fetched) => (MarkerState::Valid(m), fetched),
                (Err(reason), fetched) => (MarkerState::Invalid(reason), fetched),
            },
            other => (other, 0),
        })
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
        Ok(self.check_fetching(fingerprint, mode)?.0)
    }

    /// [`check_with`](Self::check_with), with the bytes of outputs the
    /// store brought onto this machine for it.
    pub(crate) fn check_fetching(
        &self,
        fingerprint: &Fingerprint,
        mode: Verify,
    ) -> Result<(MarkerState, u64), RunError> {
        let stored = self.run.store().read_marker(&self.id)?;
        self.check_stored(stored, fingerprint, mode)
    }

    /// [`check_fetching`](Self::check_fetching) of a marker already read.
    pub(crate) fn check_stored(
        &self,
        stored: StoredMarker,
        fingerprint: &Fingerprint,
        mode: Verify,
    ) -> Result<(MarkerState, u64), RunError> {
        Ok(match self.marker_from(stored, mode)? {
            (MarkerState::Valid(m), fetched) if m.fingerprint != fingerprint.as_str() => (
                MarkerState::Invalid("the step's key or version changed".into()),
                fetched,
            ),
            other => other,
        })
    }

    /// [`check`](Self::check) for a key and version.
    pub fn is_done<K: Serialize + ?Sized>(&self, key: &K, version: u32) -> Result<bool, RunError> {
        let fp = Fingerprint::of(self.name(), key, version)?;
        Ok(matches!(self.check(&fp)?, MarkerState::Valid(_)))
    }

    /// The recorded value, if the step is done for this key and version and
    /// the value still reads as a `T`.
    pub fn load<T: DeserializeOwned, K: Serialize + ?Sized>(
        &self,
        key: &K,
        version: u32,
    ) -> Result<Option<T>, RunError> {
        let fp = Fingerprint::of(self.name(), key, version)?;
        Ok(match self.check(&fp)? {
            MarkerState::Valid(m) => serde_json::from_value(m.value).ok(),
            _ => None,
        })
    }

    /// Takes the step's lease (waiting while another process holds it) and
    /// opens a staging area for its outputs.
    ///
    /// # Errors
    /// [`RunError::MarkerPlaceTaken`] when a directory with files in it is
    /// where the marker goes; any failed file operation.
    pub fn begin(&self) -> Result<StepExecution, RunError> {
        Ok(self.begin_seen(None)?.0)
    }

    /// [`begin`](Self::begin), with the marker as it was once the lease
    /// was taken (the one the commit replaces). `before` is the marker as
    /// read just before, if it was.
    pub(crate) fn begin_seen(
        &self,
        before: Option<StoredMarker>,
    ) -> Result<(StepExecution, StoredMarker), RunError> {
        let lease = self.run.store().lease(&self.id)?;
        // What a dead worker left of this step is ours now. Only a lease
        // leaves something in staging: under the step's first there is
        // nothing to look for.
        if !lease.is_first() {
            self.run.sweep_step(&self.id)?;
        }
        // The marker the commit replaces; nobody else changes it while we
        // hold the lease. Under the step's first lease, none can have been
        // written since it was seen missing.
        let stored = match before {
            Some(StoredMarker::Missing) if lease.is_first() => StoredMarker::Missing,
            _ => self.run.store().read_marker(&self.id)?,
        };
        let seen = stored.version().cloned();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let staging =
            self.run
                .layout()
                .staging()
                .join(execution_name(&self.id, std::process::id(), n));
        self.run
            .fs()
            .create_dir_all(&staging)
            .map_err(|e| RunError::io("create staging", &staging, e))?;
        let active = Active::new(
            self.run.clone(),
            self.id.clone(),
            self.item.clone(),
            staging,
        );
        Ok((StepExecution::new(Arc::new(active), lease, seen), stored))
    }

    /// Marks the step done for `key` and `version` with `value`, committing
    /// no outputs: the manual form of a step whose result is its value.
    ///
    /// # Errors
    /// As [`begin`](Self::begin) and [`StepExecution::commit`].
    pub fn mark_done<K: Serialize + ?Sized, T: Serialize + ?Sized>(
        &self,
        key: &K,
        version: u32,
        value: &T,
    ) -> Result<Marker, RunError> {
        let fp = Fingerprint::of(self.name(), key, version)?;
        self.begin()?
            .commit(&fp, version, "StepState::mark_done", value)
    }

    /// Invalidates the step: removes its marker, under the step's lease
    /// (waiting while another process runs the step). Its outputs stay
    /// until the step runs again. Returns whether there was a marker.
    pub fn reset(&self) -> Result<bool, RunError> {
        if self.nothing_to_reset()? {
            return Ok(false);
        }
        let lease = self.run.store().lease(&self.id)?;
        self.reset_under(&lease)
    }

    /// [`reset`](Self::reset) without waiting: `None` when another process
    /// is running the step right now ([`running_pids`](Self::running_pids)
    /// says which).
    pub fn try_reset(&self) -> Result<Option<bool>, RunError> {
        if self.nothing_to_reset()? {
            return Ok(Some(false));
        }
        match self.run.store().try_lease(&self.id)? {
            Some(lease) => self.reset_under(&lease).map(Some),
            None => Ok(None),
        }
    }

    /// Nobody runs the step and it has no marker: a reset has nothing to
    /// wait for or remove. Taking the lease anyway would leave a lock file,
    /// and a step never run here (a misspelt name) would become one the
    /// run lists. A process that starts the step after this looked is not
    /// missed: the reset is then simply earlier than its run.
    fn nothing_to_reset(&self) -> Result<bool, RunError> {
        let store = self.run.store();
        Ok(!store.is_leased(&self.id)? && store.read_marker(&self.id)?.version().is_none())
    }

    fn reset_under(&self, lease: &crate::step::store::Lease) -> Result<bool, RunError> {
        let store = self.run.store();
        match store.read_marker(&self.id)?.version() {
            Some(version) => store.remove_marker(lease, version),
            None => Ok(false),
        }
    }

    /// The processes with an execution of this step under way (or dead
    /// without a sweep since), read from the names of its staging
    /// directories.
    pub fn running_pids(&self) -> Result<Vec<u32>, RunError> {
        let names = list_or_empty(self.run.fs(), &self.run.layout().staging())?;
        let mut pids: Vec<u32> = names
            .iter()
            .filter_map(|n| parse_execution(n))
            .filter(|(step, _)| *step == self.id)
            .map(|(_, pid)| pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunError;

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
