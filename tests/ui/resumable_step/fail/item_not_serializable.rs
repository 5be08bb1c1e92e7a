use recovery::{resumable_step, Run};

struct Repo {
    name: String,
}

#[resumable_step("index", item = repo)]
fn index(run: &Run, repo: &Repo) -> std::io::Result<usize> { let _ = run; Ok(repo.name.len()) }

fn main() {}
