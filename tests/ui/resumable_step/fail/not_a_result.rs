use recovery::{resumable_step, Run};

#[resumable_step("clone")]
fn step(run: &Run) -> Option<u32> { let _ = run; Some(1) }

fn main() {}
