//! The durable outbound queue: every call launchguard makes to the outside (alert
//! messages today) is a job in the sled tree `outbound` until it is delivered, and a
//! job that keeps failing ends in the tree `deadletter` with its last error, where an
//! operator can list, retry or drop it (`/admin/outbound/deadletters`).
//!
//! Life of a job:
//! 1. `Outbound::enqueue` writes it (u64 BE id → versioned bincode record) and flushes,
//!    then wakes the worker. Its idempotency id is fixed here and sent as
//!    `X-Request-Id` on every attempt, so a receiver can drop a repeat.
//! 2. The worker (`Outbound::run`) sends every due job, at most
//!    `outbound.host_budget_per_minute` a minute to one host (a token bucket per host);
//!    a job whose host has no budget left stays due and goes at the next refill.
//! 3. 2xx: the job is removed. 429: the job waits and tries again without spending an
//!    attempt. Anything else (other status, refused connection, timeout): one attempt
//!    spent; after `outbound.max_retries` of them the job moves to dead letters.
//! 4. The wait before the next attempt is `backoff_ms`: `base_delay_ms × 2^(n-1)`
//!    (capped at `max_delay_ms`), times a jitter drawn from [0.6, 1.4], and never
//!    shorter than the server's `Retry-After` (seconds or HTTP date) or
//!    `X-Rate-Limit-Reset`.
//!
//! **Invariant:** a job leaves `outbound` only when delivered or when it is in
//! `deadletter` (one sled transaction moves it). A job is written back after every
//! attempt, so a job in flight when the process dies is still due at the next start
//! and is sent again, with the same `X-Request-Id`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::client::{https_client, HttpsClient};
use crate::clock::Clock;
use crate::config::OutboundConfig;
use crate::error::{ApiError, Code};
use crate::ingest::store::{codec, trees, Store, StoreError};
use crate::telemetry;

const JOB_RECORD_VERSION: u8 = 1;
/// Smallest and largest jitter multipliers: ±40%.
pub const JITTER_MIN: f64 = 0.6;
pub const JITTER_MAX: f64 = 1.4;
/// How much of an error answer's body is kept as `last_error`.
const ERROR_BODY_BYTES: usize = 200;

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

/// The wait before the next attempt, ms. `exponent` is the number of earlier waits
/// (0 for the first retry), `floor_ms` what the server asked for (`Retry-After`,
/// `X-Rate-Limit-Reset`), `unit` a uniform draw from [0, 1). Pure.
pub fn backoff_ms(base_ms: u64, max_ms: u64, exponent: u32, floor_ms: u64, unit: f64) -> u64 {
    let raw = base_ms.saturating_mul(1u64 << exponent.min(30)).min(max_ms);
    let jitter = JITTER_MIN + (JITTER_MAX - JITTER_MIN) * unit.clamp(0.0, 1.0);
    let jittered = (raw as f64 * jitter).round() as u64;
    jittered.max(floor_ms)
}

/// A uniform draw from [0, 1) from the OS generator.
fn unit_draw() -> f64 {
    let bits = getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&unit_draw().to_bits().to_be_bytes());
    }
    hex::encode(b)
}

/// A token bucket per host: `per_minute` tokens, refilled continuously.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn take(&mut self, per_minute: u32, now_ms: u64) -> bool {
        let cap = f64::from(per_minute);
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens = (self.tokens + elapsed * cap / 60_000.0).min(cap);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How one attempt went.
enum Attempt {
    Delivered,
    Throttled { error: String, wait_ms: u64 },
    Failed { error: String, wait_ms: u64 },
}

/// Handle to the queue; a clone is cheap.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: sled::Tree,
    dead: sled::Tree,
    next_id: AtomicU64,
    config: OutboundConfig,
    clock: Clock,
    client: HttpsClient,
    buckets: Mutex<HashMap<String, Bucket>>,
    wake: Notify,
    /// Bumped after every recorded attempt; tests and callers wait on it.
    progress: watch::Sender<u64>,
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

    /// The worker: sends due jobs, then sleeps until the next is due (at most `tick`)
    /// or until woken. Attempts in flight at shutdown are abandoned; their jobs are
    /// still stored and go again at the next start.
    pub async fn run(self, tick: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.run_due() => {}
                _ = shutdown.cancelled() => return,
            }
            let wait = self
                .next_due_ms()
                .map(|at| Duration::from_millis(at.saturating_sub(self.inner.clock.now_ms())))
                .unwrap_or(tick)
                .min(tick);
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn next_due_ms(&self) -> Option<u64> {
        let jobs = self.pending().ok()?;
        jobs.iter().map(|j| j.next_at_ms).min()
    }

    /// Sends every due job that its host's budget allows, concurrently, and records
    /// each outcome. Returns how many were sent.
    pub async fn run_due(&self) -> usize {
        let now = self.inner.clock.now_ms();
        let jobs = match self.pending() {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!("cannot read the outbound queue: {e}");
                return 0;
            }
        };
        let mut set = tokio::task::JoinSet::new();
        for job in jobs.into_iter().filter(|j| j.next_at_ms <= now) {
            let host = host_of(&job.target);
            if !self.take_budget(&host, now) {
                tracing::debug!(id = job.id, %host, "outbound budget spent for this host; the job waits");
                continue;
            }
            let this = self.clone();
            set.spawn(async move {
                let outcome = this.send(&job).await;
                this.record(job, outcome).await;
            });
        }
        let sent = set.len();
        while set.join_next().await.is_some() {}
        sent
    }

    fn take_budget(&self, host: &str, now_ms: u64) -> bool {
        let per_minute = self.inner.config.host_budget_per_minute;
        let mut buckets = self.inner.buckets.lock();
        let bucket = buckets.entry(host.to_string()).or_insert(Bucket {
            tokens: f64::from(per_minute),
            at_ms: now_ms,
        });
        let ok = bucket.take(per_minute, now_ms);
        metrics::gauge!(telemetry::OUTBOUND_BUDGET_REMAINING, "host" => host.to_string())
            .set(bucket.tokens.floor());
        ok
    }

    async fn send(&self, job: &Job) -> Attempt {
        let timeout = Duration::from_millis(self.inner.config.timeout_ms);
        let req = Request::builder()
            .method(Method::POST)
            .uri(&job.target)
            .header(header::CONTENT_TYPE, &job.content_type)
            .header("x-request-id", &job.idempotency_id)
            .header(
                header::USER_AGENT,
                concat!("launchguard/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(job.body.clone())));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Failed {
                    error: format!("cannot build the request: {e}"),
                    wait_ms: 0,
                }
            }
        };
        let answer = tokio::time::timeout(timeout, async {
            let res = self.inner.client.request(req).await?;
            let (parts, body) = res.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((parts, body))
        })
        .await;
        let now = self.inner.clock.now_ms();
        match answer {
            Err(_) => Attempt::Failed {
                error: format!(
                    "no answer within outbound.timeout_ms ({} ms)",
                    timeout.as_millis()
                ),
                wait_ms: 0,
            },
            Ok(Err(e)) => Attempt::Failed {
                error: format!("cannot reach {}: {}", host_of(&job.target), error_chain(&e)),
                wait_ms: 0,
            },
            Ok(Ok((parts, body))) => {
                let wait_ms = crate::client::server_delay_ms(&parts.headers, now);
                let status = parts.status;
                if status.is_success() {
                    return Attempt::Delivered;
                }
                let snippet = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES)])
                    .trim()
                    .to_string();
                let error = format!("HTTP {status}: {snippet}");
                if status == StatusCode::TOO_MANY_REQUESTS {
                    Attempt::Throttled { error, wait_ms }
                } else {
                    Attempt::Failed { error, wait_ms }
                }
            }
        }
    }

    async fn record(&self, mut job: Job, outcome: Attempt) {
        let c = &self.inner.config;
        let now = self.inner.clock.now_ms();
        let key = job.id.to_be_bytes();
        let result: Result<&'static str, OutboundError> = (|| match outcome {
            Attempt::Delivered => {
                self.inner.jobs.remove(key)?;
                tracing::debug!(id = job.id, kind = %job.kind, "outbound job delivered");
                Ok("delivered")
            }
            Attempt::Throttled { error, wait_ms } => {
                let delay = backoff_ms(
                    c.base_delay_ms,
                    c.max_delay_ms,
                    job.throttled,
                    wait_ms,
                    unit_draw(),
                );
                job.throttled += 1;
                job.next_at_ms = now + delay;
                job.last_error = Some(error);
                self.inner.jobs.insert(key, encode_job(&job)?)?;
                tracing::info!(
                    id = job.id,
                    delay_ms = delay,
                    "outbound job throttled (429); waiting without spending an attempt"
                );
                Ok("throttled")
            }
            Attempt::Failed { error, wait_ms } => {
                job.attempts += 1;
                job.last_error = Some(error.clone());
                if job.attempts >= c.max_retries {
                    let bytes = encode_job(&job)?;
                    self.move_between(&self.inner.jobs, &self.inner.dead, key, bytes)?;
                    tracing::warn!(id = job.id, kind = %job.kind, target = %host_of(&job.target), attempts = job.attempts, error = %error, "outbound job moved to dead letters");
                    Ok("dead_letter")
                } else {
                    let delay = backoff_ms(
                        c.base_delay_ms,
                        c.max_delay_ms,
                        job.attempts - 1,
                        wait_ms,
                        unit_draw(),
                    );
                    job.next_at_ms = now + delay;
                    self.inner.jobs.insert(key, encode_job(&job)?)?;
                    tracing::info!(id = job.id, attempts = job.attempts, delay_ms = delay, error = %error, "outbound attempt failed; retrying");
                    Ok("retry")
                }
            }
        })();
        match result {
            Ok(label) => {
                metrics::counter!(telemetry::OUTBOUND_JOBS_TOTAL, "result" => label).increment(1);
                if let Err(e) = self.flush().await {
                    tracing::error!("cannot flush the outbound queue: {e}");
                }
                if label == "dead_letter" {
                    self.publish_deadletters();
                }
            }
            Err(e) => tracing::error!(id = job.id, "cannot record an outbound attempt: {e}"),
        }
        self.inner.progress.send_modify(|n| *n += 1);
    }

    /// Moves `key` from one tree to the other in one transaction.
    fn move_between(
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
    async fn flush(&self) -> Result<(), StoreError> {
        let jobs = self.inner.jobs.clone();
        tokio::task::spawn_blocking(move || jobs.flush().map(drop))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
            .map_err(StoreError::Sled)
    }

    fn publish_deadletters(&self) {
        metrics::gauge!(telemetry::OUTBOUND_DEADLETTER).set(self.inner.dead.len() as f64);
    }

    /// Dead letters held now.
    pub fn deadletter_count(&self) -> usize {
        self.inner.dead.len()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The host (and port) of a target URL, for budgets and logs; never the path, which
/// for an incoming webhook is the secret.
pub fn host_of(url: &str) -> String {
    url.parse::<Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "invalid".into())
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

/// `GET /admin/outbound/deadletters`, `POST /admin/outbound/deadletters/{id}/retry`,
/// `DELETE /admin/outbound/deadletters/{id}`; mounted behind the admin token. A store
/// that fails answers 503 with `Retry-After: retry_after_secs`
/// (`backpressure.retry_after_secs`).
pub fn admin_routes<S>(retry_after_secs: u64) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Outbound: axum::extract::FromRef<S>,
{
    let retry = retry_after_secs;
    Router::new()
        .route(
            "/admin/outbound/deadletters",
            get(move |o: State<Outbound>| list_deadletters(o, retry)),
        )
        .route(
            "/admin/outbound/deadletters/{id}/retry",
            post(move |o: State<Outbound>, id: Path<String>| retry_deadletter(o, id, retry)),
        )
        .route(
            "/admin/outbound/deadletters/{id}",
            delete(move |o: State<Outbound>, id: Path<String>| drop_deadletter(o, id, retry)),
        )
}

fn view(job: &Job) -> serde_json::Value {
    json!({
        "id": job.id,
        "kind": job.kind,
        "target": host_of(&job.target),
        "attempts": job.attempts,
        "throttled": job.throttled,
        "last_error": job.last_error,
        "created_ms": job.created_ms,
        "request_id": job.idempotency_id,
    })
}

fn storage_error(e: impl std::fmt::Display, retry_after_secs: u64) -> ApiError {
    ApiError::unavailable(
        Code::StorageUnavailable,
        format!("the outbound store could not be read or written ({e}); retry later"),
        retry_after_secs,
    )
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            Code::InvalidId,
            format!(
                "{id:?} is not a dead-letter id; take one from GET /admin/outbound/deadletters"
            ),
        )
        .field("id")
    })
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        format!("no dead letter {id}; list them with GET /admin/outbound/deadletters"),
    )
}

async fn list_deadletters(State(outbound): State<Outbound>, retry_after_secs: u64) -> Response {
    match outbound.deadletters() {
        Ok(jobs) => Json(json!({
            "deadletters": jobs.iter().map(view).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => storage_error(e, retry_after_secs).into_response(),
    }
}

async fn retry_deadletter(
    State(outbound): State<Outbound>,
    Path(id): Path<String>,
    retry_after_secs: u64,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match outbound.retry_deadletter(id).await {
        Ok(Some(job)) => {
            tracing::info!(id, kind = %job.kind, target = %host_of(&job.target), "admin: dead letter queued again");
            (
                StatusCode::ACCEPTED,
                Json(json!({"status": "queued", "job": view(&job)})),
            )
                .into_response()
        }
        Ok(None) => not_found(id).into_response(),
        Err(e) => storage_error(e, retry_after_secs).into_response(),
    }
}

async fn drop_deadletter(
    State(outbound): State<Outbound>,
    Path(id): Path<String>,
    retry_after_secs: u64,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match outbound.drop_deadletter(id).await {
        Ok(Some(job)) => {
            tracing::info!(id, kind = %job.kind, target = %host_of(&job.target), "admin: dead letter dropped");
            Json(json!({"status": "dropped", "job": view(&job)})).into_response()
        }
        Ok(None) => not_found(id).into_response(),
        Err(e) => storage_error(e, retry_after_secs).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn jitter_stays_within_forty_percent_and_never_under_the_server_delay(
            base in 1u64..10_000,
            exponent in 0u32..12,
            floor in prop_oneof![Just(0u64), 0u64..2_000_000],
            unit in 0.0f64..1.0,
        ) {
            let max = 300_000;
            let raw = (base << exponent).min(max);
            let d = backoff_ms(base, max, exponent, floor, unit);
            prop_assert!(d >= floor, "{d} < server delay {floor}");
            if floor == 0 || d > floor {
                let lo = (raw as f64 * JITTER_MIN).floor() as u64;
                let hi = (raw as f64 * JITTER_MAX).ceil() as u64;
                prop_assert!(d >= lo && d <= hi, "{d} outside [{lo}, {hi}] for raw {raw}");
            }
        }
    }

    #[test]
    fn draws_from_the_os_generator_cover_the_jitter_range() {
        let draws: Vec<u64> = (0..5000)
            .map(|_| backoff_ms(1200, 300_000, 0, 0, unit_draw()))
            .collect();
        assert!(draws.iter().all(|d| (720..=1680).contains(d)));
        assert!(draws.iter().any(|d| *d < 800), "no draw near -40%");
        assert!(draws.iter().any(|d| *d > 1600), "no draw near +40%");
        // Retry-After of 5 s wins over every draw.
        assert!((0..5000).all(|_| backoff_ms(1200, 300_000, 0, 5000, unit_draw()) >= 5000));
    }

    #[test]
    fn doubling_stops_at_the_cap_but_a_server_may_ask_for_more() {
        assert_eq!(backoff_ms(1000, 8000, 10, 0, 0.5), 8000);
        assert_eq!(backoff_ms(1000, 8000, 10, 60_000, 0.5), 60_000);
        assert_eq!(backoff_ms(1000, 8000, 1, 0, 0.0), 1200);
        assert_eq!(backoff_ms(1000, 8000, 1, 0, 1.0), 2800);
    }

    #[test]
    fn a_host_budget_refills_over_a_minute() {
        let mut b = Bucket {
            tokens: 2.0,
            at_ms: 0,
        };
        assert!(b.take(2, 0));
        assert!(b.take(2, 0));
        assert!(!b.take(2, 1000));
        assert!(b.take(2, 30_000));
        assert!(!b.take(2, 30_000));
    }

    #[test]
    fn hosts_of_targets_key_their_budgets() {
        assert_eq!(
            host_of("https://hooks.slack.com/services/T/B/X"),
            "hooks.slack.com"
        );
    }

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
