use std::future::Future;
use std::pin::Pin;
use recovery::retryable;

struct S;

// What #[async_trait] turns `async fn push(&self) -> Result<(), String>` into.
impl S {
    #[retryable(max_attempts = 3)]
    fn push<'a>(&'a self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move { Ok(()) })
    }
}

fn main() {}
