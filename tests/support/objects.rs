//! An `ObjectStore` wrapper for the object-store tests, over any store
//! (`InMemory`, or the S3 client of a real server): it counts every
//! request by kind (the figures of requests per committed step) and
//! injects faults where a test says: fail the Nth request before it is
//! applied (a 503, a time-out), fail it after it was applied (the reply
//! lost: an error, or the answer a retry of it would get), fail requests at
//! random with a seeded generator, delay every request, and keep fresh
//! objects out of listings for a while.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The kinds of request counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Request {
    /// A PUT that overwrites.
    Put,
    /// A PUT with `If-None-Match: *`.
    PutCreate,
    /// A PUT with `If-Match`.
    PutUpdate,
    /// A multipart upload (counted once).
    Multipart,
    Get,
    Delete,
    List,
    Copy,
}

/// A fault injected into one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Refused before it is applied, as a 503 after the client's retries.
    Unavailable,
    /// Timed out before it is applied.
    TimedOut,
    /// Applied, then its reply lost: the client sees a time-out.
    ReplyLost,
    /// Applied, then its reply lost and the client's retry answered: a
    /// create sees `AlreadyExists`, an update `Precondition` (its own
    /// write changed the ETag); other requests see a time-out.
    RetryAnswered,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::Unavailable,
        Fault::TimedOut,
        Fault::ReplyLost,
        Fault::RetryAnswered,
    ];

    /// Whether the request was applied although the client sees an error.
    pub fn is_ambiguous(self) -> bool {
        matches!(self, Fault::ReplyLost | Fault::RetryAnswered)
    }
}

/// Faults injected so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub faults: u64,
    /// Of which the request was applied (the reply lost).
    pub ambiguous: u64,
}

#[derive(Debug, Default)]
struct Plan {
    /// Requests seen since the plan was set.
    seen: u64,
    /// Fail the request with this number (1-based) this way.
    at: Option<(u64, Fault)>,
    /// Fail each request with this probability (per mille), the fault
    /// picked by the same seeded generator.
    random: Option<(u64, u32)>,
    delay: Option<Duration>,
    /// Objects written by the last this-many puts are left out of listings.
    hide_fresh: usize,
    fresh: VecDeque<Path>,
}

/// A store that counts requests and injects faults.
#[derive(Debug)]
pub struct Instrumented {
    inner: Arc<dyn ObjectStore>,
    counts: Mutex<BTreeMap<Request, u64>>,
    plan: Mutex<Plan>,
    injected: Mutex<Injected>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Instrumented {
            inner,
            counts: Mutex::new(BTreeMap::new()),
            plan: Mutex::new(Plan::default()),
            injected: Mutex::new(Injected::default()),
        })
    }

    /// The requests made so far, by kind; and starts counting again.
    pub fn take(&self) -> BTreeMap<Request, u64> {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }

    /// Fails the `n`th request (1-based) from now with `fault`, and no
    /// other.
    pub fn fail_nth(&self, n: u64, fault: Fault) {
        let mut plan = self.plan.lock().unwrap();
        plan.seen = 0;
        plan.at = Some((n, fault));
    }

    /// Fails each request with probability `per_mille` / 1000, the faults
    /// drawn from `seed`.
    pub fn fail_randomly(&self, seed: u64, per_mille: u32) {
        self.plan.lock().unwrap().random = Some((seed | 1, per_mille));
    }

    /// Delays every request by `delay`.
    pub fn delay(&self, delay: Duration) {
        self.plan.lock().unwrap().delay = Some(delay);
    }

    /// Leaves the objects of the last `n` puts out of listings.
    pub fn hide_fresh(&self, n: usize) {
        self.plan.lock().unwrap().hide_fresh = n;
    }

    /// No more faults, delays or hidden objects.
    pub fn calm(&self) {
        *self.plan.lock().unwrap() = Plan::default();
    }

    /// The faults injected so far.
    pub fn injected(&self) -> Injected {
        *self.injected.lock().unwrap()
    }

    fn count(&self, request: Request) {
        *self.counts.lock().unwrap().entry(request).or_default() += 1;
    }

    /// Counts the request and decides its fault, if any.
    fn next(&self, request: Request) -> (Option<Fault>, Option<Duration>) {
        self.count(request);
        let mut plan = self.plan.lock().unwrap();
        plan.seen += 1;
        let seen = plan.seen;
        let mut fault = match plan.at {
            Some((n, fault)) if n == seen => Some(fault),
            _ => None,
        };
        if let Some((state, per_mille)) = &mut plan.random {
            let mut draw = || {
                // xorshift64*: small, seeded, the same on every platform.
                *state ^= *state >> 12;
                *state ^= *state << 25;
                *state ^= *state >> 27;
                state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
            };
            if fault.is_none() && (draw() % 1000) < u64::from(*per_mille) {
                fault = Some(Fault::ALL[(draw() % 4) as usize]);
            }
        }
        if let Some(f) = fault {
            let mut injected = self.injected.lock().unwrap();
            injected.faults += 1;
            injected.ambiguous += u64::from(f.is_ambiguous());
        }
        (fault, plan.delay)
    }

    fn remember(&self, location: &Path) {
        let mut plan = self.plan.lock().unwrap();
        if plan.hide_fresh > 0 {
            plan.fresh.push_back(location.clone());
            while plan.fresh.len() > plan.hide_fresh {
                plan.fresh.pop_front();
            }
        }
    }

    fn hidden(&self) -> Vec<Path> {
        self.plan.lock().unwrap().fresh.iter().cloned().collect()
    }
}

/// The error a fault shows the client.
fn error(fault: Fault, location: &Path, mode: Option<&PutMode>) -> object_store::Error {
    let generic = |kind: std::io::ErrorKind, text: &str| object_store::Error::Generic {
        store: "Instrumented",
        source: Box::new(std::io::Error::new(kind, text.to_owned())),
    };
    match (fault, mode) {
        (Fault::Unavailable, _) => generic(
            std::io::ErrorKind::Other,
            "injected: 503 Service Unavailable after the client's retries",
        ),
        (Fault::RetryAnswered, Some(PutMode::Create)) => object_store::Error::AlreadyExists {
            path: location.to_string(),
            source: "injected: the retry of an applied create".into(),
        },
        (Fault::RetryAnswered, Some(PutMode::Update(_))) => object_store::Error::Precondition {
            path: location.to_string(),
            source: "injected: the retry of an applied update".into(),
        },
        _ => generic(
            std::io::ErrorKind::TimedOut,
            "injected: the request timed out",
        ),
    }
}

impl fmt::Display for Instrumented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Instrumented {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let (fault, delay) = self.next(match opts.mode {
            PutMode::Overwrite => Request::Put,
            PutMode::Create => Request::PutCreate,
            PutMode::Update(_) => Request::PutUpdate,
        });
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mode = opts.mode.clone();
        match fault {
            Some(f) if !f.is_ambiguous() => Err(error(f, location, Some(&mode))),
            Some(f) => {
                let applied = self.inner.put_opts(location, payload, opts).await;
                if applied.is_ok() {
                    self.remember(location);
                }
                Err(error(f, location, Some(&mode)))
            }
            None => {
                let done = self.inner.put_opts(location, payload, opts).await;
                if done.is_ok() {
                    self.remember(location);
                }
                done
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        match self.next(Request::Multipart) {
            (Some(f), _) => Err(error(f, location, None)),
            (None, _) => self.inner.put_multipart_opts(location, opts).await,
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let (fault, delay) = self.next(Request::Get);
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match fault {
            Some(f) => Err(error(f, location, None)),
            None => self.inner.get_opts(location, options).await,
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match self.next(Request::Get) {
            (Some(f), _) => Err(error(f, location, None)),
            (None, _) => self.inner.get_ranges(location, ranges).await,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        match self.next(Request::Delete) {
            (Some(f), _) => {
                futures::stream::once(async move { Err(error(f, &Path::from("deleted"), None)) })
                    .boxed()
            }
            (None, _) => self.inner.delete_stream(locations),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.next(Request::List) {
            (Some(f), _) => {
                let at = prefix.cloned().unwrap_or_default();
                futures::stream::once(async move { Err(error(f, &at, None)) }).boxed()
            }
            (None, _) => {
                let hidden = self.hidden();
                self.inner
                    .list(prefix)
                    .filter(move |m| {
                        let keep = m.as_ref().map_or(true, |m| !hidden.contains(&m.location));
                        async move { keep }
                    })
                    .boxed()
            }
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.next(Request::List) {
            (Some(f), _) => {
                let at = offset.clone();
                futures::stream::once(async move { Err(error(f, &at, None)) }).boxed()
            }
            (None, _) => self.inner.list_with_offset(prefix, offset),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        match self.next(Request::List) {
            (Some(f), _) => Err(error(f, &prefix.cloned().unwrap_or_default(), None)),
            (None, _) => {
                let hidden = self.hidden();
                let mut listed = self.inner.list_with_delimiter(prefix).await?;
                listed.objects.retain(|m| !hidden.contains(&m.location));
                Ok(listed)
            }
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        match self.next(Request::Copy) {
            (Some(f), _) => Err(error(f, to, None)),
            (None, _) => self.inner.copy_opts(from, to, options).await,
        }
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        match self.next(Request::Copy) {
            (Some(f), _) => Err(error(f, to, None)),
            (None, _) => self.inner.rename_opts(from, to, options).await,
        }
    }
}

/// An S3 client for a test server, with `options` (object_store's keys).
pub fn s3_client(bucket: &str, options: &[(String, String)]) -> Arc<dyn ObjectStore> {
    let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
    for (k, v) in options {
        builder = builder.with_config(k.parse().expect("an S3 option"), v);
    }
    Arc::new(builder.build().expect("the S3 client builds"))
}

/// The total of a count.
pub fn total(counts: &BTreeMap<Request, u64>) -> u64 {
    counts.values().sum()
}
