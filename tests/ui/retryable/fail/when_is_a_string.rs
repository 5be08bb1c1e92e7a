use recovery::retryable;

fn is_transient(_: &String) -> bool { true }

#[retryable(when = "is_transient")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
