//! The example pipeline: clone a repository with the real `git`, then a
//! worker stage writes a manifest and a summary; every step resumes after a
//! crash and transient failures are retried.
//!
//!     cargo run --example pipeline                      # the demo, in runs/demo
//!     cargo run --example pipeline -- --simulate-failure
//!     cargo run --example pipeline -- --crash-after clone   # then run again: it resumes
//!     cargo run --example pipeline -- --repo https://...    # clone something else
//!     cargo run --example pipeline -- --repo A --repo B --repo C --jobs 3
//!                                   # a pool: each repository cloned and indexed
//!                                   # as an item of two step families
//!     cargo run --example pipeline --features s3 -- --run-dir A --store s3://bucket/p
//!                                   # state shared on S3: another machine's
//!                                   # --run-dir B resumes what A did

mod crash;
mod pool;
mod proxy;
mod report;
mod source;
mod steps;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use clap::Parser;
use recovery::{Context, Run};
use recovery_suite::{count, say};

use crate::crash::Point;
use crate::report::Progress;
use crate::steps::{FlakyWorker, build_manifest, clone_repo, write_summary};

const STEPS: &[&str] = &["clone", "manifest", "summary"];

#[derive(Parser)]
#[command(about = "Clone a repository, build a manifest and a summary; resume after any crash")]
struct Args {
    /// The run directory (created if missing; reused to resume).
    #[arg(long, default_value = "runs/demo")]
    run_dir: PathBuf,
    /// Clone this (a path or a URL) instead of the built-in demo repository.
    /// Given more than once, the repositories are a pool: each is cloned
    /// and indexed as an item of the families `clone-repo` and `index-repo`.
    #[arg(long)]
    repo: Vec<String>,
    /// A file of repositories for a pool, one per line (blank lines and
    /// lines starting with `#` are skipped).
    #[arg(long, value_name = "FILE")]
    repos: Option<PathBuf>,
    /// Threads that clone and index a pool's repositories at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// End the process abruptly (SIGKILL) once this many of a pool's
    /// repositories are newly indexed (one at a time, so exactly this
    /// many); run again to resume the rest.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    crash_after_items: Option<u32>,
    /// Put a flaky proxy in front of the git server that drops the first
    /// connections, and make the worker fail on its first attempts.
    #[arg(long)]
    simulate_failure: bool,
    /// Connections the flaky proxy drops before it forwards any.
    #[arg(long, default_value_t = 2)]
    drops: u32,
    /// End the process abruptly (SIGKILL) right after this step.
    #[arg(long, value_name = "STEP", value_parser = clap::builder::PossibleValuesParser::new(STEPS))]
    crash_after: Option<String>,
    /// End the process abruptly inside this step, outputs half-written.
    #[arg(long, value_name = "STEP", value_parser = clap::builder::PossibleValuesParser::new(STEPS))]
    crash_inside: Option<String>,
    /// Wait inside this step (to be killed from outside, as the tests do).
    #[arg(long, value_name = "STEP", value_parser = clap::builder::PossibleValuesParser::new(STEPS))]
    pause_inside: Option<String>,
    /// Keep the run's step state in this shared store (s3://bucket/prefix;
    /// build with --features s3, configure with the AWS_* variables):
    /// another machine with its own --run-dir resumes what this one did.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The jitter seed: the same seed and the same failures give the same run.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match pipeline(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn pipeline(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    crash::set(crash::Plan {
        crash_after: args.crash_after.clone(),
        crash_inside: args.crash_inside.clone(),
        pause_inside: args.pause_inside.clone(),
    });
    // The arguments are checked before the run directory is made: a bad
    // one leaves nothing behind.
    let mut repos = args.repo.clone();
    if let Some(file) = &args.repos {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the repository list {}: {e}", file.display()))?;
        repos.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let is_pool = repos.len() > 1 || args.repos.is_some() || args.jobs > 1;
    if is_pool && repos.is_empty() {
        return Err(
            "a pool needs repositories: give --repo more than once, or --repos FILE".into(),
        );
    }
    if !is_pool && args.crash_after_items.is_some() {
        return Err(
            "--crash-after-items is for a pool of repositories (--repo given more than \
                    once, or --repos FILE)"
                .into(),
        );
    }
    let run = match &args.store {
        Some(url) => Run::builder(&args.run_dir).store(url).open()?,
        None => Run::open(&args.run_dir)?,
    };
    say!("run directory: {}", run.dir().display());
    if is_pool {
        return pool(&run, &repos, &args);
    }

    // The source: a URL given, or the demo repository served on loopback.
    // `head` is where the source's HEAD points now: the clone is keyed on
    // it, so new commits rerun the clone and nothing else does.
    let (url, source, ask_head) = match repos.first() {
        Some(repo) => (repo.clone(), repo.clone(), repo.clone()),
        None => {
            let mut name = run.dir().file_name().unwrap_or_default().to_owned();
            name.push(".source");
            let base = run.dir().with_file_name(name);
            std::fs::create_dir_all(&base)?;
            let bare = source::demo_repository(&base)?;
            let server = source::serve(&base)?;
            let addr = if args.simulate_failure {
                let (proxy, _) = proxy::start(server, args.drops)?;
                say!(
                    "serving the demo repository on {server}, through a flaky proxy on {proxy} \
                     that drops the first {}",
                    count(args.drops, "connection", "connections")
                );
                proxy
            } else {
                say!("serving the demo repository on {server}");
                server
            };
            // Its HEAD is asked of the repository itself, not through the
            // flaky proxy, whose dropped connections are the clone's to meet.
            let ask_head = bare.to_string_lossy().into_owned();
            (
                format!("git://{addr}/demo.git"),
                "demo".to_owned(),
                ask_head,
            )
        }
    };

    let progress = Arc::new(Progress::default());
    let ctx = Context::builder()
        .observer(progress.clone())
        .seed(args.seed)
        .build();
    let worker = FlakyWorker {
        fail_first: if args.simulate_failure { 2 } else { 0 },
        calls: AtomicU32::new(0),
    };

    let result = ctx.in_scope(|| -> Result<steps::Summary, steps::PipelineError> {
        let head = steps::remote_head(&ask_head)?;
        let cloned = clone_repo(&run, &source, &head, &url)?;
        crash::maybe(&run, Point::After("clone"));
        let info = build_manifest(&run, &cloned.checkout(&run), &cloned.commit, &worker)?;
        crash::maybe(&run, Point::After("manifest"));
        let summary = write_summary(&run, &cloned.commit, &info)?;
        crash::maybe(&run, Point::After("summary"));
        Ok(summary)
    });

    let outcome = if result.is_ok() { "success" } else { "failed" };
    let log = progress.log(args.seed, &source, STEPS, outcome);
    let artifacts = run.dir().join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let mut json = serde_json::to_vec_pretty(&log)?;
    json.push(b'\n');
    recovery::atomic_write(&artifacts.join("recovery_log.json"), &json)?;

    let summary = result?;
    say!();
    for step in &log.steps {
        let retries = count(step.attempts.len() as u64, "retry", "retries");
        say!("  {:<9} {:<8} {retries}", step.step, step.outcome);
    }
    say!(
        "commit {}: {}, {}, {}",
        &summary.commit[..summary.commit.len().min(12)],
        count(summary.files, "file", "files"),
        count(summary.lines, "line", "lines"),
        count(summary.bytes, "byte", "bytes")
    );
    say!("artifacts in {}", artifacts.display());
    Ok(())
}

/// A pool of repositories, cloned and indexed on `--jobs` threads; writes
/// `artifacts/pool.json` (one entry per repository, in the order given).
fn pool(run: &Run, repos: &[String], args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    say!(
        "{} on {}",
        count(repos.len() as u64, "repository", "repositories"),
        count(args.jobs, "thread", "threads")
    );
    let progress = Arc::new(Progress::default());
    progress.bar_for("index-repo", repos.len() as u64);
    let ctx = Context::builder()
        .observer(progress.clone())
        .seed(args.seed)
        .build();
    let outcomes = pool::run(
        run,
        repos,
        usize::from(args.jobs),
        args.crash_after_items,
        &ctx,
    );
    progress.finish();
    let artifacts = run.dir().join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let mut json = serde_json::to_vec_pretty(&outcomes)?;
    json.push(b'\n');
    recovery::atomic_write(&artifacts.join("pool.json"), &json)?;
    let failed = outcomes.iter().filter(|o| o.outcome != "done").count();
    say!();
    for o in &outcomes {
        match (&o.index, &o.error) {
            (Some(i), _) => say!(
                "  {:<40} {}, {}",
                o.repo,
                count(i.files, "file", "files"),
                count(i.lines, "line", "lines")
            ),
            (None, Some(e)) => say!("  {:<40} failed: {e}", o.repo),
            (None, None) => say!("  {:<40} {}", o.repo, o.outcome),
        }
    }
    say!("artifacts in {}", artifacts.display());
    if failed > 0 {
        let all = count(outcomes.len() as u64, "repository", "repositories");
        return Err(format!("{failed} of {all} failed").into());
    }
    Ok(())
}
