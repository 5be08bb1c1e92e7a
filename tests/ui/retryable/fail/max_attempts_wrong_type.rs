use recovery::retryable;

#[retryable(max_attempts = "5")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
