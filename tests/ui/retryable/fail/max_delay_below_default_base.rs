use recovery::retryable;

#[retryable(max_delay = "50ms")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
