use recovery::{resumable_step, retryable, Run};

#[retryable(max_attempts = 3)]
#[resumable_step("clone")]
fn step(run: &Run) -> std::io::Result<()> { let _ = run; Ok(()) }

fn main() {}
