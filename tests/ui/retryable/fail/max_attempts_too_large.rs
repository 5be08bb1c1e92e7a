use recovery::retryable;

#[retryable(max_attempts = 5000000000)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
