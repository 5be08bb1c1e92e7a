use recovery::retryable;

#[retryable(max_elapsed = true)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
