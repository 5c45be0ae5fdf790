//! Work that runs on one node at a time (the Product Hunt poller, the alerts): a
//! lease per kind of work in the key-value bucket `LAUNCHGUARD_LEASES`, whose
//! entries live `TTL`. The holder renews its entry every `RENEW` with a
//! compare-and-set on its revision (`kv::Store::update`); the others try to create
//! it, which succeeds only once the entry is gone: deleted by a holder that stops,
//! or aged out `TTL` after a holder died. So a dead holder is replaced within
//! `TTL + RENEW`.
//!
//! What the work reads is one flag (`Lease::held`), so the poller and the alerts
//! know nothing of NATS. While NATS is unreachable the holder keeps its lease (no
//! one else can take it through NATS either) and the others keep waiting.
//! **Invariant:** a node runs the work only after it created or renewed the entry
//! under its own name; a failed compare-and-set (another node holds it) stops it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// The bucket of leases.
pub const LEASES: &str = "LAUNCHGUARD_LEASES";
/// How long an entry lives without renewal.
pub const TTL: Duration = Duration::from_secs(6);
/// How often the holder renews, and the others try to take it.
pub const RENEW: Duration = Duration::from_secs(2);

/// The presence entry of a running node, `node.<id>`: held by the node with that
/// id while it runs, so a second node started with the same id sees it taken
/// (and `preflight` says so).
pub fn presence_key(node: &str) -> String {
    format!("node.{node}")
}

/// The ids of the nodes running now (their presence entries), this one included.
pub async fn running_nodes(cluster: &Cluster) -> Result<Vec<String>, String> {
    use futures_util::StreamExt;
    let b = leases(cluster).await?;
    let mut keys = b.keys().await.map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    while let Some(key) = keys.next().await {
        if let Some(node) = key.map_err(|e| e.to_string())?.strip_prefix("node.") {
            nodes.push(node.to_string());
        }
    }
    Ok(nodes)
}

/// A lease on one kind of work; `held` is what the work reads.
#[derive(Clone)]
pub struct Lease {
    name: Arc<str>,
    held: Arc<AtomicBool>,
}

impl Lease {
    pub fn new(name: impl Into<Arc<str>>) -> Lease {
        Lease {
            name: name.into(),
            held: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag the work reads: true while this node holds the lease.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.held.clone()
    }

    fn set(&self, held: bool, node: &str) {
        if self.held.swap(held, Ordering::AcqRel) != held {
            metrics::gauge!(crate::telemetry::CLUSTER_LEASE_HELD, "work" => self.name.to_string())
                .set(f64::from(u8::from(held)));
            if self.name.starts_with("node.") {
                if !held {
                    tracing::error!(node, "cluster: another running node uses this node id ({}); give each node its own cluster.node_id", self.name);
                }
            } else if held {
                tracing::info!(work = %self.name, node, "cluster: this node took the lease; running the {} here", self.name);
            } else {
                tracing::info!(work = %self.name, node, "cluster: another node holds the lease; the {} runs there", self.name);
            }
        }
    }
}

async fn leases(cluster: &Cluster) -> Result<kv::Store, String> {
    super::kv_bucket(
        cluster,
        LEASES,
        "launchguard: which node runs the poller and the alerts",
        TTL,
        stream::StorageType::Memory,
    )
    .await
}

/// Holds (or waits for) `lease` until `shutdown`; lets it go on the way out.
pub async fn run(cluster: Cluster, lease: Lease, shutdown: CancellationToken) {
    let node = cluster.node().to_string();
    let mut revision: Option<u64> = None;
    let mut store: Option<kv::Store> = None;
    loop {
        if store.is_none() {
            store = leases(&cluster).await.ok();
        }
        if let Some(b) = &store {
            match revision {
                Some(rev) => match b.update(&*lease.name, node.clone().into(), rev).await {
                    Ok(next) => revision = Some(next),
                    // Refused while NATS answers: the entry is not ours any more
                    // (another node holds it, or it aged out).
                    Err(e)
                        if e.kind() == kv::UpdateErrorKind::WrongLastRevision
                            || cluster.connected() =>
                    {
                        revision = None;
                        lease.set(false, &node);
                    }
                    // NATS unreachable: keep it; nobody can take it through NATS.
                    Err(_) => {}
                },
                None => match b.create(&*lease.name, node.clone().into()).await {
                    Ok(rev) => {
                        revision = Some(rev);
                        lease.set(true, &node);
                    }
                    Err(_) => lease.set(false, &node),
                },
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if let (Some(b), Some(rev)) = (&store, revision) {
        // Let the next node take it now rather than after the TTL.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            b.delete_expect_revision(&*lease.name, Some(rev)),
        )
        .await;
    }
    lease.set(false, &node);
}
