use recovery::retryable;

#[retryable(multiplier = 1e999)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
