//! Webhook ingestion: `POST /webhooks/producthunt` (path configurable).
//!
//! Life of a webhook:
//! 1. the body is read as raw bytes, at most `webhook.max_body_bytes` (413 past it) and
//!    within `server.body_timeout_ms` (408 for a slow sender);
//! 2. the signature is checked over those exact bytes (401 when missing or wrong, or
//!    when a Standard Webhooks `webhook-timestamp` is outside `webhook.tolerance_secs`);
//! 3. the envelope is validated (400 naming the field); an `X-ProductHunt-Signature`
//!    event must carry `created_at` (400 naming it when missing), within
//!    `webhook.tolerance_secs` of the clock (else 401, like a stale `webhook-timestamp`):
//!    that signed time is what stops a captured body from being replayed once its id
//!    has left the dedup index;
//! 4. the id is checked against the dedup index and the event appended in memory
//!    (`Store::append`); a known id within the dedup TTL is a duplicate and nothing
//!    is written;
//! 5. a new event is pushed on the ring, where the pump turns it into velocity;
//! 6. the committer writes it to sled (`commit.rs`); in fsync mode the answer waits
//!    for the group commit that puts it on disk;
//! 7. in a cluster, the answer waits (at most `CONFIRM_WAIT`) for JetStream to say
//!    whether another node accepted the id first (`Replication`): then it is a
//!    duplicate here too;
//! 8. `202 {"status":"accepted","seq":N}` or `200 {"status":"duplicate"}`.
//!
//! **Invariant:** nothing is stored for a 4xx; a 202 follows durability.
//! **Invariant:** a duplicate is answered only once the original is durable too, so
//! "duplicate" always means "you can stop retrying".
//! Steps 2–5 are `Ingestor::ingest`, synchronous and allocation-light, which the
//! critical-path bench measures without HTTP. Every refusal is a [`Rejection`]
//! (`rejection.rs`), which alone picks its status, error code, metric label and
//! `Retry-After` (`backpressure.retry_after_secs`).

pub mod payload;
mod rejection;
pub mod signature;

pub use rejection::Rejection;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::clock::Clock;
use crate::config::{Config, Durability};
use crate::error::ApiError;
use crate::ingest::commit::Committer;
use crate::ingest::pump::Purges;
use crate::ingest::ring::{Ring, RingEvent};
use crate::ingest::store::{Commit, EventRecord, Scheme, Store};
use crate::ingest::velocity::to_milli;
use crate::telemetry;
use signature::{Keys, SignatureError};

/// Steps 2–5 of the life of a webhook: verify, parse, commit, push.
pub struct Ingestor {
    keys: Keys,
    store: Store,
    ring: Ring,
    clock: Clock,
    weights: HashMap<String, u64>,
    default_weight: u64,
    tolerance_secs: u64,
    dedup_ttl_ms: u64,
    /// `backpressure.retry_after_secs`, for a store that refuses an event.
    retry_after_secs: u64,
    /// The cache's purge rules, numbered into each ring event (`with_purges`).
    purges: Option<Arc<dyn Purges>>,
}

impl Ingestor {
    pub fn new(config: &Config, keys: Keys, store: Store, ring: Ring, clock: Clock) -> Ingestor {
        Ingestor {
            keys,
            store,
            ring,
            clock,
            weights: config
                .velocity
                .weights
                .iter()
                .map(|(k, w)| (k.clone(), to_milli(*w)))
                .collect(),
            default_weight: to_milli(config.velocity.default_weight),
            tolerance_secs: config.webhook.tolerance_secs,
            dedup_ttl_ms: config.webhook.dedup_ttl_secs.saturating_mul(1000),
            retry_after_secs: config.backpressure.retry_after_secs,
            purges: None,
        }
    }

    /// Numbers each accepted event's purge rule (`RingEvent::purge_rule`) with
    /// `purges`, the value the pump applies them with.
    pub fn with_purges(mut self, purges: Arc<dyn Purges>) -> Ingestor {
        self.purges = Some(purges);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Verifies, validates, appends (in memory) and pushes one webhook.
    pub fn ingest(&self, headers: &HeaderMap, body: &[u8]) -> Result<Commit, Rejection> {
        let now_ms = self.clock.now_ms();
        let (scheme, header_id) = self.verify(headers, body, now_ms)?;
        let envelope = payload::parse(body, header_id).map_err(Rejection::Payload)?;
        if scheme == Scheme::ProductHunt {
            self.check_created_at(envelope.created_at, now_ms)?;
        }
        let weight_milli = self
            .weights
            .get(envelope.event_type.as_str())
            .copied()
            .unwrap_or(self.default_weight);
        let record = EventRecord {
            id: envelope.id,
            event_type: envelope.event_type,
            weight_milli,
            received_ms: now_ms,
            scheme,
            payload: body.to_vec(),
            origin: None,
        };
        self.append_and_push(&record)
    }

    /// An event that is not an HTTP webhook (the Product Hunt poller's): same dedup,
    /// seq, ring push and durability (the caller waits on the committer) as `ingest`.
    pub fn ingest_synthetic(
        &self,
        id: &str,
        event_type: &str,
        payload: Vec<u8>,
    ) -> Result<Commit, Rejection> {
        self.ingest_synthetic_at(id, event_type, payload, self.clock.now_ms())
    }

    /// `ingest_synthetic` for an event that happened at `at_ms` (a vote the poller read
    /// with its `createdAt`): stored with that time and entering the window there. The
    /// caller clamps it: never after now, never more than one window before it (the
    /// window's rebuild at startup relies on that bound).
    pub fn ingest_synthetic_at(
        &self,
        id: &str,
        event_type: &str,
        payload: Vec<u8>,
        at_ms: u64,
    ) -> Result<Commit, Rejection> {
        let record = EventRecord {
            id: id.to_string(),
            event_type: event_type.to_string(),
            weight_milli: self
                .weights
                .get(event_type)
                .copied()
                .unwrap_or(self.default_weight),
            received_ms: at_ms,
            scheme: Scheme::Poller,
            payload,
            origin: None,
        };
        self.append_and_push(&record)
    }

    /// An event another node of the cluster accepted (`record.origin` set), read from
    /// the cluster's stream: the same dedup (a known id is a `Duplicate` and nothing
    /// is written), seq, ring push at its own time and purge rule as a local event,
    /// with the weight the accepting node gave it.
    pub fn ingest_replica(&self, record: &EventRecord) -> Result<Commit, Rejection> {
        debug_assert!(record.origin.is_some(), "a replica names its node");
        self.append_and_push(record)
    }

    fn append_and_push(&self, record: &EventRecord) -> Result<Commit, Rejection> {
        let now_ms = record.received_ms;
        let weight_milli = record.weight_milli;
        match self.store.append(record, self.dedup_ttl_ms) {
            Ok(commit @ Commit::Accepted { seq }) => {
                self.ring.push(RingEvent {
                    seq,
                    received_ms: now_ms,
                    weight_milli,
                    purge_rule: self
                        .purges
                        .as_ref()
                        .map_or(0, |p| p.rule_of(&record.event_type)),
                });
                Ok(commit)
            }
            Ok(duplicate @ Commit::Duplicate { .. }) => Ok(duplicate),
            Err(error) => Err(Rejection::Storage {
                error,
                retry_after_secs: self.retry_after_secs,
            }),
        }
    }

    /// The Product Hunt scheme signs only the body, so the body's `created_at` is its
    /// signed time: required, and within `tolerance_secs` of `now_ms` either way.
    fn check_created_at(
        &self,
        created_at: Option<jiff::Timestamp>,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        let created_at = created_at.ok_or(Rejection::MissingCreatedAt {
            tolerance_secs: self.tolerance_secs,
        })?;
        signature::check_created_at(created_at.as_millisecond(), now_ms, self.tolerance_secs)
            .map_err(Rejection::Signature)
    }

    /// Picks the scheme from the headers present and verifies it. Returns the scheme
    /// and, for Standard Webhooks, the `webhook-id` to dedup on.
    fn verify<'h>(
        &self,
        headers: &'h HeaderMap,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(Scheme, Option<&'h str>), Rejection> {
        let unauthorized = Rejection::Signature;
        if let Some(sigs) = headers.get(signature::STD_SIGNATURE_HEADER) {
            let id = headers
                .get(signature::STD_ID_HEADER)
                .ok_or(SignatureError::Malformed {
                    header: "webhook-id",
                    problem: "missing (required with webhook-signature)",
                })
                .map_err(unauthorized)?;
            let ts = headers
                .get(signature::STD_TIMESTAMP_HEADER)
                .ok_or(SignatureError::Malformed {
                    header: "webhook-timestamp",
                    problem: "missing (required with webhook-signature)",
                })
                .map_err(unauthorized)?;
            self.keys
                .verify_standard(
                    id.as_bytes(),
                    ts.as_bytes(),
                    sigs.as_bytes(),
                    body,
                    now_ms / 1000,
                    self.tolerance_secs,
                )
                .map_err(unauthorized)?;
            let id = id.to_str().map_err(|_| Rejection::IdNotAscii)?;
            return Ok((Scheme::StandardWebhooks, Some(id)));
        }
        let sig = headers
            .get(signature::PRODUCTHUNT_HEADER)
            .ok_or(SignatureError::Missing)
            .map_err(unauthorized)?;
        self.keys
            .verify_producthunt(sig.as_bytes(), body)
            .map_err(unauthorized)?;
        Ok((Scheme::ProductHunt, None))
    }
}

/// What the webhook handler needs: the ingestor, the committer, the config, and what
/// to call for each accepted event (the launch day's counter, which lives in
/// `insight`; `app` connects the two, so ingest does not reach up for it). One `Arc`,
/// so the clone axum makes per request costs what cloning the whole app state did.
#[derive(Clone)]
pub struct WebhookState(Arc<WebhookHandles>);

pub struct WebhookHandles {
    pub ingestor: Arc<Ingestor>,
    pub committer: Committer,
    pub config: Arc<Config>,
    pub on_accepted: Box<dyn Fn() + Send + Sync>,
    /// The cluster's word on each new event (`ops::cluster`), when `[cluster]` is on.
    pub replication: Option<Arc<dyn Replication>>,
}

/// How long a webhook's answer waits for the cluster to say whether another node
/// had its id first; past it, the local acceptance stands (the outbox still
/// publishes the event, and JetStream still drops a second copy).
pub const CONFIRM_WAIT: Duration = Duration::from_millis(1000);

/// The cluster, as the webhook path sees it: several nodes behind a balancer each
/// accept webhooks, and a sender that retries on another node must hear `duplicate`
/// there. Implemented by `ops::cluster`'s outbox, which publishes every event to
/// JetStream with its id as `Nats-Msg-Id`; JetStream's answer says whether the id
/// was already in the stream.
pub trait Replication: Send + Sync {
    /// Called once a new event is appended with `seq`, before it is durable. The
    /// receiver resolves with `true` when the cluster already had the id (another
    /// node accepted it first), `false` when this node's copy is the first. `None`
    /// when the cluster cannot answer now (NATS unreachable): the local acceptance
    /// stands, and the event is published when NATS is back.
    fn confirm(&self, seq: u64) -> Option<tokio::sync::oneshot::Receiver<bool>>;
}

impl WebhookState {
    pub fn new(handles: WebhookHandles) -> WebhookState {
        WebhookState(Arc::new(handles))
    }
}

impl std::ops::Deref for WebhookState {
    type Target = WebhookHandles;

    fn deref(&self) -> &WebhookHandles {
        &self.0
    }
}

/// The axum handler for the webhook path.
pub async fn handle(State(state): State<WebhookState>, req: Request) -> Response {
    let started = Instant::now();
    let result = handle_inner(&state, req).await;
    metrics::histogram!(telemetry::WEBHOOK_DURATION_SECONDS)
        .record(started.elapsed().as_secs_f64());
    let label = match &result {
        Ok(Commit::Accepted { .. }) => "accepted",
        Ok(Commit::Duplicate { .. }) => "duplicate",
        Err(r) => r.label(),
    };
    metrics::counter!(telemetry::WEBHOOKS_TOTAL, "result" => label).increment(1);
    if let Ok(Commit::Accepted { .. }) = result {
        (state.on_accepted)();
    }
    match result {
        Ok(Commit::Accepted { seq }) => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "accepted", "seq": seq})),
        )
            .into_response(),
        Ok(Commit::Duplicate { .. }) => {
            (StatusCode::OK, Json(json!({"status": "duplicate"}))).into_response()
        }
        Err(r) => ApiError::from(r).into_response(),
    }
}

async fn handle_inner(state: &WebhookState, req: Request) -> Result<Commit, Rejection> {
    let max = state.config.webhook.max_body_bytes;
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Rejection::TooLarge { max });
    }
    let body = read_body(
        body,
        max,
        Duration::from_millis(state.config.server.body_timeout_ms),
    )
    .await?;
    let outcome = state.ingestor.ingest(&parts.headers, &body)?;
    let confirm = match (&state.replication, outcome) {
        (Some(r), Commit::Accepted { seq }) => r.confirm(seq),
        _ => None,
    };
    if state.config.webhook.durability == Durability::Fsync {
        state
            .committer
            .wait_durable()
            .await
            .map_err(|error| Rejection::NotDurable {
                error,
                retry_after_secs: state.config.backpressure.retry_after_secs,
            })?;
    } else {
        state.committer.kick();
    }
    if let Some(confirm) = confirm {
        // Another node had this id first (a sender retrying on another box): the
        // event is in the cluster once, and this answer says so. This node's copy
        // stays in its store and window, where it is that same event once.
        if let Ok(Ok(true)) = tokio::time::timeout(CONFIRM_WAIT, confirm).await {
            if let Commit::Accepted { seq } = outcome {
                // Counted as accepted where it was accepted first, not here too.
                if let Err(e) = state.ingestor.store().mark_not_counted(seq) {
                    tracing::warn!(
                        seq,
                        "could not mark a cluster duplicate as not counted: {e}"
                    );
                }
                return Ok(Commit::Duplicate { seq });
            }
        }
    }
    Ok(outcome)
}

async fn read_body(body: Body, max: usize, timeout: Duration) -> Result<bytes::Bytes, Rejection> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(Rejection::BodyTimeout { timeout }),
        Ok(Err(e)) => {
            let is_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if is_limit {
                Err(Rejection::TooLarge { max })
            } else {
                Err(Rejection::BodyUnreadable(e))
            }
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}
