use recovery::retryable;

struct Client { sent: Vec<u32> }

impl Client {
    #[retryable(max_attempts = 3, base = "1ms")]
    fn get(&self, key: u32) -> Result<u32, String> { Ok(key + self.sent.len() as u32) }

    #[retryable(max_attempts = 3, base = "1ms")]
    fn send(&mut self, v: u32) -> Result<(), String> {
        self.sent.push(v);
        Ok(())
    }

    #[retryable(max_attempts = 3, base = "1ms")]
    async fn push(&mut self, batch: &[u32]) -> Result<usize, String> {
        self.sent.extend_from_slice(batch);
        Ok(Self::count(self))
    }

    #[retryable(max_attempts = 3, base = "1ms")]
    fn typed_receiver(self: &Self) -> Result<usize, String> { Ok(self.sent.len()) }

    fn count(&self) -> usize { self.sent.len() }
}

fn main() {
    let mut c = Client { sent: vec![] };
    c.send(1).unwrap();
    assert_eq!(c.get(1), Ok(2));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    assert_eq!(rt.block_on(c.push(&[2, 3])), Ok(3));
    assert_eq!(c.typed_receiver(), Ok(3));
}
