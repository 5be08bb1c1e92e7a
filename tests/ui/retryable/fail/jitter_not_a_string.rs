use recovery::retryable;

#[retryable(jitter = Full)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
