//! The worker pool: many repositories (`--repo` given more than once, or
//! `--repos FILE`), each cloned and indexed as an item of two step
//! families by `--jobs N` threads. A crash part-way (`--crash-after-items
//! K`) resumes exactly the unfinished items on the next run.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use recovery::{Context, Run, Step, resumable_step, retryable};
use recovery_suite::say;
use serde::Serialize;

use crate::crash;
use crate::steps::{Cloned, FileEntry, ManifestInfo, PipelineError, git_clone, remote_head, walk};

/// One repository's clone: an item of the family `clone-repo`, keyed on
/// the commit its HEAD points at.
#[resumable_step("clone-repo", item = repo, key = head)]
#[retryable(max_attempts = 6, base = "200ms", max_delay = "3s", jitter,
            when = PipelineError::is_transient)]
fn clone_item(run: &Run, repo: &str, head: &str) -> Result<Cloned, PipelineError> {
    let rel = format!("repos/{}", dir_name(repo));
    let out = run.output_dir(&rel)?;
    let commit = git_clone(repo, out.path())?;
    Ok(Cloned {
        path: rel.into(),
        commit,
    })
}

/// One repository's index (`index/<name>.json`): an item of the family
/// `index-repo`. The index is written from a thread of the body's own,
/// through the step handle.
#[resumable_step("index-repo", item = repo, key = commit)]
fn index_item(
    run: &Run,
    repo: &str,
    commit: &str,
    checkout: &Path,
) -> Result<ManifestInfo, PipelineError> {
    let _ = run;
    let step = Step::current().expect("inside the index step");
    let path = format!("index/{}.json", dir_name(repo));
    std::thread::scope(|s| {
        s.spawn(|| -> Result<ManifestInfo, PipelineError> {
            let mut entries: Vec<FileEntry> = Vec::new();
            walk(checkout, checkout, &mut entries)?;
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            let json = serde_json::to_vec_pretty(&entries).map_err(std::io::Error::other)?;
            step.write_output(&path, &json)?;
            Ok(ManifestInfo {
                files: entries.len() as u64,
                bytes: entries.iter().map(|e| e.size).sum(),
                lines: entries.iter().map(|e| e.lines).sum(),
            })
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the index thread panicked").into()))
    })
}

/// A directory name for a repository: its last path component and a short
/// hash of the whole, so two repositories never share one.
fn dir_name(repo: &str) -> String {
    let base: String = repo
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("repo")
        .trim_end_matches(".git")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = blake3::hash(repo.as_bytes()).to_hex();
    format!("{base}-{}", &hash[..8])
}

/// What became of one repository.
#[derive(Serialize)]
pub struct RepoOutcome {
    pub repo: String,
    /// "done" or "failed".
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<ManifestInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Clones and indexes every repository on `jobs` threads; returns each
/// outcome in the order given. After `crash_after_items` items are newly
/// indexed by this process, it ends abruptly (SIGKILL).
pub fn run(
    run: &Run,
    repos: &[String],
    jobs: usize,
    crash_after_items: Option<u32>,
    ctx: &Context,
) -> Vec<RepoOutcome> {
    let next = AtomicUsize::new(0);
    let planned = crash_after_items.map(|k| (k, Mutex::new(0)));
    let outcomes: Mutex<Vec<Option<RepoOutcome>>> =
        Mutex::new(repos.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                // The context is per thread: each worker enters it.
                ctx.in_scope(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(repo) = repos.get(i) else { break };
                        let outcome = one(run, repo, planned.as_ref());
                        outcomes.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(outcome);
                    }
                })
            });
        }
    });
    outcomes
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// Clones and indexes one repository. With a crash planned after `k`
/// items (`planned`: `k` and the items newly indexed so far), items are
/// indexed one at a time, under that count's lock: the `k`-th ends the
/// process before any other thread can commit an index, so exactly `k` are
/// newly indexed (clones still run in parallel).
fn one(run: &Run, repo: &str, planned: Option<&(u32, Mutex<u32>)>) -> RepoOutcome {
    let result = (|| -> Result<(String, ManifestInfo), PipelineError> {
        let head = remote_head(repo)?;
        let cloned = clone_item(run, repo, &head)?;
        let turn = planned.map(|(k, count)| (*k, count.lock().unwrap_or_else(|p| p.into_inner())));
        let done_before = run
            .step_item("index-repo", repo)?
            .is_done(&cloned.commit, 1)?;
        let info = index_item(run, repo, &cloned.commit, &cloned.checkout(run))?;
        if let Some((k, mut count)) = turn
            && !done_before
        {
            *count += 1;
            if *count >= k {
                let items = if k == 1 { "item" } else { "items" };
                say!("crashing after {k} {items} (SIGKILL)");
                crash::kill_self();
            }
        }
        Ok((cloned.commit, info))
    })();
    match result {
        Ok((commit, info)) => RepoOutcome {
            repo: repo.to_owned(),
            outcome: "done".into(),
            commit: Some(commit),
            index: Some(info),
            error: None,
        },
        Err(e) => RepoOutcome {
            repo: repo.to_owned(),
            outcome: "failed".into(),
            commit: None,
            index: None,
            error: Some(e.to_string()),
        },
    }
}
