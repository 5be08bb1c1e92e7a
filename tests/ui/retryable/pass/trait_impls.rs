use recovery::retryable;

trait Store {
    fn put(&mut self, v: u8) -> std::io::Result<()>;
    async fn get(&self) -> Result<u8, String>;
}

struct Mem(Vec<u8>);

impl Store for Mem {
    #[retryable(max_attempts = 3, base = "1ms", when = recovery::Classify::classify)]
    fn put(&mut self, v: u8) -> std::io::Result<()> {
        self.0.push(v);
        Ok(())
    }

    #[retryable(max_attempts = 3, base = "1ms")]
    async fn get(&self) -> Result<u8, String> {
        self.0.last().copied().ok_or_else(|| "empty".to_string())
    }
}

fn main() {
    let mut m = Mem(vec![]);
    m.put(4).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    assert_eq!(rt.block_on(m.get()), Ok(4));
}
