use recovery::retryable;

#[retryable(max_attempts = 0, bse = "1s", jitter = "ful", max_attempts = 2)]
fn f() -> Option<()> { None }

fn main() {}
