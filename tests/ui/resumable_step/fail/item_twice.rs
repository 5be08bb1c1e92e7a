use recovery::{resumable_step, Run};

#[resumable_step("index", item = repo, item = page)]
fn index(run: &Run, repo: &str, page: u32) -> std::io::Result<usize> {
    let _ = run;
    Ok(repo.len() + page as usize)
}

fn main() {}
