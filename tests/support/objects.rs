//! An `ObjectStore` wrapper for the object-store tests: counts every
//! request by kind (the figures of requests per committed step), over any
//! store (`InMemory`, or the S3 client of a real server).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
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

/// A store that counts the requests made through it.
#[derive(Debug)]
pub struct Counted {
    inner: Arc<dyn ObjectStore>,
    counts: Mutex<BTreeMap<Request, u64>>,
}

impl Counted {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Counted {
            inner,
            counts: Mutex::new(BTreeMap::new()),
        })
    }

    fn count(&self, request: Request) {
        *self.counts.lock().unwrap().entry(request).or_default() += 1;
    }

    /// The requests made so far, by kind; and starts counting again.
    pub fn take(&self) -> BTreeMap<Request, u64> {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

/// The total of a count.
pub fn total(counts: &BTreeMap<Request, u64>) -> u64 {
    counts.values().sum()
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counted({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.count(match opts.mode {
            PutMode::Overwrite => Request::Put,
            PutMode::Create => Request::PutCreate,
            PutMode::Update(_) => Request::PutUpdate,
        });
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.count(Request::Multipart);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.count(Request::Get);
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.count(Request::Get);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.count(Request::Delete);
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count(Request::List);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count(Request::List);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.count(Request::List);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.count(Request::Copy);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.count(Request::Copy);
        self.inner.rename_opts(from, to, options).await
    }
}
