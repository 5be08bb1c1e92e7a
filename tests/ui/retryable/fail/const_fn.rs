use recovery::retryable;

#[retryable(max_attempts = 3)]
const fn f() -> Result<u32, ()> { Ok(1) }

fn main() {}
