use recovery::retryable;

#[retryable(max_attempts = 5 base = "1s")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
