//! A step's identity: what `#[resumable_step]` knows of it at compile time
//! ([`StepDef`]) and the fingerprint of one call's key and version.

use serde::Serialize;

use crate::error::RunError;
use crate::step::marker::Verify;

/// What `#[resumable_step]` knows about a step at compile time.
#[derive(Clone, Copy, Debug)]
pub struct StepDef {
    /// The step's name, unique in a run.
    pub name: &'static str,
    /// Bumped to rerun the step after its code changed.
    pub version: u32,
    /// Where it is defined (`module::path::function`).
    pub site: &'static str,
    /// How its outputs are checked before it is resumed
    /// (`verify = "size_mtime"`; hashing by default).
    pub verify: Verify,
    /// Whether it is a family (`item = ...`): one instance per item.
    pub family: bool,
}

/// The BLAKE3 of a step's key and version: a different key or version
/// means the recorded result is not for this call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Fingerprints `key` (as JSON) with `version`. Keys must serialise the
    /// same way every time: use `BTreeMap`, not `HashMap`.
    pub fn of<K: Serialize + ?Sized>(step: &str, key: &K, version: u32) -> Result<Self, RunError> {
        #[derive(Serialize)]
        struct Keyed<'a, K: ?Sized> {
            key: &'a K,
            version: u32,
        }
        let bytes =
            serde_json::to_vec(&Keyed { key, version }).map_err(|source| RunError::Serialize {
                step: step.to_owned(),
                what: "key",
                source,
            })?;
        Ok(Fingerprint(format!(
            "blake3:{}",
            blake3::hash(&bytes).to_hex()
        )))
    }

    /// `blake3:` and the hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A step's key: serialised into its fingerprint.
#[diagnostic::on_unimplemented(
    message = "the key `{Self}` of a #[resumable_step] must implement `serde::Serialize`",
    label = "the key is serialised (as JSON) into the step's fingerprint",
    note = "derive `serde::Serialize` for it, or key the step on values that have it (strings, numbers, tuples of them)"
)]
pub trait StepKey: Serialize {}
impl<K: Serialize + ?Sized> StepKey for K {}

/// What `#[resumable_step]` fingerprints its key with: [`Fingerprint::of`]
/// with a bound that names the key when it is not serialisable.
pub fn fingerprint<K: StepKey + ?Sized>(
    step: &str,
    key: &K,
    version: u32,
) -> Result<Fingerprint, RunError> {
    Fingerprint::of(step, key, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_key_and_version() {
        let a = Fingerprint::of("s", &("url", "rev"), 1).unwrap();
        assert_eq!(a, Fingerprint::of("s", &("url", "rev"), 1).unwrap());
        assert_ne!(a, Fingerprint::of("s", &("url", "rev2"), 1).unwrap());
        assert_ne!(a, Fingerprint::of("s", &("url", "rev"), 2).unwrap());
    }
}
