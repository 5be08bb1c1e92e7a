use recovery::retryable;

#[retryable(jitter = "decorelated")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
