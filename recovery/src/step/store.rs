//! The seam between the step driver and durable step state: [`StepStore`].
//!
//! The driver stages a step's outputs on the local disk, hashes them into
//! the marker's manifest, and hands the rest to a store: reading and
//! writing markers, leasing steps, publishing outputs, fetching them back,
//! and keeping the logs. [`LocalStore`], the run directory, is the first
//! store ([`Run::store`](crate::Run::store) gives a run's); one on object
//! storage is the next.
//!
//! # The contract
//! - **The marker is the commit point.** A step is done exactly when its
//!   marker exists and verifies. [`commit`](StepStore::commit) publishes the
//!   outputs first and writes the marker last, conditionally: it is created
//!   only where there is none ([`create_marker`](StepStore::create_marker),
//!   `If-None-Match: *` on object storage), or replaces only the version
//!   the caller saw ([`replace_marker`](StepStore::replace_marker),
//!   `If-Match`). Of two writers that race, at most one commits; the other
//!   gets [`Put::Conflict`] and must take the winner's marker as the result.
//! - **Versions are opaque.** A [`MarkerVersion`] is whatever the store
//!   compares (a content hash, an ETag); two reads of an unchanged marker
//!   give equal versions, and a write gives a new one.
//! - **Leases reduce duplicate work; the conditional marker write is the
//!   fence.** A [`Lease`] names the step, a fencing epoch that never goes
//!   down across leases of one step, and an expiry (`None`: held until
//!   dropped, as a local lock is). Every write takes the lease it is made
//!   under, so a store can refuse a holder whose lease was taken over.
//! - **Failures are errors, never guesses.** An outcome the store cannot
//!   establish (a timeout after the request was sent) is read back before
//!   it is reported; a failed write leaves the previous marker or none,
//!   never a partial one.
//! - **Logs are records, not commit points.** Appends may be lost in a
//!   crash; reads skip and count what does not parse.
//!
//! The contract is tested by one suite that any store must pass
//! (`tests/store_contract.rs`).

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::RunError;
use crate::report::event::Event;
use crate::report::issue::IssueRecord;
use crate::report::log::LogRead;
use crate::step::instance::StepId;
use crate::step::marker::Marker;

#[cfg(feature = "s3")]
pub use crate::s3::S3Store;
pub use crate::step::local::LocalStore;

/// A version of a step's marker, as its store compares them: a token of
/// the store's own (an ETag), or the BLAKE3 of the marker's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MarkerVersion(Token);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Token {
    Text(String),
    /// The marker's bytes themselves: copying a small marker costs less
    /// than hashing it, and compares as exactly.
    Content(Vec<u8>),
}

impl MarkerVersion {
    /// A version with the store's own token (an ETag, a generation).
    pub fn new(token: impl Into<String>) -> Self {
        MarkerVersion(Token::Text(token.into()))
    }

    /// The version of a marker with these bytes (a copy of them, cheaper
    /// than their hash for a marker's few hundred bytes, so reading a
    /// marker for a resume check stays cheap).
    pub fn of_content(bytes: &[u8]) -> Self {
        MarkerVersion(Token::Content(bytes.to_vec()))
    }

    /// The store's own token, for a version made by [`new`](Self::new).
    pub fn token(&self) -> Option<&str> {
        match &self.0 {
            Token::Text(token) => Some(token),
            Token::Content(_) => None,
        }
    }
}

impl fmt::Display for MarkerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Token::Text(token) => f.write_str(token),
            Token::Content(bytes) => write!(f, "blake3:{}", blake3::hash(bytes).to_hex()),
        }
    }
}

/// A step's marker as read from a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredMarker {
    /// There is none: the step is not done.
    Missing,
    /// The encoded marker ([`crate::marker::decode`] reads it).
    Found {
        /// Its bytes.
        bytes: Vec<u8>,
        /// What a conditional write must name to replace it.
        version: MarkerVersion,
    },
    /// Something is in the marker's place that cannot be read as one (not
    /// a regular file, too large, an I/O error); it does not count.
    Unreadable {
        /// Why, for the `MARKER_INVALID` event.
        reason: String,
        /// What a conditional write must name to replace it.
        version: MarkerVersion,
    },
}

impl StoredMarker {
    /// The version a conditional write must name; `None` when missing.
    pub fn version(&self) -> Option<&MarkerVersion> {
        match self {
            StoredMarker::Missing => None,
            StoredMarker::Found { version, .. } | StoredMarker::Unreadable { version, .. } => {
                Some(version)
            }
        }
    }
}

/// What a conditional write did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a conflict means another writer's marker stands"]
pub enum Put {
    /// Written; the marker is now at this version.
    Written(MarkerVersion),
    /// Not written: the marker was not as the writer expected (there was
    /// one where it expected none, or another version).
    Conflict,
}

/// The right to change one step's (or item's) state, until dropped (or
/// expired).
pub struct Lease {
    step: StepId,
    epoch: u64,
    ttl: Option<Duration>,
    attempt: Option<String>,
    first: bool,
    /// What the store keeps while the lease is held (a locked file).
    hold: Box<dyn Any + Send + Sync>,
}

impl Lease {
    /// A lease on `step` at `epoch`, held as long as `hold` lives (or for
    /// `ttl`, when the store renews and expires leases).
    pub fn new(
        step: StepId,
        epoch: u64,
        ttl: Option<Duration>,
        hold: impl Any + Send + Sync,
    ) -> Self {
        Lease {
            step,
            epoch,
            ttl,
            attempt: None,
            first: false,
            hold: Box::new(hold),
        }
    }

    /// Names this lease's attempt: a token no other lease of the step ever
    /// has (epoch and nonce), under which a store keeps what the attempt
    /// publishes. It is recorded in the marker the attempt commits
    /// ([`Marker::published`]).
    pub fn with_attempt(mut self, attempt: impl Into<String>) -> Self {
        self.attempt = Some(attempt.into());
        self
    }

    /// Marks the lease as the first ever taken on its step: no marker can
    /// have been written under a lease before it, so a marker seen missing
    /// just before it was taken is missing still (the driver then spares
    /// itself a read), and no execution before it left anything in staging
    /// (the step's leftovers are not looked for).
    pub fn first_of_step(mut self) -> Self {
        self.first = true;
        self
    }

    /// Whether no lease of the step was taken before this one.
    pub fn is_first(&self) -> bool {
        self.first
    }

    /// The attempt's token, for stores that publish outputs apart per
    /// attempt; `None` for a store that publishes in place.
    pub fn attempt(&self) -> Option<&str> {
        self.attempt.as_deref()
    }

    /// What the store keeps while the lease is held, if it is a `T`.
    pub fn hold<T: Any>(&self) -> Option<&T> {
        self.hold.downcast_ref()
    }

    /// The step (or item) it is for.
    pub fn step(&self) -> &StepId {
        &self.step
    }

    /// The fencing epoch: later leases of a step never have a lower one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How long it lasts without renewal; `None` while held.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("step", &self.step)
            .field("epoch", &self.epoch)
            .field("ttl", &self.ttl)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// One output for [`StepStore::publish_outputs`]: staged on the local disk
/// (synced and hashed into the manifest already), published under its
/// manifest path.
#[derive(Clone, Copy, Debug)]
pub struct Publish<'a> {
    /// Its path in the manifest: relative to the run directory, or absolute
    /// for an output outside it.
    pub path: &'a str,
    /// Where it was staged.
    pub staged: &'a Path,
    /// Where it is once the step is done, on this machine.
    pub final_path: &'a Path,
    /// Where a previous version may be moved aside to (in staging).
    pub aside: &'a Path,
    /// Whether it is outside the run directory.
    pub outside: bool,
}

/// The ids of a family's items, one at a time; see
/// [`StepStore::marked_items`].
pub type ItemIds<'a> = Box<dyn Iterator<Item = Result<StepId, RunError>> + Send + 'a>;

/// Durable step state: markers, leases, published outputs and logs. See
/// the [module documentation](self) for the contract every store keeps.
pub trait StepStore: Send + Sync + fmt::Debug + 'static {
    /// The marker of `step` as it is now (valid or not: the driver decodes
    /// and verifies it).
    fn read_marker(&self, step: &StepId) -> Result<StoredMarker, RunError>;

    /// Writes `bytes` as the marker of the lease's step if it has none.
    fn create_marker(&self, lease: &Lease, bytes: &[u8]) -> Result<Put, RunError>;

    /// Writes `bytes` as the marker of the lease's step if its marker is
    /// still at `expected`.
    fn replace_marker(
        &self,
        lease: &Lease,
        bytes: &[u8],
        expected: &MarkerVersion,
    ) -> Result<Put, RunError>;

    /// Removes the marker of the lease's step if it is still at
    /// `expected`; returns whether it did.
    fn remove_marker(&self, lease: &Lease, expected: &MarkerVersion) -> Result<bool, RunError>;

    /// The plain steps that have a marker, sorted.
    fn marked_steps(&self) -> Result<Vec<String>, RunError>;

    /// The families (steps with `item = ...`) that have kept any state,
    /// sorted.
    fn families(&self) -> Result<Vec<String>, RunError>;

    /// The items of the family `name` that have a marker, streamed in no
    /// set order: a family of a million items is never held in memory at
    /// once.
    fn marked_items<'a>(&'a self, name: &str) -> Result<ItemIds<'a>, RunError>;

    /// Publishes the staged outputs where a reader of a marker finds them.
    fn publish_outputs(&self, lease: &Lease, outputs: &[Publish<'_>]) -> Result<(), RunError>;

    /// Whether published outputs replace the previous ones in place (the
    /// run directory) rather than live apart per commit (object storage).
    /// In place, a stale marker must not vouch for outputs half replaced,
    /// so [`commit`](Self::commit) takes it away before they move.
    fn outputs_in_place(&self) -> bool {
        false
    }

    /// Commits a step: publishes `outputs`, then makes `marker` its marker
    /// if the marker is still as the caller saw it (`seen`; `None` for no
    /// marker). Until this returns [`Put::Written`] the step is not done;
    /// after [`Put::Conflict`] no marker refers to what it published. The
    /// protocol is the same for every store; a store tells it only
    /// [`outputs_in_place`](Self::outputs_in_place).
    fn commit(
        &self,
        lease: &Lease,
        outputs: &[Publish<'_>],
        marker: &[u8],
        seen: Option<&MarkerVersion>,
    ) -> Result<Put, RunError> {
        let mut expected = seen;
        // With no outputs nothing moves in place: the marker is replaced in
        // one atomic write (its file and its directory synced: the bare
        // minimum), the old one standing until the new one does.
        if self.outputs_in_place() && !outputs.is_empty() {
            // Durably withdrawn first; and a marker other than the one seen
            // stops the commit before anything moves.
            let withdrawn = match seen {
                Some(version) => self.remove_marker(lease, version)?,
                None => self.read_marker(lease.step())? == StoredMarker::Missing,
            };
            if !withdrawn {
                return Ok(Put::Conflict);
            }
            expected = None;
        }
        self.publish_outputs(lease, outputs)?;
        let put = match expected {
            None => self.create_marker(lease, marker),
            Some(version) => self.replace_marker(lease, marker, version),
        };
        if let Ok(Put::Conflict) | Err(RunError::LeaseLost { .. }) = put {
            self.discard_published(lease);
        }
        put
    }

    /// Removes, best effort, what the lease's attempt published apart from
    /// other attempts, after its marker lost to another's: nothing refers
    /// to it. Stores that publish in place have nothing to remove.
    fn discard_published(&self, _lease: &Lease) {}

    /// Brings the outputs `marker` lists onto this machine, where they are
    /// not already; returns the bytes fetched. Only places an output may be
    /// are written: the run directory, and under `outside` (the places the
    /// program allowed). The driver verifies the outputs afterwards either
    /// way.
    fn fetch_outputs(&self, marker: &Marker, outside: &[PathBuf]) -> Result<u64, RunError>;

    /// Takes the lease on `step`, waiting while someone else holds it.
    fn lease(&self, step: &StepId) -> Result<Lease, RunError>;

    /// Takes the lease on `step` if nobody holds it.
    fn try_lease(&self, step: &StepId) -> Result<Option<Lease>, RunError>;

    /// Whether someone holds the lease on `step` right now.
    fn is_leased(&self, step: &StepId) -> Result<bool, RunError>;

    /// The plain steps and families that have ever been leased, sorted.
    fn leased_steps(&self) -> Result<Vec<String>, RunError>;

    /// Appends an event to the run's event log.
    fn append_event(&self, event: &Event);

    /// Appends an issue record to the run's issue log.
    fn append_issue(&self, issue: &IssueRecord);

    /// The events logged so far, in the store's order.
    fn events(&self) -> Result<LogRead<Event>, RunError>;

    /// The issue records logged so far.
    fn issues(&self) -> Result<LogRead<IssueRecord>, RunError>;

    /// Removes what a crashed writer left (half-written markers of steps
    /// nobody leases).
    fn tidy(&self) -> Result<(), RunError>;
}
