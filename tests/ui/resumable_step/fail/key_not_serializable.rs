use recovery::{resumable_step, Run};

struct Repo {
    url: String,
}

#[resumable_step("clone", key = repo)]
fn step(run: &Run, repo: &Repo) -> std::io::Result<u32> { let _ = (run, &repo.url); Ok(1) }

fn main() {}
