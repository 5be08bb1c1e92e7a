//! Running the object store's async requests from the store's sync
//! methods: on a small runtime of the store's own, so that a store works
//! the same from a plain thread, a `#[tokio::main]` program or a step's
//! async body.

use std::future::Future;
use std::sync::mpsc;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::RunError;

/// The store's own runtime.
#[derive(Debug)]
pub(crate) struct Bridge {
    runtime: Option<Runtime>,
}

impl Bridge {
    pub(crate) fn new() -> Result<Self, RunError> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("recovery-store")
            .enable_all()
            .build()
            .map_err(|e| RunError::io("start the store's runtime", "", e))?;
        Ok(Bridge {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .map(Runtime::handle)
            .expect("the runtime lives until the bridge is dropped")
    }

    /// Runs `request` to completion and returns its result. On a thread
    /// that is not polling a runtime this blocks on the store's runtime
    /// directly; inside one (an async step), the request runs on the
    /// store's runtime while this thread waits, as for a file's I/O.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        request: impl Future<Output = Result<T, RunError>> + Send + 'static,
    ) -> Result<T, RunError> {
        if Handle::try_current().is_err() {
            return self.handle().block_on(request);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let _ = tx.send(request.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(RunError::io(
                "wait for the object store",
                "",
                std::io::Error::other("the store's runtime stopped"),
            ))
        })
    }

    /// Starts `task` in the background (lease renewals).
    pub(crate) fn spawn(
        &self,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.handle().spawn(task)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is refused inside another one
        // (a Run dropped in an async program): let it wind down apart.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
