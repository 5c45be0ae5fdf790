//! The cookie keys every node signs with: the visitor cookie (`lg_v`, with its funnel
//! mark) and the waiting room's place cookie. A cookie one node made is then honoured
//! by every other, so a balancer may send a visitor to any node: the visitor is
//! counted once (at its cookie's issue), its beacon is not refused as forged, the
//! funnel grace follows it, and its place in line holds.
//!
//! At start, before anything signs, each key is taken from the key-value bucket
//! `LAUNCHGUARD_KEYS`: the cluster's copy replaces this store's; a key the cluster
//! does not have yet is offered from this store with `create`, so of nodes starting
//! together the first wins and the others adopt it. The adopted key is kept in the
//! store, so a restart with NATS down signs with it too.
//!
//! **Invariant:** a node signs only with a key it had at start: one that starts with
//! NATS unreachable keeps its own keys until it restarts with NATS up (it says so).

use std::time::Duration;

use async_nats::jetstream::{kv, stream};

use super::Cluster;
use crate::ingest::store::{trees, Store};

/// The bucket of the shared keys.
pub const KEYS_BUCKET: &str = "LAUNCHGUARD_KEYS";
/// The keys shared, by their name in `meta` (the bucket's keys are the same names).
pub const SHARED: [&str; 2] = [trees::META_VISITOR_KEY, trees::META_WAITING_ROOM_KEY];

async fn bucket(cluster: &Cluster) -> Result<kv::Store, String> {
    super::kv_bucket(
        cluster,
        KEYS_BUCKET,
        "launchguard: the cookie keys every node signs with",
        Duration::ZERO,
        stream::StorageType::File,
    )
    .await
}

/// Makes this store hold the cluster's keys (see the module). Returns the names of
/// the keys this node adopted (its own differed, or it had none).
pub async fn share(cluster: &Cluster, store: &Store) -> Result<Vec<&'static str>, String> {
    let bucket = bucket(cluster).await?;
    let mut adopted = Vec::new();
    for name in SHARED {
        let own = store.secret_key_record(name).map_err(|e| e.to_string())?;
        let theirs = match bucket.get(name).await.map_err(|e| e.to_string())? {
            Some(v) => v.to_vec(),
            None => match bucket.create(name, own.clone().into()).await {
                Ok(_) => own.clone(),
                // Another node offered its key first.
                Err(_) => bucket
                    .get(name)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{name}: neither offered nor found"))?
                    .to_vec(),
            },
        };
        if theirs != own {
            store
                .replace_secret_key(name, &theirs)
                .map_err(|e| format!("the cluster's {name}: {e}"))?;
            adopted.push(name);
        }
    }
    Ok(adopted)
}
