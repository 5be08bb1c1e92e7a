//! Step markers: the single commit point of a step.
//!
//! A marker is written last, atomically, after every output of its step is
//! durable. It records the format version, the step's name, the
//! fingerprint of its key and version, the value the step returned, a
//! manifest of its outputs (relative path, kind, size, BLAKE3 hash) and a
//! checksum of itself. It counts only if it parses, its checksum holds, its
//! fingerprint matches and every output in the manifest is intact.

use std::borrow::Cow;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::RunError;
use crate::fs::FileSystem;
use crate::step::store::{MarkerVersion, StoredMarker};

/// The marker format this version writes and reads.
pub const MARKER_FORMAT: u32 = 1;

/// Markers larger than this are refused (a hostile or corrupt file must not
/// make the reader allocate without bound).
pub const MARKER_LIMIT: u64 = 64 << 20;

/// The kind of one manifest entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// A regular file, with size and hash.
    File,
    /// A directory (its files have entries of their own).
    Dir,
    /// A symbolic link, with its target.
    Symlink,
}

/// One output recorded in a marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEntry {
    /// Path relative to the run directory, `/`-separated; absolute for an
    /// output placed outside it (`Run::output_dir_outside`).
    pub path: String,
    /// What it is.
    pub kind: OutputKind,
    /// Size in bytes (files), 0 otherwise.
    pub size: u64,
    /// BLAKE3 of the content (files) or of the link target (symlinks), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The file's modification time at the commit, in nanoseconds since the
    /// Unix epoch: recorded only for steps checked by
    /// [`Verify::SizeMtime`]. A wall-clock field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u64>,
}

/// How the outputs of a done step are checked before it is resumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Every file is hashed again and compared with the manifest: a change
    /// of any byte reruns the step. The default.
    #[default]
    Hash,
    /// A file whose size and modification time are as recorded is trusted
    /// without being read; any other is hashed. Much cheaper for large
    /// outputs, but a same-size change that keeps the modification time
    /// (a clock set back, `touch -d`, a coarse-grained file system) goes
    /// unseen. Opt in with `#[resumable_step("name", verify = "size_mtime")]`.
    SizeMtime,
}

/// The content of a marker file, checksum aside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// [`MARKER_FORMAT`] at the time of writing.
    pub format: u32,
    /// The step's name.
    pub step: String,
    /// For an item of a family, the item as JSON; absent for a plain step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<serde_json::Value>,
    /// The step's version (`version = N`).
    pub version: u32,
    /// BLAKE3 of the step's key and version.
    pub fingerprint: String,
    /// Where the step is defined (`module::path::function`).
    pub site: String,
    /// The value the step returned, as JSON.
    pub value: serde_json::Value,
    /// Every output, in a fixed order.
    pub outputs: Vec<OutputEntry>,
    /// Where the store keeps the outputs of the attempt that committed
    /// (object storage: the attempt's token, [`Lease::attempt`]); absent
    /// when they are published in place (the run directory).
    ///
    /// [`Lease::attempt`]: crate::store::Lease::attempt
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// Wall-clock time of completion, milliseconds since the Unix epoch. The
    /// only field that differs between two otherwise identical runs.
    pub completed_at_ms: u64,
}

/// A marker file, parsed whole: how markers that do not read the fast way
/// (written pretty by an earlier version, or damaged) are judged.
#[derive(Deserialize)]
struct MarkerFile {
    /// `blake3:` and the hash of the compact JSON of `marker`.
    checksum: String,
    marker: Marker,
}

/// A marker file with its `marker` left as the text it is in the file, so
/// that the checksum is taken of those bytes, not of the marker written
/// out again.
#[derive(Deserialize)]
struct RawMarkerFile<'a> {
    #[serde(borrow)]
    checksum: Cow<'a, str>,
    #[serde(borrow)]
    marker: &'a RawValue,
}

/// What a marker on disk says.
#[derive(Debug)]
pub enum MarkerState {
    /// No marker: the step has not completed.
    Missing,
    /// A marker that holds.
    Valid(Marker),
    /// A marker that does not count, and why.
    Invalid(String),
}

/// The BLAKE3 of the compact JSON of `marker`, hashed as it is written
/// out (no buffer).
fn content_hash(marker: &Marker) -> Result<blake3::Hash, serde_json::Error> {
    let mut hasher = blake3::Hasher::new();
    serde_json::to_writer(&mut hasher, marker)?;
    Ok(hasher.finalize())
}

/// Whether `recorded` (`blake3:<hex>`) is the checksum of `marker`.
fn checksum_holds(marker: &Marker, recorded: &str) -> bool {
    match (recorded.strip_prefix("blake3:"), content_hash(marker)) {
        (Some(hex), Ok(hash)) => hash.to_hex().as_str() == hex,
        _ => false,
    }
}

/// The bytes of a marker file: the checksum, then the marker as the compact
/// JSON the checksum is taken of, so that a reader hashes the marker's
/// bytes as they stand.
pub fn encode(marker: &Marker) -> Result<Vec<u8>, serde_json::Error> {
    let compact = serde_json::to_vec(marker)?;
    let hash = blake3::hash(&compact);
    let mut bytes = Vec::with_capacity(compact.len() + 112);
    bytes.extend_from_slice(HEAD);
    bytes.extend_from_slice(hash.to_hex().as_bytes());
    bytes.extend_from_slice(MIDDLE);
    bytes.extend_from_slice(&compact);
    bytes.extend_from_slice(TAIL);
    Ok(bytes)
}

/// What [`encode`] writes around the checksum's hex and the marker's text.
const HEAD: &[u8] = b"{\n  \"checksum\": \"blake3:";
const MIDDLE: &[u8] = b"\",\n  \"marker\": ";
const TAIL: &[u8] = b"\n}\n";

/// The checksum's hex and the marker's text of a file laid out exactly as
/// [`encode`] writes it, found without parsing the file.
fn as_written(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (hex, rest) = bytes.strip_prefix(HEAD)?.split_at_checked(64)?;
    Some((hex, rest.strip_prefix(MIDDLE)?.strip_suffix(TAIL)?))
}

/// Whether the BLAKE3 of `bytes` is `hex`.
fn hashes_to(bytes: &[u8], hex: &[u8]) -> bool {
    blake3::hash(bytes).to_hex().as_bytes() == hex
}

/// Parses and checks a marker file's bytes. A newer format is an error (a
/// newer program wrote it; rerunning would discard its work); anything else
/// that does not hold is `Invalid` with the reason.
pub fn decode(bytes: &[u8], path: &Path) -> Result<MarkerState, RunError> {
    // The common case: a file laid out as `encode` writes it, whose
    // marker text hashes to its checksum, is parsed once, the marker text
    // alone. Any other layout is parsed whole: the marker's text hashed as
    // it stands, or, written pretty by an earlier version, as the compact
    // JSON of what it says; anything that does not parse takes the slow
    // path below, which says what is wrong.
    if let Some((hex, text)) = as_written(bytes)
        && hashes_to(text, hex)
        && let Ok(text) = std::str::from_utf8(text)
        && let Ok(marker) = serde_json::from_str::<Marker>(text)
    {
        return judge(marker, path, |_| true);
    }
    if let Ok(raw) = serde_json::from_slice::<RawMarkerFile<'_>>(bytes)
        && let Ok(marker) = serde_json::from_str::<Marker>(raw.marker.get())
    {
        return judge(marker, path, |m| {
            raw.checksum
                .strip_prefix("blake3:")
                .is_some_and(|hex| hashes_to(raw.marker.get().as_bytes(), hex.as_bytes()))
                || checksum_holds(m, &raw.checksum)
        });
    }
    let raw: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return Ok(MarkerState::Invalid(format!(
                "the marker is not valid JSON ({e})"
            )));
        }
    };
    if let Some(found) = raw
        .pointer("/marker/format")
        .and_then(serde_json::Value::as_u64)
        && found > u64::from(MARKER_FORMAT)
    {
        return Err(RunError::NewerMarker {
            path: path.to_owned(),
            found,
            supported: MARKER_FORMAT,
        });
    }
    match serde_json::from_value::<MarkerFile>(raw) {
        Ok(file) => judge(file.marker, path, |m| checksum_holds(m, &file.checksum)),
        Err(e) => Ok(MarkerState::Invalid(format!(
            "the marker's fields do not parse ({e})"
        ))),
    }
}

/// A parsed marker: its format, then its checksum (`holds`).
fn judge(
    marker: Marker,
    path: &Path,
    holds: impl FnOnce(&Marker) -> bool,
) -> Result<MarkerState, RunError> {
    if marker.format > MARKER_FORMAT {
        return Err(RunError::NewerMarker {
            path: path.to_owned(),
            found: u64::from(marker.format),
            supported: MARKER_FORMAT,
        });
    }
    if marker.format != MARKER_FORMAT {
        return Ok(MarkerState::Invalid(format!(
            "the marker has format {}, this program reads {MARKER_FORMAT}",
            marker.format
        )));
    }
    if holds(&marker) {
        Ok(MarkerState::Valid(marker))
    } else {
        Ok(MarkerState::Invalid(
            "the marker's checksum does not match its content".into(),
        ))
    }
}

/// Reads the marker at `path`, as [`decode`] says. A symlink is refused.
pub fn read(fs: &dyn FileSystem, path: &Path) -> Result<MarkerState, RunError> {
    state_of(load(fs, path), path)
}

/// What a stored marker says; `location` names it in errors.
pub fn state_of(stored: StoredMarker, location: &Path) -> Result<MarkerState, RunError> {
    match stored {
        StoredMarker::Missing => Ok(MarkerState::Missing),
        StoredMarker::Found { bytes, .. } => decode(&bytes, location),
        StoredMarker::Unreadable { reason, .. } => Ok(MarkerState::Invalid(reason)),
    }
}

/// The marker file at `path` as it is: its bytes and their BLAKE3 as the
/// version, or why it cannot be read (a symlink is not followed).
pub(crate) fn load(fs: &dyn FileSystem, path: &Path) -> StoredMarker {
    let unreadable = |reason: String, what: &str| StoredMarker::Unreadable {
        reason,
        version: MarkerVersion::new(format!("unreadable: {what}")),
    };
    match fs.read_regular(path, MARKER_LIMIT) {
        Ok(Ok(bytes)) => StoredMarker::Found {
            version: MarkerVersion::of_content(&bytes),
            bytes,
        },
        Ok(Err(kind)) => unreadable(
            format!("the marker is not a regular file (a {kind:?})"),
            &format!("{kind:?}"),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => StoredMarker::Missing,
        Err(e) => unreadable(format!("the marker cannot be read ({e})"), "error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker {
            format: MARKER_FORMAT,
            step: "clone".into(),
            item: None,
            version: 1,
            fingerprint: "blake3:00".into(),
            site: "m::f".into(),
            value: serde_json::json!({"path": "repo", "n": 1.5}),
            outputs: vec![OutputEntry {
                path: "repo/a".into(),
                kind: OutputKind::File,
                size: 3,
                blake3: Some("ab".into()),
                mtime_ns: None,
            }],
            completed_at_ms: 1,
            published: None,
        }
    }

    fn decoded(bytes: &[u8]) -> MarkerState {
        decode(bytes, Path::new("m.json")).unwrap()
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&marker()).unwrap();
        match decoded(&bytes) {
            MarkerState::Valid(m) => assert_eq!(m, marker()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_checksum_is_of_the_marker_text_as_it_stands() {
        let bytes = encode(&marker()).unwrap();
        let raw: RawMarkerFile<'_> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(raw.marker.get(), serde_json::to_string(&marker()).unwrap());
        // The reader's fast path finds the same two parts without parsing.
        let (hex, text) = as_written(&bytes).unwrap();
        assert_eq!(text, raw.marker.get().as_bytes());
        assert_eq!(
            raw.checksum.strip_prefix("blake3:").unwrap().as_bytes(),
            hex
        );
        assert_eq!(
            raw.checksum,
            format!(
                "blake3:{}",
                blake3::hash(raw.marker.get().as_bytes()).to_hex()
            )
        );
    }

    /// What versions before the checksum was taken of the file's text
    /// wrote: the whole file pretty, the checksum of the compact JSON.
    fn written_pretty(m: &Marker, checksum: &str) -> Vec<u8> {
        serde_json::to_vec_pretty(&serde_json::json!({ "checksum": checksum, "marker": m }))
            .unwrap()
    }

    #[test]
    fn a_marker_written_pretty_by_an_earlier_version_still_holds() {
        let sum = format!("blake3:{}", content_hash(&marker()).unwrap().to_hex());
        match decoded(&written_pretty(&marker(), &sum)) {
            MarkerState::Valid(m) => assert_eq!(m, marker()),
            other => panic!("{other:?}"),
        }
        let mut other = marker();
        other.outputs[0].size = 4;
        assert!(matches!(
            decoded(&written_pretty(&other, &sum)),
            MarkerState::Invalid(_)
        ));
    }

    #[test]
    fn a_marker_laid_out_otherwise_holds_by_its_text_as_it_stands() {
        // Keys in another order, spaces in the marker's text: the checksum
        // is of that text, not of what this program would write.
        let text = serde_json::to_string(&marker())
            .unwrap()
            .replace(",\"", ", \"");
        let sum = blake3::hash(text.as_bytes()).to_hex();
        let file = format!("{{\"marker\": {text}, \"checksum\": \"blake3:{sum}\"}}");
        match decoded(file.as_bytes()) {
            MarkerState::Valid(m) => assert_eq!(m, marker()),
            other => panic!("{other:?}"),
        }
        let changed = file.replace("\"size\":3", "\"size\":4");
        assert_ne!(changed, file);
        assert!(matches!(
            decoded(changed.as_bytes()),
            MarkerState::Invalid(_)
        ));
    }

    #[test]
    fn every_single_byte_flip_is_caught() {
        let bytes = encode(&marker()).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            match decode(&b, Path::new("m.json")) {
                Ok(MarkerState::Invalid(_)) => {}
                // Flipping whitespace, or a case that keeps the JSON equal
                // in meaning, leaves a marker that still says the same.
                Ok(MarkerState::Valid(m)) => assert_eq!(m, marker(), "byte {i} changed meaning"),
                other => panic!("byte {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_truncation_is_invalid() {
        let bytes = encode(&marker()).unwrap();
        // The last byte is the newline: dropping it alone changes nothing.
        for len in 0..bytes.len() - 1 {
            assert!(
                matches!(decoded(&bytes[..len]), MarkerState::Invalid(_)),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_newer_format_is_an_error_not_a_rerun() {
        let mut m = marker();
        m.format = MARKER_FORMAT + 1;
        let err = decode(&encode(&m).unwrap(), Path::new("m.json")).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn garbage_and_empty_are_invalid() {
        assert!(matches!(decoded(b""), MarkerState::Invalid(_)));
        assert!(matches!(
            decoded(b"\xff\xfe garbage"),
            MarkerState::Invalid(_)
        ));
        assert!(matches!(
            decoded(b"{\"checksum\":1}"),
            MarkerState::Invalid(_)
        ));
    }
}
