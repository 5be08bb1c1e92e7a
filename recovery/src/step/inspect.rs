//! What a run knows of its steps, for tools that inspect it (`recovery
//! status`): reads only, creates nothing.

use std::collections::BTreeSet;

use crate::error::RunError;
use crate::report::issue::IssueCode;
use crate::step::layout::execution_step;
use crate::step::names::check_step_name;
use crate::step::run::Run;

impl Run {
    /// The names of the steps that have a marker, sorted.
    pub fn steps(&self) -> Result<Vec<String>, RunError> {
        self.store().marked_steps()
    }

    /// Every step this run knows of, sorted: those with a marker, a lease
    /// (a lock file), a staging directory (running, or dead mid-step), or a
    /// mention in the event or issue log (failed, reset, or not yet done).
    pub fn known_steps(&self) -> Result<Vec<String>, RunError> {
        let mut names: BTreeSet<String> = self.steps()?.into_iter().collect();
        names.extend(self.store().leased_steps()?);
        for name in self.list_or_empty(&self.layout().staging())? {
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
            if issue.error_code == IssueCode::StepFailed {
                names.insert(issue.operation);
            }
        }
        Ok(names
            .into_iter()
            .filter(|n| check_step_name(n).is_ok())
            .collect())
    }

    /// Whether a process holds the step's lease right now (it is running
    /// the step).
    pub fn is_running(&self, step: &str) -> Result<bool, RunError> {
        self.store().is_leased(step)
    }

    /// The names in `dir`, sorted; none when it does not exist (a run being
    /// inspected may lack a directory that opening it would create).
    pub(crate) fn list_or_empty(&self, dir: &std::path::Path) -> Result<Vec<String>, RunError> {
        crate::fs::list_or_empty(self.fs(), dir).map_err(|e| RunError::io("list", dir, e))
    }
}
