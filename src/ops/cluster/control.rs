//! One control plane: what an operator gives one node's admin API reaches every node.
//!
//! - **The pin** lives in the key-value bucket `LAUNCHGUARD` under `pin`: after a
//!   pin or unpin succeeds on a node (`share`, a layer on the admin API), the node
//!   puts what is now in force there; every node watches the key (from its last
//!   value, so a node started later gets the pin in force) and applies and persists
//!   what another node put.
//! - **Purges and warm-ups** go to the stream `LAUNCHGUARD_CONTROL` (subject
//!   `launchguard.control.<node>`, `Nats-Msg-Id` unique per command, so a retried
//!   publish is carried once); every node's durable consumer applies the other
//!   nodes' commands through the same edge functions the admin routes call.
//!
//! The node that took the command has applied it before sharing; the answer says
//! whether the cluster got it (`Launchguard-Cluster: shared`), and a command that
//! could not be shared then (NATS unreachable) is retried in the background for up
//! to `RETRY_FOR`.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, kv, stream};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{backoff, Cluster, NODE_HEADER};
use crate::clock::Clock;
use crate::edge::Edge;
use crate::ingest::factor::{Factor, Pin};
use crate::ingest::store::Store;

/// The key-value bucket of the cluster's shared values (the pin).
pub const BUCKET: &str = "LAUNCHGUARD";
/// The stream of purges and warm-ups.
pub const CONTROL_STREAM: &str = "LAUNCHGUARD_CONTROL";
const PIN_KEY: &str = "pin";
/// The answer's header saying whether the command reached the cluster.
pub const CLUSTER_HEADER: &str = "launchguard-cluster";
/// How long a command that could not be shared is retried in the background.
const RETRY_FOR: Duration = Duration::from_secs(600);
/// Largest admin body read to be shared (purge and warm bodies are a few bytes).
const MAX_BODY: usize = 64 * 1024;

/// The pin as the bucket holds it: what is in force on `node` after its change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedPin {
    pub node: String,
    /// `None`: unpinned, the computed factor is in force.
    pub factor: Option<f64>,
    pub until_ms: u64,
}

/// A purge or warm-up, as the admin route got it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// `POST /admin/purge` with this body.
    Purge { body: String },
    /// `POST /admin/warm` with this body (empty: `cache.warm_urls`).
    Warm { body: String },
}

/// What applying the other nodes' commands needs.
#[derive(Clone)]
pub struct Control {
    /// When this node started (the system's clock, as JetStream stamps messages):
    /// its control consumer, made a moment later, starts there, so no command
    /// published meanwhile is missed.
    pub started: std::time::SystemTime,
    /// The server time of the last command this node's consumer took.
    pub consumed: std::sync::Arc<parking_lot::Mutex<Option<time::OffsetDateTime>>>,
    pub cluster: Cluster,
    pub edge: Edge,
    pub factor: Factor,
    pub store: Store,
    pub clock: Clock,
}

async fn bucket(cluster: &Cluster) -> Result<kv::Store, String> {
    super::kv_bucket(
        cluster,
        BUCKET,
        "launchguard: values every node shares (the factor pin)",
        Duration::ZERO,
        stream::StorageType::File,
    )
    .await
}

async fn control_stream(cluster: &Cluster) -> Result<stream::Stream, String> {
    cluster
        .js()
        .get_or_create_stream(stream::Config {
            name: CONTROL_STREAM.into(),
            description: Some("launchguard: purges and warm-ups for every node".into()),
            subjects: vec!["launchguard.control.>".into()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(600),
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

impl Control {
    async fn publish_pin(&self, pin: &SharedPin) -> Result<(), String> {
        let b = bucket(&self.cluster).await?;
        let value = serde_json::to_vec(pin).map_err(|e| e.to_string())?;
        b.put(PIN_KEY, value.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn publish_command(&self, command: &Command, msg_id: &str) -> Result<(), String> {
        control_stream(&self.cluster).await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        headers.insert(NODE_HEADER, self.cluster.node());
        let payload = serde_json::to_vec(command).map_err(|e| e.to_string())?;
        self.cluster
            .js()
            .publish_with_headers(
                format!("launchguard.control.{}", self.cluster.node()),
                headers,
                payload.into(),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Shares one change, now or (failing that) in the background.
    async fn share_change(&self, change: Change) -> &'static str {
        let attempt = |control: Control, change: Change| async move {
            match &change {
                Change::Pin(p) => control.publish_pin(p).await,
                Change::Command(c, id) => control.publish_command(c, id).await,
            }
        };
        let first = tokio::time::timeout(
            Duration::from_secs(2),
            attempt(self.clone(), change.clone()),
        )
        .await;
        match first {
            Ok(Ok(())) => "shared",
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "no answer within 2 s".into(),
                };
                tracing::warn!(?change, "cluster: could not share an operator's change ({why}); retrying in the background");
                let control = self.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut failures = 0;
                    while started.elapsed() < RETRY_FOR {
                        failures += 1;
                        tokio::time::sleep(backoff(failures)).await;
                        if let Ok(Ok(())) = tokio::time::timeout(
                            Duration::from_secs(2),
                            attempt(control.clone(), change.clone()),
                        )
                        .await
                        {
                            tracing::info!(?change, "cluster: shared the operator's change");
                            return;
                        }
                    }
                    tracing::error!(
                        ?change,
                        "cluster: gave up sharing the operator's change after {} s",
                        RETRY_FOR.as_secs()
                    );
                });
                "pending"
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Change {
    Pin(SharedPin),
    /// The command and its `Nats-Msg-Id`.
    Command(Command, String),
}

/// The admin API's layer that shares a successful pin, unpin, purge or warm-up
/// with the other nodes. Other requests pass untouched.
pub async fn share(State(control): State<Control>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let method = req.method().clone();
    let kind = match (&method, path) {
        (&Method::POST, "/admin/purge") => Some(true),
        (&Method::POST, "/admin/warm") => Some(false),
        (&Method::POST | &Method::DELETE, "/admin/factor") => None,
        _ => return next.run(req).await,
    };
    let (req, body) = match kind {
        Some(_) => {
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "admin body too large to share with the cluster\n",
                )
                    .into_response();
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            (Request::from_parts(parts, Body::from(bytes)), Some(text))
        }
        None => (req, None),
    };
    let mut res = next.run(req).await;
    if !res.status().is_success() {
        return res;
    }
    let change = match (kind, body) {
        (Some(true), Some(body)) => {
            Change::Command(Command::Purge { body }, command_id(&control.cluster))
        }
        (Some(false), Some(body)) => {
            Change::Command(Command::Warm { body }, command_id(&control.cluster))
        }
        _ => {
            let now = control.clock.now_ms();
            let pin = control.factor.pinned(now);
            Change::Pin(SharedPin {
                node: control.cluster.node().to_string(),
                factor: pin.map(|p| p.factor),
                until_ms: pin.map_or(0, |p| p.until_ms),
            })
        }
    };
    let outcome = control.share_change(change).await;
    res.headers_mut()
        .insert(CLUSTER_HEADER, HeaderValue::from_static(outcome));
    res
}

/// A `Nats-Msg-Id` no other command has: the node and 16 random bytes.
fn command_id(cluster: &Cluster) -> String {
    let mut r = [0u8; 16];
    getrandom::fill(&mut r).expect("OS randomness");
    format!("{}-{}", cluster.node(), hex::encode(r))
}

/// Watches the shared pin and applies what other nodes put, until `shutdown`.
pub async fn run_pin_watch(control: Control, shutdown: CancellationToken) {
    super::keep_running("pin watch", &shutdown, || watch_pin(&control)).await;
}

async fn watch_pin(control: &Control) -> Result<(), String> {
    let b = bucket(&control.cluster).await?;
    let mut watch = b
        .watch_with_history(PIN_KEY)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let Ok(pin) = serde_json::from_slice::<SharedPin>(&entry.value) else {
            tracing::error!("cluster: the shared pin cannot be read; ignored");
            continue;
        };
        if pin.node == control.cluster.node() {
            continue;
        }
        apply_pin(control, &pin).await;
    }
    Err("the watch ended".into())
}

async fn apply_pin(control: &Control, shared: &SharedPin) {
    let now = control.clock.now_ms();
    let pin = shared.factor.map(|factor| Pin {
        factor,
        until_ms: shared.until_ms,
    });
    if control.factor.pinned(now) == pin.filter(|p| p.until_ms > now) {
        return;
    }
    let store = control.store.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || store.save_pin(pin))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        tracing::error!(
            "cluster: the pin from {} could not be saved: {e}",
            shared.node
        );
    }
    match pin {
        Some(p) => {
            control.factor.pin(p, now);
            tracing::info!(factor = p.factor, node = %shared.node, "scale factor pinned by the operator on another node");
        }
        None => {
            control.factor.unpin(now);
            tracing::info!(node = %shared.node, "scale factor unpinned by the operator on another node");
        }
    }
}

/// Applies the other nodes' purges and warm-ups as they reach the stream.
pub async fn run_commands(control: Control, shutdown: CancellationToken) {
    super::keep_running("control consumer", &shutdown, || consume_commands(&control)).await;
}

async fn consume_commands(control: &Control) -> Result<(), String> {
    let stream = control_stream(&control.cluster).await?;
    let name = format!("{}-control", control.cluster.node());
    // Remade at each (re)start (`fresh_messages`): from this node's start, or from
    // a few seconds before the last command it applied (a purge or warm-up applied
    // twice does no harm; one missed after a NATS crash would).
    let start = match *control.consumed.lock() {
        Some(last) => (last - Duration::from_secs(5)).max(control.started.into()),
        None => control.started.into(),
    };
    let mut messages = super::fresh_messages(
        &stream,
        &name,
        start,
        pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        },
        Duration::from_secs(2),
    )
    .await?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let node = super::sender(&m);
        if node != control.cluster.node() {
            match serde_json::from_slice::<Command>(&m.payload) {
                Ok(command) => apply_command(control, &node, command).await,
                Err(e) => tracing::error!("cluster: a command from {node} cannot be read: {e}"),
            }
        }
        m.ack().await.map_err(|e| e.to_string())?;
        if let Ok(info) = m.info() {
            *control.consumed.lock() = Some(info.published);
        }
    }
    Err("the message stream ended".into())
}

async fn apply_command(control: &Control, node: &str, command: Command) {
    match command {
        Command::Purge { body } => {
            #[derive(Deserialize)]
            struct Purge {
                prefix: String,
            }
            match serde_json::from_str::<Purge>(&body) {
                Ok(p) if p.prefix.starts_with('/') => {
                    let purged = control.edge.cache().purge_prefix(&p.prefix);
                    tracing::info!(prefix = %p.prefix, purged, node, "cache purged by the operator on another node");
                }
                _ => tracing::error!(node, "cluster: a purge that does not read as one: {body:?}"),
            }
        }
        Command::Warm { body } => {
            #[derive(Deserialize, Default)]
            struct Warm {
                urls: Option<Vec<String>>,
            }
            let req = if body.trim().is_empty() {
                Ok(Warm::default())
            } else {
                serde_json::from_str::<Warm>(&body)
            };
            match req {
                Ok(w) => {
                    let urls = w.urls.unwrap_or_else(|| control.edge.warm_urls().to_vec());
                    let urls: Vec<String> =
                        urls.into_iter().filter(|u| u.starts_with('/')).collect();
                    let warmed = control.edge.warm(&urls).await;
                    tracing::info!(
                        urls = warmed.len(),
                        node,
                        "cache warmed by the operator on another node"
                    );
                }
                Err(e) => {
                    tracing::error!(node, "cluster: a warm-up that does not read as one: {e}")
                }
            }
        }
    }
}
