use recovery::retryable;

#[retryable(multiplier = "2x")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
