use recovery::retryable;

#[retryable(max_attempts, base = "1s")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
