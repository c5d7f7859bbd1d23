//! [`StoreHandle`]: the store owned by one worker thread, reached through a bounded channel.
//!
//! rocksdb calls block, so async code (the network event loop) must not make them on its own
//! threads. The handle sends a job to the owner thread and awaits the reply on a oneshot; blocking
//! code (the CLI) uses the `_blocking` variant. Dropping every handle stops the thread.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{ObjectStore, StoreError};

type Job = Box<dyn FnOnce(&ObjectStore) + Send>;

/// Queue depth: enough to keep the owner busy, small enough to push back on a flood of requests.
const QUEUE: usize = 64;

/// A cloneable handle to a store owned by a worker thread.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
    _owner: Arc<OwnerThread>,
}

#[derive(Debug)]
struct OwnerThread(Option<std::thread::JoinHandle<()>>);

impl Drop for OwnerThread {
    fn drop(&mut self) {
        // The last handle is gone, so the channel is closed and the loop ends after its current job.
        // Joining from the owner thread itself (a job that dropped the last handle) would deadlock.
        if let Some(t) = self.0.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl StoreHandle {
    /// Moves `store` onto a new owner thread.
    pub fn spawn(store: ObjectStore) -> Result<Self, StoreError> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("zdn-store".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&store);
                }
            })
            .map_err(|e| StoreError::io("starting the store thread", e))?;
        Ok(StoreHandle {
            jobs: tx,
            _owner: Arc::new(OwnerThread(Some(thread))),
        })
    }

    fn job<T: Send + 'static>(
        f: impl FnOnce(&ObjectStore) -> Result<T, StoreError> + Send + 'static,
    ) -> (Job, oneshot::Receiver<Result<T, StoreError>>) {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        (job, rx)
    }

    /// Runs `f` on the owner thread and awaits its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ObjectStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, rx) = Self::job(f);
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::WorkerGone)?;
        rx.await.map_err(|_| StoreError::WorkerGone)?
    }

    /// Runs `f` on the owner thread and waits for it. Not for use inside an async task.
    pub fn call_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ObjectStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, rx) = Self::job(f);
        self.jobs
            .blocking_send(job)
            .map_err(|_| StoreError::WorkerGone)?;
        rx.blocking_recv().map_err(|_| StoreError::WorkerGone)?
    }
}
