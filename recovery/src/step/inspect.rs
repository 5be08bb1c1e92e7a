//! What a run knows of its steps, for tools that inspect it (`recovery
//! status`): reads only, creates nothing.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::error::RunError;
use crate::fs::list_or_empty;
use crate::report::issue::IssueCode;
use crate::step::instance::StepId;
use crate::step::layout::execution_step;
use crate::step::marker::{MarkerState, Verify};
use crate::step::names::check_step_name;
use crate::step::run::Run;
use crate::step::state::StepState;

impl Run {
    /// The names of the steps that have a marker, sorted.
    pub fn steps(&self) -> Result<Vec<String>, RunError> {
        self.store().marked_steps()
    }

    /// The families (steps with `item = ...`) that have kept any state,
    /// sorted.
    pub fn families(&self) -> Result<Vec<String>, RunError> {
        self.store().families()
    }

    /// Every step this run knows of, sorted: those with a marker, a lease
    /// (a lock file), a staging directory (running, or dead mid-step), or a
    /// mention in the event or issue log (failed, reset, or not yet done).
    pub fn known_steps(&self) -> Result<Vec<String>, RunError> {
        let mut names: BTreeSet<String> = self.steps()?.into_iter().collect();
        names.extend(self.store().families()?);
        names.extend(self.store().leased_steps()?);
        for name in list_or_empty(self.fs(), &self.layout().staging())? {
            if let Some(step) = execution_step(&name) {
                names.insert(step.name().to_owned());
            }
        }
        for event in self.events()?.records {
            if event.is_step_event() {
                names.insert(event.subject().to_owned());
            }
        }
        for issue in self.issues()?.records {
            if issue.error_code == IssueCode::StepFailed {
                names.insert(issue.operation);
            }
        }
        Ok(names
            .into_iter()
            .filter(|n| check_step_name(n).is_ok())
            .collect())
    }

    /// Whether a process holds the plain step's lease right now (it is
    /// running the step).
    pub fn is_running(&self, step: &str) -> Result<bool, RunError> {
        self.store().is_leased(&StepId::plain(step)?)
    }

    /// The items of the family `name` that have a marker, each with its
    /// item and its marker checked as [`StepState::marker`] checks it
    /// (outputs hashed). Streamed, in no set order (sort them if order
    /// matters): a family of a million items is listed in the memory of
    /// one.
    ///
    /// ```
    /// let tmp = tempfile::tempdir()?;
    /// let run = recovery::Run::open(tmp.path())?;
    /// for page in 1..=3 {
    ///     run.step_item("page", &page)?.mark_done(&(), 1, &page)?;
    /// }
    /// let mut done: Vec<u64> = run
    ///     .items("page")?
    ///     .map(|entry| entry.map(|e| e.item.and_then(|i| i.as_u64()).unwrap()))
    ///     .collect::<Result<_, _>>()?;
    /// done.sort();
    /// assert_eq!(done, [1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn items<'a>(
        &'a self,
        name: &str,
    ) -> Result<impl Iterator<Item = Result<ItemEntry, RunError>> + 'a, RunError> {
        Ok(self.store().marked_items(name)?.map(move |id| {
            let state = self.step_of(id?, None);
            // The item is known from a marker that reads, even when its
            // outputs no longer match.
            let (item, marker) = match state.read_marker()? {
                MarkerState::Valid(m) => {
                    let item = m.item.clone();
                    match state.verify_outputs(&m, Verify::Hash)? {
                        Ok(()) => (item, MarkerState::Valid(m)),
                        Err(reason) => (item, MarkerState::Invalid(reason)),
                    }
                }
                other => (None, other),
            };
            let state = self.step_of(state.id().clone(), item.clone());
            Ok(ItemEntry {
                item,
                state,
                marker,
            })
        }))
    }
}

/// One item of a family, from [`Run::items`].
#[derive(Debug)]
pub struct ItemEntry {
    /// The item as its marker records it; `None` when the marker does not
    /// read (then only its id is known: [`StepState::id`]).
    pub item: Option<Value>,
    /// The item's step state, to load, reset or check it again.
    pub state: StepState,
    /// Its marker, outputs verified.
    pub marker: MarkerState,
}
