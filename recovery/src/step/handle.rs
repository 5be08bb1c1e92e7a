//! [`Step`]: the running step as a value that other threads can hold, so
//! that outputs written from scoped threads or a thread pool inside a
//! step's body are declared to that step and committed with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::error::RunError;
use crate::step::instance::StepId;
use crate::step::staging::{Active, StagedOutput};

/// The step whose body is running: take it with [`Step::current`] in the
/// body and hand it to the threads the body starts. Cheap to clone, `Send`
/// and `Sync`. Outputs declared through it are committed with the step;
/// one declared after the body returned is an error
/// ([`RunError::StepEnded`]).
///
/// ```
/// use recovery::{Run, Step, resumable_step};
///
/// #[resumable_step("split")]
/// fn split(run: &Run, parts: &[&str]) -> std::io::Result<usize> {
///     let step = Step::current().expect("inside a step");
///     std::thread::scope(|s| {
///         for (i, part) in parts.iter().enumerate() {
///             let step = step.clone();
///             s.spawn(move || step.write_output(&format!("parts/{i}.txt"), part.as_bytes()));
///         }
///     });
///     Ok(parts.len())
/// }
///
/// let tmp = tempfile::tempdir()?;
/// let run = Run::open(tmp.path())?;
/// assert_eq!(split(&run, &["a", "b", "c"])?, 3);
/// assert_eq!(std::fs::read_to_string(tmp.path().join("parts/2.txt"))?, "c");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Step {
    active: Arc<Active>,
}

impl Step {
    /// The step running on this thread (inside a `#[resumable_step]` body,
    /// or [`StepExecution::in_scope`](crate::StepExecution::in_scope)), if
    /// any.
    pub fn current() -> Option<Step> {
        Active::on_this_thread().map(|active| Step { active })
    }

    /// Which step (and item) it is.
    pub fn id(&self) -> &StepId {
        &self.active.step
    }

    /// The item, as JSON, for an item of a family.
    pub fn item(&self) -> Option<&Value> {
        self.active.item.as_ref()
    }

    /// Declares a directory output; see [`Run::output_dir`](crate::Run::output_dir).
    pub fn output_dir(&self, path: &str) -> Result<StagedOutput, RunError> {
        self.active.stage(path, true)
    }

    /// Declares a file output; see [`Run::output_file`](crate::Run::output_file).
    pub fn output_file(&self, path: &str) -> Result<StagedOutput, RunError> {
        self.active.stage(path, false)
    }

    /// Declares a file output and writes `data` to it; returns its final
    /// path.
    pub fn write_output(&self, path: &str, data: &[u8]) -> Result<PathBuf, RunError> {
        self.active.write(path, data)
    }

    /// Declares a directory output outside the run directory; see
    /// [`Run::output_dir_outside`](crate::Run::output_dir_outside).
    pub fn output_dir_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        self.active.stage_outside(path.as_ref(), true)
    }

    /// Declares a file output outside the run directory.
    pub fn output_file_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        self.active.stage_outside(path.as_ref(), false)
    }
}
