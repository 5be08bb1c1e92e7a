use recovery::retryable;

#[retryable(base = "0ms")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
