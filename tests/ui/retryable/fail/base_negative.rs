use recovery::retryable;

#[retryable(base = "-200ms")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
