//! Group commit: the webhook's answer waits until its event is on disk, and all the
//! requests waiting at one moment share one flush.
//!
//! Durability path, numbered:
//! 1. the handler commits the event to sled (in memory) and gets its seq;
//! 2. it sends a oneshot to the committer task and awaits it;
//! 3. the committer takes the first waiter plus every other waiter already queued;
//! 4. it runs one blocking `flush()` (and `sync_data()` in fsync mode) in
//!    `spawn_blocking`, off the async workers — never sled's `flush_async`, which
//!    deadlocks sled 0.34 under concurrency;
//! 5. it answers every waiter of the batch; waiters that arrived during the flush
//!    form the next batch.
//!
//! **Invariant:** a waiter is answered `Ok` only by a flush that started after it was
//! queued, so its write (made before it queued) is in that flush.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::store::Store;
use crate::telemetry;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Handle to the committer task; a clone is cheap.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Committer {
    /// Starts the committer task. It ends when every handle is dropped.
    pub fn start(store: Store, fsync: bool) -> (Committer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(store, fsync, rx));
        (Committer { tx }, task)
    }

    /// Resolves once everything written before the call is durable.
    pub async fn wait_durable(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| "the committer has stopped (shutting down)".to_string())?;
        rx.await
            .map_err(|_| "the committer stopped before the flush finished".to_string())?
    }
}

async fn run(store: Store, fsync: bool, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        let started = Instant::now();
        let s = store.clone();
        let result = match tokio::task::spawn_blocking(move || s.flush_durable(fsync)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "the event could not be written to disk ({e}); retry later"
            )),
            Err(e) => Err(format!("the flush task failed ({e}); retry later")),
        };
        metrics::histogram!(telemetry::COMMIT_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(telemetry::COMMIT_BATCH_SIZE).record(batch.len() as f64);
        if let Err(e) = &result {
            metrics::counter!(telemetry::COMMIT_FAILURES_TOTAL).increment(1);
            tracing::error!(waiters = batch.len(), "group commit failed: {e}");
        }
        for w in batch.drain(..) {
            let _ = w.send(result.clone());
        }
    }
}
