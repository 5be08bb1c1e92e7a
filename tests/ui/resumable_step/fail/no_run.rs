use recovery::resumable_step;

#[resumable_step("clone")]
fn clone_repo(url: &str) -> std::io::Result<()> { let _ = url; Ok(()) }

fn main() {}
