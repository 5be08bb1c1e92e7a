//! Group commit for directory fsyncs: threads that need the same directory
//! synced at the same time share one `fsync`.
//!
//! A caller has made its change (a create, a rename) before it asks, so any
//! `fsync` of the directory that *starts* after it asked covers it. While
//! one caller's `fsync` runs, those who ask meanwhile wait; when it ends,
//! one of them syncs once for all of them. With N committers in one
//! directory that is about two fsyncs per round instead of N.
//!
//! A failed `fsync` fails every caller it covered: after a writeback error
//! a later `fsync` on a freshly opened descriptor may report success for
//! data the kernel has dropped ("fsyncgate"), so nobody it covered may take
//! a later success as theirs.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};

/// The directories being synced now, by path. A directory's entry lives
/// while someone syncs or waits, so the map stays as small as the number
/// of directories in use at once.
static GROUPS: LazyLock<Mutex<HashMap<PathBuf, Arc<Group>>>> = LazyLock::new(Default::default);

/// Runs `sync` (an `fsync` of the directory at `path`), or waits for an
/// `fsync` of it by another thread that started after this call did.
/// Paths are compared as given: two spellings of one directory do not
/// share, which costs a sync, never durability.
pub(crate) fn sync_dir(path: &Path, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let group = {
        let mut groups = lock(&GROUPS);
        match groups.get(path) {
            Some(group) => Arc::clone(group),
            None => {
                let group = Arc::new(Group::default());
                groups.insert(path.to_owned(), Arc::clone(&group));
                group
            }
        }
    };
    let result = group.sync(sync);
    let mut groups = lock(&GROUPS);
    // The map's and ours: nobody else is syncing or waiting here.
    if Arc::strong_count(&group) == 2 {
        groups.remove(path);
    }
    result
}

/// One directory's syncs. Requests are numbered in the order they are
/// made; a sync covers every request made before it started.
#[derive(Debug, Default)]
pub(crate) struct Group {
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Requests made so far.
    requested: u64,
    /// Every request up to this one is covered by a sync that succeeded.
    synced: u64,
    /// A sync is running.
    in_flight: bool,
    /// Requests covered by a sync that failed, with its error.
    failed: Vec<Failure>,
}

#[derive(Debug)]
struct Failure {
    /// The requests after `after` up to `upto` (inclusive).
    after: u64,
    upto: u64,
    kind: io::ErrorKind,
    message: String,
}

impl Group {
    pub(crate) fn sync(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.requested += 1;
        let me = state.requested;
        loop {
            // A failure first: a later success does not cover what it lost.
            if let Some(f) = state.failed.iter().find(|f| f.after < me && me <= f.upto) {
                return Err(io::Error::new(f.kind, f.message.clone()));
            }
            if state.synced >= me {
                return Ok(());
            }
            if !state.in_flight {
                return self.lead(state, sync);
            }
            state = self
                .turn
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Syncs for every request made so far, then wakes their makers.
    fn lead(
        &self,
        mut state: MutexGuard<'_, State>,
        sync: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        state.in_flight = true;
        let (after, upto) = (state.synced, state.requested);
        drop(state);
        let result = sync();
        let mut state = lock(&self.state);
        state.in_flight = false;
        match &result {
            Ok(()) => state.synced = state.synced.max(upto),
            Err(e) => state.failed.push(Failure {
                after,
                upto,
                kind: e.kind(),
                message: e.to_string(),
            }),
        }
        self.turn.notify_all();
        result
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    /// Spins until `group` has had `n` requests (the test's threads are
    /// then waiting in it), or fails after a while.
    fn until_requested(group: &Group, n: u64) {
        let start = Instant::now();
        while lock(&group.state).requested < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "threads never asked"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One thread's sync is held until seven more have asked: none of
    /// them is covered by it (they asked after it started), and all seven
    /// are covered by one more sync.
    #[test]
    fn requests_made_during_a_sync_share_the_next_one() {
        let group = Group::default();
        let syncs = AtomicU32::new(0);
        let sync = || {
            if syncs.fetch_add(1, Ordering::SeqCst) == 0 {
                until_requested(&group, 8);
            }
            Ok(())
        };
        std::thread::scope(|s| {
            let first = s.spawn(|| group.sync(sync));
            until_requested(&group, 1);
            let rest: Vec<_> = (0..7).map(|_| s.spawn(|| group.sync(sync))).collect();
            first.join().unwrap().unwrap();
            for t in rest {
                t.join().unwrap().unwrap();
            }
        });
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
    }

    /// A request made while a sync runs is not answered by that sync.
    #[test]
    fn a_sync_covers_only_requests_made_before_it_started() {
        let group = Group::default();
        let syncs = AtomicU32::new(0);
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                group.sync(|| {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    until_requested(&group, 2);
                    Ok(())
                })
            });
            until_requested(&group, 1);
            let second = s.spawn(|| {
                let r = group.sync(|| {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                });
                // Answered only once a sync of its own ran.
                (r, syncs.load(Ordering::SeqCst))
            });
            first.join().unwrap().unwrap();
            let (r, seen) = second.join().unwrap();
            r.unwrap();
            assert_eq!(seen, 2);
        });
    }

    /// The sync that covers three waiting requests fails: all three get
    /// its error, though a later sync succeeds.
    #[test]
    fn a_failed_sync_fails_every_request_it_covered() {
        let group = Group::default();
        let syncs = AtomicU32::new(0);
        let sync = || match syncs.fetch_add(1, Ordering::SeqCst) {
            0 => {
                until_requested(&group, 4);
                Ok(())
            }
            1 => Err(io::Error::other("disk gone")),
            _ => Ok(()),
        };
        std::thread::scope(|s| {
            let first = s.spawn(|| group.sync(sync));
            until_requested(&group, 1);
            let covered: Vec<_> = (0..3).map(|_| s.spawn(|| group.sync(sync))).collect();
            first.join().unwrap().unwrap();
            for t in covered {
                let e = t.join().unwrap().unwrap_err();
                assert_eq!(e.to_string(), "disk gone");
            }
        });
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
        // A request made after the failure is synced afresh.
        group.sync(sync).unwrap();
        assert_eq!(syncs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_map_forgets_a_directory_nobody_syncs() {
        let dir = Path::new("/nonexistent/group-sync-test");
        sync_dir(dir, || Ok(())).unwrap();
        assert!(sync_dir(dir, || Err(io::Error::other("x"))).is_err());
        assert!(!lock(&GROUPS).contains_key(dir));
    }
}
