//! Which step names and output paths are safe to turn into file names.
//! The same rules as `#[resumable_step]` checks at compile time.

use std::path::{Component, Path};

use crate::error::RunError;
use crate::step::layout::{OUTSIDE_STAGING_PREFIX, RESERVED};

/// Checks a step name: non-empty, at most 100 characters of
/// `[A-Za-z0-9_.-]`, not `.` or `..` (the rule `#[resumable_step]` checks
/// at compile time, from the same place).
pub fn check_step_name(name: &str) -> Result<(), RunError> {
    match recovery_rules::step_name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(RunError::InvalidStepName {
            name: name.to_owned(),
            reason,
        }),
    }
}

/// Checks an output path: relative, inside the run directory (no `..`, no
/// root, no `.`), no NUL byte, not one of the run's own files, and returns
/// it `/`-separated.
pub fn check_output_path(path: &str) -> Result<String, RunError> {
    let fail = |reason: &str| {
        Err(RunError::InvalidOutputPath {
            path: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if path.is_empty() {
        return fail("it is empty");
    }
    if path.contains('\0') {
        return fail("it contains a NUL byte");
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => match part.to_str() {
                Some(p) => parts.push(p),
                None => return fail("it is not UTF-8"),
            },
            Component::ParentDir => return fail("`..` would leave the run directory"),
            Component::CurDir => return fail("write it without `.` components"),
            Component::RootDir | Component::Prefix(_) => {
                return fail("it is absolute; give a path relative to the run directory");
            }
        }
    }
    if parts.is_empty() {
        return fail("it names no file");
    }
    if RESERVED.contains(&parts[0]) {
        return fail("the run directory uses this name for itself");
    }
    Ok(parts.join("/"))
}

/// Checks the path of an output placed outside the run directory: absolute,
/// UTF-8, no `.` or `..`, neither inside the run directory (use the
/// relative form there) nor above it. Returns it as a string, for the
/// manifest. The check is on the spelling: symlinks are not resolved.
pub fn check_outside_path(run_dir: &Path, path: &Path) -> Result<String, RunError> {
    let fail = |reason: &str| {
        Err(RunError::InvalidOutputPath {
            path: path.display().to_string(),
            reason: reason.to_owned(),
        })
    };
    let Some(text) = path.to_str() else {
        return fail("it is not UTF-8");
    };
    if text.contains('\0') {
        return fail("it contains a NUL byte");
    }
    if text.contains(['\n', '\r']) {
        return fail("it contains a line break");
    }
    if !path.is_absolute() {
        return fail(
            "it is relative; an output outside the run directory needs an absolute path \
             (inside the run directory, use output_file or output_dir)",
        );
    }
    let mut clean = std::path::PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir | Component::CurDir => {
                return fail("write it without `.` or `..` components");
            }
            other => clean.push(other),
        }
    }
    let Some(name) = clean.file_name().and_then(|n| n.to_str()) else {
        return fail("it names no file");
    };
    if name.starts_with(OUTSIDE_STAGING_PREFIX) {
        return fail("names starting with `.recovery-staging-` are recovery's own");
    }
    if clean.starts_with(run_dir) {
        return fail(
            "it is inside the run directory: use output_file or output_dir with a relative path",
        );
    }
    if run_dir.starts_with(&clean) {
        return fail("it contains the run directory");
    }
    match clean.to_str() {
        Some(s) => Ok(s.to_owned()),
        None => fail("it is not UTF-8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_step_name_is_an_error_naming_it_and_the_rule_it_breaks() {
        check_step_name("stage-2.v1_x").unwrap();
        let err = check_step_name("a/b").unwrap_err();
        assert!(matches!(err, RunError::InvalidStepName { ref name, .. } if name == "a/b"));
        assert!(err.to_string().contains("path separator"), "{err}");
    }

    #[test]
    fn output_paths() {
        assert_eq!(check_output_path("repo").unwrap(), "repo");
        assert_eq!(
            check_output_path("artifacts/a.json").unwrap(),
            "artifacts/a.json"
        );
        assert_eq!(check_output_path("a//b/").unwrap(), "a/b");
        let reason = |p: &str| check_output_path(p).unwrap_err().to_string();
        assert!(reason("").contains("empty"));
        assert!(reason("../x").contains(".."));
        assert!(reason("a/../../x").contains(".."));
        assert!(reason("/etc/passwd").contains("absolute"));
        assert!(reason("./a").contains("`.`"));
        assert!(reason("a\0b").contains("NUL"));
        assert!(reason("state/x").contains("uses this name"));
        assert!(reason("events.jsonl").contains("uses this name"));
    }

    #[test]
    fn outside_paths() {
        let run = Path::new("/data/runs/nightly");
        let check = |p: &str| check_outside_path(run, Path::new(p));
        assert_eq!(check("/srv/out/a.bin").unwrap(), "/srv/out/a.bin");
        assert_eq!(check("/srv//out/").unwrap(), "/srv/out");
        assert_eq!(check("/data/runs/other").unwrap(), "/data/runs/other");
        let reason = |p: &str| check(p).unwrap_err().to_string();
        assert!(reason("out/a.bin").contains("absolute"));
        assert!(reason("/srv/../etc").contains(".."));
        // `.` in the middle is dropped by the parse, as for relative paths.
        assert_eq!(check("/srv/./x").unwrap(), "/srv/x");
        assert!(reason("/").contains("names no file"));
        assert!(reason("/data/runs/nightly/x").contains("inside the run directory"));
        assert!(reason("/data/runs/nightly").contains("inside the run directory"));
        assert!(reason("/data/runs").contains("contains the run directory"));
        assert!(reason("/srv/.recovery-staging-x").contains("recovery's own"));
        assert!(reason("/srv/a\0b").contains("NUL"));
        assert!(reason("/srv/a\nb").contains("line break"));
    }
}
