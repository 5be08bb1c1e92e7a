use recovery::retryable;

#[retryable(base = "2s", max_delay = "500ms")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
