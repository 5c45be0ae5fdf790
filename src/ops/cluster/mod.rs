//! Several nodes, one launch: `[cluster]` connects this node to a NATS server with
//! JetStream, and the nodes share what each of them accepts (DESIGN.md, Cluster).
//! One box with no `[cluster]` section runs none of this.
//!
//! What goes through JetStream, and why each piece is shaped the way it is:
//! - **Events** (`events.rs`): every event this node accepts (webhook or poller), once
//!   durable in its own store, is published by the **outbox** to the stream
//!   `LAUNCHGUARD_EVENTS` (subject `launchguard.events.<node>`) with `Nats-Msg-Id` =
//!   the event id; the outbox is the store itself read from a cursor
//!   (`meta.cluster_published`), so an event accepted while NATS is unreachable is
//!   published when it is back, and nothing acknowledged is lost. The stream's
//!   duplicate window is `webhook.dedup_ttl_secs`, not JetStream's default 2 minutes.
//!   Every node's durable **consumers** (one per other node, on its subject) store
//!   the other nodes' events in its own store as replicas (record version 4, with
//!   their node) through the same dedup index, push them on the ring at the time
//!   they happened, and acknowledge them once durable. So every store holds each
//!   event once, every
//!   window counts it once, and a node restarted (or started late) resumes where its
//!   consumer stood (a new consumer starts one dedup TTL back).
//! - **Cookie keys** (`keys.rs`): every node signs visitor and waiting-room cookies
//!   with the keys of the bucket `LAUNCHGUARD_KEYS`, taken at start (or, by a node
//!   that started with NATS unreachable, when it is back).
//! - **Claims** (`claims.rs`): the counts one visitor can make on every node it
//!   reaches are claimed in the bucket `LAUNCHGUARD_CLAIMS`, so one node keeps each.
//! - A webhook's answer waits, when NATS is reachable, for JetStream's word on its id
//!   (`webhook::Replication`): an id another node accepted first is answered
//!   `duplicate` here too.
//!
//! **Invariant:** an event is acknowledged to JetStream only once its replica is
//! durable in this node's store; the outbox's cursor moves only past events
//! JetStream acknowledged.
//! **Invariant:** NATS unreachable never refuses or delays a webhook beyond
//! `webhook::CONFIRM_WAIT`: the local store is the source of truth, JetStream the
//! way between stores.

pub(crate) mod certs;
pub(crate) mod claims;
pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod keys;
pub(crate) mod lease;
pub(crate) mod numbers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;

/// The stream every node publishes its events to.
pub const EVENTS_STREAM: &str = "LAUNCHGUARD_EVENTS";
/// The subjects of `EVENTS_STREAM`: `launchguard.events.<node>`.
pub const EVENTS_SUBJECTS: &str = "launchguard.events.>";
/// Longest a node's start waits for an unreachable NATS server.
const STARTUP_WAIT: Duration = Duration::from_secs(2);
/// The header naming the node that accepted an event.
pub const NODE_HEADER: &str = "Launchguard-Node";

/// Why the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.credentials_file: {0}")]
    Credentials(std::io::Error),
    #[error("cluster.nats_url: {0}")]
    Connect(String),
}

/// This node's handle on the cluster: the NATS connection, JetStream, its node id.
/// A clone is cheap.
#[derive(Clone)]
pub struct Cluster {
    node: Arc<str>,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Set while the last publish or consume went through; the webhook path waits
    /// for JetStream only then.
    healthy: Arc<AtomicBool>,
}

impl Cluster {
    /// Connects to `cluster.nats_url`. Never waits for the server: the connection is
    /// made (and remade) in the background, so a node starts and serves with NATS
    /// down, and the tasks of `events.rs` catch up once it is up.
    pub async fn connect(
        config: &ClusterConfig,
        dedup_ttl_secs: u64,
    ) -> Result<Cluster, ClusterError> {
        let node = config.node();
        let urls = config.nats_url.as_deref().unwrap_or_default();
        let addrs = urls
            .split(',')
            .map(|u| {
                u.trim()
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|e| ClusterError::Connect(format!("{u:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("launchguard {node}"))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                // 100 ms, 200 ms, ... up to 2 s between attempts: a NATS restart is
                // noticed within a couple of seconds.
                Duration::from_millis((100 * attempts as u64).clamp(100, 2000))
            });
        if let Some(path) = &config.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(ClusterError::Credentials)?;
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        let cluster = Cluster {
            node: node.into(),
            client,
            js,
            healthy: Arc::new(AtomicBool::new(false)),
        };
        // Give a reachable server a moment, so a node that starts with NATS up
        // serves its first webhook with JetStream's word on it; an unreachable one
        // delays the start by at most `STARTUP_WAIT`.
        let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
        while !cluster.connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if cluster.connected() {
            let ready = tokio::time::timeout_at(
                deadline + Duration::from_secs(1),
                events::ensure_stream(&cluster, dedup_ttl_secs),
            )
            .await;
            match ready {
                Ok(Ok(())) => cluster.set_healthy(true),
                Ok(Err(e)) => tracing::warn!("cluster: the events stream is not ready: {e}"),
                Err(_) => tracing::warn!("cluster: JetStream did not answer at startup"),
            }
        } else {
            tracing::warn!(
                nats = urls,
                "cluster: NATS is unreachable at startup; serving on this node's own events and connecting in the background"
            );
        }
        Ok(cluster)
    }

    /// This node's id (`cluster.node_id`, or the host name).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the NATS connection is up now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// How many times the connection was made: a change means the server may have
    /// restarted.
    pub(crate) fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// The core NATS client under JetStream (the outbox publishes through it).
    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            metrics::gauge!(crate::telemetry::CLUSTER_CONNECTED).set(f64::from(u8::from(healthy)));
            if healthy {
                tracing::info!(node = %self.node, "cluster: JetStream reachable");
            } else {
                tracing::warn!(node = %self.node, "cluster: JetStream unreachable; serving on this node's own events, publishing what it accepts when it is back");
            }
        }
    }

    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && self.connected()
    }
}

/// The key-value bucket `name`, made if missing. Made as its backing stream
/// (`KV_<name>`, as async-nats's `create_key_value` would make it) rather than
/// through `create_key_value`, which first reads the account's info in a shape
/// nats-server 2.9 (Debian's) does not send.
pub(crate) async fn kv_bucket(
    cluster: &Cluster,
    name: &str,
    description: &str,
    max_age: Duration,
    storage: jetstream::stream::StorageType,
) -> Result<jetstream::kv::Store, String> {
    if let Ok(b) = cluster.js().get_key_value(name).await {
        return Ok(b);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    if let Err(e) = cluster.js().create_stream(config).await {
        // Another node may have made it meanwhile.
        if cluster.js().get_key_value(name).await.is_err() {
            return Err(e.to_string());
        }
    }
    cluster
        .js()
        .get_key_value(name)
        .await
        .map_err(|e| e.to_string())
}

/// What `launchguard preflight` finds of the cluster: one line per check, each a
/// pass (`Ok(found)`) or a failure (`Err((found, fix))`).
pub(crate) async fn preflight(
    config: &ClusterConfig,
    dedup_ttl_secs: u64,
) -> Vec<(&'static str, Result<String, (String, String)>)> {
    let mut out = Vec::new();
    let urls = config.nats_url.clone().unwrap_or_default();
    let node = config.node();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("launchguard preflight {node}"))
        .connection_timeout(Duration::from_secs(3));
    if let Some(path) = &config.credentials_file {
        match options.credentials_file(path).await {
            Ok(o) => options = o,
            Err(e) => {
                out.push((
                    "cluster: NATS",
                    Err((
                        format!("cluster.credentials_file: {e}"),
                        "point cluster.credentials_file at the .creds file NATS gave this node"
                            .into(),
                    )),
                ));
                return out;
            }
        }
    }
    let addrs: Result<Vec<async_nats::ServerAddr>, _> =
        urls.split(',').map(|u| u.trim().parse()).collect();
    let client = match addrs {
        Ok(a) => tokio::time::timeout(Duration::from_secs(5), options.connect(a)).await,
        Err(e) => {
            out.push((
                "cluster: NATS",
                Err((
                    format!("cluster.nats_url {urls:?}: {e}"),
                    "use nats://host:4222".into(),
                )),
            ));
            return out;
        }
    };
    let client = match client {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            out.push((
                "cluster: NATS",
                Err((
                    format!("cannot connect to {urls}: {e}"),
                    "start nats-server with JetStream (nats-server -js -sd DIR) where cluster.nats_url points, or correct it".into(),
                )),
            ));
            return out;
        }
        Err(_) => {
            out.push((
                "cluster: NATS",
                Err((
                    format!("no answer from {urls} within 5 s"),
                    "check that nats-server runs there and that no firewall drops the port".into(),
                )),
            ));
            return out;
        }
    };
    out.push((
        "cluster: NATS",
        Ok(format!("connected to {urls} as node {node}")),
    ));
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(3))
        .build(client.clone());
    let want = events::stream_config(dedup_ttl_secs);
    match js.get_stream(EVENTS_STREAM).await {
        Ok(mut stream) => {
            match stream.info().await {
                Ok(info) if info.config.duplicate_window == want.duplicate_window => out.push((
                    "cluster: events stream",
                    Ok(format!(
                        "{EVENTS_STREAM}: {} events, duplicate window {} s (webhook.dedup_ttl_secs)",
                        info.state.messages,
                        want.duplicate_window.as_secs()
                    )),
                )),
                Ok(info) => out.push((
                    "cluster: events stream",
                    Ok(format!(
                        "{EVENTS_STREAM}: duplicate window {} s, not webhook.dedup_ttl_secs = {} s; the node sets it at start (every node must have the same dedup_ttl_secs)",
                        info.config.duplicate_window.as_secs(),
                        dedup_ttl_secs
                    )),
                )),
                Err(e) => out.push((
                    "cluster: events stream",
                    Err((e.to_string(), "check JetStream on the NATS server".into())),
                )),
            }
            // A node id in use: a running node holds its presence entry.
            let taken = match js.get_key_value(lease::LEASES).await {
                Ok(b) => b
                    .get(lease::presence_key(&node))
                    .await
                    .ok()
                    .flatten()
                    .is_some(),
                Err(_) => false,
            };
            out.push(if taken {
                (
                    "cluster: node id",
                    Err((
                        format!("a running node uses the id {node:?}"),
                        "give every node its own cluster.node_id (if that node is this one, already running, stop it first)".into(),
                    )),
                )
            } else {
                ("cluster: node id", Ok(format!("{node:?} is not in use by a running node")))
            });
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            out.push((
                "cluster: events stream",
                Ok(format!(
                    "{EVENTS_STREAM} does not exist yet; the first node makes it at start"
                )),
            ))
        }
        Err(e) => out.push((
            "cluster: events stream",
            Err((
                format!("JetStream does not answer: {e}"),
                "run nats-server with JetStream on (-js, with a store dir -sd)".into(),
            )),
        )),
    }
    for (bucket, what) in [
        (control::BUCKET, "the pin"),
        (lease::LEASES, "the leases"),
        (keys::KEYS_BUCKET, "the cookie keys"),
        (claims::CLAIMS_BUCKET, "the visitor and conversion claims"),
        (certs::TLS_BUCKET, "the certificates"),
    ] {
        let found = match js.get_key_value(bucket).await {
            Err(_) => Ok(format!(
                "bucket {bucket} ({what}) does not exist yet; made at start"
            )),
            // A claim must outlive its day by the time the nodes decide it in.
            Ok(b) if bucket == claims::CLAIMS_BUCKET => match b.status().await {
                Ok(st) if st.max_age() < claims::MAX_AGE => Err((
                    format!(
                        "bucket {bucket} ({what}) keeps entries {} s, under the {} s launchguard needs",
                        st.max_age().as_secs(),
                        claims::MAX_AGE.as_secs()
                    ),
                    format!("delete the bucket (nats kv rm {bucket}); the first node makes it again at start"),
                )),
                Ok(st) => Ok(format!(
                    "bucket {bucket} ({what}) is there, entries kept {} s",
                    st.max_age().as_secs()
                )),
                Err(e) => Err((
                    format!("bucket {bucket} ({what}) does not answer: {e}"),
                    "check JetStream on the NATS server".into(),
                )),
            },
            Ok(_) => Ok(format!("bucket {bucket} ({what}) is there")),
        };
        out.push(("cluster: buckets", found));
    }
    out
}

/// The messages of this node's durable consumer `name` on `stream`, made afresh (the
/// old one deleted) to start at the server time `start`, pulled up to 256 at a time.
/// A node's consumers are remade each time they (re)start rather than resumed: a NATS
/// server that crashed may come back with a consumer's position past the end of a
/// stream that lost its last messages, and would then skip the next ones. Starting a
/// little before the last message consumed costs a few redeliveries, which are known
/// ids (or known rows). A pull that lapses (the server forgot it) ends the stream
/// with an error after two missed `heartbeat`s.
pub(crate) async fn fresh_messages(
    stream: &jetstream::stream::Stream,
    name: &str,
    start: time::OffsetDateTime,
    config: jetstream::consumer::pull::Config,
    heartbeat: Duration,
) -> Result<jetstream::consumer::pull::Stream, String> {
    let _ = stream.delete_consumer(name).await;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(name.to_string()),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime { start_time: start },
            ..config
        })
        .await
        .map_err(|e| e.to_string())?
        .stream()
        .max_messages_per_batch(256)
        .heartbeat(heartbeat)
        .expires(heartbeat * 5)
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Where a consumer resumes: `overlap` before the server time of the last message
/// it consumed (kept under `key` in `meta`, Unix ms), or `first_back` before now.
pub(crate) fn resume_at(
    store: &crate::ingest::store::Store,
    key: &'static str,
    overlap: Duration,
    first_back: Duration,
) -> time::OffsetDateTime {
    resume_from(store.meta_u64(key).unwrap_or(0), overlap, first_back)
}

/// Where a consumer resumes: `overlap` before `last` (Unix ms of the last message it
/// consumed), or `first_back` before now when it consumed none (`last` 0).
pub(crate) fn resume_from(
    last: u64,
    overlap: Duration,
    first_back: Duration,
) -> time::OffsetDateTime {
    let start = if last == 0 {
        time::OffsetDateTime::now_utc() - first_back
    } else {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(last) * 1_000_000)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
            - overlap
    };
    start.max(time::OffsetDateTime::UNIX_EPOCH)
}

/// Unix ms of a JetStream timestamp.
pub(crate) fn unix_ms(t: time::OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// Runs `task` again after each time it ends (with `backoff`) until `shutdown`:
/// the watches and consumers, which end only on an error. A task that ran a minute
/// or more before failing counts as failing for the first time again (logged,
/// shortest pause); later failures in a row are not logged again.
pub(crate) async fn keep_running<F, Fut>(what: &str, shutdown: &CancellationToken, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut failures = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = task() => r,
            _ = shutdown.cancelled() => return,
        };
        if started.elapsed() >= Duration::from_secs(60) {
            failures = 0;
        }
        if let Err(e) = result {
            if failures == 0 {
                tracing::warn!("cluster: the {what} stopped: {e}; retrying");
            }
        }
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff(failures)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The node that published a message (its `Launchguard-Node` header), or "".
pub(crate) fn sender(message: &async_nats::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(NODE_HEADER))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// Exponential backoff for the cluster's tasks after a failure: 100 ms doubling to
/// 2 s.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(5)).min(2000))
}
