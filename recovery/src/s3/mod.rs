//! [`S3Store`]: step state on S3-compatible object storage, shared by
//! workers on many machines (cargo feature `s3`, built on `object_store`).

mod bridge;
mod lease;
mod logs;
mod remote;
mod transfer;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};

use crate::error::RunError;
use crate::report::event::Event;
use crate::report::issue::IssueRecord;
use crate::report::log::LogRead;
use crate::step::instance::StepId;
use crate::step::local::LocalStore;
use crate::step::marker::{MARKER_LIMIT, Marker};
use crate::step::names::check_step_name;
use crate::step::store::{ItemIds, Lease, MarkerVersion, Publish, Put, StepStore, StoredMarker};

use lease::Held;
use logs::{Kind, Logs};
use remote::{Outcome, Remote};

/// Step state in an object store: markers, leases and logs there, outputs
/// uploaded there and kept in the run directory on this machine too. Made
/// by [`RunBuilder::store`](crate::RunBuilder::store) (an `s3://` URL) or
/// [`RunBuilder::object_store`](crate::RunBuilder::object_store).
///
/// The commit protocol is the one every store keeps
/// ([`StepStore::commit`]); what object storage brings to it:
/// - **Outputs** are uploaded under a prefix no other attempt uses (the
///   lease's epoch and a nonce: [`Lease::attempt`]), and placed in the run
///   directory on this machine as well. A loser's uploads are removed; it
///   cannot touch the winner's.
/// - **The marker** is created with `If-None-Match: *` (or replaces an
///   invalid one with `If-Match` on the version read when it was checked):
///   at most one attempt of a step ever commits. It records the attempt
///   ([`Marker::published`]), so another machine knows what to fetch.
/// - **Leases** are objects taken by a conditional create, renewed while
///   the step runs, and taken over when seen unchanged for longer than
///   their time to live on the taker's own monotonic clock. A holder
///   checks its lease before writing the marker; one paused past its TTL
///   finds it taken and commits nothing ([`RunError::LeaseLost`]).
/// - **Ambiguous replies** (a time-out, a 5xx after the client's retries,
///   an `AlreadyExists` that may answer our own retried first try) are
///   settled by reading the object back and comparing it with what was
///   sent (a marker's bytes carry its attempt's nonce).
/// - **Resume on another machine**: a valid marker's outputs are fetched
///   where they are missing or differ, each checked against its BLAKE3, and
///   `STEP_RESUMED` says how many bytes came.
/// - **Logs**: each process writes its events and issue records as
///   numbered pieces of its own; readers merge them, processes by start
///   time and each process's records in order.
///
/// Nothing on the local disk is trusted over the store: markers and leases
/// are only in the store, and local outputs count only when they hash as
/// the store's marker says.
///
/// [`Marker::published`]: crate::marker::Marker::published
#[derive(Debug)]
pub struct S3Store {
    remote: Arc<Remote>,
    /// This machine's part: the flocks that keep two local workers off one
    /// step without a request, and outputs placed in the run directory.
    local: LocalStore,
    ttl: Duration,
    logs: Logs,
}

/// What an [`S3Store`] lease holds: the local lock and the lease object.
#[derive(Debug)]
struct S3Hold {
    held: Held,
    _local: Lease,
}

/// The `run.json` object that marks a prefix as a run's store.
#[derive(Serialize, Deserialize)]
struct StoreFile {
    format: u32,
    kind: String,
}

const STORE_KIND: &str = "recovery-store";
const STORE_FORMAT: u32 = 1;

/// Makes the object store of an `s3://bucket/prefix` URL: settings from the
/// `AWS_*` variables, then `options` (object_store's keys) over them.
pub(crate) fn connect(
    url: &str,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, String), RunError> {
    let bad = |reason: String| RunError::StoreUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("s3a://"))
        .ok_or_else(|| bad("only s3:// URLs are supported (s3://bucket/prefix)".into()))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("the URL names no bucket (s3://bucket/prefix)".into()));
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in options {
        let key: AmazonS3ConfigKey = key.parse().map_err(|_| {
            bad(format!(
                "unknown store option {key:?} (object_store's S3 keys: aws_endpoint, \
                 aws_allow_http, aws_region, aws_access_key_id, aws_secret_access_key, ...)"
            ))
        })?;
        builder = builder.with_config(key, value);
    }
    let objects = builder
        .build()
        .map_err(|e| bad(format!("cannot configure the S3 client: {e}")))?;
    Ok((Arc::new(objects), prefix.trim_matches('/').to_owned()))
}

impl S3Store {
    /// A store on `objects` under `prefix`, leases lasting `ttl`, beside the
    /// run directory's own store; checks the prefix's `run.json` (and with
    /// `create` makes it), so that a store that cannot be reached, or a
    /// mistyped prefix, fails here.
    pub(crate) fn new(
        objects: Arc<dyn ObjectStore>,
        url: &str,
        prefix: &str,
        ttl: Duration,
        local: LocalStore,
        create: bool,
    ) -> Result<Self, RunError> {
        let remote = Arc::new(Remote::new(objects, prefix, url)?);
        let logs = Logs::new(Arc::clone(&remote));
        let store = S3Store {
            remote,
            local,
            ttl,
            logs,
        };
        store.check_or_init(create)?;
        Ok(store)
    }

    /// Runs `request` on the store's runtime and waits for its result.
    fn request<T: Send + 'static, F>(
        &self,
        request: impl FnOnce(Arc<Remote>) -> F,
    ) -> Result<T, RunError>
    where
        F: Future<Output = Result<T, RunError>> + Send + 'static,
    {
        self.remote.bridge.run(request(Arc::clone(&self.remote)))
    }

    fn check_or_init(&self, create: bool) -> Result<(), RunError> {
        self.request(|remote| async move {
            let key = remote.key("run.json");
            let bad = |reason: String| RunError::StoreUrl {
                url: remote.url.clone(),
                reason,
            };
            let found = match remote.get(&key).await? {
                Some(found) => found,
                None if !create => {
                    return Err(bad("no run is kept there (no run.json): check the URL; \
                         a program's Run::builder(dir).store(url).open() makes one"
                        .into()));
                }
                None => {
                    let file = StoreFile {
                        format: STORE_FORMAT,
                        kind: STORE_KIND.into(),
                    };
                    let bytes = serde_json::to_vec_pretty(&file).expect("serialises");
                    // Another opener may make it first, with the same bytes.
                    let _ = remote.create(&key, Bytes::from(bytes)).await;
                    match remote.get(&key).await? {
                        Some(found) => found,
                        None => return Err(bad("its run.json cannot be written".into())),
                    }
                }
            };
            match serde_json::from_slice::<StoreFile>(&found.bytes) {
                Ok(f) if f.kind == STORE_KIND && f.format <= STORE_FORMAT => Ok(()),
                Ok(f) if f.kind == STORE_KIND => Err(bad(format!(
                    "it is a run of format {}, newer than this program's {STORE_FORMAT}; \
                     update recovery",
                    f.format
                ))),
                _ => Err(bad(
                    "its run.json is not a recovery run's; choose another prefix".into(),
                )),
            }
        })
    }

    /// The lease's own part, or [`RunError::LeaseLost`] for a lease this
    /// store did not give.
    fn held<'a>(&self, lease: &'a Lease) -> Result<&'a Held, RunError> {
        lease
            .hold::<S3Hold>()
            .map(|h| &h.held)
            .ok_or_else(|| RunError::LeaseLost {
                step: lease.step().to_string(),
            })
    }

    /// Writes the lease's marker: a create (`etag` none) or a replace of
    /// the version `etag`, conditionally, after making sure the lease is
    /// still ours. An outcome the store did not tell is settled by reading
    /// the marker back: ours if it holds exactly our bytes (they carry the
    /// attempt's nonce).
    fn write_marker(
        &self,
        lease: &Lease,
        bytes: &[u8],
        etag: Option<String>,
    ) -> Result<Put, RunError> {
        self.held(lease)?.ensure(lease.step())?;
        let key = self.remote.marker_key(lease.step());
        let bytes = Bytes::copy_from_slice(bytes);
        self.request(|remote| async move {
            let outcome = match &etag {
                None => remote.create(&key, bytes.clone()).await,
                Some(etag) => remote.update(&key, bytes.clone(), etag).await,
            };
            let error = match outcome {
                Outcome::Written(etag) => return Ok(Put::Written(MarkerVersion::new(etag))),
                Outcome::Refused => None,
                Outcome::Unknown(e) => Some(e),
            };
            match (remote.get(&key).await?, error) {
                (Some(found), _) if found.bytes == bytes => {
                    Ok(Put::Written(MarkerVersion::new(found.etag)))
                }
                (None, Some(e)) => Err(remote.error("write marker", &key, e)),
                _ => Ok(Put::Conflict),
            }
        })
    }

    /// Takes the lease, waiting or not.
    fn take(&self, step: &StepId, local: Lease, wait: bool) -> Result<Option<Lease>, RunError> {
        let (id, ttl, process) = (step.clone(), self.ttl, self.logs.process().to_owned());
        let held = self.request(|remote| lease::acquire(remote, id, ttl, process, wait))?;
        Ok(held.map(|held| {
            let epoch = held.epoch();
            let attempt = format!("{epoch:010}-{}", held.holder());
            let first = held.created();
            let lease = Lease::new(
                step.clone(),
                epoch,
                Some(self.ttl),
                S3Hold {
                    held,
                    _local: local,
                },
            )
            .with_attempt(attempt);
            if first { lease.first_of_step() } else { lease }
        }))
    }

    /// Names of steps and families under `dir` (`steps` or `leases`).
    fn names(&self, dir: &'static str) -> Result<(Vec<String>, Vec<String>), RunError> {
        let (objects, prefixes) =
            self.request(|remote| async move { remote.list_names(dir).await })?;
        let steps = objects
            .iter()
            .filter_map(|n| n.strip_suffix(".json"))
            .filter(|n| check_step_name(n).is_ok())
            .map(str::to_owned)
            .collect();
        let families = prefixes
            .into_iter()
            .filter(|n| check_step_name(n).is_ok())
            .collect();
        Ok((steps, families))
    }
}

/// Whether `attempt` is a token this store makes (so that a hostile
/// marker cannot send a fetch elsewhere in the bucket).
fn is_attempt(attempt: &str) -> bool {
    attempt.len() <= 64
        && !attempt.is_empty()
        && attempt
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

impl StepStore for S3Store {
    fn read_marker(&self, step: &StepId) -> Result<StoredMarker, RunError> {
        let key = self.remote.marker_key(step);
        let found = self.request(|remote| async move { remote.get(&key).await })?;
        Ok(match found {
            None => StoredMarker::Missing,
            Some(found) if found.bytes.len() as u64 > MARKER_LIMIT => StoredMarker::Unreadable {
                reason: format!("the marker is larger than {MARKER_LIMIT} bytes"),
                version: MarkerVersion::new(found.etag),
            },
            Some(found) => StoredMarker::Found {
                bytes: found.bytes.to_vec(),
                version: MarkerVersion::new(found.etag),
            },
        })
    }

    fn create_marker(&self, lease: &Lease, bytes: &[u8]) -> Result<Put, RunError> {
        self.write_marker(lease, bytes, None)
    }

    fn replace_marker(
        &self,
        lease: &Lease,
        bytes: &[u8],
        expected: &MarkerVersion,
    ) -> Result<Put, RunError> {
        match expected.token() {
            Some(etag) => self.write_marker(lease, bytes, Some(etag.to_owned())),
            None => Ok(Put::Conflict), // not a version this store gave
        }
    }

    /// Object stores have no conditional delete: the marker is read, and
    /// deleted if it is at `expected`, under a lease checked just before
    /// (the lease keeps other workers from writing it meanwhile).
    fn remove_marker(&self, lease: &Lease, expected: &MarkerVersion) -> Result<bool, RunError> {
        self.held(lease)?.ensure(lease.step())?;
        if self.read_marker(lease.step())?.version() != Some(expected) {
            return Ok(false);
        }
        let key = self.remote.marker_key(lease.step());
        self.request(|remote| async move { remote.delete(&key).await })?;
        Ok(true)
    }

    fn marked_steps(&self) -> Result<Vec<String>, RunError> {
        Ok(self.names("steps")?.0)
    }

    fn families(&self) -> Result<Vec<String>, RunError> {
        Ok(self.names("steps")?.1)
    }

    fn marked_items<'a>(&'a self, name: &str) -> Result<ItemIds<'a>, RunError> {
        check_step_name(name)?;
        let prefix = self.remote.key(&format!("steps/{name}"));
        Ok(Box::new(Items {
            remote: Arc::clone(&self.remote),
            name: name.to_owned(),
            stream: Some(self.remote.objects.list(Some(&prefix))),
            ready: VecDeque::new(),
        }))
    }

    /// Uploads every staged file and symlink under the attempt's prefix,
    /// then places the outputs in the run directory here.
    fn publish_outputs(&self, lease: &Lease, outputs: &[Publish<'_>]) -> Result<(), RunError> {
        let attempt = lease.attempt().ok_or_else(|| RunError::LeaseLost {
            step: lease.step().to_string(),
        })?;
        let prefix = self.remote.attempt_prefix(lease.step(), attempt);
        let mut uploads = Vec::new();
        for o in outputs {
            transfer::collect(o.staged, o.path, &mut uploads)?;
        }
        self.request(|remote| transfer::upload(remote, prefix, uploads))?;
        self.local.publish_outputs(lease, outputs)
    }

    fn discard_published(&self, lease: &Lease) {
        if let Some(attempt) = lease.attempt() {
            let prefix = self.remote.attempt_prefix(lease.step(), attempt);
            let _ =
                self.request(|remote| async move { transfer::remove_all(&remote, &prefix).await });
        }
    }

    fn fetch_outputs(&self, marker: &Marker, outside: &[PathBuf]) -> Result<u64, RunError> {
        let Some(attempt) = marker.published.as_deref().filter(|a| is_attempt(a)) else {
            return Ok(0);
        };
        let step = match &marker.item {
            None => StepId::plain(&marker.step)?,
            Some(item) => StepId::item(&marker.step, item)?.0,
        };
        let prefix = self.remote.attempt_prefix(&step, attempt);
        let run_dir = self.local.dir().to_owned();
        let (outside, marker) = (outside.to_vec(), marker.clone());
        self.request(|remote| transfer::fetch(remote, prefix, run_dir, outside, marker))
    }

    /// Takes this machine's lock first (no request while another local
    /// worker runs the step), then the lease object.
    fn lease(&self, step: &StepId) -> Result<Lease, RunError> {
        let local = self.local.lease(step)?;
        self.take(step, local, true)?
            .ok_or_else(|| RunError::LeaseLost {
                step: step.to_string(),
            })
    }

    fn try_lease(&self, step: &StepId) -> Result<Option<Lease>, RunError> {
        match self.local.try_lease(step)? {
            Some(local) => self.take(step, local, false),
            None => Ok(None),
        }
    }

    fn is_leased(&self, step: &StepId) -> Result<bool, RunError> {
        if self.local.is_leased(step)? {
            return Ok(true);
        }
        let id = step.clone();
        self.request(|remote| async move { lease::is_held(&remote, &id).await })
    }

    fn leased_steps(&self) -> Result<Vec<String>, RunError> {
        let (mut names, families) = self.names("leases")?;
        names.extend(families);
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Written out at once when a step completes; otherwise buffered (see
    /// the module's logs).
    fn append_event(&self, event: &Event) {
        let ends = matches!(event, Event::StepCompleted { .. });
        self.logs.append(Kind::Events, event, ends);
    }

    fn append_issue(&self, issue: &IssueRecord) {
        self.logs.append(Kind::Issues, issue, true);
    }

    fn events(&self) -> Result<LogRead<Event>, RunError> {
        self.logs.read(Kind::Events)
    }

    fn issues(&self) -> Result<LogRead<IssueRecord>, RunError> {
        self.logs.read(Kind::Issues)
    }

    fn tidy(&self) -> Result<(), RunError> {
        self.local.tidy()
    }
}

/// A family's marked items, listed a page at a time.
struct Items {
    remote: Arc<Remote>,
    name: String,
    stream: Option<BoxStream<'static, object_store::Result<ObjectMeta>>>,
    ready: VecDeque<Result<StepId, RunError>>,
}

/// How many keys one pull of the listing takes.
const PAGE: usize = 1000;

impl Iterator for Items {
    type Item = Result<StepId, RunError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() {
            let mut stream = self.stream.take()?;
            let pulled = self.remote.bridge.run(async move {
                let mut page = Vec::with_capacity(PAGE);
                while page.len() < PAGE {
                    match stream.next().await {
                        Some(meta) => page.push(meta),
                        None => return Ok((None, page)),
                    }
                }
                Ok((Some(stream), page))
            });
            let (rest, page) = match pulled {
                Ok(pulled) => pulled,
                Err(e) => return Some(Err(e)),
            };
            self.stream = rest;
            for meta in page {
                self.ready.push_back(match meta {
                    Err(e) => Err(self.remote.error("list", &self.remote.key("steps"), e)),
                    Ok(meta) => match item_of(&meta.location, &self.name) {
                        Some(id) => Ok(id),
                        None => continue,
                    },
                });
            }
        }
        self.ready.pop_front()
    }
}

/// The item whose marker is at `key` (`.../<name>/<ab>/<id>.json`).
fn item_of(key: &object_store::path::Path, name: &str) -> Option<StepId> {
    let parts: Vec<_> = key.parts().collect();
    let [.., family, bucket, file] = parts.as_slice() else {
        return None;
    };
    let id = file.as_ref().strip_suffix(".json")?;
    if family.as_ref() != name || !id.starts_with(bucket.as_ref()) {
        return None;
    }
    StepId::from_parts(name, Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let options = [("aws_region".to_owned(), "us-east-1".to_owned())];
        let (_, prefix) = connect("s3://bucket/runs/demo/", &options).unwrap();
        assert_eq!(prefix, "runs/demo");
        let (_, prefix) = connect("s3a://bucket", &options).unwrap();
        assert_eq!(prefix, "");
        for (url, says) in [
            ("file:///tmp/x", "only s3:// URLs"),
            ("s3://", "names no bucket"),
            ("s3:///p", "names no bucket"),
        ] {
            let err = connect(url, &options).err().unwrap().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        let bad = [("aws_no_such".to_owned(), "1".to_owned())];
        let err = connect("s3://b/p", &bad).err().unwrap().to_string();
        assert!(
            err.contains("unknown store option \"aws_no_such\""),
            "{err}"
        );
    }

    #[test]
    fn only_tokens_this_store_makes_name_an_attempt() {
        assert!(is_attempt("0000000001-00ff00ff00ff00ff"));
        for bad in ["", "../x", "a/b", "UPPER", &"a".repeat(65), "x y"] {
            assert!(!is_attempt(bad), "{bad:?}");
        }
    }

    #[test]
    fn item_keys_read_back_as_their_items() {
        let (id, _) = StepId::item("page", &3).unwrap();
        let hex = id.item_id().unwrap();
        let key = object_store::path::Path::from(format!("p/steps/page/{}/{hex}.json", &hex[..2]));
        assert_eq!(item_of(&key, "page"), Some(id.clone()));
        // Another family's, a misplaced bucket, not a marker: none.
        assert_eq!(item_of(&key, "other"), None);
        let wrong = object_store::path::Path::from(format!("p/steps/page/zz/{hex}.json"));
        assert_eq!(item_of(&wrong, "page"), None);
        let temp = object_store::path::Path::from(format!("p/steps/page/{}/{hex}.tmp", &hex[..2]));
        assert_eq!(item_of(&temp, "page"), None);
    }
}
