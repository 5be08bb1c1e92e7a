use recovery::retryable;

#[derive(Debug)]
struct Opaque;

#[retryable(max_attempts = 3)]
fn f() -> Result<(), Opaque> { Err(Opaque) }

fn main() {}
