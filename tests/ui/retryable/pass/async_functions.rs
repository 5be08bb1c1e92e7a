use recovery::retryable;

#[retryable(max_attempts = 3, base = "1ms", jitter = "decorrelated")]
async fn fetch(url: String) -> Result<usize, std::io::Error> {
    let n = async { url.len() }.await;
    Ok(n)
}

#[retryable(max_attempts = 3, base = "1ms")]
async fn borrowed(buf: &mut Vec<u8>, s: &str) -> Result<usize, String> {
    buf.extend_from_slice(s.as_bytes());
    Ok(buf.len())
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    assert_eq!(rt.block_on(fetch("abc".into())).unwrap(), 3);
    let mut buf = Vec::new();
    assert_eq!(rt.block_on(borrowed(&mut buf, "xy")), Ok(2));
}
