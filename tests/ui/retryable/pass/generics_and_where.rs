use std::fmt::Debug;
use recovery::retryable;

#[retryable(max_attempts = 3, base = "1ms")]
fn generic<T, U: Clone>(items: &[T], extra: U, f: impl Fn(&T) -> u32 + Clone) -> Result<u32, String>
where
    T: Debug,
    U: Into<u32>,
{
    let total: u32 = items.iter().map(&f).sum();
    Ok(total + extra.into())
}

#[retryable(max_attempts = 3, base = "1ms")]
fn lifetimes<'a>(a: &'a str, (x, y): (u32, u32)) -> Result<&'a str, String> {
    if x + y > 0 { Ok(a) } else { Err("zero".into()) }
}

#[retryable(max_attempts = 2, base = "1ms")]
fn question_mark(s: &str) -> Result<u32, std::num::ParseIntError> {
    let n: u32 = s.parse()?;
    if n == 0 {
        return Ok(0);
    }
    Ok(n * 2)
}

fn main() {
    assert_eq!(generic(&[1u8, 2], 3u8, |x: &u8| u32::from(*x)), Ok(6));
    assert_eq!(lifetimes("a", (1, 2)), Ok("a"));
    assert_eq!(question_mark("21"), Ok(42));
}
