//! The queue in sled: the job record, the `outbound` and `deadletter` trees, and what
//! reads and moves jobs there (enqueue, list, retry or drop a dead letter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{watch, Notify};

use super::policy::{host_of, unit_draw, Bucket};
use crate::client::{https_client, HttpsClient};
use crate::clock::Clock;
use crate::config::OutboundConfig;
use crate::ingest::store::{codec, trees, Store, StoreError};
use crate::telemetry;

const JOB_RECORD_VERSION: u8 = 1;

/// One outbound call, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    /// Sent as `X-Request-Id` on every attempt.
    pub idempotency_id: String,
    /// What the job is for (`alert`, ...), for logs and the admin list.
    pub kind: String,
    /// The URL the body is POSTed to.
    pub target: String,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Failed attempts so far (429s not counted).
    pub attempts: u32,
    /// 429 answers so far; they lengthen the wait but spend no attempt.
    pub throttled: u32,
    pub next_at_ms: u64,
    pub created_ms: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("target {target:?}: {problem}")]
    Target { target: String, problem: String },
}

impl From<sled::Error> for OutboundError {
    fn from(e: sled::Error) -> Self {
        OutboundError::Store(StoreError::Sled(e))
    }
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&unit_draw().to_bits().to_be_bytes());
    }
    hex::encode(b)
}

/// Handle to the queue; a clone is cheap.
#[derive(Clone)]
pub struct Outbound {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) jobs: sled::Tree,
    pub(super) dead: sled::Tree,
    pub(super) next_id: AtomicU64,
    pub(super) config: OutboundConfig,
    pub(super) clock: Clock,
    pub(super) client: HttpsClient,
    pub(super) buckets: Mutex<HashMap<String, Bucket>>,
    pub(super) wake: Notify,
    /// Bumped after every recorded attempt; tests and callers wait on it.
    pub(super) progress: watch::Sender<u64>,
}

impl Outbound {
    /// Opens the `outbound` and `deadletter` trees; pending jobs are due again. `tls`
    /// is what `tls_config` built from the same config.
    pub fn open(
        store: &Store,
        config: &OutboundConfig,
        clock: Clock,
        tls: rustls::ClientConfig,
    ) -> Result<Outbound, StoreError> {
        let jobs = store.open_tree(trees::OUTBOUND)?;
        let dead = store.open_tree(trees::DEADLETTER)?;
        let last = |t: &sled::Tree| -> Result<u64, StoreError> {
            Ok(t.last()?.map(|(k, _)| key_id(&k)).unwrap_or(0))
        };
        let next_id = last(&jobs)?.max(last(&dead)?) + 1;
        let out = Outbound {
            inner: Arc::new(Inner {
                jobs,
                dead,
                next_id: AtomicU64::new(next_id),
                config: config.clone(),
                clock,
                client: https_client(Duration::from_millis(config.timeout_ms), tls),
                buckets: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                progress: watch::channel(0).0,
            }),
        };
        // Decode every record now, so a newer or corrupt one fails the start, not a send.
        out.pending()?;
        out.publish_deadletters();
        Ok(out)
    }

    /// The HTTP client the queue uses, for callers that need an answer now (the poller).
    pub fn client(&self) -> &HttpsClient {
        &self.inner.client
    }

    /// Stores a job that POSTs `body` to `target`, flushes it, and wakes the worker.
    pub async fn enqueue(
        &self,
        kind: &str,
        target: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Job, OutboundError> {
        crate::syntax::url::target(target).map_err(|problem| OutboundError::Target {
            target: target.to_string(),
            problem,
        })?;
        let now = self.inner.clock.now_ms();
        let id = self.inner.next_id.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            id,
            idempotency_id: random_id(),
            kind: kind.to_string(),
            target: target.to_string(),
            content_type: content_type.to_string(),
            body,
            attempts: 0,
            throttled: 0,
            next_at_ms: now,
            created_ms: now,
            last_error: None,
        };
        self.inner
            .jobs
            .insert(id.to_be_bytes(), encode_job(&job)?)?;
        self.flush().await?;
        tracing::debug!(id, kind, target = %host_of(target), "outbound job queued");
        self.kick();
        Ok(job)
    }

    /// Wakes the worker now (a new job, a retried dead letter, a moved test clock).
    pub fn kick(&self) {
        self.inner.wake.notify_one();
    }

    /// Jobs waiting to be sent, oldest first.
    pub fn pending(&self) -> Result<Vec<Job>, StoreError> {
        self.inner
            .jobs
            .iter()
            .values()
            .map(|v| decode_job(&v?))
            .collect()
    }

    /// Dead letters, oldest first.
    pub fn deadletters(&self) -> Result<Vec<Job>, StoreError> {
        self.inner
            .dead
            .iter()
            .values()
            .map(|v| decode_job(&v?))
            .collect()
    }

    /// A receiver of the attempt counter: it moves after every recorded attempt.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.inner.progress.subscribe()
    }

    /// Moves a dead letter back to the queue with its attempts reset (same
    /// idempotency id). `None` when there is no such dead letter.
    pub async fn retry_deadletter(&self, id: u64) -> Result<Option<Job>, OutboundError> {
        let key = id.to_be_bytes();
        let Some(v) = self.inner.dead.get(key)? else {
            return Ok(None);
        };
        let mut job = decode_job(&v)?;
        job.attempts = 0;
        job.throttled = 0;
        job.next_at_ms = self.inner.clock.now_ms();
        let bytes = encode_job(&job)?;
        self.move_between(&self.inner.dead, &self.inner.jobs, key, bytes)?;
        self.flush().await?;
        self.publish_deadletters();
        self.kick();
        Ok(Some(job))
    }

    /// Drops a dead letter. `None` when there is no such dead letter.
    pub async fn drop_deadletter(&self, id: u64) -> Result<Option<Job>, OutboundError> {
        let Some(v) = self.inner.dead.remove(id.to_be_bytes())? else {
            return Ok(None);
        };
        self.flush().await?;
        self.publish_deadletters();
        Ok(Some(decode_job(&v)?))
    }

    /// Moves `key` from one tree to the other in one transaction.
    pub(super) fn move_between(
        &self,
        from: &sled::Tree,
        to: &sled::Tree,
        key: [u8; 8],
        bytes: Vec<u8>,
    ) -> Result<(), OutboundError> {
        (from, to)
            .transaction(|(f, t)| {
                t.insert(&key[..], bytes.as_slice())?;
                f.remove(&key[..])?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => OutboundError::from(e),
                TransactionError::Abort(()) => {
                    OutboundError::from(sled::Error::Unsupported("aborted".into()))
                }
            })
    }

    /// Flushes sled's log (the committer stays the only writer of events).
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let jobs = self.inner.jobs.clone();
        tokio::task::spawn_blocking(move || jobs.flush().map(drop))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
            .map_err(StoreError::Sled)
    }

    pub(super) fn publish_deadletters(&self) {
        metrics::gauge!(telemetry::OUTBOUND_DEADLETTER).set(self.inner.dead.len() as f64);
    }

    /// Dead letters held now.
    pub fn deadletter_count(&self) -> usize {
        self.inner.dead.len()
    }
}

fn key_id(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

pub fn encode_job(job: &Job) -> Result<Vec<u8>, StoreError> {
    codec::encode("outbound job", JOB_RECORD_VERSION, job)
}

pub fn decode_job(v: &[u8]) -> Result<Job, StoreError> {
    codec::decode("outbound job", JOB_RECORD_VERSION, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_records_round_trip_and_newer_ones_are_refused() {
        let job = Job {
            id: 7,
            idempotency_id: "abc".into(),
            kind: "alert".into(),
            target: "http://127.0.0.1:1/x".into(),
            content_type: "application/json".into(),
            body: b"{}".to_vec(),
            attempts: 1,
            throttled: 2,
            next_at_ms: 3,
            created_ms: 4,
            last_error: Some("HTTP 500".into()),
        };
        let mut v = encode_job(&job).unwrap();
        assert_eq!(decode_job(&v).unwrap(), job);
        v[0] = JOB_RECORD_VERSION + 1;
        assert!(matches!(
            decode_job(&v),
            Err(StoreError::NewerRecord { .. })
        ));
    }
}
