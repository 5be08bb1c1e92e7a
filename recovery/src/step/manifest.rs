//! The manifest of a step's outputs: written at the commit (each output
//! synced and hashed) and checked before the step is resumed
//! ([`verify`]).

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::RunError;
use crate::fs::{EntryKind, FileSystem, Stat};
use crate::step::marker::{Marker, OutputEntry, OutputKind, Verify};

/// BLAKE3 of a file's content, streamed, as hex.
pub fn hash_file(fs: &dyn FileSystem, path: &Path) -> io::Result<String> {
    Ok(fs.hash(path)?.to_hex().to_string())
}

/// Checks every output in the manifest against the run directory: kind,
/// size and hash. Returns the first mismatch, described. An entry is read
/// only where an output may be: relative and inside the run directory, or
/// absolute under one of the `outside` places the program allowed
/// ([`Run::allow_outside`](crate::Run::allow_outside)); a marker that
/// points anywhere else does not count.
pub fn verify(
    fs: &dyn FileSystem,
    run_dir: &Path,
    outside: &[PathBuf],
    marker: &Marker,
    mode: Verify,
) -> Result<(), String> {
    // One path buffer for all entries, and hashes compared as stack
    // strings: checking a done step allocates nothing per output.
    let mut path = PathBuf::with_capacity(run_dir.as_os_str().len() + 256);
    for entry in &marker.outputs {
        if let Err(reason) = check_place(&entry.path, outside) {
            return Err(format!("output {:?} {reason}", entry.path));
        }
        path.as_mut_os_string().clear();
        path.push(run_dir);
        path.push(&entry.path);
        let stat = fs
            .stat(&path)
            .map_err(|e| format!("output {} is missing or unreadable ({e})", entry.path))?;
        let expected = match entry.kind {
            OutputKind::File => EntryKind::File,
            OutputKind::Dir => EntryKind::Dir,
            OutputKind::Symlink => EntryKind::Symlink,
        };
        if stat.kind != expected {
            return Err(format!(
                "output {} is a {:?}, the marker recorded a {:?}",
                entry.path, stat.kind, entry.kind
            ));
        }
        match entry.kind {
            OutputKind::File => {
                if stat.len != entry.size {
                    return Err(format!(
                        "output {} has {} bytes, the marker recorded {}",
                        entry.path, stat.len, entry.size
                    ));
                }
                if mode == Verify::SizeMtime
                    && entry.mtime_ns.is_some()
                    && stat.mtime_ns == entry.mtime_ns
                {
                    continue;
                }
                let hash = fs
                    .hash(&path)
                    .map_err(|e| format!("output {} cannot be read ({e})", entry.path))?;
                if entry.blake3.as_deref() != Some(hash.to_hex().as_str()) {
                    return Err(format!(
                        "output {} does not match its recorded hash",
                        entry.path
                    ));
                }
            }
            OutputKind::Symlink => {
                let target = fs
                    .read_link(&path)
                    .map_err(|e| format!("output {} cannot be read ({e})", entry.path))?;
                if entry.blake3.as_deref() != Some(link_hash(&target).to_hex().as_str()) {
                    return Err(format!(
                        "output {} points elsewhere than recorded",
                        entry.path
                    ));
                }
            }
            OutputKind::Dir => {}
        }
    }
    Ok(())
}

/// Whether a manifest path names a place an output may be.
pub(crate) fn check_place(path: &str, outside: &[PathBuf]) -> Result<(), &'static str> {
    let p = Path::new(path);
    if path.is_empty() || path.contains('\0') {
        return Err("is not a path");
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err("has `.` or `..` components");
    }
    if p.is_absolute() {
        if outside.iter().any(|place| p.starts_with(place)) {
            return Ok(());
        }
        return Err(
            "is outside the run directory and outside every place allowed \
             (Run::allow_outside in a program, --allow-outside DIR for the recovery CLI)",
        );
    }
    if p.has_root() {
        return Err("is not relative to the run directory");
    }
    Ok(())
}

/// Syncs and hashes one staged output (recursively for a directory) into
/// the manifest, in a fixed order. `stat` is the output's, just taken.
pub(crate) fn record(
    fs: &dyn FileSystem,
    path: &Path,
    stat: Stat,
    rel: &str,
    mode: Verify,
    manifest: &mut Vec<OutputEntry>,
) -> Result<(), RunError> {
    match stat.kind {
        EntryKind::File => {
            let hash = hash_file(fs, path).map_err(|e| RunError::io("read", path, e))?;
            fs.sync_file(path)
                .map_err(|e| RunError::io("fsync", path, e))?;
            manifest.push(OutputEntry {
                path: rel.to_owned(),
                kind: OutputKind::File,
                size: stat.len,
                blake3: Some(hash),
                mtime_ns: stat.mtime_ns.filter(|_| mode == Verify::SizeMtime),
            });
        }
        EntryKind::Dir => {
            manifest.push(OutputEntry {
                path: rel.to_owned(),
                kind: OutputKind::Dir,
                size: 0,
                blake3: None,
                mtime_ns: None,
            });
            let names = fs
                .read_dir(path)
                .map_err(|e| RunError::io("list", path, e))?;
            for name in names {
                let path = path.join(&name);
                let stat = fs
                    .stat(&path)
                    .map_err(|e| RunError::io("inspect", &path, e))?;
                record(fs, &path, stat, &format!("{rel}/{name}"), mode, manifest)?;
            }
            fs.sync_dir(path)
                .map_err(|e| RunError::io("fsync directory", path, e))?;
        }
        EntryKind::Symlink => {
            let target = fs
                .read_link(path)
                .map_err(|e| RunError::io("read link", path, e))?;
            manifest.push(OutputEntry {
                path: rel.to_owned(),
                kind: OutputKind::Symlink,
                size: 0,
                blake3: Some(link_hash(&target).to_hex().to_string()),
                mtime_ns: None,
            });
        }
        EntryKind::Other => {
            return Err(RunError::InvalidOutputPath {
                path: rel.to_owned(),
                reason: "it is not a file, a directory or a symlink".into(),
            });
        }
    }
    Ok(())
}

/// What a symlink's manifest entry records: the BLAKE3 of its target.
fn link_hash(target: &Path) -> blake3::Hash {
    blake3::hash(target.as_os_str().as_encoded_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_outside_the_allowed_places_are_not_read() {
        let places = [PathBuf::from("/srv/exports")];
        assert!(check_place("out/a.bin", &places).is_ok());
        assert!(check_place("/srv/exports/site/index.html", &places).is_ok());
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "/srv/exports/../x",
            "/srv/exportsx",
            "",
            "a\0b",
        ] {
            assert!(check_place(bad, &places).is_err(), "{bad:?}");
        }
        assert!(check_place("/srv/exports/a", &[]).is_err());
    }
}
