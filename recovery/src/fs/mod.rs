//! The narrow seam every durable file operation goes through.
//!
//! A run directory creates, writes, syncs, renames and removes files only
//! through a [`FileSystem`]. The default, [`RealFs`], is the real file
//! system; a test can supply one that fails the Nth operation or forgets
//! what was not synced, to check that a crash or an I/O error at any point
//! leaves the old state or the new one.
//!
//! [`atomic_write`] is the standalone crash-safe write: a temporary file in
//! the target's directory, written, synced, renamed over the target, and
//! the directory synced. A failed sync is never retried: after a failed
//! `fsync` the kernel may have dropped the dirty pages (PostgreSQL's
//! "fsyncgate"), so the write fails and the target keeps its old content.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

mod group_sync;

/// What kind of thing a path names, without following a final symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else: a socket, a device, a FIFO.
    Other,
}

/// What [`FileSystem::stat`] tells about a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The kind of entry.
    pub kind: EntryKind,
    /// The size in bytes (of the link itself for a symlink).
    pub len: u64,
    /// The modification time, in nanoseconds since the Unix epoch, where
    /// the file system keeps one (`None` otherwise).
    pub mtime_ns: Option<u64>,
}

/// The durable file operations of a run directory. Every method works on
/// whole paths, so an implementation can count, fail or simulate each one.
pub trait FileSystem: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates or truncates `path` and writes `data` (not yet durable).
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Appends the line `data` to `path` in one write, creating it if
    /// missing. When the file does not end in a newline (its last line was
    /// cut by a crash), a newline goes first, in the same write, so the cut
    /// line cannot swallow this one.
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Makes a file's content durable (`fsync`).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable (`fsync` of the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing a file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file or a symlink.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Removes `path` if it is an empty directory, as `rmdir` does: a
    /// directory with entries, or anything that is not a directory, is an
    /// error and stays. The default looks first, then removes.
    fn remove_empty_dir(&self, path: &Path) -> io::Result<()> {
        match self.stat(path)?.kind {
            EntryKind::Dir if self.read_dir(path)?.is_empty() => self.remove_dir_all(path),
            EntryKind::Dir => Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!("{}: directory not empty", path.display()),
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{}: not a directory", path.display()),
            )),
        }
    }
    /// Reads at most `limit` bytes; a longer file is an error, not a
    /// truncated read.
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>>;
    /// Reads `path` if it is a regular file of at most `limit` bytes;
    /// `Ok(Err(kind))` names what is there instead (a final symlink is not
    /// followed, and a FIFO is not waited on).
    fn read_regular(&self, path: &Path, limit: u64) -> io::Result<Result<Vec<u8>, EntryKind>> {
        match self.stat(path)?.kind {
            EntryKind::File => self.read(path, limit).map(Ok),
            kind => Ok(Err(kind)),
        }
    }
    /// Opens a file for streaming reads (hashing large outputs).
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// The kind and size of `path`, not following a final symlink.
    fn stat(&self, path: &Path) -> io::Result<Stat>;
    /// The names in a directory, sorted, so walks are deterministic.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// The names in a directory one at a time, in no set order, so a
    /// directory of any size is listed in constant memory. The default
    /// lists them all first.
    fn read_dir_streamed<'a>(&'a self, path: &Path) -> io::Result<Names<'a>> {
        Ok(Box::new(self.read_dir(path)?.into_iter().map(Ok)))
    }
    /// The target of a symlink.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// The BLAKE3 hash of a file's content, streamed.
    fn hash(&self, path: &Path) -> io::Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(self.open(path)?)?;
        Ok(hasher.finalize())
    }
}

/// Names in a directory, from [`FileSystem::read_dir_streamed`].
pub type Names<'a> = Box<dyn Iterator<Item = io::Result<String>> + Send + 'a>;

/// The real file system. Threads of one process that sync the same
/// directory at the same time share one `fsync` of it (group commit):
/// each returns once an `fsync` that started after it asked has succeeded.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl FileSystem for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        fs::write(path, data)
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut last = [b'\n'];
        if len > 0 {
            file.read_exact_at(&mut last, len - 1)?;
        }
        if last[0] == b'\n' {
            file.write_all(data)
        } else {
            let mut line = Vec::with_capacity(data.len() + 1);
            line.push(b'\n');
            line.extend_from_slice(data);
            file.write_all(&line)
        }
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    /// Threads syncing the same directory at once share one `fsync`
    /// (group commit; see `group_sync`).
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        group_sync::sync_dir(path, || File::open(path)?.sync_all())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    /// One `rmdir`, where the default stats and lists first.
    fn remove_empty_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        read_limited(file, len, limit)
    }

    /// One open (never following a final symlink, never waiting on a FIFO)
    /// and one `fstat`, where the default stats the path first.
    #[cfg(unix)]
    fn read_regular(&self, path: &Path, limit: u64) -> io::Result<Result<Vec<u8>, EntryKind>> {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let file = match opened {
            Ok(file) => file,
            // O_NOFOLLOW's answer when the path is a symlink.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Err(EntryKind::Symlink)),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        match kind_of(meta.file_type()) {
            EntryKind::File => read_limited(file, meta.len(), limit).map(Ok),
            kind => Ok(Err(kind)),
        }
    }

    /// No boxed reader, and one buffer per thread, made once, where
    /// `update_reader` zeroes 64 KiB on the stack for every file.
    fn hash(&self, path: &Path) -> io::Result<blake3::Hash> {
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
        }
        let mut file = File::open(path)?;
        BUFFER.with_borrow_mut(|buffer| {
            let mut hasher = blake3::Hasher::new();
            loop {
                match file.read(buffer) {
                    Ok(0) => return Ok(hasher.finalize()),
                    Ok(n) => {
                        hasher.update(&buffer[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        })
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(path)?))
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        let meta = fs::symlink_metadata(path)?;
        let kind = kind_of(meta.file_type());
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok());
        Ok(Stat {
            kind,
            len: meta.len(),
            mtime_ns,
        })
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            let name = entry?.file_name();
            match name.into_string() {
                Ok(name) => names.push(name),
                Err(raw) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a file name that is not UTF-8: {raw:?}"),
                    ));
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn read_dir_streamed<'a>(&'a self, path: &Path) -> io::Result<Names<'a>> {
        Ok(Box::new(fs::read_dir(path)?.map(|entry| {
            entry?.file_name().into_string().map_err(|raw| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a file name that is not UTF-8: {raw:?}"),
                )
            })
        })))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        fs::read_link(path)
    }
}

/// The error of a bounded read over its limit.
pub fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than the {limit}-byte limit for this file"),
    )
}

/// Adds the path and the operation to an I/O error, so that a failure says
/// what failed where.
pub(crate) fn context(op: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

/// Writes `data` to `path` so that a crash at any moment leaves either the
/// old content or the new, never a mix: temporary file in the same
/// directory, write, fsync, rename over `path`, fsync of the directory.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("summary.json");
/// recovery::atomic_write(&path, b"{\"ok\":true}")?;
/// assert_eq!(std::fs::read(&path)?, b"{\"ok\":true}");
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// Any failed step, with the operation and the path in the message. On
/// error the temporary file is removed (best effort) and `path` is
/// untouched. A failed `fsync` is not retried.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    atomic_write_with(&RealFs, path, data)
}

/// [`atomic_write`] through a given [`FileSystem`].
pub fn atomic_write_with(fs: &dyn FileSystem, path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = parent_of(path);
    let tmp = temp_path(path);
    let result = (|| {
        fs.write(&tmp, data)
            .map_err(|e| context("write", &tmp, e))?;
        fs.sync_file(&tmp).map_err(|e| context("fsync", &tmp, e))?;
        fs.rename(&tmp, path)
            .map_err(|e| context("rename onto", path, e))?;
        fs.sync_dir(dir)
            .map_err(|e| context("fsync directory", dir, e))
    })();
    if result.is_err() {
        // The rename may or may not have happened; the temp name is ours
        // either way, and removing a missing file is harmless.
        let _ = fs.remove_file(&tmp);
    }
    result
}

/// The directory that holds `path` (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes a file, symlink or whole directory at `path`; a missing one is
/// not an error.
pub(crate) fn remove_entry(fs: &dyn FileSystem, path: &Path) -> io::Result<()> {
    let removed = match fs.stat(path) {
        Ok(s) if s.kind == EntryKind::Dir => fs.remove_dir_all(path),
        Ok(_) => fs.remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn kind_of(ft: fs::FileType) -> EntryKind {
    if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

/// Reads an open file that `fstat` says has `len` bytes, refusing one of
/// more than `limit` before reading any of it (and one that grew past it
/// since). Sized to `len`, so a file that has not changed takes one read
/// and one that finds its end.
fn read_limited(file: File, len: u64, limit: u64) -> io::Result<Vec<u8>> {
    if len > limit {
        return Err(too_large(limit));
    }
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0).saturating_add(1));
    file.take(limit.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(data)
}

/// The names in `dir`, as [`FileSystem::read_dir`] gives them; none when
/// it does not exist (a run being inspected may lack a directory that
/// opening it would create).
pub(crate) fn list_or_empty(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<Vec<String>, crate::RunError> {
    match fs.read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other.map_err(|e| crate::RunError::io("list", dir, e)),
    }
}

/// The prefix of every temporary file `recovery` makes beside a target, so
/// a sweep can recognise them.
const TEMP_PREFIX: &str = ".recovery-tmp.";

/// Whether `name` is a temporary file of an atomic write.
pub(crate) fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// The file name a temporary file of an atomic write was meant to become:
/// `run.json` for `.recovery-tmp.<pid>.<n>.run.json` ([`temp_path`]).
pub(crate) fn temp_target(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.splitn(3, '.');
    let (_pid, _n, target) = (parts.next()?, parts.next()?, parts.next()?);
    Some(target)
}

/// A temporary name beside `path`, unique within this process and across
/// processes (the pid).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!("{TEMP_PREFIX}{}.{n}.{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn atomic_write_replaces_the_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        atomic_write(&path, b"old content").unwrap();
        atomic_write(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(RealFs.read_dir(dir.path()).unwrap(), ["out.txt"]);
    }

    /// Fails the one operation named, records every call.
    #[derive(Debug, Default)]
    struct FailAt {
        op: &'static str,
        calls: Mutex<Vec<String>>,
    }

    impl FailAt {
        fn call(&self, op: &str, path: &Path) -> io::Result<()> {
            self.calls.lock().unwrap().push(format!(
                "{op} {}",
                path.file_name().unwrap().to_string_lossy()
            ));
            if op == self.op {
                Err(io::Error::other("injected"))
            } else {
                Ok(())
            }
        }
    }

    impl FileSystem for FailAt {
        fn create_dir_all(&self, p: &Path) -> io::Result<()> {
            self.call("mkdir", p)
        }
        fn write(&self, p: &Path, d: &[u8]) -> io::Result<()> {
            self.call("write", p)?;
            RealFs.write(p, d)
        }
        fn append(&self, p: &Path, _: &[u8]) -> io::Result<()> {
            self.call("append", p)
        }
        fn sync_file(&self, p: &Path) -> io::Result<()> {
            self.call("fsync", p)
        }
        fn sync_dir(&self, p: &Path) -> io::Result<()> {
            self.call("fsync_dir", p)
        }
        fn rename(&self, f: &Path, t: &Path) -> io::Result<()> {
            self.call("rename", f)?;
            RealFs.rename(f, t)
        }
        fn remove_file(&self, p: &Path) -> io::Result<()> {
            self.call("remove", p)?;
            RealFs.remove_file(p)
        }
        fn remove_dir_all(&self, p: &Path) -> io::Result<()> {
            self.call("rmdir", p)
        }
        // `remove_empty_dir` is left to its default, which is tested here.
        fn read(&self, p: &Path, l: u64) -> io::Result<Vec<u8>> {
            RealFs.read(p, l)
        }
        fn open(&self, p: &Path) -> io::Result<Box<dyn Read + Send>> {
            RealFs.open(p)
        }
        fn stat(&self, p: &Path) -> io::Result<Stat> {
            RealFs.stat(p)
        }
        fn read_dir(&self, p: &Path) -> io::Result<Vec<String>> {
            RealFs.read_dir(p)
        }
        fn read_link(&self, p: &Path) -> io::Result<PathBuf> {
            RealFs.read_link(p)
        }
    }

    #[test]
    fn remove_empty_dir_removes_an_empty_directory_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        let full = dir.path().join("full");
        let file = dir.path().join("file");
        let setup = || {
            fs::create_dir_all(&empty).unwrap();
            fs::create_dir_all(&full).unwrap();
            fs::write(full.join("keep"), b"keep").unwrap();
            fs::write(&file, b"keep").unwrap();
        };
        let refusals = |fs: &dyn FileSystem| {
            let not_empty = fs.remove_empty_dir(&full).unwrap_err().kind();
            let not_dir = fs.remove_empty_dir(&file).unwrap_err().kind();
            let missing = fs.remove_empty_dir(&dir.path().join("missing"));
            assert_eq!(not_empty, io::ErrorKind::DirectoryNotEmpty);
            assert_eq!(not_dir, io::ErrorKind::NotADirectory);
            assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
            assert_eq!(fs::read(full.join("keep")).unwrap(), b"keep");
            assert_eq!(fs::read(&file).unwrap(), b"keep");
        };

        // The real file system: one rmdir.
        setup();
        RealFs.remove_empty_dir(&empty).unwrap();
        assert!(!empty.exists());
        refusals(&RealFs);

        // The default, for file systems that only have remove_dir_all: it
        // reaches remove_dir_all for the empty directory alone.
        setup();
        let recorded = FailAt::default();
        recorded.remove_empty_dir(&empty).unwrap();
        refusals(&recorded);
        assert_eq!(*recorded.calls.lock().unwrap(), ["rmdir empty"]);
    }

    #[test]
    fn the_sequence_is_write_fsync_rename_fsync_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let fs = FailAt::default();
        atomic_write_with(&fs, &path, b"x").unwrap();
        let calls = fs.calls.lock().unwrap().clone();
        let ops: Vec<&str> = calls.iter().map(|c| c.split(' ').next().unwrap()).collect();
        assert_eq!(ops, ["write", "fsync", "rename", "fsync_dir"]);
    }

    #[test]
    fn a_failed_fsync_fails_the_write_once_and_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        fs::write(&path, b"old").unwrap();
        let fs = FailAt {
            op: "fsync",
            ..FailAt::default()
        };
        let err = atomic_write_with(&fs, &path, b"new").unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
        assert!(
            err.to_string().contains(".recovery-tmp."),
            "names the path: {err}"
        );
        let calls = fs.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().filter(|c| c.starts_with("fsync ")).count(), 1);
        assert!(!calls.iter().any(|c| c.starts_with("rename")));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(RealFs.read_dir(dir.path()).unwrap(), ["t"], "temp removed");
    }

    #[test]
    fn bounded_reads_refuse_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![0u8; 100]).unwrap();
        assert_eq!(RealFs.read(&path, 100).unwrap().len(), 100);
        let err = RealFs.read(&path, 99).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
