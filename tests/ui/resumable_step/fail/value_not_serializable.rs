use recovery::{resumable_step, Run};

struct Repo;

#[resumable_step("clone")]
fn step(run: &Run) -> std::io::Result<Repo> { let _ = run; Ok(Repo) }

fn main() {}
