use recovery::{resumable_step, Run};

#[resumable_step(key = 1)]
fn step(run: &Run) -> std::io::Result<()> { let _ = run; Ok(()) }

fn main() {}
