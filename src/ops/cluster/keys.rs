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
//! A node that starts with NATS unreachable signs with its own keys meanwhile, and
//! keeps trying ([`adopt_when_back`]): once NATS answers, it takes the cluster's keys
//! the same way and signs with them from then on, while the key it signed with
//! meanwhile is retired (`ingest::store::keyring`: still verified, here and after a
//! restart), so the visitors it served during the outage keep their cookie and their
//! place in line on this node.
//!
//! **Invariant:** every cookie this node signed verifies on this node for its
//! lifetime; once NATS has answered, the node signs with the cluster's keys.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::edge::waiting::Room;
use crate::ingest::store::{codec, trees, Store};
use crate::insight::visitor::Visitors;

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

/// Makes this store hold the cluster's keys (see the module), at start, before
/// anything signs. Returns the names of the keys this node adopted (its own
/// differed, or it had none).
pub async fn share(cluster: &Cluster, store: &Store) -> Result<Vec<&'static str>, String> {
    Ok(take(cluster, store, false)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// `share`, for a node that has signed with its own keys meanwhile: each key it
/// leaves is retired in the store first. Returns the keys adopted, by name.
async fn take(
    cluster: &Cluster,
    store: &Store,
    retire: bool,
) -> Result<Vec<(&'static str, [u8; 32])>, String> {
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
            let key: [u8; 32] = codec::decode_bytes(name, 1, &theirs)
                .map_err(|e| format!("the cluster's {name}: {e}"))?;
            if retire {
                let mine: [u8; 32] =
                    codec::decode_bytes(name, 1, &own).map_err(|e| e.to_string())?;
                store.retire_key(name, &mine).map_err(|e| e.to_string())?;
            }
            store
                .replace_secret_key(name, &theirs)
                .map_err(|e| format!("the cluster's {name}: {e}"))?;
            adopted.push((name, key));
        }
    }
    Ok(adopted)
}

/// For a node that could not take the cluster's keys at start: takes them as soon
/// as NATS answers, and signs visitor cookies (`visitors`) and place cookies
/// (`room`) with them from then on, the keys it leaves still verified. Ends once
/// done, or at `shutdown`.
pub async fn adopt_when_back(
    cluster: Cluster,
    store: Store,
    visitors: Visitors,
    room: Option<Room>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let wait = if !cluster.connected() {
            Duration::from_millis(200)
        } else {
            let taken =
                tokio::time::timeout(Duration::from_secs(3), take(&cluster, &store, true)).await;
            let e = match taken {
                Ok(Ok(adopted)) => {
                    for (name, key) in &adopted {
                        if *name == trees::META_VISITOR_KEY {
                            visitors.keys().adopt(key);
                        } else if let Some(room) = &room {
                            room.keys().adopt(key);
                        }
                    }
                    let names: Vec<&str> = adopted.iter().map(|(n, _)| *n).collect();
                    tracing::info!(keys = ?names, "cluster: NATS is back; signing cookies with the cluster's keys from now on (those this node signed meanwhile still verify here)");
                    return;
                }
                Ok(Err(e)) => e,
                Err(_) => "JetStream did not answer".to_string(),
            };
            if failures == 0 {
                tracing::warn!("cluster: cannot take the cluster's cookie keys yet: {e}");
            }
            failures += 1;
            super::backoff(failures)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
