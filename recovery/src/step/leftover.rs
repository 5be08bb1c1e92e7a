//! Removing what a step execution left behind (its staging directory in
//! the run, and what it staged beside outputs outside the run), with the
//! check made at the removal itself: a recursive removal runs only on a
//! name this library made, in the place it made it. A path that fails the
//! check is reported and left alone, whatever bug or damaged journal
//! produced it.

use std::io;
use std::path::{Component, Path};

use crate::error::RunError;
use crate::fs::{FileSystem, remove_entry};
use crate::step::layout::{execution_step, is_outside_staging_of};

/// What a leftover must be for [`remove`] to touch it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect<'a> {
    /// A step execution's staging directory, directly in this staging area.
    InRun { staging_area: &'a Path },
    /// Something the execution of this name staged beside an output
    /// outside the run: a plain absolute path, not at the root.
    Outside { execution: &'a str },
}

/// Why `path` is not a leftover of the kind expected, if it is not.
pub(crate) fn refusal(path: &Path, expect: Expect<'_>) -> Option<&'static str> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Some("it has no file name");
    };
    match expect {
        Expect::InRun { staging_area } => {
            if path.parent() != Some(staging_area) {
                Some("it is not directly in the run's staging area")
            } else if execution_step(name).is_none() {
                Some("its name is not a step execution's staging name")
            } else {
                None
            }
        }
        Expect::Outside { execution } => {
            let plain = path.is_absolute()
                && path
                    .components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
            let depth = path
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count();
            if !plain {
                Some("it is not a plain absolute path")
            } else if depth < 2 {
                Some("it is at the root of the file system")
            } else if !is_outside_staging_of(name, execution) {
                Some("its name is not one this step execution staged")
            } else {
                None
            }
        }
    }
}

/// Removes the leftover at `path` (a file, or a directory and everything in
/// it; a missing one is fine) after checking that it is what `expect`
/// says.
///
/// # Errors
/// [`RunError::RefusedRemoval`] when the check fails (nothing is removed),
/// or the file system's error.
pub(crate) fn remove(fs: &dyn FileSystem, path: &Path, expect: Expect<'_>) -> Result<(), RunError> {
    if let Some(reason) = refusal(path, expect) {
        return Err(RunError::RefusedRemoval {
            path: path.to_owned(),
            reason,
        });
    }
    // A committed step leaves its staging directory empty: one `rmdir`
    // removes it, where the recursive removal would stat, open and list.
    match fs.remove_empty_dir(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // Not empty, or not a directory: removed whole below.
        Err(_) => {}
    }
    remove_entry(fs, path).map_err(|e| RunError::io("remove leftover", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_in_our_places_pass() {
        let area = Path::new("/runs/a/staging");
        let in_run = Expect::InRun { staging_area: area };
        assert_eq!(refusal(&area.join("s@1.0"), in_run), None);
        for bad in [
            "/runs/a/staging/../s@1.0",
            "/runs/a/s@1.0",
            "/runs/a/staging/notes",
        ] {
            assert!(refusal(Path::new(bad), in_run).is_some(), "{bad}");
        }
        assert!(refusal(Path::new("/"), in_run).is_some());

        let outside = Expect::Outside { execution: "s@1.0" };
        assert_eq!(
            refusal(Path::new("/srv/.recovery-staging-s@1.0-o3"), outside),
            None
        );
        for bad in [
            "/",
            "..",
            "/.recovery-staging-s@1.0-o3",
            "/srv/../.recovery-staging-s@1.0-o3",
            "srv/.recovery-staging-s@1.0-o3",
            "/srv/.recovery-staging-t@1.0-o3",
            "/srv/.recovery-staging-s@1.0-x3",
            "/srv/precious.txt",
        ] {
            assert!(refusal(Path::new(bad), outside).is_some(), "{bad}");
        }
    }

    #[test]
    fn a_symlink_named_like_a_staging_directory_loses_only_the_link() {
        let tmp = tempfile::tempdir().unwrap();
        let area = tmp.path().join("staging");
        let precious = tmp.path().join("precious");
        std::fs::create_dir_all(&area).unwrap();
        std::fs::create_dir_all(&precious).unwrap();
        std::fs::write(precious.join("keep"), b"keep").unwrap();
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        for (name, target) in [("s@1.0", &precious), ("s@1.1", &empty)] {
            let link = area.join(name);
            std::os::unix::fs::symlink(target, &link).unwrap();
            let expect = Expect::InRun {
                staging_area: &area,
            };
            remove(&crate::fs::RealFs, &link, expect).unwrap();
            assert!(std::fs::symlink_metadata(&link).is_err(), "{name}");
            assert!(target.is_dir(), "{name}: its target stays");
        }
        assert_eq!(std::fs::read(precious.join("keep")).unwrap(), b"keep");
    }

    #[test]
    fn a_refused_path_is_not_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), b"keep").unwrap();
        let err = remove(
            &crate::fs::RealFs,
            &victim,
            Expect::Outside { execution: "s@1.0" },
        )
        .unwrap_err();
        assert!(matches!(err, RunError::RefusedRemoval { .. }), "{err}");
        assert_eq!(std::fs::read(victim.join("keep")).unwrap(), b"keep");
    }
}
