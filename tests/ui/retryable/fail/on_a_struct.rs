use recovery::retryable;

#[retryable(max_attempts = 3)]
struct Client;

fn main() {}
