//! "Did you mean ...?" for misspelt keys and values.

/// The candidate closest to `given`, if it is close enough to be a typo.
pub fn closest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(given, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1) || c.starts_with(given) && given.len() >= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// ` (did you mean `x`?)` or nothing.
pub fn did_you_mean(given: &str, candidates: &[&str]) -> String {
    match closest(given, candidates) {
        Some(c) => format!(" (did you mean `{c}`?)"),
        None => String::new(),
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["max_attempts", "base", "max_delay", "jitter"];

    #[test]
    fn typos_find_their_key() {
        assert_eq!(closest("max_attempt", KEYS), Some("max_attempts"));
        assert_eq!(closest("bse", KEYS), Some("base"));
        assert_eq!(closest("jiter", KEYS), Some("jitter"));
        assert_eq!(closest("max_dealy", KEYS), Some("max_delay"));
    }

    #[test]
    fn unrelated_words_find_nothing() {
        assert_eq!(closest("timeout", KEYS), None);
        assert_eq!(did_you_mean("xyz", KEYS), "");
    }

    #[test]
    fn distance_is_levenshtein() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
