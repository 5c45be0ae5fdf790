//! The committer: the one task that writes accepted events to sled, and group commit,
//! so the webhook's answer waits until its event is on disk while all the requests
//! waiting at one moment share one flush.
//!
//! Durability path, numbered:
//! 1. the handler appends the event in memory (`Store::append`) and gets its seq;
//! 2. it sends a oneshot to the committer (fsync mode) and awaits it, or only a kick
//!    (buffered mode);
//! 3. the committer — one thread of its own (tokio's blocking pool), off the async
//!    workers — takes the first message plus every other one already queued;
//! 4. it writes every queued record to sled (`Store::write_pending`) and, when someone
//!    waits, runs one blocking `flush()` and `sync_data()` — never sled's
//!    `flush_async`, which deadlocks sled 0.34 under concurrency; in buffered mode
//!    sled's own flusher writes the log within 500 ms;
//! 5. it answers every waiter of the batch, and announces the write
//!    (`Store::announce_written`, which wakes the cluster's outbox); messages that
//!    arrived meanwhile form the next batch.
//!
//! The committer is a thread that blocks on its channel rather than an async task that
//! hands each batch to `spawn_blocking`: a batch then costs one thread wake-up instead
//! of three (task, blocking thread, task again).
//!
//! **Invariant:** a waiter is answered `Ok` only by a write and flush that started after
//! it was queued, so its record (queued before it) is in that flush.

use std::sync::Arc;
use std::time::Instant;

use crossbeam::channel;
use tokio::sync::oneshot;

use crate::ingest::store::{Store, StoreError};
use crate::telemetry;

/// Why an event is not known to be durable (`Committer::wait_durable`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The committer was gone before the wait was queued.
    #[error("the committer has stopped (shutting down)")]
    Stopped,
    /// The committer went away with the wait queued.
    #[error("the committer stopped before the flush finished")]
    StoppedBeforeFlush,
    /// The batch's write or flush failed; every waiter of the batch gets the one error.
    #[error("the event could not be written to disk ({0}); retry later")]
    Write(Arc<StoreError>),
}

enum Msg {
    /// Answer once everything queued before is durable.
    Wait(oneshot::Sender<Result<(), CommitError>>),
    /// Records were queued; write them soon, nobody waits.
    Kick,
}

/// Handle to the committer thread; a clone is cheap.
#[derive(Clone)]
pub struct Committer {
    tx: channel::Sender<Msg>,
}

impl Committer {
    /// Starts the committer thread. It ends when every handle is dropped, after writing
    /// what is queued; the returned task ends with it. A plain thread, not one of
    /// tokio's blocking pool, so that a handle still held somewhere never holds up the
    /// runtime's own shutdown.
    pub fn start(
        store: Store,
        fsync: bool,
    ) -> std::io::Result<(Committer, tokio::task::JoinHandle<()>)> {
        let (tx, rx) = channel::unbounded();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                run(store, fsync, rx);
                let _ = done_tx.send(());
            })?;
        let task = tokio::spawn(async move {
            let _ = done_rx.await;
        });
        Ok((Committer { tx }, task))
    }

    /// Resolves once everything appended before the call is durable.
    pub async fn wait_durable(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Wait(tx))
            .map_err(|_| CommitError::Stopped)?;
        rx.await.map_err(|_| CommitError::StoppedBeforeFlush)?
    }

    /// Asks for what is queued to be written to sled soon, without waiting.
    pub fn kick(&self) {
        // A stopped committer means shutdown, whose final flush writes the queue.
        let _ = self.tx.send(Msg::Kick);
    }
}

fn run(store: Store, fsync: bool, rx: channel::Receiver<Msg>) {
    let mut waiters = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut msg = Some(first);
        while let Some(m) = msg.take().or_else(|| rx.try_recv().ok()) {
            if let Msg::Wait(w) = m {
                waiters.push(w);
            }
        }
        let started = Instant::now();
        let flush = !waiters.is_empty();
        let written = store.write_pending().and_then(|n| {
            if flush {
                store.flush_durable(fsync)?;
            }
            Ok(n)
        });
        let result = match written {
            Ok(n) => {
                metrics::histogram!(telemetry::COMMIT_BATCH_SIZE).record(n as f64);
                Ok(())
            }
            Err(e) => Err(CommitError::Write(Arc::new(e))),
        };
        if flush {
            metrics::histogram!(telemetry::COMMIT_DURATION_SECONDS)
                .record(started.elapsed().as_secs_f64());
        }
        if let Err(e) = &result {
            metrics::counter!(telemetry::COMMIT_FAILURES_TOTAL).increment(1);
            tracing::error!(waiters = waiters.len(), "group commit failed: {e}");
        }
        for w in waiters.drain(..) {
            let _ = w.send(result.clone());
        }
        if result.is_ok() {
            // What was written is durable as the durability mode promises: the
            // cluster's outbox may publish it now.
            store.announce_written();
        }
    }
}
