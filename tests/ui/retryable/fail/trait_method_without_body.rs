use recovery::retryable;

trait Fetch {
    #[retryable(max_attempts = 3)]
    fn fetch(&self) -> Result<u32, String>;
}

fn main() {}
