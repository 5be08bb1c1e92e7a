//! [`Unsynced`]: the real file system, minus durability.

use std::io;
use std::path::{Path, PathBuf};

use recovery::fs::{EntryKind, FileSystem, Names, RealFs, Stat};

/// The real file system without its fsyncs: a family of tens of thousands
/// of items is made in a second where durability is not what is measured,
/// and the ceiling of any group commit is measured.
#[derive(Debug)]
pub struct Unsynced;

impl FileSystem for Unsynced {
    fn create_dir_all(&self, p: &Path) -> io::Result<()> {
        RealFs.create_dir_all(p)
    }
    fn write(&self, p: &Path, d: &[u8]) -> io::Result<()> {
        RealFs.write(p, d)
    }
    fn append(&self, p: &Path, d: &[u8]) -> io::Result<()> {
        RealFs.append(p, d)
    }
    fn sync_file(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn rename(&self, f: &Path, t: &Path) -> io::Result<()> {
        RealFs.rename(f, t)
    }
    fn remove_file(&self, p: &Path) -> io::Result<()> {
        RealFs.remove_file(p)
    }
    fn remove_dir_all(&self, p: &Path) -> io::Result<()> {
        RealFs.remove_dir_all(p)
    }
    fn remove_empty_dir(&self, p: &Path) -> io::Result<()> {
        RealFs.remove_empty_dir(p)
    }
    fn read(&self, p: &Path, l: u64) -> io::Result<Vec<u8>> {
        RealFs.read(p, l)
    }
    fn read_regular(&self, p: &Path, l: u64) -> io::Result<Result<Vec<u8>, EntryKind>> {
        RealFs.read_regular(p, l)
    }
    fn open(&self, p: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        RealFs.open(p)
    }
    fn stat(&self, p: &Path) -> io::Result<Stat> {
        RealFs.stat(p)
    }
    fn read_dir(&self, p: &Path) -> io::Result<Vec<String>> {
        RealFs.read_dir(p)
    }
    fn read_dir_streamed<'a>(&'a self, p: &Path) -> io::Result<Names<'a>> {
        RealFs.read_dir_streamed(p)
    }
    fn read_link(&self, p: &Path) -> io::Result<PathBuf> {
        RealFs.read_link(p)
    }
}
