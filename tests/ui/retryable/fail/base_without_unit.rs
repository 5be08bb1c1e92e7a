use recovery::retryable;

#[retryable(base = 200)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
