use recovery::retryable;

#[retryable(crate = "not a path")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
