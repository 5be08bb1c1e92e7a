use recovery::retryable;

#[retryable(name = "")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
