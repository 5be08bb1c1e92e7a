use recovery::retryable;

#[retryable(max_attempts = 3)]
fn f() -> Option<u32> { Some(1) }

fn main() {}
