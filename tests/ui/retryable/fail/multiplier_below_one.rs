use recovery::retryable;

#[retryable(multiplier = 0.5)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
