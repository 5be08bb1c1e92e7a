//! The errors of run directories and steps.

use std::io;
use std::path::PathBuf;

/// Why a run directory or a step could not do its work.
///
/// Every variant names the path or the step concerned. A step function's
/// own error type receives it through `From<RunError>` (implemented for
/// `std::io::Error`; `anyhow::Error` takes it as any `std::error::Error`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done: "create", "fsync", "rename", ...
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The directory exists, is not empty and holds no `run.json`.
    #[error(
        "{} is not a recovery run directory (it has files but no run.json); \
         open an empty or new directory instead",
        path.display()
    )]
    NotARunDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// A path given as a run directory that holds no run: a file (refused
    /// by every opener), or a directory where none has been made yet, empty
    /// or holding only a killed creator's temporary file (refused by tools
    /// that inspect runs).
    #[error("{} is not a recovery run: {reason}", path.display())]
    NotARun {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        reason: &'static str,
    },
    /// `run.json` is unreadable or of a newer format.
    #[error("{}: {reason}", path.display())]
    BadRunFile {
        /// The `run.json`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A step name that cannot name a file safely.
    #[error("invalid step name {name:?}: {reason}; use letters, digits, '_', '-' and '.'")]
    InvalidStepName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An output path that is absolute, climbs out of the run directory or
    /// collides with the run's own files.
    #[error("invalid output path {path:?}: {reason}")]
    InvalidOutputPath {
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two different functions use one step name in one run.
    #[error(
        "two different steps are named {name:?} in this run ({first} and {second}); \
         give one of them another name"
    )]
    DuplicateStepName {
        /// The shared name.
        name: String,
        /// Where the first was defined.
        first: String,
        /// Where the second was defined.
        second: String,
    },
    /// A marker written by a newer version of this library.
    #[error(
        "{} has marker format {found}, newer than the {supported} this program reads; \
         upgrade recovery, or reset the step to run it again",
        path.display()
    )]
    NewerMarker {
        /// The marker file.
        path: PathBuf,
        /// The format it declares.
        found: u64,
        /// The format this program reads.
        supported: u32,
    },
    /// A step's key or value could not be turned into JSON.
    #[error("step {step:?}: cannot serialise its {what}: {source}")]
    Serialize {
        /// The step.
        step: String,
        /// "key" or "value".
        what: &'static str,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// `output_dir` and friends were called outside a step's body.
    #[error(
        "no step is running on this thread: call Run::output_dir / output_file / write_output \
         inside the body of a #[resumable_step] (or between StepState::begin and commit); \
         from a thread the body started, take the step with recovery::Step::current() in the \
         body and call step.output_dir / output_file / write_output on it there"
    )]
    NoActiveStep,
    /// Something that is not a marker (a non-empty directory) sits where a
    /// step's marker goes, so the step could never be marked done.
    #[error(
        "{} is a directory with files in it, where the marker of step {step:?} goes; \
         the step would run and never be marked done. Move it away (recovery keeps \
         nothing there but marker files), then run again",
        path.display()
    )]
    MarkerPlaceTaken {
        /// The step.
        step: String,
        /// The marker's path.
        path: PathBuf,
    },
    /// An output was declared after the step's body returned (from a
    /// thread that outlived it, through a [`Step`](crate::Step) handle).
    #[error(
        "step {step}: output {path:?} was declared after the step's body returned; \
         declare outputs while the body runs (join the threads that write them before it returns)"
    )]
    StepEnded {
        /// The step (and item).
        step: String,
        /// The output.
        path: String,
    },
    /// Two steps (two items of a family, most often) running at once
    /// declared one output.
    #[error(
        "step {step}: output {path:?} is being written by {other} right now (as {other_path:?}); \
         two running steps cannot share an output: give each item a path of its own, \
         e.g. format!(\"index/{{}}\", item)"
    )]
    OutputClaimed {
        /// The step that declared it second.
        step: String,
        /// Its path.
        path: String,
        /// The step that holds it.
        other: String,
        /// The path that one declared.
        other_path: String,
    },
    /// A step name used both by a family (`item = ...`) and a plain step.
    #[error(
        "step name {name:?} is a family (`item = ...`) at {family} and a plain step at {plain}; \
         one name is one or the other: rename one of them"
    )]
    FamilyAndPlainStep {
        /// The name.
        name: String,
        /// The function that uses it with `item`.
        family: String,
        /// The function that uses it without.
        plain: String,
    },
    /// A step's marker changed while the step ran, by someone who did not
    /// hold its lease: this run's result was not recorded.
    #[error(
        "step {step:?}: its marker changed while the step ran, so its result was not recorded; \
         something outside recovery changed the run's state (run the step again)"
    )]
    CommitConflict {
        /// The step.
        step: String,
    },
    /// The step's lease was taken over while the step ran (its holder was
    /// paused or cut off past the lease's time to live): its result was not
    /// recorded, and whatever it published is discarded.
    #[error(
        "step {step:?}: its lease was taken over by another worker while it ran (this worker \
         was paused or cut off for longer than the lease's time to live), so its result was \
         not recorded; the other worker's result stands"
    )]
    LeaseLost {
        /// The step.
        step: String,
    },
    /// A request to the run's object store failed (after the store's own
    /// retries), and reading back did not establish its outcome.
    #[error("{op} {key} in the object store {store}: {source}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The object's key (or prefix).
        key: String,
        /// The store's URL.
        store: String,
        /// The store's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A store URL (`Run::builder(..).store(url)`, `--store`) that cannot
    /// be used.
    #[error("store {url:?}: {reason}")]
    StoreUrl {
        /// The URL as given.
        url: String,
        /// Why, and what to write instead.
        reason: String,
    },
    /// A removal of a step's leftovers was refused at the removal itself:
    /// the path is not a staging name this library made, in its place (a
    /// damaged or hostile journal, or a bug). Nothing was removed.
    #[error("refused to remove {}: {reason}; nothing was removed", path.display())]
    RefusedRemoval {
        /// The path that was to be removed.
        path: PathBuf,
        /// Why it is not a leftover of ours.
        reason: &'static str,
    },
    /// A declared output was never written.
    #[error("step {step:?} declared output {path:?} but wrote nothing at {}", staging.display())]
    OutputNotWritten {
        /// The step.
        step: String,
        /// The output's path in the run directory.
        path: String,
        /// Where the step should have written it.
        staging: PathBuf,
    },
}

impl RunError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RunError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<RunError> for io::Error {
    fn from(e: RunError) -> Self {
        let kind = match &e {
            RunError::Io { source, .. } => source.kind(),
            RunError::InvalidStepName { .. } | RunError::InvalidOutputPath { .. } => {
                io::ErrorKind::InvalidInput
            }
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}
