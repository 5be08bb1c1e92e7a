//! `#[retryable]` on every function shape it accepts, run for real under
//! virtual time: attempts, delays, events and issue records are checked.

use std::sync::Arc;
use std::time::Duration;

use recovery::{
    Context, Decision, Event, IssueCode, Recorder, VirtualClock, WithContext, retryable,
};
use recovery_suite::FlakyError;

const MS: Duration = Duration::from_millis(1);

struct Harness {
    clock: VirtualClock,
    recorder: Arc<Recorder>,
    ctx: Context,
}

fn harness() -> Harness {
    let clock = VirtualClock::new();
    let recorder = Arc::new(Recorder::default());
    let ctx = Context::builder()
        .virtual_time(&clock)
        .observer(recorder.clone())
        .seed(7)
        .build();
    Harness {
        clock,
        recorder,
        ctx,
    }
}

/// Fails transiently until call `succeed_on`.
fn flaky(calls: &mut u32, succeed_on: u32) -> Result<u32, FlakyError> {
    *calls += 1;
    if *calls >= succeed_on {
        Ok(*calls)
    } else {
        Err(FlakyError {
            transient: true,
            call: *calls,
        })
    }
}

#[retryable(max_attempts = 5, base = "200ms")]
fn free_fn(calls: &mut u32, succeed_on: u32) -> Result<u32, FlakyError> {
    flaky(calls, succeed_on)
}

#[test]
fn free_function_retries_until_success_with_exponential_delays() {
    let h = harness();
    let mut calls = 0;
    assert_eq!(h.ctx.in_scope(|| free_fn(&mut calls, 4)), Ok(4));
    assert_eq!(h.clock.slept(), [200 * MS, 400 * MS, 800 * MS]);
    let events = h.recorder.events();
    assert_eq!(events.len(), 3);
    let Event::RetryAttempted {
        operation,
        attempt,
        error,
        delay_ns,
        ..
    } = &events[2]
    else {
        panic!("unexpected event {:?}", events[2])
    };
    assert_eq!(operation, "free_fn");
    assert_eq!(*attempt, 3);
    assert_eq!(error, "transient failure on call 3");
    assert_eq!(*delay_ns, 800_000_000);
}

#[test]
fn giving_up_returns_the_last_error_unchanged_and_reports_why() {
    let h = harness();
    let mut calls = 0;
    let r = h.ctx.in_scope(|| free_fn(&mut calls, 100));
    assert_eq!(
        r,
        Err(FlakyError {
            transient: true,
            call: 5
        })
    );
    let issues = h.recorder.issues();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].error_code, IssueCode::MaxRetriesExceeded);
    assert_eq!(issues[0].operation, "free_fn");
    assert_eq!(issues[0].attempts, 5);
    assert_eq!(issues[0].slept_ns, (200 + 400 + 800 + 1600) * 1_000_000);
    let json = serde_json::to_value(&issues[0]).unwrap();
    assert_eq!(json["error_code"], "MAX_RETRIES_EXCEEDED");
    assert_eq!(json["severity"], "BLOCKER");
}

#[retryable(max_attempts = 5, base = "10ms", when = FlakyError::is_transient)]
fn classified(script: &mut Vec<bool>) -> Result<(), FlakyError> {
    let transient = script.remove(0);
    Err(FlakyError { transient, call: 0 })
}

#[test]
fn a_permanent_error_stops_at_once() {
    let h = harness();
    let mut script = vec![true, false, true, true];
    let r = h.ctx.in_scope(|| classified(&mut script));
    assert!(!r.unwrap_err().transient);
    assert_eq!(script.len(), 2, "two calls were made");
    assert_eq!(h.recorder.issues()[0].error_code, IssueCode::PermanentError);
}

fn hinted(e: &FlakyError) -> Decision {
    Decision::RetryAfter(Duration::from_millis(u64::from(e.call) * 1000))
}

#[retryable(max_attempts = 3, base = "10ms", max_delay = "1500ms", when = hinted)]
fn with_hints(calls: &mut u32) -> Result<(), FlakyError> {
    *calls += 1;
    Err(FlakyError {
        transient: true,
        call: *calls,
    })
}

#[test]
fn retry_after_hints_are_bounded_by_max_delay() {
    let h = harness();
    let mut calls = 0;
    assert!(h.ctx.in_scope(|| with_hints(&mut calls)).is_err());
    assert_eq!(h.clock.slept(), [1000 * MS, 1500 * MS]);
}

#[retryable(max_attempts = 10, base = "100ms", max_elapsed = "1s")]
fn slow_and_failing(clock: &VirtualClock, calls: &mut u32) -> Result<(), FlakyError> {
    *calls += 1;
    clock.advance(50 * MS);
    Err(FlakyError {
        transient: true,
        call: *calls,
    })
}

#[test]
fn the_deadline_is_never_slept_past() {
    let h = harness();
    let mut calls = 0;
    assert!(
        h.ctx
            .in_scope(|| slow_and_failing(&h.clock, &mut calls))
            .is_err()
    );
    assert!(h.clock.now() <= Duration::from_secs(1));
    assert_eq!(calls, 4);
    assert_eq!(
        h.recorder.issues()[0].error_code,
        IssueCode::DeadlineExceeded
    );
}

// By-value arguments are cloned per attempt; `mut` patterns, generics,
// `impl Trait`, `where` clauses and `?` work.
#[derive(Clone, Debug, PartialEq)]
struct Job {
    id: u32,
    tags: Vec<String>,
}

#[retryable(max_attempts = 3, base = "1ms", name = "consume")]
fn consumes<T>(
    mut job: Job,
    extra: T,
    sink: impl Fn(&Job) -> Result<(), FlakyError> + Clone,
) -> Result<u64, FlakyError>
where
    T: Into<u64> + std::fmt::Debug + Clone,
{
    job.tags.push("seen".into()); // mutates this attempt's own copy
    sink(&job)?;
    let moved = job; // the attempt owns its copy
    Ok(u64::from(moved.id) + extra.into())
}

#[test]
fn by_value_arguments_are_fresh_at_each_attempt() {
    let h = harness();
    let seen = std::cell::RefCell::new(Vec::new());
    let sink = |j: &Job| {
        seen.borrow_mut().push(j.tags.len());
        if seen.borrow().len() < 3 {
            Err(FlakyError {
                transient: true,
                call: 0,
            })
        } else {
            Ok(())
        }
    };
    let job = Job {
        id: 40,
        tags: vec![],
    };
    let r = h.ctx.in_scope(|| consumes(job, 2u8, sink));
    assert_eq!(r, Ok(42));
    // Each attempt saw exactly one tag: no attempt saw another's mutation.
    assert_eq!(*seen.borrow(), [1, 1, 1]);
    match &h.recorder.events()[0] {
        Event::RetryAttempted { operation, .. } => assert_eq!(operation, "consume"),
        other => panic!("unexpected {other:?}"),
    }
}

#[retryable(max_attempts = 4, base = "1ms")]
fn early_return(calls: &mut u32) -> Result<&'static str, String> {
    *calls += 1;
    if *calls == 1 {
        return Err("first".into());
    }
    let n: u32 = "x".parse().map_err(|_| format!("parse on call {calls}"))?;
    Ok(if n == 0 { "zero" } else { "other" })
}

#[test]
fn return_and_question_mark_end_just_one_attempt() {
    let h = harness();
    let mut calls = 0;
    let r = h.ctx.in_scope(|| early_return(&mut calls));
    assert_eq!(r, Err("parse on call 4".into()));
    assert_eq!(calls, 4);
}

struct Client {
    pushed: Vec<u32>,
    failures_left: u32,
    name: String,
}

impl Client {
    #[retryable(max_attempts = 8, base = "50ms", multiplier = 3, max_delay = "5s",
                max_elapsed = "30s", jitter = "decorrelated", when = FlakyError::is_transient)]
    async fn push(&mut self, batch: &[u32]) -> Result<usize, FlakyError> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(FlakyError {
                transient: true,
                call: self.failures_left,
            });
        }
        self.pushed.extend_from_slice(batch);
        Ok(self.pushed.len())
    }

    #[retryable(max_attempts = 2, base = "1ms")]
    fn name_ref(&self) -> Result<&str, FlakyError> {
        Ok(&self.name)
    }

    #[retryable(max_attempts = 3, base = "1ms")]
    fn bump(&mut self, by: u32) -> Result<u32, FlakyError> {
        self.pushed.push(by);
        if self.pushed.len() < 2 {
            return Err(FlakyError {
                transient: true,
                call: 1,
            });
        }
        Ok(Self::total(self))
    }

    fn total(&self) -> u32 {
        self.pushed.iter().sum()
    }
}

#[tokio::test]
async fn async_method_with_mut_self_retries_under_virtual_time() {
    let h = harness();
    let mut client = Client {
        pushed: vec![],
        failures_left: 3,
        name: "c".into(),
    };
    let n = client
        .push(&[1, 2, 3])
        .with_context(h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(n, 3);
    let slept = h.clock.slept();
    assert_eq!(slept.len(), 3);
    // Decorrelated: each delay in [base, 3 x previous], never above max_delay.
    let mut previous = 50 * MS;
    for d in slept {
        assert!(d >= 50 * MS && d <= (previous * 3).min(Duration::from_secs(5)));
        previous = d;
    }
}

/// Each attempt's future owns its by-value argument and its reborrow of
/// `log`: both must be whole again for the next attempt.
#[retryable(max_attempts = 4, base = "10ms")]
async fn append_owned(
    mut word: String,
    log: &mut Vec<String>,
    fail_first: u32,
) -> Result<usize, String> {
    word.push('!');
    log.push(word);
    if (log.len() as u32) <= fail_first {
        return Err(format!("attempt {} down", log.len()));
    }
    Ok(log.len())
}

#[tokio::test]
async fn async_attempts_own_fresh_arguments_and_reborrow_mut_references() {
    let h = harness();
    let mut log = Vec::new();
    let r = append_owned("hi".to_string(), &mut log, 2)
        .with_context(h.ctx.clone())
        .await;
    assert_eq!(r, Ok(3));
    // Every attempt got the argument as passed, not the previous one's edit.
    assert_eq!(log, ["hi!", "hi!", "hi!"]);
    assert_eq!(h.clock.slept(), [10 * MS, 20 * MS]);
}

#[test]
fn methods_taking_self_by_reference_work() {
    let h = harness();
    let mut client = Client {
        pushed: vec![],
        failures_left: 0,
        name: "main".into(),
    };
    assert_eq!(client.name_ref(), Ok("main"));
    assert_eq!(h.ctx.in_scope(|| client.bump(5)), Ok(10));
    assert_eq!(client.pushed, [5, 5]);
}

trait Fetch {
    fn fetch(&mut self) -> std::io::Result<u8>;
    fn fetch_twice(&mut self) -> std::io::Result<u8>;
}

struct Source(Vec<std::io::Result<u8>>);

impl Fetch for Source {
    #[retryable(max_attempts = 5, base = "1ms", when = recovery::Classify::classify)]
    fn fetch(&mut self) -> std::io::Result<u8> {
        self.0.remove(0)
    }

    #[retryable(max_attempts = 2, base = "1ms")]
    fn fetch_twice(&mut self) -> std::io::Result<u8> {
        let a = self.fetch()?;
        Ok(a * 2)
    }
}

#[test]
fn trait_impl_methods_with_io_result_and_io_classification() {
    use std::io::{Error, ErrorKind};
    let h = harness();
    let mut src = Source(vec![
        Err(Error::from(ErrorKind::ConnectionReset)),
        Err(Error::from(ErrorKind::TimedOut)),
        Ok(21),
    ]);
    assert_eq!(h.ctx.in_scope(|| src.fetch_twice()).unwrap(), 42);

    let mut src = Source(vec![Err(Error::from(ErrorKind::NotFound)), Ok(1)]);
    let e = h.ctx.in_scope(|| src.fetch()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(src.0.len(), 1, "a permanent io error is not retried");
}

trait WithDefault {
    fn value(&self) -> u32;

    #[retryable(max_attempts = 3, base = "1ms")]
    fn checked(&self) -> Result<u32, String> {
        let v = self.value();
        if v == 0 { Err("zero".into()) } else { Ok(v) }
    }
}

impl WithDefault for u32 {
    fn value(&self) -> u32 {
        *self
    }
}

#[test]
fn trait_default_methods_retry_too() {
    let h = harness();
    assert_eq!(h.ctx.in_scope(|| 0u32.checked()), Err("zero".into()));
    assert_eq!(h.clock.slept().len(), 2);
    assert_eq!(7u32.checked(), Ok(7));
}

#[retryable(max_attempts = 2, base = "1ms")]
fn lifetimes<'a, 'b: 'a>(a: &'a str, _b: &'b str) -> Result<&'a str, String> {
    if a.is_empty() {
        Err("empty".into())
    } else {
        Ok(a)
    }
}

#[retryable(max_attempts = 2, base = "1ms")]
fn elided(a: &str) -> Result<&str, String> {
    Ok(a.trim())
}

#[retryable(max_attempts = 2, base = "1ms")]
async fn lifetimes_async<'a, 'b: 'a>(a: &'a str, _b: &'b str) -> Result<&'a str, String> {
    if a.is_empty() {
        Err("empty".into())
    } else {
        Ok(a)
    }
}

#[retryable(max_attempts = 2, base = "1ms")]
async fn elided_async(a: &str, owned: String) -> Result<&str, String> {
    Ok(a.trim_start_matches(owned.as_str()))
}

/// What the sync form accepts, in an async fn: generics with a `where`
/// clause, an `impl Trait` argument taken by value, and a method that
/// returns a borrow of `self`.
#[retryable(max_attempts = 2, base = "1ms")]
async fn generic_async<T>(item: T, measure: impl Fn(&T) -> usize + Clone) -> Result<usize, String>
where
    T: Clone + std::fmt::Debug,
{
    Ok(measure(&item))
}

struct Named {
    name: String,
}

impl Named {
    #[retryable(max_attempts = 2, base = "1ms")]
    async fn name_of(&self, prefix: &str) -> Result<&str, String> {
        self.name
            .strip_prefix(prefix)
            .ok_or_else(|| format!("no prefix {prefix}"))
    }
}

#[tokio::test]
async fn async_generics_impl_trait_and_borrows_of_self() {
    assert_eq!(
        generic_async(vec![1, 2, 3], |v: &Vec<i32>| v.len()).await,
        Ok(3)
    );
    let n = Named { name: "x-y".into() };
    assert_eq!(n.name_of("x-").await, Ok("y"));
}

#[test]
fn lifetimes_named_and_elided() {
    assert_eq!(lifetimes("x", "y"), Ok("x"));
    assert_eq!(elided(" y "), Ok("y"));
}

#[tokio::test]
async fn lifetimes_named_and_elided_in_async_fns() {
    assert_eq!(lifetimes_async("x", "y").await, Ok("x"));
    assert_eq!(elided_async("--y", "-".into()).await, Ok("y"));
}

/// A user's own `Result` alias and a local module named `recovery` do not
/// confuse the expansion.
mod shadowing {
    #![allow(dead_code)]
    type Result<T> = std::result::Result<T, String>;
    mod recovery {}
    struct Ok;
    struct Err;

    #[::recovery::retryable(max_attempts = 2, base = "1ms")]
    pub fn shadowed(x: u32) -> Result<u32> {
        use std::time::Duration as Clone; // a `use` in the body stays local
        let _ = Clone::ZERO;
        if x > 0 {
            std::result::Result::Ok(x)
        } else {
            std::result::Result::Err("zero".into())
        }
    }
}

#[test]
fn user_names_do_not_clash_with_the_expansion() {
    assert_eq!(shadowing::shadowed(3), Ok(3));
}

mod renamed {
    pub use ::recovery as my_recovery;
}

#[recovery::retryable(crate = "renamed::my_recovery", max_attempts = 2, base = "1ms")]
fn through_renamed_crate() -> Result<(), String> {
    Ok(())
}

#[test]
fn crate_key_reaches_a_renamed_dependency() {
    assert_eq!(through_renamed_crate(), Ok(()));
}

#[retryable(max_attempts = 3, base = "20ms", jitter)]
fn jittered(calls: &mut u32) -> Result<(), String> {
    *calls += 1;
    Err(format!("{calls}"))
}

#[test]
fn same_seed_same_failures_same_delays() {
    let run = || {
        let h = harness();
        let mut calls = 0;
        let _ = h.ctx.in_scope(|| jittered(&mut calls));
        h.clock.slept()
    };
    let a = run();
    assert_eq!(a.len(), 2);
    assert_eq!(a, run());
    assert!(a[0] <= 20 * MS && a[1] <= 40 * MS);
}

#[test]
fn parallel_scopes_do_not_see_each_others_events() {
    let threads: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let h = harness();
                let mut calls = 0;
                let _ = h.ctx.in_scope(|| free_fn(&mut calls, i + 2));
                (i, h.recorder.events().len())
            })
        })
        .collect();
    for t in threads {
        let (i, events) = t.join().unwrap();
        assert_eq!(events as u32, i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_follows_a_task_across_threads() {
    let h = harness();
    let task = tokio::spawn(
        async {
            let mut client = Client {
                pushed: vec![],
                failures_left: 2,
                name: String::new(),
            };
            tokio::task::yield_now().await;
            client.push(&[9]).await
        }
        .with_context(h.ctx.clone()),
    );
    assert_eq!(task.await.unwrap(), Ok(1));
    assert_eq!(h.recorder.events().len(), 2);
    assert_eq!(h.clock.slept().len(), 2);
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn async_retryable_futures_are_send() {
    let mut client = Client {
        pushed: vec![],
        failures_left: 0,
        name: String::new(),
    };
    let fut = client.push(&[]);
    assert_send(&fut);
}

/// An error that is not `Send` lives only until the retry decides, never
/// across the sleep, so the future stays `Send`.
#[retryable(max_attempts = 3, base = "1ms")]
async fn rc_error(calls: &mut u32) -> Result<u32, std::rc::Rc<str>> {
    *calls += 1;
    if *calls < 3 {
        return Err(format!("attempt {calls} down").into());
    }
    Ok(*calls)
}

#[tokio::test]
async fn a_non_send_error_does_not_make_the_future_non_send() {
    let h = harness();
    let mut calls = 0;
    let fut = rc_error(&mut calls).with_context(h.ctx.clone());
    assert_send(&fut);
    assert_eq!(fut.await.ok(), Some(3));
    assert_eq!(h.clock.slept(), [MS, 2 * MS]);
}

/// With one attempt allowed, the first is the last: a by-value argument is
/// handed over as passed, never cloned.
#[derive(Debug)]
struct CountsClones(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Clone for CountsClones {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CountsClones(self.0.clone())
    }
}

#[retryable(max_attempts = 1)]
async fn once(arg: CountsClones) -> Result<u32, String> {
    Ok(arg.0.load(std::sync::atomic::Ordering::Relaxed))
}

#[retryable(max_attempts = 2, base = "1ms")]
async fn twice(arg: CountsClones, fail_first: &mut bool) -> Result<u32, String> {
    if std::mem::take(fail_first) {
        return Err("first down".into());
    }
    Ok(arg.0.load(std::sync::atomic::Ordering::Relaxed))
}

#[tokio::test]
async fn async_arguments_are_cloned_only_for_attempts_before_the_last() {
    let h = harness();
    let clones = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = once(CountsClones(clones.clone())).with_context(h.ctx.clone());
    assert_eq!(r.await, Ok(0));
    // Two attempts allowed: the first gets a clone, the last the original.
    let mut fail_first = true;
    let r = twice(CountsClones(clones.clone()), &mut fail_first).with_context(h.ctx.clone());
    assert_eq!(r.await, Ok(1));
    assert_eq!(clones.load(std::sync::atomic::Ordering::Relaxed), 1);
}

mod any_error_type {
    //! Error types without `Display` are taken as backon and tenacity take
    //! them: the text comes from `Debug`, else from the type's name.
    use recovery::{Context, Event, Recorder, VirtualClock, retryable};
    use std::sync::Arc;

    #[derive(Debug)]
    pub struct DebugOnly {
        #[expect(dead_code, reason = "read only through Debug, which is the point")]
        pub code: u16,
    }

    pub struct Nothing;

    pub type Result<T> = std::result::Result<T, DebugOnly>;

    #[retryable(max_attempts = 2, base = "1ms")]
    fn debug_only() -> Result<()> {
        Err(DebugOnly { code: 503 })
    }

    #[retryable(max_attempts = 2, base = "1ms")]
    fn unit_error() -> std::result::Result<u8, ()> {
        Err(())
    }

    #[retryable(max_attempts = 2, base = "1ms")]
    fn no_text_at_all() -> std::result::Result<u8, Nothing> {
        Err(Nothing)
    }

    #[retryable(max_attempts = 2, base = "1ms")]
    async fn debug_only_async() -> Result<()> {
        Err(DebugOnly { code: 429 })
    }

    fn first_error(f: impl FnOnce()) -> String {
        let recorder = Arc::new(Recorder::default());
        let ctx = Context::builder()
            .virtual_time(&VirtualClock::new())
            .observer(recorder.clone())
            .build();
        ctx.in_scope(f);
        match &recorder.events()[0] {
            Event::RetryAttempted { error, .. } => error.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_text_comes_from_debug_else_the_type_name() {
        assert_eq!(
            first_error(|| assert!(debug_only().is_err())),
            "DebugOnly { code: 503 }"
        );
        assert_eq!(first_error(|| assert!(unit_error().is_err())), "()");
        let name = first_error(|| assert!(no_text_at_all().is_err()));
        assert!(name.contains("any_error_type::Nothing"), "{name}");
        let text = first_error(|| {
            let fut = debug_only_async();
            let out = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(fut);
            assert!(out.is_err());
        });
        assert_eq!(text, "DebugOnly { code: 429 }");
    }
}
