use recovery::retryable;

#[retryable]
fn defaults() -> Result<u32, String> { Ok(1) }

#[retryable(max_attempts = 5, base = "200ms", jitter)]
fn fetch_index(url: &str) -> Result<usize, std::io::Error> { Ok(url.len()) }

#[retryable(max_attempts = 2, base = "500us", multiplier = 1.5, max_delay = "1h",
            max_elapsed = "2m", jitter = "equal", name = "op")]
fn all_keys(mut n: u32) -> Result<u32, String> {
    n += 1;
    Ok(n)
}

#[retryable(max_attempts = 1)]
fn unit_result() -> Result<(), Box<dyn std::error::Error>> { Ok(()) }

fn main() {
    assert_eq!(defaults(), Ok(1));
    assert_eq!(fetch_index("abc").unwrap(), 3);
    assert_eq!(all_keys(1), Ok(2));
    assert!(unit_result().is_ok());
}
