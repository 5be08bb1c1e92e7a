use recovery::retryable;

#[retryable(max_attempts = -3)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
