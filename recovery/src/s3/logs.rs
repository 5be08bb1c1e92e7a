//! Event and issue logs on object storage, which has no append: each
//! process buffers its records and writes them as numbered pieces under a
//! name of its own (`logs/<process>/events-<n>.jsonl`). Readers merge them
//! in a stated order: processes by their start (the name begins with the
//! start time in milliseconds), and each process's records in the order it
//! logged them.
//!
//! A piece is written when a step completes or fails, when an issue is
//! recorded, when a second has passed since the last piece, and when the
//! store is dropped; a crash loses at most what was logged since.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RunError;
use crate::report::log::{LOG_LIMIT, LogRead, parse_log};
use crate::s3::remote::Remote;

/// Which log.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Events,
    Issues,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Events => "events",
            Kind::Issues => "issues",
        }
    }
}

/// This process's logs, buffered.
#[derive(Debug)]
pub(crate) struct Logs {
    remote: Arc<Remote>,
    /// `<start ms>-<pid>-<nonce>`: sorts by start.
    process: String,
    buffer: Mutex<Buffer>,
}

#[derive(Debug)]
struct Buffer {
    events: Vec<u8>,
    issues: Vec<u8>,
    /// The next piece's number.
    next: u64,
    last_write: Instant,
}

const EVERY: Duration = Duration::from_secs(1);

impl Logs {
    pub(crate) fn new(remote: Arc<Remote>) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let process = format!(
            "{started:013}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        Logs {
            remote,
            process,
            buffer: Mutex::new(Buffer {
                events: Vec::new(),
                issues: Vec::new(),
                next: 0,
                last_write: Instant::now(),
            }),
        }
    }

    /// This process's name in the logs.
    pub(crate) fn process(&self) -> &str {
        &self.process
    }

    /// Buffers one record, and writes the buffer out if `now` or if it is
    /// due. A log that cannot be written loses records, never the run.
    pub(crate) fn append(&self, kind: Kind, record: &impl Serialize, now: bool) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut buffer = lock(&self.buffer);
        match kind {
            Kind::Events => buffer.events.extend_from_slice(&line),
            Kind::Issues => buffer.issues.extend_from_slice(&line),
        }
        if now || buffer.last_write.elapsed() >= EVERY {
            let pieces = self.take_pieces(&mut buffer);
            drop(buffer); // other threads log on while the pieces go out
            self.write_out(pieces);
        }
    }

    /// Writes what is buffered as new pieces.
    pub(crate) fn flush(&self) {
        let pieces = self.take_pieces(&mut lock(&self.buffer));
        self.write_out(pieces);
    }

    /// What is buffered, as numbered pieces: (key under the prefix, bytes).
    fn take_pieces(&self, buffer: &mut Buffer) -> Vec<(String, Vec<u8>)> {
        buffer.last_write = Instant::now();
        let mut pieces = Vec::new();
        for kind in [Kind::Events, Kind::Issues] {
            let pending = match kind {
                Kind::Events => std::mem::take(&mut buffer.events),
                Kind::Issues => std::mem::take(&mut buffer.issues),
            };
            if pending.is_empty() {
                continue;
            }
            let rel = format!(
                "logs/{}/{}-{:08}.jsonl",
                self.process,
                kind.name(),
                buffer.next
            );
            buffer.next += 1;
            pieces.push((rel, pending));
        }
        pieces
    }

    fn write_out(&self, pieces: Vec<(String, Vec<u8>)>) {
        for (rel, pending) in pieces {
            let remote = Arc::clone(&self.remote);
            let written = self.remote.bridge.run(async move {
                let key = remote.key(&rel);
                remote.overwrite(&key, Bytes::from(pending)).await
            });
            if let Err(_e) = written {
                #[cfg(feature = "tracing")]
                tracing::warn!(error = %_e, "could not write the run's log to its store");
            }
        }
    }

    /// Every process's records of `kind`, merged in the stated order
    /// (this process's buffer is written out first).
    pub(crate) fn read<T: DeserializeOwned>(&self, kind: Kind) -> Result<LogRead<T>, RunError> {
        self.flush();
        let remote = Arc::clone(&self.remote);
        let bytes = self.remote.bridge.run(async move {
            let prefix = remote.key("logs");
            let mut keys: Vec<_> = remote
                .objects
                .list(Some(&prefix))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
                .map_err(|e| remote.error("list", &prefix, e))?;
            let piece = format!("{}-", kind.name());
            keys.retain(|k| k.filename().is_some_and(|f| f.starts_with(&piece)));
            keys.sort();
            let mut all = Vec::new();
            for key in keys {
                if let Some(found) = remote.get(&key).await? {
                    all.extend_from_slice(&found.bytes);
                    if all.last().is_some_and(|b| *b != b'\n') {
                        all.push(b'\n');
                    }
                }
                if all.len() as u64 > LOG_LIMIT {
                    return Err(RunError::io(
                        "read",
                        remote.url.clone(),
                        std::io::Error::other(format!(
                            "the run's {} logs are larger than {LOG_LIMIT} bytes",
                            kind.name()
                        )),
                    ));
                }
            }
            Ok(all)
        })?;
        Ok(parse_log(&bytes))
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        self.flush();
    }
}

fn lock(buffer: &Mutex<Buffer>) -> std::sync::MutexGuard<'_, Buffer> {
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
