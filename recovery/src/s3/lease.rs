//! Leases on object storage: one lease object per step (or item), taken by
//! a conditional create, renewed by a conditional update while the step
//! runs, released by marking it released (never deleted, so epochs never
//! go down), and taken over once it has been seen unchanged for longer
//! than its time to live.
//!
//! Expiry is judged on the taker's own monotonic clock ("the same version,
//! seen for longer than the TTL"), never by comparing wall clocks across
//! machines. A lease is not what makes a commit correct (the conditional
//! marker write is); it keeps two workers from doing the same work, and
//! lets a holder that was paused past its TTL find out before it commits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};

use crate::error::RunError;
use crate::s3::remote::{Outcome, Remote};
use crate::step::instance::StepId;

/// What a lease object holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    /// Fencing epoch: one more at every new holder.
    pub(crate) epoch: u64,
    /// The holder's nonce (unique per acquisition).
    pub(crate) holder: String,
    /// Bumped at every renewal, so that every renewal is a new version.
    pub(crate) beat: u64,
    /// How long the holder promises to renew within, in milliseconds.
    pub(crate) ttl_ms: u64,
    /// Released by its holder: free to take at once.
    pub(crate) released: bool,
    /// The holder's process (for people reading the bucket).
    pub(crate) process: String,
    /// Wall-clock time of the last renewal, milliseconds since the Unix
    /// epoch: only for telling people whether a holder looks alive
    /// ([`is_held`]); expiry never compares clocks across machines.
    #[serde(default)]
    pub(crate) renewed_at_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LeaseRecord {
    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a lease record serialises"))
    }

    /// The TTL a taker waits out: the holder's own, within sane bounds (a
    /// hostile record must not stall takers for years, nor zero them).
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.clamp(10, 24 * 3600 * 1000))
    }
}

/// A lease as read: its record (`None` when unreadable) and version.
struct Seen {
    record: Option<LeaseRecord>,
    etag: String,
}

async fn read(remote: &Remote, key: &Key) -> Result<Option<Seen>, RunError> {
    Ok(remote.get(key).await?.map(|found| Seen {
        record: serde_json::from_slice(&found.bytes).ok(),
        etag: found.etag,
    }))
}

/// A lease this process holds, renewed in the background until dropped.
#[derive(Debug)]
pub(crate) struct Held {
    remote: Arc<Remote>,
    key: Key,
    ttl: Duration,
    state: Arc<Mutex<HeldState>>,
    renewal: Option<tokio::task::JoinHandle<()>>,
    /// Made by creating the lease object: the step's first lease.
    created: bool,
}

#[derive(Debug)]
struct HeldState {
    record: LeaseRecord,
    etag: String,
    /// When the last renewal that landed was sent.
    confirmed: Instant,
    /// Another worker has taken the lease over.
    lost: bool,
}

impl Held {
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.state).record.epoch
    }

    /// Whether this lease created the step's lease object (no lease of the
    /// step was ever taken before).
    pub(crate) fn created(&self) -> bool {
        self.created
    }

    pub(crate) fn holder(&self) -> String {
        lock(&self.state).record.holder.clone()
    }

    /// Makes sure the lease is still ours before a write that a taken-over
    /// holder must not make: a renewal confirmed within half the TTL is
    /// proof enough; otherwise one renewal now (a holder that was paused
    /// finds out here).
    pub(crate) fn ensure(&self, step: &StepId) -> Result<(), RunError> {
        {
            let state = lock(&self.state);
            if state.lost {
                return Err(lost(step));
            }
            if state.confirmed.elapsed() < self.ttl / 2 {
                return Ok(());
            }
        }
        let (remote, key, state) = (
            Arc::clone(&self.remote),
            self.key.clone(),
            Arc::clone(&self.state),
        );
        let still = self
            .remote
            .bridge
            .run(async move { renew(&remote, &key, &state).await })?;
        if still { Ok(()) } else { Err(lost(step)) }
    }
}

fn lost(step: &StepId) -> RunError {
    RunError::LeaseLost {
        step: step.to_string(),
    }
}

fn lock(state: &Mutex<HeldState>) -> std::sync::MutexGuard<'_, HeldState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One renewal: the next beat, conditional on the version we hold.
/// Returns whether the lease is still ours; an error leaves it unknown.
async fn renew(remote: &Remote, key: &Key, state: &Mutex<HeldState>) -> Result<bool, RunError> {
    let (next, etag) = {
        let s = lock(state);
        if s.lost {
            return Ok(false);
        }
        let mut next = s.record.clone();
        next.beat += 1;
        next.renewed_at_ms = now_ms();
        (next, s.etag.clone())
    };
    let sent = Instant::now();
    let landed = match remote.update(key, next.bytes(), &etag).await {
        Outcome::Written(etag) => Some(etag),
        // Our own renewal may have landed with its reply lost, and a
        // retry of it been refused: the record says.
        Outcome::Refused | Outcome::Unknown(_) => match read(remote, key).await? {
            Some(seen) if seen.record.as_ref() == Some(&next) => Some(seen.etag),
            Some(_) | None => {
                let mut s = lock(state);
                if s.etag == etag {
                    s.lost = true;
                }
                return Ok(!s.lost);
            }
        },
    };
    let mut s = lock(state);
    if let Some(etag) = landed {
        s.record = next;
        s.etag = etag;
        s.confirmed = sent;
    }
    Ok(!s.lost)
}

async fn renew_forever(remote: Arc<Remote>, key: Key, state: Arc<Mutex<HeldState>>, ttl: Duration) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        // A failed renewal is tried again at the next beat; a lease not
        // renewed for its TTL is lost to a taker, which the next renewal
        // learns.
        if let Ok(false) = renew(&remote, &key, &state).await {
            return;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        let (remote, key, state) = (
            Arc::clone(&self.remote),
            self.key.clone(),
            Arc::clone(&self.state),
        );
        // Best effort: a lease not released is taken over after its TTL.
        let _ = self.remote.bridge.run(async move {
            let (mut record, etag) = {
                let s = lock(&state);
                if s.lost {
                    return Ok(());
                }
                (s.record.clone(), s.etag.clone())
            };
            record.released = true;
            let _ = remote.update(&key, record.bytes(), &etag).await;
            Ok(())
        });
    }
}

/// How long a waiting taker sleeps between looks at a held lease.
fn poll_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// Takes the lease on `step`: at once if nobody holds it, or (with
/// `wait`) once its holder has released it or stopped renewing it for its
/// TTL. `None` without `wait` when it is held.
pub(crate) async fn acquire(
    remote: Arc<Remote>,
    step: StepId,
    ttl: Duration,
    process: String,
    wait: bool,
) -> Result<Option<Held>, RunError> {
    let key = remote.lease_key(&step);
    let holder = format!("{:016x}", rand::random::<u64>());
    // The version being waited out, and since when (on our clock).
    let mut watching: Option<(String, Instant)> = None;
    // A step's first lease is a create, with no read before it.
    let mut known: Option<Option<Seen>> = Some(None);
    loop {
        let seen = match known.take() {
            Some(assumed) => assumed,
            None => read(&remote, &key).await?,
        };
        let (epoch, condition) = match &seen {
            None => (1, None),
            Some(Seen { record, etag }) => {
                let free = record.as_ref().is_some_and(|r| r.released);
                let waited_out = match &watching {
                    Some((watched, since)) if watched == etag => {
                        let ttl = record.as_ref().map_or(ttl, LeaseRecord::ttl);
                        since.elapsed() >= ttl
                    }
                    _ => false,
                };
                if !free && !waited_out {
                    if !wait {
                        return Ok(None);
                    }
                    if watching.as_ref().is_none_or(|(w, _)| w != etag) {
                        watching = Some((etag.clone(), Instant::now()));
                    }
                    tokio::time::sleep(poll_interval(ttl)).await;
                    continue;
                }
                let epoch = record.as_ref().map_or(1, |r| r.epoch.saturating_add(1));
                (epoch, Some(etag.clone()))
            }
        };
        let record = LeaseRecord {
            epoch,
            holder: holder.clone(),
            beat: 0,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            released: false,
            process: process.clone(),
            renewed_at_ms: now_ms(),
        };
        let sent = Instant::now();
        let outcome = match &condition {
            None => remote.create(&key, record.bytes()).await,
            Some(etag) => remote.update(&key, record.bytes(), etag).await,
        };
        let etag = match outcome {
            Outcome::Written(etag) => etag,
            // Refused, or unknown: ours if the record there is ours (a
            // retried request whose first try landed); someone else's
            // otherwise, and we look again.
            Outcome::Refused | Outcome::Unknown(_) => match read(&remote, &key).await? {
                Some(Seen {
                    record: Some(r),
                    etag,
                }) if r == record => etag,
                // Someone else's: the next round starts from this read.
                other @ Some(_) => {
                    known = Some(other);
                    continue;
                }
                None => match outcome {
                    Outcome::Unknown(e) => return Err(remote.error("create lease", &key, e)),
                    _ => continue,
                },
            },
        };
        let state = Arc::new(Mutex::new(HeldState {
            record,
            etag,
            confirmed: sent,
            lost: false,
        }));
        let renewal = remote.bridge.spawn(renew_forever(
            Arc::clone(&remote),
            key.clone(),
            Arc::clone(&state),
            ttl,
        ));
        return Ok(Some(Held {
            remote,
            key,
            ttl,
            state,
            renewal: Some(renewal),
            created: condition.is_none(),
        }));
    }
}

/// Whether someone seems to hold the lease on `step` now: it is not
/// released, and was renewed within two TTLs by this machine's wall clock.
/// For display (`recovery status`); taking a lease never relies on it.
pub(crate) async fn is_held(remote: &Remote, step: &StepId) -> Result<bool, RunError> {
    let key = remote.lease_key(step);
    Ok(match read(remote, &key).await? {
        None => false,
        Some(Seen { record: None, .. }) => true,
        Some(Seen {
            record: Some(r), ..
        }) => {
            let stale = now_ms().saturating_sub(r.renewed_at_ms) > 2 * r.ttl_ms;
            !r.released && !stale
        }
    })
}
