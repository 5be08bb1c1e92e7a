//! Sweeping what crashed steps left behind: their staging directories (and
//! what those staged beside outputs outside the run), temporary files of
//! a `run.json` being created, and half-written markers. Whoever holds a
//! step's lease owns that step's leftovers; a step someone else is running
//! is left alone.

use std::io;

use crate::error::RunError;
use crate::fs::temp_target;
use crate::step::instance::StepId;
use crate::step::layout::{RUN_FILE, execution_step};
use crate::step::leftover::{self, Expect};
use crate::step::outside;
use crate::step::run::Run;

impl Run {
    /// Removes what crashed steps left behind, at open.
    pub(crate) fn sweep(&self) -> Result<(), RunError> {
        let fs = self.fs();
        let staging = self.layout().staging();
        let names = fs
            .read_dir(&staging)
            .map_err(|e| RunError::io("list", &staging, e))?;
        for name in names {
            let Some(step) = execution_step(&name) else {
                continue;
            };
            if let Some(_lease) = self.store().try_lease(&step)? {
                self.remove_execution_leftovers(&name)
                    .or_else(left_for_later)?;
            }
        }
        // A creator that crashed before its rename left its temporary
        // run.json; the run exists now, so no opener still needs one.
        let names = fs
            .read_dir(self.dir())
            .map_err(|e| RunError::io("list", self.dir(), e))?;
        for name in names.iter().filter(|n| temp_target(n) == Some(RUN_FILE)) {
            let path = self.dir().join(name);
            match fs.remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(RunError::io("remove leftover", &path, e));
                }
                _ => {}
            }
        }
        self.store().tidy()
    }

    /// Removes what earlier executions of `step` left in staging (a worker
    /// killed inside the step). The caller holds the step's lease. What
    /// cannot be removed yet is left for later, as at open: the new
    /// execution stages under a name of its own.
    pub(crate) fn sweep_step(&self, step: &StepId) -> Result<(), RunError> {
        let staging = self.layout().staging();
        let names = self
            .fs()
            .read_dir(&staging)
            .map_err(|e| RunError::io("list", &staging, e))?;
        for name in names
            .iter()
            .filter(|n| execution_step(n).as_ref() == Some(step))
        {
            self.remove_execution_leftovers(name)
                .or_else(left_for_later)?;
        }
        Ok(())
    }

    /// Removes one execution's staging directory, and first what its
    /// journal says it staged outside the run (the journal goes with the
    /// directory). Each removal is checked at the removal itself; an entry
    /// that fails the check is reported and left alone.
    fn remove_execution_leftovers(&self, name: &str) -> Result<(), RunError> {
        let fs = self.fs();
        let area = self.layout().staging();
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
}

/// A leftover that could not be removed now is left for a later sweep,
/// not a reason to fail: a process that outlived its killed parent (a
/// `git clone` the worker started) may still be writing into it. It has a
/// name no new execution takes, so it is in nobody's way.
fn left_for_later(error: RunError) -> Result<(), RunError> {
    match error {
        RunError::Io { .. } => {
            report_left(&error);
            Ok(())
        }
        other => Err(other),
    }
}

/// A leftover left for a later sweep, worth a look if it stays.
fn report_left(_error: &RunError) {
    #[cfg(feature = "tracing")]
    tracing::warn!(error = %_error, "left a dead step's leftover for a later sweep");
}

/// A leftover the sweep would not remove: not ours, so not ours to delete,
/// but worth a look.
fn report_refusal(_refused: &RunError) {
    #[cfg(feature = "tracing")]
    tracing::warn!(error = %_refused, "left a damaged staging journal's entry alone");
}

#[cfg(test)]
mod tests {
    use crate::fs::temp_target;

    #[test]
    fn temporary_files_name_what_they_were_to_become() {
        assert_eq!(
            temp_target(".recovery-tmp.12.3.clone.json"),
            Some("clone.json")
        );
        assert_eq!(temp_target(".recovery-tmp.12.3.run.json"), Some("run.json"));
        assert_eq!(temp_target("clone.json"), None);
    }
}
