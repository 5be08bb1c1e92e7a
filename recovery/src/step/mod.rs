//! The step side: a run directory, the steps in it, and what makes a step
//! run once. The driver (`#[resumable_step]`) checks a step's marker,
//! stages the body's outputs, and commits them through the run's
//! [`StepStore`]: the only way durable step state is read or written.

pub(crate) mod builder;
pub(crate) mod commit;
pub(crate) mod driver;
pub(crate) mod handle;
pub(crate) mod identity;
mod inspect;
pub(crate) mod instance;
pub(crate) mod layout;
pub(crate) mod leftover;
pub(crate) mod local;
pub mod manifest;
pub mod marker;
pub(crate) mod names;
pub(crate) mod outputs;
pub(crate) mod outside;
pub(crate) mod run;
pub(crate) mod staging;
pub(crate) mod state;
pub mod store;
pub(crate) mod sweep;

pub use builder::{DEFAULT_LEASE_TTL, RunBuilder};
pub use commit::StepExecution;
pub use driver::{StepError, StepResult};
pub use handle::Step;
pub use identity::Fingerprint;
pub use identity::StepDef;
pub use identity::StepKey;
pub use inspect::ItemEntry;
pub use instance::StepId;
pub use marker::Verify;
pub use names::{check_output_path, check_step_name};
pub use run::{RUN_FORMAT, Run};
pub use staging::StagedOutput;
pub use state::StepState;
pub use store::StepStore;
