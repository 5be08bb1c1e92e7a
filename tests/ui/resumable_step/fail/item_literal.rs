use recovery::{resumable_step, Run};

#[resumable_step("index", item = "repo-a")]
fn index(run: &Run, repo: &str) -> std::io::Result<usize> { let _ = run; Ok(repo.len()) }

fn main() {}
