use recovery::retryable;

fn is_transient(_: &u32) -> bool { true }

#[retryable(when = is_transient)]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
