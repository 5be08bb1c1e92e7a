//! Make pipelines and workers survive failure.
//!
//! `recovery` retries what failed for a passing reason, with policies
//! declared in source and checked by the compiler:
//!
//! ```
//! use recovery::retryable;
//!
//! #[derive(Debug)]
//! struct FetchError(&'static str);
//! impl std::fmt::Display for FetchError {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         f.write_str(self.0)
//!     }
//! }
//!
//! #[retryable(max_attempts = 5, base = "1ms", jitter)]
//! fn fetch_index(tries: &mut u32) -> Result<&'static str, FetchError> {
//!     *tries += 1;
//!     if *tries < 3 { Err(FetchError("connection reset")) } else { Ok("index") }
//! }
//!
//! let mut tries = 0;
//! assert_eq!(fetch_index(&mut tries).unwrap(), "index");
//! assert_eq!(tries, 3);
//! ```
//!
//! And it runs the steps of a pipeline once: a step whose outputs are
//! committed is not run again after a crash or on the next run, and a
//! half-written output never counts as done:
//!
//! ```
//! use recovery::{Run, resumable_step};
//!
//! #[resumable_step("count", key = text)]
//! fn count_words(run: &Run, text: &str) -> std::io::Result<usize> {
//!     let n = text.split_whitespace().count();
//!     // Staged, then moved into place with the marker: all or nothing.
//!     run.write_output("counts/words.txt", n.to_string().as_bytes())?;
//!     Ok(n)
//! }
//!
//! let tmp = tempfile::tempdir()?;
//! let run = Run::open(tmp.path().join("run"))?;   // the run directory
//! assert_eq!(count_words(&run, "a b c")?, 3);    // runs, commits
//! assert_eq!(count_words(&run, "a b c")?, 3);    // resumed from its marker
//! assert!(run.step("count")?.is_done(&"a b c", 1)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`retryable`] turns a function into a retrying one; every bad
//!   configuration is a compile error that says what to write instead.
//! - [`RetryPolicy`] and [`Backoff`] are the same policies as values, for
//!   [`retry`] / [`retry_async`] or your own loop.
//! - [`Classify`] lets an error say whether it is transient and how long to
//!   wait; it is implemented for [`std::io::Error`].
//! - [`resumable_step`] and [`Run`] make a function a step of a run
//!   directory: resumed when done, its outputs committed atomically; with
//!   `item = ...`, a family of steps, one instance per item.
//! - [`Context`] routes [`Event`]s and [`IssueRecord`]s to an [`Observer`],
//!   and offers virtual time ([`VirtualClock`]) for tests.
//!
//! # Cost
//! A call that succeeds the first time allocates nothing, draws no random
//! number and reads no clock (unless the policy has `max_elapsed`, whose
//! deadline starts with the first attempt).

pub mod fs;
#[cfg(feature = "http")]
pub mod http;
mod report;
mod retry;
#[cfg(feature = "s3")]
mod s3;
mod scope;
mod step;

mod error;

#[doc(hidden)]
#[path = "expansion.rs"]
pub mod __private;

pub use error::RunError;
pub use fs::{atomic_write, atomic_write_with};
pub use report::{
    Event, IssueCode, IssueRecord, LOG_LIMIT, LogRead, Observer, Recorder, Severity, parse_log,
};
pub use retry::{
    Backoff, Classify, Context, ContextBuilder, DEFAULT_BASE, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_DELAY, DEFAULT_MULTIPLIER, Decision, GlobalAlreadySet, IntoDecision, Jitter,
    Retrier, RetryBudget, RetryPolicy, Schedule, Sleep, Sleeper, VirtualClock, WithContext, retry,
    retry_async,
};
pub use scope::Scoped;
pub use step::{
    DEFAULT_LEASE_TTL, Fingerprint, ItemEntry, RUN_FORMAT, Run, RunBuilder, StagedOutput, Step,
    StepExecution, StepId, StepState, StepStore, check_output_path, check_step_name,
};
pub use step::{manifest, marker, store};

/// Retries a function when it returns `Err`.
///
/// ```
/// # use recovery::retryable;
/// #[retryable(max_attempts = 4, base = "10ms", max_delay = "1s", jitter = "equal",
///             when = recovery::Classify::classify)]
/// fn read_config(path: &std::path::Path) -> std::io::Result<String> {
///     std::fs::read_to_string(path)
/// }
/// // NotFound is permanent for io::Error: one call, no waiting.
/// assert!(read_config("/no/such/file".as_ref()).is_err());
/// ```
///
/// # Keys
/// | key | value | default |
/// |---|---|---|
/// | `max_attempts` | integer ≥ 1: every call, the first included | `3` |
/// | `base` | duration: the first delay | `"100ms"` |
/// | `multiplier` | number ≥ 1: growth per retry | `2` |
/// | `max_delay` | duration ≥ `base`: cap on every delay, after jitter | `"30s"` (or `base`) |
/// | `max_elapsed` | duration ≥ `base`: deadline from the first attempt's start | none |
/// | `jitter` | bare (= `"full"`), `"none"`, `"full"`, `"equal"`, `"decorrelated"` | `"none"` |
/// | `when` | path to `fn(&E) -> bool` or `fn(&E) -> Decision` | every `Err` retried |
/// | `name` | string: the operation's name in events | the function's name |
/// | `budget` | path to a `static` [`RetryBudget`] shared with other functions | none |
/// | `crate` | string: path to `recovery` if renamed | `"recovery"` |
///
/// Durations are strings such as `"500us"`, `"200ms"`, `"1.5s"`, `"2m"`,
/// `"1h"`, parsed at compile time.
///
/// # What it accepts
/// Sync and `async` free functions, inherent methods and trait-impl methods
/// returning `Result<T, E>` (or an alias named `Result`, such as
/// `io::Result<T>`), with any error type `E`: events carry its `Display`
/// text, else its `Debug` text, else its type's name. `&self`, `&mut self`, `&mut`
/// arguments, generics, `impl Trait` arguments, `?` and early `return` all
/// work: the body runs again in a loop inside the function. Each attempt
/// gets a clone of every by-value argument (the last attempt gets the
/// original), so those types must be `Clone`. `self` by value is refused.
/// When every attempt fails, the last error is returned unchanged and an
/// [`IssueRecord`] reports why the loop stopped.
///
/// # Limits
/// A body that returns a borrow derived from a `&mut` argument may hit a
/// known limit of the borrow checker (a borrow returned from one loop
/// iteration); return an owned value or re-borrow after the call.
/// Under `#[async_trait]` the method is already a boxed future when this
/// attribute sees it and is refused: retry an inner `async fn` instead.
pub use recovery_macros::retryable;

/// Makes a function a resumable step of a [`Run`]: when the step is done,
/// the body does not run and the recorded value is returned.
///
/// ```
/// use recovery::{resumable_step, Run};
///
/// #[resumable_step("count", key = text)]
/// fn count_words(run: &Run, text: &str, calls: &mut u32) -> std::io::Result<usize> {
///     *calls += 1;
///     let n = text.split_whitespace().count();
///     run.write_output("counts/words.txt", n.to_string().as_bytes())?;
///     Ok(n)
/// }
///
/// let tmp = tempfile::tempdir()?;
/// let run = Run::open(tmp.path())?;
/// let mut calls = 0;
/// assert_eq!(count_words(&run, "a b c", &mut calls)?, 3);
/// assert_eq!(count_words(&run, "a b c", &mut calls)?, 3); // resumed
/// assert_eq!(calls, 1);
/// assert_eq!(std::fs::read_to_string(run.dir().join("counts/words.txt"))?, "3");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Arguments
/// | key | value | default |
/// |---|---|---|
/// | name (first, a string) | the step's name: `[A-Za-z0-9_.-]`, unique in the run | required |
/// | `item` | makes the step a family: each distinct item (any `Serialize` expression; compared by its canonical JSON) is an instance with its own marker, lock and outputs | none: one instance |
/// | `key` | a serialisable value fingerprinted into the marker; a different key reruns the step | `()` |
/// | `version` | integer; bump it to rerun the step after its code changed | `1` |
/// | `run` | where the [`Run`] comes from, when no parameter has type `&Run` | the `&Run` parameter |
/// | `verify` | how outputs are checked before resuming: `"hash"` (every file re-hashed) or `"size_mtime"` (a file with its recorded size and modification time is trusted unread; see [`marker::Verify`]) | `"hash"` |
/// | `crate` | path to `recovery` if renamed | `"recovery"` |
///
/// # What it does
/// The function must return `Result<T, E>` with `T: Serialize +
/// DeserializeOwned` and `E: From<RunError> + Display`. When the step's
/// marker holds (checksum, fingerprint, every output's size and hash), the
/// body does not run, `T` is read from the marker and `STEP_RESUMED` is
/// logged. Otherwise the step's lock is taken, the body runs with the step
/// current (so [`Run::output_dir`], [`Run::output_file`] and
/// [`Run::write_output`] stage outputs), the outputs are committed, the
/// marker is written and `STEP_COMPLETED` is logged. A failing step writes
/// no marker and records a `STEP_FAILED` issue. A `#[retryable]` placed
/// under this attribute retries the body inside the step: the resume check
/// runs once. Events of retries inside a step land in the run's event log.
///
/// # Families
/// With `item = expr`, calls for different items are different instances
/// that resume one by one and may run at once, from threads and processes
/// (one item never runs twice at once). Threads the body starts declare
/// outputs through [`Step::current`].
///
/// ```
/// use recovery::{resumable_step, Run};
///
/// #[resumable_step("page", item = n)]
/// fn page(run: &Run, n: u32, calls: &std::sync::atomic::AtomicU32) -> std::io::Result<u32> {
///     calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     run.write_output(&format!("pages/{n}.txt"), n.to_string().as_bytes())?;
///     Ok(n * 10)
/// }
///
/// let tmp = tempfile::tempdir()?;
/// let run = Run::open(tmp.path())?;
/// let calls = std::sync::atomic::AtomicU32::new(0);
/// std::thread::scope(|s| {
///     for n in 0..4 {
///         let (run, calls) = (&run, &calls);
///         s.spawn(move || page(run, n, calls));
///     }
/// });
/// assert_eq!(page(&run, 2, &calls)?, 20);            // resumed: item 2 is done
/// assert_eq!(calls.into_inner(), 4);
/// assert_eq!(run.items("page")?.count(), 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub use recovery_macros::resumable_step;
