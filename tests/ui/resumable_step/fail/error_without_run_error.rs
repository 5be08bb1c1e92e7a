use recovery::{resumable_step, Run};

#[derive(Debug)]
struct GitError;
impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("git") }
}

#[resumable_step("clone")]
fn step(run: &Run) -> Result<u32, GitError> { let _ = run; Ok(1) }

fn main() {}
