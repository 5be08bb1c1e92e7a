//! The JSON-lines logs events and issue records are kept in: one record a
//! line, appended with one write and not synced (a log is a record of what
//! happened, not a commit point); a crash may cut the last line, which
//! readers skip and count.

use std::io;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RunError;
use crate::fs::FileSystem;

/// Event and issue logs longer than this are refused when read back.
pub const LOG_LIMIT: u64 = 256 << 20;

/// Records read back from a log.
#[derive(Debug)]
pub struct LogRead<T> {
    /// The records that parsed, in order.
    pub records: Vec<T>,
    /// Lines that did not parse (a line cut by a crash, garbage).
    pub skipped: usize,
}

/// Parses JSON lines, skipping the ones that do not parse.
pub fn parse_log<T: DeserializeOwned>(bytes: &[u8]) -> LogRead<T> {
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => records.push(r),
            Err(_) => skipped += 1,
        }
    }
    LogRead { records, skipped }
}

/// Appends one record to the log at `path`. A log that cannot be written
/// loses the record, never the run: the failure goes to `tracing`.
pub(crate) fn append(fs: &dyn FileSystem, path: &Path, record: &impl Serialize) {
    let line = match serde_json::to_vec(record) {
        Ok(mut line) => {
            line.push(b'\n');
            line
        }
        Err(_) => return,
    };
    if let Err(_e) = fs.append(path, &line) {
        #[cfg(feature = "tracing")]
        tracing::warn!(path = %path.display(), error = %_e, "could not append to the run's log");
    }
}

/// The records of the log at `path`; none when it does not exist yet.
pub(crate) fn read<T: DeserializeOwned>(
    fs: &dyn FileSystem,
    path: &Path,
) -> Result<LogRead<T>, RunError> {
    let bytes = match fs.read(path, LOG_LIMIT) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(RunError::io("read", path, e)),
    };
    Ok(parse_log(&bytes))
}
