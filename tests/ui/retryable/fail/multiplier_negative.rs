use recovery::retryable;

#[retryable(multiplier = -2)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
