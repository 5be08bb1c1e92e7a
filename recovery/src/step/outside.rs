//! Outputs placed outside the run directory, at a path the user names.
//!
//! A rename is atomic only within one file system, so such an output is
//! staged beside its final place, under a `.recovery-staging-` name, not in
//! the run's staging area. The run's staging area keeps a journal of those
//! names instead (`outside`, in the step's staging directory), written
//! durably before anything is created there: the sweep that removes a
//! crashed step's staging directory reads it first and removes what it
//! lists, so a crash leaves no garbage beside the user's files either.

use std::io;
use std::path::{Path, PathBuf};

use crate::fs::{FileSystem, atomic_write_with, context, parent_of};
use crate::step::layout::outside_staging_names;
use crate::step::leftover::{Expect, refusal};

/// The journal's file name, in a step's staging directory.
const JOURNAL: &str = "outside";

/// The journal is a few lines per output; anything larger is not ours.
const JOURNAL_LIMIT: u64 = 1 << 20;

/// Where output number `n` of the step staged at `step_staging` is written
/// before the commit, and where the commit moves a previous version aside
/// to: both beside `final_path`.
pub(crate) fn staging_paths(final_path: &Path, step_staging: &Path, n: u64) -> (PathBuf, PathBuf) {
    let parent = parent_of(final_path);
    let execution = step_staging
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (staged, aside) = outside_staging_names(&execution, n);
    (parent.join(staged), parent.join(aside))
}

/// Records `paths` as the complete list of what the step staged outside,
/// durably: the journal itself, the step's staging directory in the run's
/// staging area, and that area's entry for it.
pub(crate) fn write_journal<'a>(
    fs: &dyn FileSystem,
    step_staging: &Path,
    paths: impl Iterator<Item = &'a Path>,
) -> io::Result<()> {
    let mut text = String::new();
    for path in paths {
        text.push_str(&path.to_string_lossy());
        text.push('\n');
    }
    atomic_write_with(fs, &step_staging.join(JOURNAL), text.as_bytes())?;
    let area = parent_of(step_staging);
    fs.sync_dir(area)
        .map_err(|e| context("fsync directory", area, e))
}

/// What a crashed step's journal lists: only plain absolute paths named
/// as [`staging_paths`] names them for this very step execution (the rule
/// [`leftover::remove`](crate::step::leftover::remove) checks again at the
/// removal), so a damaged or hostile journal cannot make the sweep remove
/// anything recovery did not create.
pub(crate) fn leftovers(fs: &dyn FileSystem, step_staging: &Path) -> Vec<PathBuf> {
    let Some(step) = step_staging.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let Ok(bytes) = fs.read(&step_staging.join(JOURNAL), JOURNAL_LIMIT) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(PathBuf::from)
        .filter(|p| refusal(p, Expect::Outside { execution: step }).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_paths_sit_beside_the_final_path() {
        let (staging, trash) = staging_paths(
            Path::new("/srv/out/model.bin"),
            Path::new("/runs/a/staging/train@42.0"),
            3,
        );
        assert_eq!(
            staging,
            Path::new("/srv/out/.recovery-staging-train@42.0-o3")
        );
        assert_eq!(trash, Path::new("/srv/out/.recovery-staging-train@42.0-t3"));
    }

    #[test]
    fn a_damaged_journal_names_nothing_but_staging_entries() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fs::RealFs;
        let step = dir.path().join("s@1.0");
        std::fs::create_dir(&step).unwrap();
        std::fs::write(
            step.join(JOURNAL),
            "/srv/.recovery-staging-s@1.0-o0\n/etc/passwd\nrelative/.recovery-staging-x\n\
             /srv/.recovery-staging-s@1.0-t0\n\u{0}garbage\n/srv/.recovery-staging-other@2.0-o0\n\
             /srv/.recovery-staging-s@1.0-o0x\n/srv/.recovery-staging-s@1.0-\n",
        )
        .unwrap();
        assert_eq!(
            leftovers(&fs, &step),
            [
                PathBuf::from("/srv/.recovery-staging-s@1.0-o0"),
                PathBuf::from("/srv/.recovery-staging-s@1.0-t0"),
            ]
        );
        assert!(leftovers(&fs, &dir.path().join("missing")).is_empty());
    }
}
