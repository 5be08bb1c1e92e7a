//! `recovery`: inspect and repair run directories.
//!
//!     recovery status RUN_DIR [--allow-outside DIR]... [--items] [--json]
//!                                  every step: done, running, failed, not done;
//!                                  a family summed up (each item with --items)
//!     recovery events RUN_DIR [--type T] [--step S] [--json]
//!     recovery issues RUN_DIR [--json]
//!     recovery reset RUN_DIR STEP [--item JSON | --all] [--no-wait] [--json]
//!                                  invalidate one step or item (atomically)
//!     recovery verify RUN_DIR [--allow-outside DIR]... [--json]   re-hash every recorded output
//!
//! `--store URL` (any command) reads and changes a run whose state is kept
//! in a shared store (`s3://bucket/prefix`, with the cargo feature `s3`;
//! the `AWS_*` variables configure it). RUN_DIR is then this machine's
//! working directory, where outputs are fetched to be verified; `status`,
//! `events`, `issues` and `verify` use a scratch directory when it is
//! left out.
//!
//! Outputs that steps placed outside the run directory are read only under
//! the places named with `--allow-outside`, as the program that ran the
//! steps allowed them (`Run::allow_outside`); elsewhere they are reported.
//!
//! Exit status: 0 when all is well, 1 when something in the run is invalid
//! (`status`, `verify`), 2 on a usage error or a directory that is not a run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

mod families;

use clap::{Parser, Subcommand};
use recovery::marker::{MarkerState, Verify};
use recovery::{Event, IssueCode, IssueRecord, Run, RunError, StepState};

#[derive(Parser)]
#[command(
    name = "recovery",
    version,
    about = "Inspect and repair recovery run directories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The run's shared store (s3://bucket/prefix), where its step state is
    /// kept when it is not in the run directory.
    #[arg(long, global = true, value_name = "URL")]
    store: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Every step the run knows of: done (outputs verified), running, failed or not done.
    Status {
        /// The run directory (optional with --store).
        run_dir: Option<PathBuf>,
        /// A directory outside the run where steps placed outputs (repeatable).
        #[arg(long, value_name = "DIR")]
        allow_outside: Vec<PathBuf>,
        /// Each item of a family, after its summary.
        #[arg(long)]
        items: bool,
        /// One JSON object per step (and per item with --items).
        #[arg(long)]
        json: bool,
    },
    /// The event log, oldest first.
    Events {
        /// The run directory (optional with --store).
        run_dir: Option<PathBuf>,
        /// Only events of this kind, e.g. RETRY_ATTEMPTED (in any case).
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// Only events about this step or operation.
        #[arg(long)]
        step: Option<String>,
        /// One JSON object per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// The issue log, oldest first.
    Issues {
        /// The run directory (optional with --store).
        run_dir: Option<PathBuf>,
        /// One JSON object per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// Invalidates one step: its marker is removed, so it runs again.
    /// Waits (and says so) while another process runs the step.
    Reset {
        /// The run directory.
        run_dir: PathBuf,
        /// The step's name (a family's, with --item or --all).
        step: String,
        /// One item of the family STEP, as JSON (e.g. '"repo-a"' or '3').
        #[arg(long, value_name = "JSON", conflicts_with = "all")]
        item: Option<String>,
        /// Every item of the family STEP (and the plain step, if one).
        #[arg(long)]
        all: bool,
        /// Do not wait for a process running the step: exit 2 at once.
        #[arg(long)]
        no_wait: bool,
        /// Say what was done as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Re-hashes every recorded output and reports mismatches.
    Verify {
        /// The run directory (optional with --store).
        run_dir: Option<PathBuf>,
        /// A directory outside the run where steps placed outputs (repeatable).
        #[arg(long, value_name = "DIR")]
        allow_outside: Vec<PathBuf>,
        /// One JSON object per step with a marker, then a total.
        #[arg(long)]
        json: bool,
    },
}

const EVENT_KINDS: &[&str] = &[
    "RETRY_ATTEMPTED",
    "STEP_RESUMED",
    "STEP_COMPLETED",
    "MARKER_INVALID",
];

/// Writes a line to stdout; a closed pipe (`recovery events RUN | head`)
/// ends the command quietly instead of panicking as `println!` does.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(CliError::Output)?
    };
}

/// Why the command stopped early.
#[derive(Debug)]
enum CliError {
    /// The run could not be read or changed.
    Run(RunError),
    /// Writing to stdout failed (a closed pipe, a full disk).
    Output(std::io::Error),
    /// The command's arguments do not say what to do.
    Usage(String),
}

impl From<RunError> for CliError {
    fn from(e: RunError) -> Self {
        CliError::Run(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command, cli.store.as_deref()) {
        Ok(code) => code,
        // The reader went away: as every Unix tool, stop without a word.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(CliError::Output(e)) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::from(2)
        }
        Err(CliError::Run(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(CliError::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command, store: Option<&str>) -> Result<ExitCode, CliError> {
    match command {
        Command::Status {
            run_dir,
            allow_outside,
            items,
            json,
        } => status(&open(run_dir, store, &allow_outside)?.run, items, json),
        Command::Events {
            run_dir,
            kind,
            step,
            json,
        } => {
            // The types are upper case: `step_completed` means the same.
            let kind = kind.map(|k| k.to_ascii_uppercase());
            if let Some(k) = &kind
                && !EVENT_KINDS.contains(&k.as_str())
            {
                eprintln!(
                    "error: unknown event type {k:?}; the types are {}",
                    EVENT_KINDS.join(", ")
                );
                return Ok(ExitCode::from(2));
            }
            if let Some(s) = &step {
                recovery::check_step_name(s)?;
            }
            let opened = open(run_dir, store, &[])?;
            let run = &opened.run;
            let log = run.events()?;
            let shown = log.records.iter().filter(|e| {
                kind.as_deref().is_none_or(|k| e.kind() == k)
                    && step.as_deref().is_none_or(|s| e.subject() == s)
            });
            print_records(shown, json, describe_event)?;
            warn_skipped(log.skipped, &run.events_path());
            Ok(ExitCode::SUCCESS)
        }
        Command::Issues { run_dir, json } => {
            let opened = open(run_dir, store, &[])?;
            let run = &opened.run;
            let log = run.issues()?;
            print_records(&log.records, json, describe_issue)?;
            warn_skipped(log.skipped, &run.issues_path());
            Ok(ExitCode::SUCCESS)
        }
        Command::Reset {
            run_dir,
            step,
            item,
            all,
            no_wait,
            json,
        } => {
            let opened = open(Some(run_dir), store, &[])?;
            let run = &opened.run;
            let states = match (item, all) {
                (Some(item), _) => {
                    let value: serde_json::Value = match serde_json::from_str(&item) {
                        Ok(v) => v,
                        Err(e) => {
                            eprintln!(
                                "error: --item {item:?} is not JSON ({e}); quote a string item \
                                 as JSON, e.g. --item '\"repo-a\"'"
                            );
                            return Ok(ExitCode::from(2));
                        }
                    };
                    vec![run.step_item(&step, &value)?]
                }
                (None, true) => {
                    let mut states = Vec::new();
                    if run.steps()?.contains(&step) {
                        states.push(run.step(&step)?);
                    }
                    states.extend(family_states(run, &step)?);
                    states
                }
                (None, false) => {
                    // A family's name alone names none of its items.
                    if !run.steps()?.contains(&step) && run.families()?.contains(&step) {
                        eprintln!(
                            "error: {step} is a step family, and nothing was reset: name one \
                             item with --item JSON (e.g. --item '\"repo-a\"' or --item 3), \
                             or reset every item with --all"
                        );
                        return Ok(ExitCode::from(2));
                    }
                    vec![run.step(&step)?]
                }
            };
            for state in &states {
                if let Some(code) = reset(state, no_wait, json)? {
                    return Ok(code);
                }
            }
            if states.is_empty() && !json {
                outln!("{step} has no marker and no item with one: nothing to reset");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            run_dir,
            allow_outside,
            json,
        } => verify(&open(run_dir, store, &allow_outside)?.run, json),
    }
}

/// Resets one step or item, waiting (and saying so) while another process
/// runs it; `Some(code)` to stop with when told not to wait.
fn reset(
    state: &recovery::StepState,
    no_wait: bool,
    json: bool,
) -> Result<Option<ExitCode>, CliError> {
    let step = state.id().to_string();
    let had_marker = match state.try_reset()? {
        Some(had) => had,
        None => {
            let holder = match state.running_pids()?.as_slice() {
                [] => "another process".to_owned(),
                pids => {
                    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                    format!("process {}", pids.join(", "))
                }
            };
            if no_wait {
                eprintln!("error: {step} is running in {holder}; not reset (--no-wait)");
                return Ok(Some(ExitCode::from(2)));
            }
            eprintln!(
                "waiting for {holder}, which is running {step}, to finish \
                 (Ctrl-C to stop; --no-wait not to wait)"
            );
            state.reset()?
        }
    };
    if json {
        let mut line = serde_json::json!({ "step": state.name(), "reset": had_marker });
        if let Some(item) = state.item() {
            line["item"] = item.clone();
        }
        outln!("{line}");
    } else if had_marker {
        outln!("reset {}: it will run again", describe(state));
    } else {
        outln!("{} had no marker: nothing to reset", describe(state));
    }
    Ok(None)
}

/// A step as the user named it: its name, and its item as JSON.
fn describe(state: &recovery::StepState) -> String {
    match state.item() {
        Some(item) => format!("{} {item}", state.name()),
        None => state.name().to_owned(),
    }
}

/// A run opened for a command, and the scratch directory it uses (removed
/// at the end) when it has no directory of its own here.
struct Opened {
    run: Run,
    scratch: Option<PathBuf>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

/// Opens the run: an existing run directory, or with `--store` the store
/// (through `run_dir` as this machine's working directory, or a scratch
/// one); allows the places outside it that were named.
fn open(
    run_dir: Option<PathBuf>,
    store: Option<&str>,
    places: &[PathBuf],
) -> Result<Opened, CliError> {
    let opened = match (run_dir, store) {
        (Some(dir), None) => Opened {
            run: Run::open_existing(dir)?,
            scratch: None,
        },
        (dir, Some(url)) => {
            let scratch = dir
                .is_none()
                .then(|| std::env::temp_dir().join(format!("recovery-cli-{}", std::process::id())));
            let dir = dir.or_else(|| scratch.clone()).unwrap_or_default();
            // The working directory is made if need be; the store must
            // hold a run already.
            let run = Run::open(&dir).and_then(|_| Run::builder(&dir).store(url).open_existing());
            if let (Err(_), Some(scratch)) = (&run, &scratch) {
                let _ = std::fs::remove_dir_all(scratch);
            }
            Opened { run: run?, scratch }
        }
        (None, None) => {
            return Err(CliError::Usage(
                "give the run directory, or --store URL for a run kept in a shared store".into(),
            ));
        }
    };
    for place in places {
        opened.run.allow_outside(place)?;
    }
    Ok(opened)
}

/// One step's (or item's) line of `recovery status`.
#[derive(serde::Serialize)]
struct StepStatus {
    step: String,
    /// For an item of a family, the item (`null` when its marker does not
    /// read).
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<Option<serde_json::Value>>,
    /// `done`, `running`, `failed`, `not done`, `INVALID` or `ERROR`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<usize>,
    /// Why it is invalid, the failure's last error, or who runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

fn step_status(run: &Run, name: &str, issues: &[IssueRecord]) -> Result<StepStatus, RunError> {
    let state = run.step(name)?;
    let mut status = StepStatus {
        step: name.to_owned(),
        item: None,
        state: "not done",
        completed_at_ms: None,
        outputs: None,
        detail: None,
    };
    match state.marker() {
        Ok(MarkerState::Valid(m)) => {
            status.state = "done";
            status.completed_at_ms = Some(m.completed_at_ms);
            status.outputs = Some(m.outputs.len());
        }
        Ok(MarkerState::Invalid(reason)) => {
            status.state = "INVALID";
            status.detail = Some(reason);
        }
        Ok(MarkerState::Missing) => {
            // The last STEP_FAILED record, unless it is running again now.
            if let Some(failed) = issues
                .iter()
                .rev()
                .find(|i| i.operation == name && i.error_code == IssueCode::StepFailed)
            {
                status.state = "failed";
                status.detail = Some(failed.last_error.clone());
            }
        }
        Err(e) => {
            status.state = "ERROR";
            status.detail = Some(e.to_string());
        }
    }
    if status.state != "done" && run.is_running(name)? {
        status.state = "running";
        let pids: Vec<String> = state.running_pids()?.iter().map(u32::to_string).collect();
        status.detail = Some(if pids.is_empty() {
            "its lock is held".to_owned()
        } else {
            format!("by process {}", pids.join(", "))
        });
    }
    Ok(status)
}

fn status(run: &Run, items: bool, json: bool) -> Result<ExitCode, CliError> {
    let steps = run.known_steps()?;
    let families = run.families()?;
    let plain = run.steps()?;
    let issues = run.issues()?.records;
    let mut invalid = 0;
    if steps.is_empty() && !json {
        outln!(
            "no step has completed (none has run) in {}",
            run.dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        outln!(
            "{:<24} {:<9} {:<26} outputs",
            "step",
            "state",
            "completed (UTC)"
        );
    }
    for name in steps {
        if families.contains(&name) {
            invalid += families::status(run, &name, &issues, items, json)?;
            if !plain.contains(&name) {
                continue;
            }
        }
        let status = step_status(run, &name, &issues)?;
        if matches!(status.state, "INVALID" | "ERROR") {
            invalid += 1;
        }
        if json {
            outln!("{}", to_json(&status));
            continue;
        }
        let completed = status.completed_at_ms.map_or_else(|| "-".to_owned(), when);
        let last = match (status.outputs, &status.detail) {
            (Some(n), _) => format!("{n} verified"),
            (None, Some(detail)) => detail.clone(),
            (None, None) => String::new(),
        };
        outln!("{name:<24} {:<9} {completed:<26} {last}", status.state);
    }
    Ok(if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The items of a family, in the order of their ids: `run.items` streams
/// them in directory order, which differs between file systems, and what
/// the CLI prints should not.
fn family_states(run: &Run, family: &str) -> Result<Vec<StepState>, CliError> {
    let mut states = Vec::new();
    for entry in run.items(family)? {
        states.push(entry?.state);
    }
    states.sort_by(|a, b| a.id().item_id().cmp(&b.id().item_id()));
    Ok(states)
}

fn verify(run: &Run, json: bool) -> Result<ExitCode, CliError> {
    let (mut steps, mut outputs, mut bad) = (0, 0, 0);
    // Plain steps, then every item of every family: the library's own
    // checks, as `status` and a resuming step make them.
    let mut states = Vec::new();
    for name in run.steps()? {
        states.push(run.step(&name)?);
    }
    for family in run.families()? {
        states.extend(family_states(run, &family)?);
    }
    for step in states {
        let (state, detail) = match step.read_marker() {
            Ok(MarkerState::Valid(m)) => {
                steps += 1;
                outputs += m.outputs.len();
                match step.verify_outputs(&m, Verify::Hash) {
                    Ok(Ok(())) => ("ok", None),
                    Ok(Err(reason)) => ("MISMATCH", Some(reason)),
                    Err(e) => ("ERROR", Some(e.to_string())),
                }
            }
            Ok(MarkerState::Invalid(reason)) => ("INVALID", Some(reason)),
            Ok(MarkerState::Missing) => continue,
            Err(e) => ("ERROR", Some(e.to_string())),
        };
        if state != "ok" {
            bad += 1;
        }
        if json {
            let mut line =
                serde_json::json!({ "step": step.name(), "state": state, "detail": detail });
            if let Some(item) = step.item() {
                line["item"] = item.clone();
            }
            outln!("{line}");
        } else if let Some(detail) = detail {
            outln!("{state:<8} {}: {detail}", describe(&step));
        }
    }
    if json {
        outln!(
            "{}",
            serde_json::json!({ "outputs": outputs, "steps": steps, "problems": bad })
        );
    } else {
        outln!(
            "{} of {} checked, {}",
            count(outputs, "output"),
            count(steps, "step"),
            count(bad, "problem")
        );
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// One line per record: JSON, or its text.
fn print_records<'a, T: serde::Serialize + 'a>(
    records: impl IntoIterator<Item = &'a T>,
    json: bool,
    describe: fn(&T) -> String,
) -> Result<(), CliError> {
    for record in records {
        if json {
            outln!("{}", to_json(record));
        } else {
            outln!("{}", describe(record));
        }
    }
    Ok(())
}

/// The kind, then the event's one text (the same as `tracing` and the
/// example pipeline show).
fn describe_event(event: &Event) -> String {
    format!("{:<15} {event}", event.kind())
}

fn describe_issue(issue: &IssueRecord) -> String {
    format!(
        "{} {:?} {}: after {} attempt(s): {}",
        issue.error_code.as_str(),
        issue.severity,
        issue.operation,
        issue.attempts,
        issue.last_error
    )
}

/// `1 step`, `2 steps`: a count with its noun, as a person writes it.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn warn_skipped(skipped: usize, path: &std::path::Path) {
    if skipped > 0 {
        eprintln!(
            "warning: {skipped} line(s) of {} did not parse (cut by a crash, or written by a newer version) and were skipped",
            path.display()
        );
    }
}
