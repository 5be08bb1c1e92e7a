use recovery::retryable;

#[retryable(base = "10ms", max_attempts = 2, base = "20ms")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
