//! The contract every [`StepStore`] keeps, as one suite: run
//! [`check_store`] on a store (the run directory's today; the one on
//! object storage next). Each check names the rule it tests.

use std::path::Path;

use recovery::store::{MarkerVersion, Publish, Put, StepStore, StoredMarker};
use recovery::{Event, IssueCode, IssueRecord, StepId};

/// What a test gives the suite: the store, and where outputs are staged
/// and published for it (on one file system, as a step's would be).
pub struct Subject<'a> {
    pub store: &'a dyn StepStore,
    /// A directory to stage outputs in.
    pub staging: &'a Path,
    /// The directory a relative output path is published under.
    pub outputs: &'a Path,
}

/// Runs every check on the store of `run`, staging in its staging area
/// and publishing into its directory, as a step would.
pub fn check_run_store(run: &recovery::Run) {
    let staging = run.dir().join("staging");
    check_store(&Subject {
        store: run.store(),
        staging: &staging,
        outputs: run.dir(),
    });
}

/// Runs every check, each on steps of its own (named after it).
pub fn check_store(s: &Subject<'_>) {
    conditional_create(s);
    replace_and_remove_name_the_version_they_change(s);
    commit_publishes_then_writes_the_marker(s);
    commit_refuses_a_marker_it_did_not_see(s);
    leases_exclude_each_other_and_fence_upwards(s);
    items_of_a_family_are_instances_of_their_own(s);
    logs_keep_records_in_order(s);
    tidy_leaves_committed_state_alone(s);
}

fn found(store: &dyn StepStore, step: &StepId) -> (Vec<u8>, MarkerVersion) {
    match store.read_marker(step).unwrap() {
        StoredMarker::Found { bytes, version } => (bytes, version),
        other => panic!("{step}: expected a marker, found {other:?}"),
    }
}

fn written(put: Put) -> MarkerVersion {
    match put {
        Put::Written(v) => v,
        Put::Conflict => panic!("expected the write to happen"),
    }
}

/// A marker is created only where there is none; a create over one is a
/// conflict that changes nothing.
fn conditional_create(s: &Subject<'_>) {
    let store = s.store;
    let step = &StepId::plain("contract-create").unwrap();
    assert_eq!(store.read_marker(step).unwrap(), StoredMarker::Missing);
    assert!(
        !store
            .marked_steps()
            .unwrap()
            .contains(&step.name().to_owned())
    );
    let lease = store.lease(step).unwrap();
    assert_eq!(lease.step(), step);
    let v1 = written(store.create_marker(&lease, b"one").unwrap());
    assert_eq!(found(store, step), (b"one".to_vec(), v1.clone()));
    assert_eq!(store.create_marker(&lease, b"two").unwrap(), Put::Conflict);
    assert_eq!(found(store, step), (b"one".to_vec(), v1));
    assert!(
        store
            .marked_steps()
            .unwrap()
            .contains(&step.name().to_owned())
    );
}

/// Replace and remove happen only on the version named; a read gives the
/// version a write returned; every write gives a new version.
fn replace_and_remove_name_the_version_they_change(s: &Subject<'_>) {
    let store = s.store;
    let step = &StepId::plain("contract-replace").unwrap();
    let lease = store.lease(step).unwrap();
    let v1 = written(store.create_marker(&lease, b"one").unwrap());
    let other = MarkerVersion::new("a version nobody wrote");
    assert_eq!(
        store.replace_marker(&lease, b"two", &other).unwrap(),
        Put::Conflict
    );
    assert_eq!(found(store, step).0, b"one");
    let v2 = written(store.replace_marker(&lease, b"two", &v1).unwrap());
    assert_ne!(v1, v2);
    assert_eq!(found(store, step), (b"two".to_vec(), v2.clone()));
    // The version it replaced no longer names the marker.
    assert_eq!(
        store.replace_marker(&lease, b"three", &v1).unwrap(),
        Put::Conflict
    );
    assert!(!store.remove_marker(&lease, &v1).unwrap());
    assert_eq!(found(store, step).0, b"two");
    assert!(store.remove_marker(&lease, &v2).unwrap());
    assert_eq!(store.read_marker(step).unwrap(), StoredMarker::Missing);
    assert!(!store.remove_marker(&lease, &v2).unwrap());
}

/// A commit publishes the outputs and writes the marker; a later commit
/// that saw that marker replaces both.
fn commit_publishes_then_writes_the_marker(s: &Subject<'_>) {
    let store = s.store;
    let step = &StepId::plain("contract-commit").unwrap();
    let lease = store.lease(step).unwrap();
    let publish = |content: &[u8], seen: Option<&MarkerVersion>, marker: &[u8]| {
        let staged = s.staging.join(format!("{step}-staged"));
        std::fs::write(&staged, content).unwrap();
        let output = Publish {
            path: "contract/out.txt",
            staged: &staged,
            final_path: &s.outputs.join("contract/out.txt"),
            aside: &s.staging.join(format!("{step}-aside")),
            outside: false,
        };
        store.commit(&lease, &[output], marker, seen).unwrap()
    };
    let v1 = written(publish(b"first", None, b"m1"));
    assert_eq!(found(store, step), (b"m1".to_vec(), v1.clone()));
    let placed = s.outputs.join("contract/out.txt");
    assert_eq!(std::fs::read(&placed).unwrap(), b"first");
    let v2 = written(publish(b"second", Some(&v1), b"m2"));
    assert_eq!(found(store, step), (b"m2".to_vec(), v2));
    assert_eq!(std::fs::read(&placed).unwrap(), b"second");
}

/// A commit whose view of the marker is out of date (none where there is
/// one, or another version) does not write the marker.
fn commit_refuses_a_marker_it_did_not_see(s: &Subject<'_>) {
    let store = s.store;
    let step = &StepId::plain("contract-conflict").unwrap();
    let lease = store.lease(step).unwrap();
    let v1 = written(store.create_marker(&lease, b"winner").unwrap());
    assert_eq!(
        store.commit(&lease, &[], b"loser", None).unwrap(),
        Put::Conflict
    );
    assert_eq!(found(store, step), (b"winner".to_vec(), v1.clone()));
    let stale = MarkerVersion::new("seen long ago");
    assert_eq!(
        store.commit(&lease, &[], b"loser", Some(&stale)).unwrap(),
        Put::Conflict
    );
    assert_eq!(found(store, step), (b"winner".to_vec(), v1));
}

/// One holder at a time; a lease ends when dropped; epochs never go down.
fn leases_exclude_each_other_and_fence_upwards(s: &Subject<'_>) {
    let store = s.store;
    let step = &StepId::plain("contract-lease").unwrap();
    assert!(!store.is_leased(step).unwrap());
    let first = store.lease(step).unwrap();
    assert!(store.is_leased(step).unwrap());
    // Another holder (a thread here) cannot take it meanwhile.
    let taken = std::thread::scope(|scope| {
        scope
            .spawn(|| store.try_lease(step).unwrap().is_some())
            .join()
            .unwrap()
    });
    assert!(!taken, "two holders of one lease");
    let epoch = first.epoch();
    drop(first);
    assert!(!store.is_leased(step).unwrap());
    let second = store.try_lease(step).unwrap().expect("free after drop");
    assert!(second.epoch() >= epoch, "an epoch went down");
    assert!(
        store
            .leased_steps()
            .unwrap()
            .contains(&step.name().to_owned())
    );
}

/// Each item of a family has its own marker and lease; the family's items
/// with a marker are listed, and a plain step of another name is not.
fn items_of_a_family_are_instances_of_their_own(s: &Subject<'_>) {
    let store = s.store;
    let items: Vec<StepId> = (0..20)
        .map(|n| StepId::item("contract-family", &n).unwrap().0)
        .collect();
    let first = store.lease(&items[0]).unwrap();
    // Another item's lease is free while the first is held.
    let second = store
        .try_lease(&items[1])
        .unwrap()
        .expect("items lease apart");
    written(store.create_marker(&first, b"item 0").unwrap());
    assert_eq!(store.read_marker(&items[1]).unwrap(), StoredMarker::Missing);
    written(store.create_marker(&second, b"item 1").unwrap());
    drop((first, second));
    for id in &items[2..] {
        let lease = store.lease(id).unwrap();
        written(
            store
                .create_marker(&lease, id.item_id().unwrap().as_bytes())
                .unwrap(),
        );
    }
    assert_eq!(found(store, &items[0]).0, b"item 0");
    let mut listed: Vec<StepId> = store
        .marked_items("contract-family")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    listed.sort_by(|a, b| a.item_id().cmp(&b.item_id()));
    let mut expected = items.clone();
    expected.sort_by(|a, b| a.item_id().cmp(&b.item_id()));
    assert_eq!(listed, expected);
    assert!(
        store
            .families()
            .unwrap()
            .contains(&"contract-family".to_owned())
    );
    assert!(
        !store
            .marked_steps()
            .unwrap()
            .contains(&"contract-family".to_owned())
    );
    assert_eq!(store.marked_items("contract-none").unwrap().count(), 0);
}

/// Appended events and issue records read back in order.
fn logs_keep_records_in_order(s: &Subject<'_>) {
    let store = s.store;
    let events: Vec<Event> = (1..=3)
        .map(|n| Event::StepCompleted {
            step: format!("contract-log-{n}"),
            item: None,
            outputs: n,
        })
        .collect();
    for e in &events {
        store.append_event(e);
    }
    let issue = IssueRecord {
        error_code: IssueCode::StepFailed,
        severity: recovery::Severity::Blocker,
        operation: "contract-log".into(),
        item: None,
        attempts: 2,
        slept_ns: 5,
        last_error: "boom".into(),
    };
    store.append_issue(&issue);
    let read = store.events().unwrap();
    assert_eq!(read.skipped, 0);
    assert!(read.records.ends_with(&events), "{:?}", read.records);
    assert_eq!(store.issues().unwrap().records.last(), Some(&issue));
}

/// Tidying removes only what a crashed writer left: a committed marker
/// stays, whoever holds its step.
fn tidy_leaves_committed_state_alone(s: &Subject<'_>) {
    let store = s.store;
    let step = &StepId::plain("contract-tidy").unwrap();
    let v = {
        let lease = store.lease(step).unwrap();
        written(store.create_marker(&lease, b"kept").unwrap())
    };
    store.tidy().unwrap();
    assert_eq!(found(store, step), (b"kept".to_vec(), v));
}
