//! Moving outputs between this machine and the store: uploading what an
//! attempt staged under the attempt's prefix, and fetching a committed
//! step's outputs where they are missing or differ here, each checked
//! against its BLAKE3 before it takes its place.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as Key;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::RunError;
use crate::fs::parent_of;
use crate::s3::remote::Remote;
use crate::step::manifest::check_place;
use crate::step::marker::{Marker, OutputKind};

/// How many transfers run at once.
const PARALLEL: usize = 8;

/// One thing to upload: a file's content, or a symlink's target.
pub(crate) enum Upload {
    File(PathBuf),
    Link(PathBuf),
}

/// Lists what `staged` (an output staged under manifest path `path`)
/// uploads: every file and symlink, recursively, with its manifest path.
pub(crate) fn collect(
    staged: &Path,
    path: &str,
    out: &mut Vec<(String, Upload)>,
) -> Result<(), RunError> {
    let meta = std::fs::symlink_metadata(staged).map_err(|e| RunError::io("inspect", staged, e))?;
    if meta.is_symlink() {
        out.push((path.to_owned(), Upload::Link(staged.to_owned())));
    } else if meta.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(staged)
            .map_err(|e| RunError::io("list", staged, e))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| RunError::io("list", staged, e))?;
        names.sort();
        for name in names {
            let sub = format!("{path}/{}", name.to_string_lossy());
            collect(&staged.join(&name), &sub, out)?;
        }
    } else {
        out.push((path.to_owned(), Upload::File(staged.to_owned())));
    }
    Ok(())
}

/// Uploads `items` under `prefix`, several at once.
pub(crate) async fn upload(
    remote: Arc<Remote>,
    prefix: Key,
    items: Vec<(String, Upload)>,
) -> Result<(), RunError> {
    futures::stream::iter(items)
        .map(|(path, item)| {
            let remote = Arc::clone(&remote);
            let key = Remote::output_key(&prefix, &path);
            async move { upload_one(&remote, key, item).await }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

async fn upload_one(remote: &Remote, key: Key, item: Upload) -> Result<(), RunError> {
    match item {
        Upload::Link(path) => {
            let target =
                std::fs::read_link(&path).map_err(|e| RunError::io("read link", &path, e))?;
            let bytes = Bytes::from(target.into_os_string().into_encoded_bytes());
            remote.overwrite(&key, bytes).await
        }
        Upload::File(path) => {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| RunError::io("open", &path, e))?;
            // Small files in one request, large ones in parts.
            let mut writer = BufWriter::new(Arc::clone(&remote.objects), key.clone());
            let mut chunk = vec![0; 1 << 20];
            loop {
                let n = file
                    .read(&mut chunk)
                    .await
                    .map_err(|e| RunError::io("read", &path, e))?;
                if n == 0 {
                    break;
                }
                writer
                    .write_all(&chunk[..n])
                    .await
                    .map_err(|e| RunError::io("upload", &path, e))?;
            }
            writer
                .shutdown()
                .await
                .map_err(|e| RunError::io("upload", &path, e))
        }
    }
}

/// Removes everything under `prefix` (a losing attempt's uploads).
pub(crate) async fn remove_all(remote: &Remote, prefix: &Key) -> Result<(), RunError> {
    let keys = remote
        .objects
        .list(Some(prefix))
        .map_ok(|meta| meta.location)
        .boxed();
    remote
        .objects
        .delete_stream(keys)
        .try_collect::<Vec<_>>()
        .await
        .map(drop)
        .map_err(|e| remote.error("delete", prefix, e))
}

/// Brings the outputs `marker` lists onto this machine from the attempt
/// prefix `prefix`, where they are missing or differ; returns the bytes
/// fetched. Entries that may not be written here (see
/// [`check_place`]) are left to the verification that follows.
pub(crate) async fn fetch(
    remote: Arc<Remote>,
    prefix: Key,
    run_dir: PathBuf,
    outside: Vec<PathBuf>,
    marker: Marker,
) -> Result<u64, RunError> {
    let mut work = Vec::new();
    for entry in marker.outputs {
        if check_place(&entry.path, &outside).is_err() {
            continue;
        }
        let local = run_dir.join(&entry.path);
        match entry.kind {
            OutputKind::Dir => {
                if !local.is_dir() {
                    std::fs::create_dir_all(&local)
                        .map_err(|e| RunError::io("create", &local, e))?;
                }
            }
            OutputKind::File | OutputKind::Symlink => work.push((entry, local)),
        }
    }
    let fetched = futures::stream::iter(work)
        .map(|(entry, local)| {
            let remote = Arc::clone(&remote);
            let key = Remote::output_key(&prefix, &entry.path);
            async move {
                let expected = entry.blake3.unwrap_or_default();
                match entry.kind {
                    OutputKind::Symlink => fetch_link(&remote, &key, &local, &expected).await,
                    _ => {
                        let mtime = entry.mtime_ns.map(Duration::from_nanos);
                        fetch_file(&remote, &key, &local, entry.size, &expected, mtime).await
                    }
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await?;
    Ok(fetched)
}

/// Whether the file at `path` has `size` bytes hashing to `expected`.
fn holds(path: &Path, size: u64, expected: &str) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != size {
        return false;
    }
    let mut hasher = blake3::Hasher::new();
    std::fs::File::open(path).is_ok_and(|file| hasher.update_reader(file).is_ok())
        && hasher.finalize().to_hex().as_str() == expected
}

async fn fetch_file(
    remote: &Remote,
    key: &Key,
    local: &Path,
    size: u64,
    expected: &str,
    mtime: Option<Duration>,
) -> Result<u64, RunError> {
    if holds(local, size, expected) {
        return Ok(0);
    }
    let got = match remote.objects.get(key).await {
        Ok(got) => got,
        // Not there: the verification that follows says the step is not
        // done here, and it runs again.
        Err(object_store::Error::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(remote.error("read", key, e)),
    };
    let dir = parent_of(local);
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| RunError::io("create", dir, e))?;
    let temp = dir.join(format!(
        ".recovery-fetch.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = write_checked(got, &temp, expected).await;
    let fetched = match written {
        Ok(Some(n)) => n,
        Ok(None) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Ok(0); // corrupt in the store: the verification says so
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(match e {
                Fetch::Local(e) => RunError::io("write", &temp, e),
                Fetch::Remote(e) => remote.error("read", key, e),
            });
        }
    };
    if let Some(mtime) = mtime {
        // The mtime the committing machine recorded, so that a
        // `size_mtime` check trusts this copy without rehashing it.
        if let Ok(file) = std::fs::File::options().write(true).open(&temp) {
            let _ = file.set_modified(UNIX_EPOCH + mtime);
        }
    }
    std::fs::rename(&temp, local).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        RunError::io("rename into place", local, e)
    })?;
    Ok(fetched)
}

enum Fetch {
    Local(io::Error),
    Remote(object_store::Error),
}

/// Streams `got` into `temp`, synced; `None` when it does not hash to
/// `expected`.
async fn write_checked(
    got: object_store::GetResult,
    temp: &Path,
    expected: &str,
) -> Result<Option<u64>, Fetch> {
    let mut file = tokio::fs::File::create(temp).await.map_err(Fetch::Local)?;
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Fetch::Remote)?;
        hasher.update(&chunk);
        n += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(Fetch::Local)?;
    }
    file.sync_all().await.map_err(Fetch::Local)?;
    Ok((hasher.finalize().to_hex().as_str() == expected).then_some(n))
}

async fn fetch_link(
    remote: &Remote,
    key: &Key,
    local: &Path,
    expected: &str,
) -> Result<u64, RunError> {
    if let Ok(target) = std::fs::read_link(local)
        && blake3::hash(target.as_os_str().as_encoded_bytes())
            .to_hex()
            .as_str()
            == expected
    {
        return Ok(0);
    }
    let Some(found) = remote.get(key).await? else {
        return Ok(0);
    };
    if blake3::hash(&found.bytes).to_hex().as_str() != expected {
        return Ok(0);
    }
    let target =
        PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&found.bytes));
    let dir = parent_of(local);
    std::fs::create_dir_all(dir).map_err(|e| RunError::io("create", dir, e))?;
    match std::fs::symlink_metadata(local) {
        Ok(meta) if !meta.is_dir() => {
            std::fs::remove_file(local).map_err(|e| RunError::io("remove", local, e))?;
        }
        _ => {}
    }
    std::os::unix::fs::symlink(&target, local)
        .map_err(|e| RunError::io("create symlink", local, e))?;
    Ok(found.bytes.len() as u64)
}
