use recovery::{resumable_step, Run};

#[resumable_step("clone", version = 2, version = 3)]
fn step(run: &Run) -> std::io::Result<()> { let _ = run; Ok(()) }

fn main() {}
