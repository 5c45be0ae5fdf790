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
    take(cluster, store, false).await
}

/// `share`, for a node that has signed with its own keys meanwhile: each key it
/// leaves is retired in the store first. Returns the keys it wrote, by name.
async fn take(cluster: &Cluster, store: &Store, retire: bool) -> Result<Vec<&'static str>, String> {
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
            codec::decode_bytes::<32>(name, 1, &theirs)
                .map_err(|e| format!("the cluster's {name}: {e}"))?;
            if retire {
                let mine: [u8; 32] =
                    codec::decode_bytes(name, 1, &own).map_err(|e| e.to_string())?;
                store.retire_key(name, &mine).map_err(|e| e.to_string())?;
            }
            store
                .replace_secret_key(name, &theirs)
                .map_err(|e| format!("the cluster's {name}: {e}"))?;
            adopted.push(name);
        }
    }
    Ok(adopted)
}

/// Signs visitor cookies (`visitors`) and place cookies (`room`) with the keys the
/// store holds now (`Keyring::adopt`: nothing for a key that signs already). After a
/// `take` that succeeds, whatever an earlier attempt cut short wrote to the store is
/// adopted too. Returns the keys adopted, by name.
fn adopt_stored(
    store: &Store,
    visitors: &Visitors,
    room: Option<&Room>,
) -> Result<Vec<&'static str>, String> {
    let mut adopted = Vec::new();
    for name in SHARED {
        let key = store.secret_key(name).map_err(|e| e.to_string())?;
        let ring = if name == trees::META_VISITOR_KEY {
            Some(visitors.keys())
        } else {
            room.map(|r| r.keys())
        };
        if ring.and_then(|r| r.adopt(&key)).is_some() {
            adopted.push(name);
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
                // A key an earlier attempt wrote before failing is in the store
                // already: what the store holds is adopted, not what this one wrote.
                Ok(Ok(_)) => match adopt_stored(&store, &visitors, room.as_ref()) {
                    Ok(names) => {
                        tracing::info!(keys = ?names, "cluster: NATS is back; signing cookies with the cluster's keys from now on (those this node signed meanwhile still verify here)");
                        return;
                    }
                    Err(e) => e,
                },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::store::keyring::Keyring;

    /// An attempt that wrote the cluster's visitor key and then failed (the
    /// waiting-room key's bucket timed out) leaves the store holding it: the next
    /// attempt, finding nothing to write for it, still signs with it.
    #[test]
    fn a_key_written_by_an_attempt_cut_short_is_adopted_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let visitors = Visitors::open(&store, 6, jiff::tz::TimeZone::UTC).unwrap();
        let own = visitors.keys().tag(b"text");
        let mut theirs = vec![1u8];
        theirs.extend_from_slice(&[9; 32]);
        store
            .replace_secret_key(trees::META_VISITOR_KEY, &theirs)
            .unwrap();
        assert_eq!(
            adopt_stored(&store, &visitors, None).unwrap(),
            vec![trees::META_VISITOR_KEY]
        );
        assert_eq!(
            visitors.keys().tag(b"text"),
            Keyring::new(&[9; 32], &[]).tag(b"text")
        );
        assert!(visitors.keys().verify(b"text", &own[..16]));
        assert!(adopt_stored(&store, &visitors, None).unwrap().is_empty());
    }
}
