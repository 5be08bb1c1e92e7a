//! An API client that meets rate limits: a fake API on loopback answers
//! each item's first request with 429 and `retry-after-ms`, the second with
//! 503 and an HTTP-date `Retry-After`, drops the third connection, and
//! answers the fourth. Each item is fetched inside a `#[resumable_step]`
//! (a family, one instance per item) with `#[retryable]` under it, which
//! waits as the server asks; a second run resumes every item.
//!
//!     cargo run --example api_client --features http
//!     cargo run --example api_client --features http -- --run-dir runs/api --items 5

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use recovery::http::{StatusError, check};
use recovery::{Classify, Context, Decision, Event, IssueRecord, Observer, Run, RunError};
use recovery::{resumable_step, retryable};
use recovery_suite::fake_api::{FakeApi, Reply};
use recovery_suite::{count, say};

#[derive(Parser)]
#[command(about = "Fetch items from a rate-limiting API on loopback; resume on a second run")]
struct Args {
    /// The run directory (created if missing; reused to resume).
    #[arg(long, default_value = "runs/api")]
    run_dir: std::path::PathBuf,
    /// How many items to fetch, at once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    items: u32,
}

/// Why a fetch failed: the API's answer, the connection, or the run.
#[derive(Debug)]
enum ApiError {
    Status(StatusError),
    Transport(ureq::Error),
    Run(RunError),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Status(e) => write!(f, "{e}"),
            ApiError::Transport(e) => write!(f, "transport: {e}"),
            ApiError::Run(e) => write!(f, "{e}"),
        }
    }
}

impl Classify for ApiError {
    fn classify(&self) -> Decision {
        match self {
            ApiError::Status(e) => e.classify(),
            ApiError::Transport(e) => e.classify(),
            ApiError::Run(_) => Decision::Permanent,
        }
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        ApiError::Run(e)
    }
}

impl From<StatusError> for ApiError {
    fn from(e: StatusError) -> Self {
        ApiError::Status(e)
    }
}

impl From<ureq::Error> for ApiError {
    fn from(e: ureq::Error) -> Self {
        ApiError::Transport(e)
    }
}

/// One item, fetched once: its body is the step's output and value.
#[resumable_step("fetch", item = n)]
#[retryable(max_attempts = 6, base = "50ms", max_delay = "3s", jitter,
            when = Classify::classify)]
fn fetch(run: &Run, agent: &ureq::Agent, base: &str, n: u32) -> Result<String, ApiError> {
    let mut resp = agent.get(&format!("{base}/items/{n}")).call()?;
    // The one line that turns a 4xx/5xx and its headers into a decision.
    check(resp.status(), resp.headers())?;
    let body = resp.body_mut().read_to_string()?;
    run.write_output(&format!("items/{n}.json"), body.as_bytes())?;
    Ok(body)
}

/// Prints each decision the retry loop makes, and each step's outcome.
struct Printer;

impl Observer for Printer {
    fn on_event(&self, event: &Event) {
        say!("{event}");
    }

    fn on_issue(&self, issue: &IssueRecord) {
        say!("[{}] gave up: {}", issue.operation, issue.last_error);
    }
}

/// The fake API's script for each item.
fn script(path: &str, nth: u32) -> Reply {
    match nth {
        1 => Reply::with(429, "retry-after-ms", "200"),
        2 => {
            let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(1));
            Reply::with(503, "Retry-After", &at)
        }
        3 => Reply::Drop,
        _ => Reply::status(200, &format!("{{\"path\":\"{path}\"}}")),
    }
}

fn main() -> std::process::ExitCode {
    match client(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn client(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let api = FakeApi::start(script)?;
    say!("a rate-limiting API on {}", api.url());
    let run = Run::open(&args.run_dir)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let ctx = Context::builder().observer(Arc::new(Printer)).build();
    let base = api.url();
    let results: Vec<Result<String, ApiError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (1..=args.items)
            .map(|n| {
                let (run, agent, base, ctx) = (&run, &agent, &base, &ctx);
                s.spawn(move || ctx.in_scope(|| fetch(run, agent, base, n)))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(ApiError::Run(RunError::NoActiveStep)))
            })
            .collect()
    });
    let mut failed = 0;
    for (n, result) in (1..=args.items).zip(&results) {
        match result {
            Ok(body) => say!("item {n}: {body}"),
            Err(e) => {
                failed += 1;
                say!("item {n}: failed: {e}");
            }
        }
    }
    say!(
        "{} made; outputs in {}",
        count(
            api.requests.lock().map(|r| r.len() as u64).unwrap_or(0),
            "request",
            "requests"
        ),
        run.dir().join("items").display()
    );
    if failed > 0 {
        return Err(format!("{} failed", count(failed as u64, "item", "items")).into());
    }
    Ok(())
}
