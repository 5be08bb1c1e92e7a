use recovery::{resumable_step, Run};

#[resumable_step("clone", keys = (1, 2))]
fn step(run: &Run) -> std::io::Result<()> { let _ = run; Ok(()) }

fn main() {}
