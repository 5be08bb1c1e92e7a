//! The pipeline's steps: clone with git, then a worker stage that reads the
//! clone and writes a manifest and a summary.

use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use recovery::{Run, RunError, resumable_step, retryable};
use serde::{Deserialize, Serialize};

use crate::crash::{self, Point};

/// Why a pipeline step failed.
#[derive(Debug)]
pub enum PipelineError {
    /// `git clone` failed; `transient` says whether another try may help.
    Git { message: String, transient: bool },
    /// The worker's simulated passing failure.
    Flaky { attempt: u32 },
    /// Reading the clone or writing an artifact failed.
    Io(std::io::Error),
    /// The run directory could not do its part.
    Run(RunError),
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineError::Git { message, .. } => write!(f, "git clone failed: {message}"),
            PipelineError::Flaky { attempt } => {
                write!(
                    f,
                    "worker: temporary failure on attempt {attempt} (simulated)"
                )
            }
            PipelineError::Io(e) => write!(f, "{e}"),
            PipelineError::Run(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PipelineError {}

impl From<std::io::Error> for PipelineError {
    fn from(e: std::io::Error) -> Self {
        PipelineError::Io(e)
    }
}

impl From<RunError> for PipelineError {
    fn from(e: RunError) -> Self {
        PipelineError::Run(e)
    }
}

impl PipelineError {
    /// The classifier of both retrying steps.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Git { transient, .. } => *transient,
            PipelineError::Flaky { .. } => true,
            PipelineError::Io(e) => recovery::Classify::classify(e).is_transient(),
            PipelineError::Run(_) => false,
        }
    }
}

/// Turns git's exit status and stderr into a stable message: a dropped
/// connection reads the same whatever the port or the moment it was dropped.
fn git_failure(status: std::process::ExitStatus, stderr: &str) -> PipelineError {
    // A git that writes to a connection the peer already closed dies of
    // SIGPIPE without a word: that is a dropped connection too.
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return PipelineError::Git {
            message: if signal == SIGPIPE {
                "the connection was dropped".into()
            } else {
                format!("git was killed by signal {signal}")
            },
            transient: true,
        };
    }
    let lower = stderr.to_lowercase();
    // git follows "not a repository" with "could not read from remote":
    // that is no dropped connection.
    let permanent = [
        "does not exist",
        "not found",
        "not a git repository",
        "not appear to be",
    ];
    if permanent.iter().any(|p| lower.contains(p)) {
        let fatal = stderr
            .lines()
            .find(|l| l.starts_with("fatal:"))
            .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or_default()
            .trim();
        return PipelineError::Git {
            message: format!("the repository does not exist or is not a git repository ({fatal})"),
            transient: false,
        };
    }
    let dropped = [
        "hung up",
        "connection reset",
        "early eof",
        "unexpected eof",
        "broken pipe",
        "unable to connect",
        "connection refused",
        "could not read from remote",
    ];
    if dropped.iter().any(|d| lower.contains(d)) {
        return PipelineError::Git {
            message: "the connection was dropped".into(),
            transient: true,
        };
    }
    let message = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| format!("git ended with {status} and printed nothing"));
    PipelineError::Git {
        transient: true,
        message,
    }
}

/// SIGPIPE's number, the same on Linux, macOS and the BSDs.
const SIGPIPE: i32 = 13;

/// What the clone step records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cloned {
    /// The checkout, relative to the run directory (so that a run resumed
    /// on another machine finds it in its own).
    pub path: PathBuf,
    /// The commit checked out.
    pub commit: String,
}

impl Cloned {
    /// The checkout in `run`'s directory.
    pub fn checkout(&self, run: &Run) -> PathBuf {
        run.dir().join(&self.path)
    }
}

/// The commit the remote's HEAD points at now (`git ls-remote`): what the
/// clone step is keyed on, so a branch that moved reruns the clone. Its
/// retries and failures are reported as the clone's.
#[retryable(name = "clone", max_attempts = 6, base = "200ms", max_delay = "3s", jitter,
            when = PipelineError::is_transient)]
pub fn remote_head(url: &str) -> Result<String, PipelineError> {
    let out = Command::new("git")
        .args(["ls-remote", url, "HEAD"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()?;
    if !out.status.success() {
        return Err(git_failure(
            out.status,
            &String::from_utf8_lossy(&out.stderr),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(commit) => Ok(commit.to_owned()),
        None => Err(PipelineError::Git {
            message: format!("{url} has no HEAD (an empty repository?)"),
            transient: false,
        }),
    }
}

/// `source` names what is cloned ("demo", or the URL given) and `head` the
/// commit its HEAD points at ([`remote_head`]); `url` is where it is served
/// now, not part of the key: resuming must not depend on the port.
#[resumable_step("clone", key = (source, head))]
#[retryable(max_attempts = 6, base = "200ms", max_delay = "3s", jitter,
            when = PipelineError::is_transient)]
pub fn clone_repo(run: &Run, source: &str, head: &str, url: &str) -> Result<Cloned, PipelineError> {
    let out = run.output_dir("repo")?;
    let commit = git_clone(url, out.path())?;
    crash::maybe(run, Point::Inside("clone"));
    Ok(Cloned {
        path: "repo".into(),
        commit,
    })
}

/// Clones `url` into `dest` with the real git; returns the commit checked
/// out.
pub fn git_clone(url: &str, dest: &Path) -> Result<String, PipelineError> {
    let result = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks", url])
        .arg(dest)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()?;
    if !result.status.success() {
        return Err(git_failure(
            result.status,
            &String::from_utf8_lossy(&result.stderr),
        ));
    }
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dest)
        .output()?;
    if !head.status.success() {
        return Err(git_failure(
            head.status,
            &String::from_utf8_lossy(&head.stderr),
        ));
    }
    Ok(String::from_utf8_lossy(&head.stdout).trim().to_owned())
}

/// One file of the checkout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub lines: u64,
    pub blake3: String,
}

/// What the manifest step records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestInfo {
    pub files: u64,
    pub bytes: u64,
    pub lines: u64,
}

/// Fails the first `fail_first` calls: the worker's passing failures.
pub struct FlakyWorker {
    pub fail_first: u32,
    pub calls: AtomicU32,
}

#[resumable_step("manifest", key = commit)]
#[retryable(max_attempts = 5, base = "100ms", jitter = "equal",
            when = PipelineError::is_transient)]
pub fn build_manifest(
    run: &Run,
    repo: &Path,
    commit: &str,
    worker: &FlakyWorker,
) -> Result<ManifestInfo, PipelineError> {
    let attempt = worker.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let mut entries = Vec::new();
    walk(repo, repo, &mut entries)?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let json = serde_json::to_vec_pretty(&entries).map_err(std::io::Error::other)?;
    let out = run.output_file("artifacts/manifest.json")?;
    // Written in two halves, so a crash "inside" leaves a partial file.
    std::fs::write(out.path(), &json[..json.len() / 2])?;
    crash::maybe(run, Point::Inside("manifest"));
    if attempt <= worker.fail_first {
        return Err(PipelineError::Flaky { attempt });
    }
    std::fs::write(out.path(), &json)?;
    Ok(ManifestInfo {
        files: entries.len() as u64,
        bytes: entries.iter().map(|e| e.size).sum(),
        lines: entries.iter().map(|e| e.lines).sum(),
    })
}

/// Every file under `dir` but `.git`, with size, line count and hash.
pub fn walk(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == ".git" {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let data = std::fs::read(&path)?;
            out.push(FileEntry {
                path: path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
                size: data.len() as u64,
                lines: data.lines().count() as u64,
                blake3: blake3_hex(&data),
            });
        }
    }
    Ok(())
}

fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// What the summary step records (and writes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub commit: String,
    pub files: u64,
    pub bytes: u64,
    pub lines: u64,
}

#[resumable_step("summary", key = (commit, info.files, info.bytes))]
pub fn write_summary(
    run: &Run,
    commit: &str,
    info: &ManifestInfo,
) -> Result<Summary, PipelineError> {
    let summary = Summary {
        commit: commit.to_owned(),
        files: info.files,
        bytes: info.bytes,
        lines: info.lines,
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(std::io::Error::other)?;
    run.write_output("artifacts/summary.json", &json)?;
    crash::maybe(run, Point::Inside("summary"));
    Ok(summary)
}
