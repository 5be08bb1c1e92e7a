use recovery::{resumable_step, Run};

#[resumable_step("clone", version = -1)]
fn step(run: &Run) -> std::io::Result<()> { let _ = run; Ok(()) }

fn main() {}
