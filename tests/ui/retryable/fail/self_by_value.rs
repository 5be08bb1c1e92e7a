use recovery::retryable;

struct Conn;

impl Conn {
    #[retryable(max_attempts = 3)]
    fn close(self) -> Result<(), String> { Ok(()) }
}

fn main() {}
