//! The running step's outputs, declared through the [`Run`] handle: the
//! body calls `run.output_dir(...)` and friends, which reach the step
//! current on this thread (from other threads, through a
//! [`Step`](crate::Step)).

use std::path::{Path, PathBuf};

use crate::error::RunError;
use crate::step::run::Run;
use crate::step::staging::{Active, StagedOutput};

impl Run {
    /// Declares a directory output of the running step at `path` (relative
    /// to the run directory) and creates it in staging; write into
    /// [`StagedOutput::path`]. It moves to its final place when the step
    /// succeeds.
    pub fn output_dir(&self, path: &str) -> Result<StagedOutput, RunError> {
        Active::current(self)?.stage(path, true)
    }

    /// Declares a file output of the running step at `path`; write the file
    /// at [`StagedOutput::path`] (its directory exists).
    pub fn output_file(&self, path: &str) -> Result<StagedOutput, RunError> {
        Active::current(self)?.stage(path, false)
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
        Active::current(self)?.stage_outside(path.as_ref(), true)
    }

    /// Declares a file output outside the run directory; see
    /// [`output_dir_outside`](Self::output_dir_outside).
    pub fn output_file_outside(&self, path: impl AsRef<Path>) -> Result<StagedOutput, RunError> {
        Active::current(self)?.stage_outside(path.as_ref(), false)
    }

    /// Declares a file output and writes `data` to it; returns its final
    /// path.
    pub fn write_output(&self, path: &str, data: &[u8]) -> Result<PathBuf, RunError> {
        Active::current(self)?.write(path, data)
    }
}
