//! Helpers shared by the workspace's integration tests and examples.

use std::fmt;

pub mod fake_api;
pub mod history;
#[cfg(feature = "s3")]
pub mod objects;
pub mod s3_servers;
pub mod simfs;
pub mod store_contract;
pub mod storm;
pub mod tcp_proxy;
pub mod unsynced;

pub use unsynced::Unsynced;

/// `n` and the noun that agrees with it: `count(1, "file", "files")` is
/// "1 file", `count(4, "file", "files")` "4 files".
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `println!` for the examples, whose output is often piped (`| head`):
/// a reader gone away is no failure of the job, which goes on unheard
/// (`println!` panics there). What the job makes is in its files.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout().lock(), $($arg)*);
    }};
}

/// An error whose transience is scripted by the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlakyError {
    /// Whether another attempt may help.
    pub transient: bool,
    /// Which call failed, 1-based.
    pub call: u32,
}

impl fmt::Display for FlakyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.transient {
            "transient"
        } else {
            "permanent"
        };
        write!(f, "{kind} failure on call {}", self.call)
    }
}

impl std::error::Error for FlakyError {}

impl FlakyError {
    /// The classifier for `#[retryable(when = FlakyError::is_transient)]`.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}
