//! [`RunBuilder`]: opening a run with its step state somewhere other than
//! its own directory (object storage shared by many machines).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::RunError;
use crate::fs::{FileSystem, RealFs};
use crate::step::local::LocalStore;
use crate::step::run::Run;
use crate::step::store::StepStore;

/// How to open a run; made by [`Run::builder`].
///
/// The run directory always holds the staging area and the steps'
/// outputs on this machine. With [`store`](Self::store), markers, leases
/// and logs live in the store instead, so a step done on one machine
/// resumes on another (which fetches its outputs), and nothing on the
/// local disk is trusted over the store.
///
/// ```no_run
/// # fn main() -> Result<(), recovery::RunError> {
/// let run = recovery::Run::builder("work/demo")   // staging and a verified local copy
///     .store("s3://pipelines/runs/demo")          // shared state; AWS_* variables configure it
///     .open()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `open`"]
pub struct RunBuilder {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    store: StoreSpec,
}

/// Which store to make, and how.
#[derive(Debug)]
struct StoreSpec {
    choice: StoreChoice,
    options: Vec<(String, String)>,
    lease_ttl: Option<Duration>,
}

#[derive(Debug)]
enum StoreChoice {
    /// The run directory itself.
    Local,
    /// A store URL (`s3://bucket/prefix`).
    Url(String),
    /// A store made by the program.
    #[cfg(feature = "s3")]
    Objects(Arc<dyn object_store::ObjectStore>, String),
}

/// How long a worker's lease on a step lasts without renewal, unless
/// [`RunBuilder::lease_ttl`] says otherwise. A worker renews it every
/// third of this while the step runs; another takes it over after seeing
/// it unchanged this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

impl RunBuilder {
    pub(crate) fn new(dir: &Path) -> Self {
        RunBuilder {
            dir: dir.to_owned(),
            fs: Arc::new(RealFs),
            store: StoreSpec {
                choice: StoreChoice::Local,
                options: Vec::new(),
                lease_ttl: None,
            },
        }
    }

    /// Keeps the step state in the store at `url`: `s3://bucket/prefix`
    /// (any S3-compatible service; needs the cargo feature `s3`).
    /// Credentials, region and endpoint come from the usual `AWS_*`
    /// variables (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for a local server),
    /// or from [`store_option`](Self::store_option).
    pub fn store(mut self, url: impl Into<String>) -> Self {
        self.store.choice = StoreChoice::Url(url.into());
        self
    }

    /// Sets one of the store's options, over the environment's:
    /// `object_store`'s keys for S3 (`aws_endpoint`, `aws_allow_http`,
    /// `aws_access_key_id`, `aws_region`, `timeout`, ...).
    pub fn store_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.store.options.push((key.into(), value.into()));
        self
    }

    /// Keeps the step state in an [`object_store::ObjectStore`] the program
    /// made, under `prefix`: any store with conditional puts
    /// (`PutMode::Create` and `PutMode::Update`); `InMemory` for tests.
    #[cfg(feature = "s3")]
    pub fn object_store(
        mut self,
        objects: Arc<dyn object_store::ObjectStore>,
        prefix: impl Into<String>,
    ) -> Self {
        self.store.choice = StoreChoice::Objects(objects, prefix.into());
        self
    }

    /// How long a lease on a step lasts without renewal
    /// ([`DEFAULT_LEASE_TTL`] unless set): a worker that stops (killed,
    /// paused, cut off) holds up its steps this long before another takes
    /// them over. Only shared stores have leases that expire.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.store.lease_ttl = Some(ttl);
        self
    }

    /// Writes the run directory through `fs` (fault injection, tests).
    pub fn file_system(mut self, fs: Arc<dyn FileSystem>) -> Self {
        self.fs = fs;
        self
    }

    /// Creates or reopens the run directory, connects to the store, and
    /// sweeps what a crash left in the staging area.
    ///
    /// # Errors
    /// As [`Run::open`]; and a store URL that cannot be used, or a store
    /// that cannot be reached ([`RunError::StoreUrl`], [`RunError::Store`]).
    pub fn open(self) -> Result<Run, RunError> {
        let RunBuilder { dir, fs, store } = self;
        Run::open_local(&dir, fs, |local| store.make(local, true))
    }

    /// Opens a run directory (and a store) that must already exist,
    /// creating and sweeping nothing there: for tools that inspect runs
    /// (`recovery status`).
    ///
    /// # Errors
    /// As [`Run::open_existing`], and as [`open`](Self::open) for the store.
    pub fn open_existing(self) -> Result<Run, RunError> {
        let RunBuilder { dir, store, .. } = self;
        Run::open_existing_with(&dir, |local| store.make(local, false))
    }
}

impl StoreSpec {
    /// The store, beside the run directory's own (`local`); with `create`,
    /// a shared store's run is made if it has none.
    #[cfg(feature = "s3")]
    fn make(self, local: LocalStore, create: bool) -> Result<Arc<dyn StepStore>, RunError> {
        let (objects, shown, prefix) = match self.choice {
            StoreChoice::Local => return Ok(Arc::new(local)),
            StoreChoice::Url(url) => {
                let (objects, prefix) = crate::s3::connect(&url, &self.options)?;
                (objects, url, prefix)
            }
            StoreChoice::Objects(objects, prefix) => {
                let shown = format!("{objects}/{prefix}");
                (objects, shown, prefix)
            }
        };
        let ttl = self.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        let store = crate::s3::S3Store::new(objects, &shown, &prefix, ttl, local, create)?;
        Ok(Arc::new(store))
    }

    /// Without the feature `s3`, only the run directory itself.
    #[cfg(not(feature = "s3"))]
    fn make(self, local: LocalStore, _create: bool) -> Result<Arc<dyn StepStore>, RunError> {
        let _ = (self.options, self.lease_ttl);
        match self.choice {
            StoreChoice::Local => Ok(Arc::new(local)),
            StoreChoice::Url(url) => Err(RunError::StoreUrl {
                url,
                reason: "this build of recovery has no shared stores; turn on its cargo feature \
                         `s3` (in a Cargo.toml: recovery = { version = \"0.1\", features = \
                         [\"s3\"] }; for this workspace's examples and CLI: --features s3)"
                    .into(),
            }),
        }
    }
}
