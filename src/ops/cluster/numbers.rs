//! One set of numbers: each node keeps flushing its counters into its own store
//! (`insight::history`), and this module shares the rows.
//!
//! - The **metrics outbox** publishes this node's `metrics` rows, from the window
//!   start in `meta.cluster_metrics_published` on, to the stream
//!   `LAUNCHGUARD_METRICS` (subject `launchguard.metrics.<node>`, `Nats-Msg-Id` =
//!   node and window start, so a row published twice is stored once); rows flushed
//!   while NATS is unreachable are published when it is back, and after a reconnect
//!   the last 30 s of rows are published again (a crashed server may have lost rows
//!   it acknowledged; the ones it kept are dropped as duplicates).
//! - Every node's durable **consumer** (`<node>-metrics`, remade at each start from
//!   a minute before the last row it stored, or the whole retention the first time,
//!   so a node started late gets it all) stores the other nodes' rows
//!   with `History::record_peer`, which adds each row to that node's day once, and
//!   acknowledges them once stored.
//!
//! The reports (`/api/analytics`, `/api/launches`, `report`, the dashboard) read the
//! history, which sums this node's rows with the others'.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{backoff, Cluster, NODE_HEADER};
use crate::ingest::store::{trees, Store};
use crate::insight::counters::Conversions;
use crate::insight::history::{decode_batch, encode_batch};
use crate::telemetry;

/// The stream of every node's metrics rows.
pub const METRICS_STREAM: &str = "LAUNCHGUARD_METRICS";
/// How often the outbox looks for new rows (a row is flushed every
/// `conversions.flush_interval_ms`, 5 s by default).
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How far back (in window starts) the outbox publishes again after a reconnect.
const REWIND: Duration = Duration::from_secs(30);

/// What sharing the numbers needs.
#[derive(Clone)]
pub struct Numbers {
    pub cluster: Cluster,
    pub conversions: Conversions,
    pub store: Store,
    /// How long the stream keeps rows: `conversions.retention_days`.
    pub retention: Duration,
}

async fn metrics_stream(n: &Numbers) -> Result<stream::Stream, String> {
    n.cluster
        .js()
        .get_or_create_stream(stream::Config {
            name: METRICS_STREAM.into(),
            description: Some("launchguard: every node's flushed counters".into()),
            subjects: vec!["launchguard.metrics.>".into()],
            storage: stream::StorageType::File,
            max_age: n.retention,
            duplicate_window: Duration::from_secs(600).min(n.retention),
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// Publishes this node's rows until `shutdown`.
pub async fn run_outbox(n: Numbers, shutdown: CancellationToken) {
    let mut failures = 0u32;
    let mut connects = n.cluster.connects();
    loop {
        if n.cluster.connects() != connects {
            // A server that crashed may have lost the last rows it acknowledged:
            // publish the last `REWIND` again (the ones it kept are duplicates).
            connects = n.cluster.connects();
            if let Ok(cursor) = n.store.meta_u64(trees::META_CLUSTER_METRICS_PUBLISHED) {
                let back = cursor.saturating_sub(REWIND.as_millis() as u64);
                let _ = n
                    .store
                    .set_meta_u64(trees::META_CLUSTER_METRICS_PUBLISHED, back);
            }
        }
        let wait = match publish_new(&n).await {
            Ok(()) => {
                failures = 0;
                LOOK_EVERY
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!("cluster: cannot publish this node's metrics rows yet: {e}");
                }
                failures += 1;
                backoff(failures).max(LOOK_EVERY)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn publish_new(n: &Numbers) -> Result<(), String> {
    let cursor = n
        .store
        .meta_u64(trees::META_CLUSTER_METRICS_PUBLISHED)
        .map_err(|e| e.to_string())?;
    let history = n.conversions.history().clone();
    let rows = tokio::task::spawn_blocking(move || {
        history.own_batches(cursor.saturating_add(1), u64::MAX)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(());
    }
    metrics_stream(n).await?;
    let node = n.cluster.node();
    let mut acks = Vec::with_capacity(rows.len());
    for row in &rows {
        let payload = encode_batch(row).map_err(|e| e.to_string())?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{node}:{}", row.window_start_ms).as_str(),
        );
        headers.insert(NODE_HEADER, node);
        let ack = n
            .cluster
            .js()
            .publish_with_headers(
                format!("launchguard.metrics.{node}"),
                headers,
                payload.into(),
            )
            .await
            .map_err(|e| e.to_string())?;
        acks.push((row.window_start_ms, ack));
    }
    let mut through = cursor;
    let mut result = Ok(());
    for (start, ack) in acks {
        match ack.await {
            Ok(_) => through = start,
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    if through != cursor {
        n.store
            .set_meta_u64(trees::META_CLUSTER_METRICS_PUBLISHED, through)
            .map_err(|e| e.to_string())?;
    }
    result
}

/// Stores the other nodes' rows as they reach the stream, until `shutdown`.
pub async fn run_consumer(n: Numbers, shutdown: CancellationToken) {
    super::keep_running("metrics consumer", &shutdown, || consume(&n)).await;
}

async fn consume(n: &Numbers) -> Result<(), String> {
    let stream = metrics_stream(n).await?;
    let name = format!("{}-metrics", n.cluster.node());
    let start = super::resume_at(
        &n.store,
        trees::META_CLUSTER_METRICS_CONSUMED_MS,
        Duration::from_secs(60),
        n.retention,
    );
    let mut messages = super::fresh_messages(
        &stream,
        &name,
        start,
        pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        },
        Duration::from_secs(2),
    )
    .await?;
    let tz = n.conversions.timezone().clone();
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let node = super::sender(&m);
        if !node.is_empty() && node != n.cluster.node() {
            match decode_batch(&m.payload) {
                Ok(batch) => {
                    let day =
                        crate::insight::analytics::day_of(batch.window_start_ms, &tz).to_string();
                    let history = n.conversions.history().clone();
                    let from = node.clone();
                    let stored = tokio::task::spawn_blocking(move || {
                        history.record_peer(&from, &batch, &day)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                    if stored {
                        metrics::counter!(telemetry::CLUSTER_METRICS_ROWS_TOTAL, "node" => node)
                            .increment(1);
                    }
                }
                Err(e) => {
                    tracing::error!(node = %node, "cluster: a metrics row from {node} cannot be read by this build: {e}");
                }
            }
        }
        m.ack().await.map_err(|e| e.to_string())?;
        if let Ok(info) = m.info() {
            let _ = n.store.set_meta_u64(
                trees::META_CLUSTER_METRICS_CONSUMED_MS,
                super::unix_ms(info.published),
            );
        }
    }
    Err("the message stream ended".into())
}
