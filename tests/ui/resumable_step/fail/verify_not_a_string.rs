use recovery::{resumable_step, Run};

#[resumable_step("clone", verify = size_mtime)]
fn step(run: &Run) -> std::io::Result<()> { let _ = run; Ok(()) }

fn main() {}
