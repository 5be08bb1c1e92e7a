use recovery::retryable;

#[retryable(max_attempts = 3, budget = "DOWNSTREAM")]
fn f() -> Result<(), String> { Ok(()) }

fn main() {}
