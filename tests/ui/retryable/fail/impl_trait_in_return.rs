use recovery::retryable;

#[retryable(max_attempts = 3)]
fn f() -> Result<impl Iterator<Item = u32>, String> { Ok(0..3) }

fn main() {}
