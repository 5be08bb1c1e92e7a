use std::path::PathBuf;

use recovery::{resumable_step, retryable, Run};

#[derive(Debug)]
enum GitError {
    Run(recovery::RunError),
    Io(std::io::Error),
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitError::Run(e) => write!(f, "{e}"),
            GitError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<recovery::RunError> for GitError {
    fn from(e: recovery::RunError) -> Self {
        GitError::Run(e)
    }
}

impl From<std::io::Error> for GitError {
    fn from(e: std::io::Error) -> Self {
        GitError::Io(e)
    }
}

#[resumable_step("clone", key = (url, rev))]
#[retryable(max_attempts = 5, base = "1ms", jitter)]
fn clone_repo(run: &Run, url: &str, rev: &str) -> Result<PathBuf, GitError> {
    let out = run.output_dir("repo")?;
    std::fs::write(out.path().join("HEAD"), format!("{url}@{rev}"))?;
    Ok(out.final_path().to_owned())
}

#[resumable_step("plain")]
fn plain(run: &Run) -> std::io::Result<u32> {
    let _ = run;
    Ok(7)
}

#[resumable_step("by-value", key = name.clone(), version = 3, verify = "size_mtime")]
fn by_value(run: &recovery::Run, name: String) -> std::io::Result<String> {
    let _ = run;
    Ok(name)
}

struct Worker {
    run: Run,
    done: u32,
}

impl Worker {
    #[resumable_step("work", key = n, run = self.run)]
    async fn work(&mut self, n: u32) -> std::io::Result<u32> {
        self.done += n;
        Ok(self.done)
    }

    #[resumable_step("sync-work", run = &self.run)]
    fn sync_work(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("recovery-ui-pass-{}", std::process::id()));
    let run = Run::open(&tmp).unwrap();
    let repo = clone_repo(&run, "url", "rev").unwrap();
    assert!(repo.join("HEAD").is_file());
    assert_eq!(plain(&run).unwrap(), 7);
    assert_eq!(by_value(&run, "x".into()).unwrap(), "x");
    let mut w = Worker { run, done: 0 };
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    assert_eq!(rt.block_on(w.work(2)).unwrap(), 2);
    assert_eq!(rt.block_on(w.work(2)).unwrap(), 2);
    w.sync_work().unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
}
