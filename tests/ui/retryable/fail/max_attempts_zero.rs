use recovery::retryable;

#[retryable(max_attempts = 0)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
