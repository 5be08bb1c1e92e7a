//! The marker parser on arbitrary bytes: never a panic, and random bytes
//! never pass as a valid marker. Run: `cargo +nightly fuzz run marker`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recovery::marker::{MarkerState, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(MarkerState::Valid(m)) = decode(data, std::path::Path::new("fuzz.json")) {
        // Only a marker whose checksum matches parses as valid: re-encoding
        // it must give a marker that decodes to the same value.
        let again = recovery::marker::encode(&m).expect("a valid marker encodes");
        match decode(&again, std::path::Path::new("fuzz.json")) {
            Ok(MarkerState::Valid(m2)) => assert_eq!(m, m2),
            other => panic!("re-encoded marker does not decode: {other:?}"),
        }
    }
});
