//! A simulated file system behind `recovery`'s durable-I/O seam, after
//! SQLite's crash and I/O-error testing.
//!
//! It keeps what has been made durable apart from what has not: every
//! operation is logged; `sync_file` makes a file's content durable,
//! `sync_dir` makes the entries of a directory durable (creations, renames
//! and removals in it). At a simulated crash the possible on-disk states
//! are derived from the log: each operation not yet durable is either lost
//! or kept, in order, and a lost content write may be torn at 4 KiB
//! boundaries (a prefix of its blocks reached the disk).
//!
//! It also injects I/O errors: the Nth operation fails once, or every
//! operation from the Nth on, with a given error kind.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use recovery::fs::{EntryKind, FileSystem, Stat};

/// A file system tree: full path → node.
pub type Tree = BTreeMap<PathBuf, Node>;

/// One entry of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File(Vec<u8>),
    Dir,
}

/// One logged operation.
#[derive(Clone, Debug)]
enum Op {
    Create(PathBuf),
    Content(PathBuf, Vec<u8>),
    Mkdir(PathBuf),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

impl Op {
    /// The directories whose sync makes this operation durable.
    fn dirs(&self) -> Vec<&Path> {
        match self {
            Op::Create(p) | Op::Mkdir(p) | Op::Remove(p) => p.parent().into_iter().collect(),
            Op::Rename(a, b) => a.parent().into_iter().chain(b.parent()).collect(),
            Op::Content(..) => vec![],
        }
    }
}

/// How an injected fault behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the Nth operation fails.
    Once,
    /// The Nth and every later operation fail.
    FromThenOn,
}

#[derive(Clone, Copy, Debug)]
pub struct Fault {
    /// The mutating operation that fails, counted from the file system's start.
    pub at: u64,
    /// The errno it fails with (ENOSPC = 28, EIO = 5, EACCES = 13).
    pub errno: i32,
    pub mode: FaultMode,
}

#[derive(Debug, Default)]
struct State {
    /// What is on disk for sure.
    base: Tree,
    /// Everything since, with whether it is durable yet.
    log: Vec<(Op, bool)>,
    /// Counts mutating operations (the ones a crash or fault can hit).
    ops: u64,
    /// After this many mutating operations the process is "dead": every
    /// later operation fails and is not logged.
    crash_after: Option<u64>,
    fault: Option<Fault>,
    /// Every call, as "op path", for audits (fsync retries, ...).
    calls: Vec<String>,
}

/// The simulated file system.
#[derive(Debug, Default)]
pub struct SimFs {
    state: Mutex<State>,
}

fn apply(tree: &mut Tree, op: &Op) {
    // An entry whose directory did not reach the disk is unreachable after
    // a crash (fsck would move it to lost+found): the operation is lost.
    let parent_exists = |tree: &Tree, p: &Path| {
        p.parent()
            .is_none_or(|d| d.parent().is_none() || tree.get(d) == Some(&Node::Dir))
    };
    let target = match op {
        Op::Create(p) | Op::Mkdir(p) => Some(p),
        Op::Rename(_, to) => Some(to),
        _ => None,
    };
    if target.is_some_and(|p| !parent_exists(tree, p)) {
        return;
    }
    match op {
        Op::Create(p) => {
            tree.entry(p.clone()).or_insert(Node::File(Vec::new()));
        }
        Op::Content(p, data) => {
            if let Some(Node::File(content)) = tree.get_mut(p) {
                *content = data.clone();
            }
        }
        Op::Mkdir(p) => {
            tree.entry(p.clone()).or_insert(Node::Dir);
        }
        Op::Rename(from, to) => {
            let moved: Vec<(PathBuf, Node)> = tree
                .range(from.clone()..)
                .take_while(|(k, _)| k.starts_with(from))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if moved.is_empty() {
                return;
            }
            // Replacing: whatever was at `to` goes.
            let old: Vec<PathBuf> = tree
                .range(to.clone()..)
                .take_while(|(k, _)| k.starts_with(to))
                .map(|(k, _)| k.clone())
                .collect();
            for k in old {
                tree.remove(&k);
            }
            for (k, v) in moved {
                tree.remove(&k);
                let rest = k.strip_prefix(from).unwrap();
                let target = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
                tree.insert(target, v);
            }
        }
        Op::Remove(p) => {
            let gone: Vec<PathBuf> = tree
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(p))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                tree.remove(&k);
            }
        }
    }
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: not found (sim)", p.display()),
    )
}

/// A tiny deterministic generator for crash-state choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// How the operations not yet durable fare in one crash state.
#[derive(Clone, Copy, Debug)]
pub enum Survival {
    /// Every one lost.
    AllLost,
    /// Every one kept (the volatile view reached the disk).
    AllKept,
    /// Each kept or lost at random; lost content writes torn at 4 KiB.
    Random(u64),
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A file system whose disk holds `tree`.
    pub fn from_tree(tree: Tree) -> Self {
        SimFs {
            state: Mutex::new(State {
                base: tree,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current (volatile) view.
    pub fn view(&self) -> Tree {
        let s = self.lock();
        let mut tree = s.base.clone();
        for (op, _) in &s.log {
            apply(&mut tree, op);
        }
        tree
    }

    /// Crash after `n` more mutating operations.
    pub fn crash_after(&self, n: u64) {
        let mut s = self.lock();
        s.crash_after = Some(s.ops + n);
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().fault = Some(fault);
    }

    /// Removes any crash or fault plan.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.crash_after = None;
        s.fault = None;
    }

    /// Mutating operations so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Every call so far, as "op path".
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Whether the simulated process has crashed.
    pub fn crashed(&self) -> bool {
        let s = self.lock();
        s.crash_after.is_some_and(|c| s.ops >= c)
    }

    /// The number of logged operations not yet durable.
    pub fn pending(&self) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|(_, durable)| !durable)
            .count()
    }

    /// One possible disk after a crash now.
    pub fn crash_state(&self, survival: Survival) -> Tree {
        let s = self.lock();
        let mut tree = s.base.clone();
        let mut rng = match survival {
            Survival::Random(seed) => Some(Rng::new(seed)),
            _ => None,
        };
        for (op, durable) in &s.log {
            if *durable {
                apply(&mut tree, op);
                continue;
            }
            let keep = match (&survival, rng.as_mut()) {
                (Survival::AllLost, _) => false,
                (Survival::AllKept, _) => true,
                (_, Some(r)) => r.below(2) == 0,
                _ => false,
            };
            if keep {
                apply(&mut tree, op);
            } else if let (Op::Content(path, data), Some(r)) = (op, rng.as_mut()) {
                // Torn: some 4 KiB blocks of the new content reached the
                // disk, the rest of the file is what was there (or zeros).
                if let Some(Node::File(old)) = tree.get(path).cloned() {
                    let blocks = data.len().div_ceil(4096);
                    let mut torn = old.clone();
                    torn.resize(data.len().max(old.len()), 0);
                    let mut changed = false;
                    for b in 0..blocks {
                        if r.below(2) == 0 {
                            let end = ((b + 1) * 4096).min(data.len());
                            torn[b * 4096..end].copy_from_slice(&data[b * 4096..end]);
                            changed = true;
                        }
                    }
                    if changed {
                        torn.truncate(data.len().max(if r.below(2) == 0 { old.len() } else { 0 }));
                        tree.insert(path.clone(), Node::File(torn));
                    }
                }
            }
        }
        tree
    }

    /// Runs the mutating operation `name` on `path`, unless the process has
    /// crashed or a fault is due.
    fn mutate(
        &self,
        name: &str,
        path: &Path,
        f: impl FnOnce(&mut State) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("{name} {}", path.display()));
        if s.crash_after.is_some_and(|c| s.ops >= c) {
            return Err(io::Error::other("simulated crash: the process is gone"));
        }
        s.ops += 1;
        if let Some(fault) = s.fault {
            let due = match fault.mode {
                FaultMode::Once => s.ops == fault.at,
                FaultMode::FromThenOn => s.ops >= fault.at,
            };
            if due {
                return Err(io::Error::from_raw_os_error(fault.errno));
            }
        }
        f(&mut s)
    }

    fn lookup(&self, path: &Path) -> Option<Node> {
        self.view().get(path).cloned()
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let view = self.view();
        let missing: Vec<PathBuf> = path
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && !view.contains_key(*a))
            .map(Path::to_owned)
            .collect();
        for dir in missing.into_iter().rev() {
            self.mutate("mkdir", &dir, |s| {
                s.log.push((Op::Mkdir(dir.clone()), false));
                Ok(())
            })?;
        }
        match self.lookup(path) {
            Some(Node::Dir) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "not a directory (sim)",
            )),
        }
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let exists = self.lookup(path);
        if matches!(exists, Some(Node::Dir)) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory (sim)",
            ));
        }
        if !matches!(self.lookup(path.parent().unwrap()), Some(Node::Dir)) {
            return Err(not_found(path));
        }
        self.mutate("write", path, |s| {
            if exists.is_none() {
                s.log.push((Op::Create(path.to_owned()), false));
            }
            s.log
                .push((Op::Content(path.to_owned(), data.to_vec()), false));
            Ok(())
        })
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut content = match self.lookup(path) {
            Some(Node::File(c)) => c,
            Some(Node::Dir) => return Err(io::Error::other("is a directory (sim)")),
            None => Vec::new(),
        };
        // As the real one: a cut last line is ended before this one.
        if content.last().is_some_and(|b| *b != b'\n') {
            content.push(b'\n');
        }
        content.extend_from_slice(data);
        self.write(path, &content)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        if !matches!(self.lookup(path), Some(Node::File(_))) {
            return Err(not_found(path));
        }
        self.mutate("fsync", path, |s| {
            for (op, durable) in &mut s.log {
                if matches!(op, Op::Content(p, _) if p == path) {
                    *durable = true;
                }
            }
            Ok(())
        })
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if !matches!(self.lookup(path), Some(Node::Dir)) {
            return Err(not_found(path));
        }
        self.mutate("fsync_dir", path, |s| {
            for (op, durable) in &mut s.log {
                if op.dirs().contains(&path) {
                    *durable = true;
                }
            }
            Ok(())
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.lookup(from).is_none() {
            return Err(not_found(from));
        }
        if let (Some(Node::Dir), Some(Node::Dir)) = (self.lookup(from), self.lookup(to)) {
            let view = self.view();
            let non_empty = view.keys().any(|k| k != to && k.starts_with(to));
            if non_empty {
                return Err(io::Error::new(
                    io::ErrorKind::DirectoryNotEmpty,
                    "not empty (sim)",
                ));
            }
        }
        self.mutate("rename", to, |s| {
            s.log
                .push((Op::Rename(from.to_owned(), to.to_owned()), false));
            Ok(())
        })
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        if !matches!(self.lookup(path), Some(Node::File(_))) {
            return Err(not_found(path));
        }
        self.mutate("remove", path, |s| {
            s.log.push((Op::Remove(path.to_owned()), false));
            Ok(())
        })
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        if self.lookup(path).is_none() {
            return Err(not_found(path));
        }
        self.mutate("rmdir", path, |s| {
            s.log.push((Op::Remove(path.to_owned()), false));
            Ok(())
        })
    }

    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        match self.lookup(path) {
            Some(Node::File(c)) if c.len() as u64 > limit => Err(recovery::fs::too_large(limit)),
            Some(Node::File(c)) => Ok(c),
            Some(Node::Dir) => Err(io::Error::other("is a directory (sim)")),
            None => Err(not_found(path)),
        }
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        match self.lookup(path) {
            Some(Node::File(c)) => Ok(Box::new(Cursor::new(c))),
            Some(Node::Dir) => Err(io::Error::other("is a directory (sim)")),
            None => Err(not_found(path)),
        }
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        match self.lookup(path) {
            // No clock here: the size-and-mtime check falls back to hashing.
            Some(Node::File(c)) => Ok(Stat {
                kind: EntryKind::File,
                len: c.len() as u64,
                mtime_ns: None,
            }),
            Some(Node::Dir) => Ok(Stat {
                kind: EntryKind::Dir,
                len: 0,
                mtime_ns: None,
            }),
            None => Err(not_found(path)),
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let view = self.view();
        if !matches!(view.get(path), Some(Node::Dir)) {
            return Err(not_found(path));
        }
        Ok(view
            .keys()
            .filter(|k| k.parent() == Some(path))
            .filter_map(|k| k.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a symlink (sim)", path.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn fs_with_root() -> SimFs {
        let fs = SimFs::new();
        fs.create_dir_all(&p("/r")).unwrap();
        fs.sync_dir(&p("/")).unwrap_or(());
        fs
    }

    #[test]
    fn unsynced_writes_can_be_lost_synced_ones_cannot() {
        let fs = fs_with_root();
        fs.sync_dir(&p("/r")).unwrap();
        fs.write(&p("/r/a"), b"aaaa").unwrap();
        fs.sync_file(&p("/r/a")).unwrap();
        fs.sync_dir(&p("/r")).unwrap();
        fs.write(&p("/r/a"), b"bbbb").unwrap();
        let lost = fs.crash_state(Survival::AllLost);
        assert_eq!(lost.get(&p("/r/a")), Some(&Node::File(b"aaaa".to_vec())));
        let kept = fs.crash_state(Survival::AllKept);
        assert_eq!(kept.get(&p("/r/a")), Some(&Node::File(b"bbbb".to_vec())));
    }

    #[test]
    fn a_rename_is_durable_only_after_its_directory_is_synced() {
        let fs = fs_with_root();
        fs.write(&p("/r/t"), b"x").unwrap();
        fs.sync_file(&p("/r/t")).unwrap();
        fs.rename(&p("/r/t"), &p("/r/f")).unwrap();
        assert!(!fs.crash_state(Survival::AllLost).contains_key(&p("/r/f")));
        fs.sync_dir(&p("/r")).unwrap();
        assert!(fs.crash_state(Survival::AllLost).contains_key(&p("/r/f")));
    }

    #[test]
    fn faults_and_crashes_stop_operations() {
        let fs = fs_with_root();
        let n = fs.ops();
        fs.inject(Fault {
            at: n + 2,
            errno: 28,
            mode: FaultMode::Once,
        });
        fs.write(&p("/r/a"), b"1").unwrap();
        assert_eq!(
            fs.write(&p("/r/b"), b"2").unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        fs.write(&p("/r/c"), b"3").unwrap();
        fs.crash_after(0);
        assert!(fs.write(&p("/r/d"), b"4").is_err());
        assert!(fs.crashed());
    }
}
