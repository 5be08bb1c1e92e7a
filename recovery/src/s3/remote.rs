//! The object store as the step store sees it: keys under the run's prefix,
//! and the few requests it makes, with their outcomes named.
//!
//! ```text
//! <prefix>/run.json                        identifies the prefix as a run
//! <prefix>/steps/<step>.json               a plain step's marker
//! <prefix>/steps/<family>/<ab>/<id>.json   an item's marker
//! <prefix>/leases/...                      one lease object per step or item, laid out the same
//! <prefix>/outputs/<step or family/ab/id>/<attempt>/r/<path>
//!                                          what one attempt published (o/<path> for
//!                                          outputs outside the run directory)
//! <prefix>/logs/<process>/events-<n>.jsonl and issues-<n>.jsonl
//!                                          each process's log, in pieces
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::error::RunError;
use crate::s3::bridge::Bridge;
use crate::step::instance::StepId;

/// The run's objects: the store, the run's prefix, and the runtime that
/// drives requests.
pub(crate) struct Remote {
    pub(crate) objects: Arc<dyn ObjectStore>,
    root: Key,
    /// How the store is named in errors (its URL).
    pub(crate) url: String,
    pub(crate) bridge: Bridge,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// An object as read: its bytes and its ETag.
pub(crate) struct Found {
    pub(crate) bytes: Bytes,
    pub(crate) etag: String,
}

/// What a conditional put did.
pub(crate) enum Outcome {
    /// Written, now at this ETag.
    Written(String),
    /// Refused: the object was not as the condition said.
    Refused,
    /// Unknown: the request failed in a way that says nothing of whether
    /// it was applied (a time-out, a 5xx after retries, an `AlreadyExists`
    /// that may answer our own retried first try). Read back to learn.
    Unknown(object_store::Error),
}

impl Remote {
    pub(crate) fn new(
        objects: Arc<dyn ObjectStore>,
        prefix: &str,
        url: &str,
    ) -> Result<Self, RunError> {
        Ok(Remote {
            objects,
            root: Key::from(prefix.trim_matches('/')),
            url: url.to_owned(),
            bridge: Bridge::new()?,
        })
    }

    /// `<prefix>/<rel>` (`rel` is `/`-separated; each part kept as is,
    /// percent-encoded where the store needs it).
    pub(crate) fn key(&self, rel: &str) -> Key {
        let mut key = self.root.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    pub(crate) fn marker_key(&self, step: &StepId) -> Key {
        self.key(&format!("steps/{}.json", step_rel(step)))
    }

    pub(crate) fn lease_key(&self, step: &StepId) -> Key {
        self.key(&format!("leases/{}.json", step_rel(step)))
    }

    /// Where the attempt `attempt` of `step` publishes its outputs.
    pub(crate) fn attempt_prefix(&self, step: &StepId, attempt: &str) -> Key {
        self.key(&format!("outputs/{}/{attempt}", step_rel(step)))
    }

    /// The key of the output at manifest path `path` under an attempt's
    /// prefix: `r/<path>` in the run directory, `o/<path>` outside it.
    pub(crate) fn output_key(prefix: &Key, path: &str) -> Key {
        let (side, rest) = match path.strip_prefix('/') {
            Some(rest) => ("o", rest),
            None => ("r", path),
        };
        let mut key = prefix.clone().join(side);
        for part in rest.split('/').filter(|p| !p.is_empty()) {
            key = key.join(part);
        }
        key
    }

    /// An error of a request that reading back did not settle.
    pub(crate) fn error(&self, op: &'static str, key: &Key, e: object_store::Error) -> RunError {
        RunError::Store {
            op,
            key: key.to_string(),
            store: self.url.clone(),
            source: Box::new(e),
        }
    }

    /// Reads an object; `None` when there is none.
    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Found>, RunError> {
        let got = match self.objects.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("read", key, e)),
        };
        let etag = got.meta.e_tag.clone().unwrap_or_default();
        match got.bytes().await {
            Ok(bytes) => Ok(Some(Found { bytes, etag })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("read", key, e)),
        }
    }

    /// Puts `bytes` at `key` if there is no object there (`If-None-Match`).
    pub(crate) async fn create(&self, key: &Key, bytes: Bytes) -> Outcome {
        self.put(key, bytes, PutMode::Create).await
    }

    /// Puts `bytes` at `key` if its object is at `etag` (`If-Match`).
    pub(crate) async fn update(&self, key: &Key, bytes: Bytes, etag: &str) -> Outcome {
        let version = UpdateVersion {
            e_tag: Some(etag.to_owned()),
            version: None,
        };
        self.put(key, bytes, PutMode::Update(version)).await
    }

    async fn put(&self, key: &Key, bytes: Bytes, mode: PutMode) -> Outcome {
        let create = matches!(mode, PutMode::Create);
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .objects
            .put_opts(key, PutPayload::from_bytes(bytes), options)
            .await
        {
            Ok(done) => Outcome::Written(done.e_tag.unwrap_or_default()),
            // The store retries requests: an `AlreadyExists` may answer our
            // own first try, applied before its reply was lost.
            Err(e @ object_store::Error::AlreadyExists { .. }) if create => Outcome::Unknown(e),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) if !create => Outcome::Refused,
            Err(e) => Outcome::Unknown(e),
        }
    }

    /// Puts `bytes` at `key`, whatever is there.
    pub(crate) async fn overwrite(&self, key: &Key, bytes: Bytes) -> Result<(), RunError> {
        self.objects
            .put(key, PutPayload::from_bytes(bytes))
            .await
            .map(drop)
            .map_err(|e| self.error("write", key, e))
    }

    pub(crate) async fn delete(&self, key: &Key) -> Result<(), RunError> {
        match self.objects.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", key, e)),
        }
    }

    /// The names directly under `rel`: (objects, prefixes), each the last
    /// part of its key, sorted.
    pub(crate) async fn list_names(
        &self,
        rel: &str,
    ) -> Result<(Vec<String>, Vec<String>), RunError> {
        let key = self.key(rel);
        let listed = self
            .objects
            .list_with_delimiter(Some(&key))
            .await
            .map_err(|e| self.error("list", &key, e))?;
        let last = |k: &Key| k.filename().unwrap_or_default().to_owned();
        let mut objects: Vec<String> = listed.objects.iter().map(|m| last(&m.location)).collect();
        let mut prefixes: Vec<String> = listed.common_prefixes.iter().map(last).collect();
        objects.sort();
        prefixes.sort();
        Ok((objects, prefixes))
    }
}

/// `<name>` for a plain step, `<name>/<ab>/<id>` for an item.
fn step_rel(step: &StepId) -> String {
    match step.item_id() {
        None => step.name().to_owned(),
        Some(id) => format!("{}/{}/{id}", step.name(), &id[..2]),
    }
}
