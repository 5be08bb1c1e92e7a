use recovery::retryable;

#[retryable(max_attempt = 5)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
