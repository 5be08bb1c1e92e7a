use recovery::retryable;

#[retryable(base = "soon")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
