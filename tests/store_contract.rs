//! The `StepStore` contract (`tests/support/store_contract.rs`) on the run
//! directory's own store.

use recovery::Run;
use recovery_suite::store_contract::check_run_store;

#[test]
fn the_run_directory_keeps_the_store_contract() {
    let tmp = tempfile::tempdir().unwrap();
    check_run_store(&Run::open(tmp.path().join("run")).unwrap());
}

#[test]
fn a_local_marker_written_behind_the_store_is_not_overwritten() {
    // The run directory's conditional writes are atomic among lease
    // holders; a file put in the marker's place by hand is still seen.
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::open(tmp.path().join("run")).unwrap();
    let store = run.store();
    let lease = store
        .lease(&recovery::StepId::plain("by-hand").unwrap())
        .unwrap();
    std::fs::write(run.marker_path("by-hand"), b"written by hand").unwrap();
    assert_eq!(
        store.create_marker(&lease, b"ours").unwrap(),
        recovery::store::Put::Conflict
    );
    assert_eq!(
        std::fs::read(run.marker_path("by-hand")).unwrap(),
        b"written by hand"
    );
}
