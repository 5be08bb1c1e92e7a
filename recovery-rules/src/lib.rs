//! The rules `recovery` checks both at compile time (in `recovery-macros`)
//! and at run time, and the defaults both use: one home for each, so the
//! two checks cannot drift apart. Use them through `recovery`.

use std::time::Duration;

/// The longest step name: it becomes a file name, with a suffix.
pub const MAX_STEP_NAME: usize = 100;

/// The default first delay of a backoff: 100 ms.
pub const DEFAULT_BASE: Duration = Duration::from_millis(100);

/// Why `name` cannot be a step name, if it cannot: a step name becomes a
/// file name, so it is non-empty, at most [`MAX_STEP_NAME`] characters of
/// `[A-Za-z0-9_.-]`, and not `.` or `..`.
///
/// ```
/// assert_eq!(recovery_rules::step_name_problem("clone"), None);
/// assert_eq!(
///     recovery_rules::step_name_problem("a/b").as_deref(),
///     Some("it contains a path separator")
/// );
/// ```
pub fn step_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name == "." || name == ".." {
        return Some(format!("{name:?} names a directory"));
    }
    if name.len() > MAX_STEP_NAME {
        return Some(format!("it is longer than {MAX_STEP_NAME} characters"));
    }
    let c = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))?;
    Some(match c {
        '/' | '\\' => "it contains a path separator".into(),
        '\0' => "it contains a NUL byte".into(),
        c => format!("it contains the character {c:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names() {
        for ok in [
            "clone",
            "stage-2",
            "v1.2_x",
            "a",
            &"x".repeat(MAX_STEP_NAME),
        ] {
            assert_eq!(step_name_problem(ok), None, "{ok}");
        }
        let reason = |n: &str| step_name_problem(n).unwrap();
        assert!(reason("").contains("empty"));
        assert!(reason("..").contains("directory"));
        assert!(reason("a/b").contains("path separator"));
        assert!(reason("a\\b").contains("path separator"));
        assert!(reason("a\0b").contains("NUL"));
        assert!(reason("café").contains("'é'"));
        assert!(reason(&"x".repeat(MAX_STEP_NAME + 1)).contains("longer"));
    }
}
