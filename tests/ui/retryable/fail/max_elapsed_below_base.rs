use recovery::retryable;

#[retryable(base = "1s", max_elapsed = "300ms")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
