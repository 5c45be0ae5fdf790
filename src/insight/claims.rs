//! The counts a cluster decides on: a visitor from an earlier day counted as today's
//! visitor, a converting visitor, a conversion of a goal. Each is counted once per
//! launch day on every node it reaches (the node's own marks, `visitor.rs`), and
//! claimed in the cluster so that one node keeps it (`ops::cluster::claims` makes
//! the claims; this module keeps them and their corrections, and knows nothing of
//! NATS). A new visitor is not claimed: it is counted once, where its cookie is made.
//!
//! - A claimed count is counted at once, as on one box, and its claim (the mark's key,
//!   `visitor::mark_key`) pushed under one lock with the count's increment; the
//!   flush takes the counters and the claims under that same lock and writes the
//!   claims (tree `cluster_claims`) in the transaction of the batch holding their
//!   counts (`History::record_claimed`). So a count and its claim are durable
//!   together: a crash loses both or neither.
//! - A claim the cluster gives another node is **lost**: its correction (the count,
//!   to subtract, `history::Elsewhere`) waits here for the next flush, which writes
//!   it in its batch and removes the claim in the same transaction. A crash before
//!   that flush leaves the claim kept, made again at the next start, lost again:
//!   the correction is in exactly one batch. A claim read before a flush removed it
//!   and found lost after is no longer kept, and dropped (`Claims::lost`).
//! - A claim this node wins is removed; nothing else changes.
//!
//! **Invariant:** a claim is made only for a count that is durable, and a correction
//! is written only with the removal of its claim.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::insight::history::{ClaimWrites, Elsewhere};
use crate::insight::visitor::{parse_mark_key, Mark};

/// Claims of counts not flushed yet, and lost claims whose correction waits for the
/// next flush. A clone shares them.
#[derive(Clone, Default)]
pub struct Claims {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Claims of counts in the cells: pushed with the count's increment under this
    /// lock, taken with the cells under it.
    fresh: Mutex<Vec<Vec<u8>>>,
    lost: Mutex<Lost>,
}

#[derive(Default)]
struct Lost {
    /// In the order they were lost.
    keys: Vec<Vec<u8>>,
    /// The same, to skip them when claims are read again before the flush.
    set: HashSet<Vec<u8>>,
}

impl Claims {
    pub fn new() -> Claims {
        Claims::default()
    }

    /// Runs `count` (the count's increment) and keeps `key` as its claim, so that
    /// no flush takes one without the other.
    pub fn counted(&self, key: Vec<u8>, count: impl FnOnce()) {
        let mut fresh = self.inner.fresh.lock();
        count();
        fresh.push(key);
    }

    /// Runs `take` (the cells' take) under the lock counts are made under, and
    /// takes the fresh claims and the lost ones with it.
    pub fn take_with<T>(&self, take: impl FnOnce() -> T) -> (T, ClaimWrites) {
        let mut fresh = self.inner.fresh.lock();
        let taken = take();
        let add = std::mem::take(&mut *fresh);
        drop(fresh);
        let settled = self.inner.lost.lock().keys.clone();
        (taken, ClaimWrites { add, settled })
    }

    /// After a failed write: the claims go back, to be taken by the next flush.
    pub fn give_back(&self, writes: ClaimWrites) {
        let mut fresh = self.inner.fresh.lock();
        let mut add = writes.add;
        add.append(&mut fresh);
        *fresh = add;
    }

    /// After a write: the lost claims it settled are done.
    pub fn settled(&self, keys: &[Vec<u8>]) {
        let mut lost = self.inner.lost.lock();
        let done: HashSet<&Vec<u8>> = keys.iter().collect();
        lost.keys.retain(|k| !done.contains(k));
        for k in keys {
            lost.set.remove(k);
        }
    }

    /// Claims another node won: their corrections go into the next flush. A claim
    /// `kept` says is no longer kept (`History::claim_kept`) was settled by a flush
    /// since it was read (its correction written): it is dropped, not lost twice.
    /// Checked under the lock `settled` takes after its flush's commit.
    pub fn lost(&self, keys: Vec<Vec<u8>>, kept: impl Fn(&[u8]) -> bool) {
        let mut lost = self.inner.lost.lock();
        for k in keys {
            if !lost.set.contains(&k) && kept(&k) {
                lost.set.insert(k.clone());
                lost.keys.push(k);
            }
        }
    }

    /// Whether `key` is lost and waits for the flush that settles it.
    pub fn settling(&self, key: &[u8]) -> bool {
        self.inner.lost.lock().set.contains(key)
    }

    /// The corrections waiting for the next flush, by day.
    pub fn pending_corrections(&self) -> BTreeMap<String, Elsewhere> {
        corrections(&self.inner.lost.lock().keys)
    }
}

/// The corrections of lost claims `keys`, by day.
pub fn corrections(keys: &[Vec<u8>]) -> BTreeMap<String, Elsewhere> {
    let mut out: BTreeMap<String, Elsewhere> = BTreeMap::new();
    for k in keys {
        let Some((day, mark, _)) = parse_mark_key(k) else {
            continue;
        };
        let e = out.entry(day.to_string()).or_default();
        match mark {
            Mark::Visited => e.unique_visitors += 1,
            Mark::Converted => e.converting_visitors += 1,
            Mark::Goal(goal) => e.merge(&Elsewhere {
                conversions: vec![(goal.to_string(), 1)],
                ..Elsewhere::default()
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insight::visitor::{mark_key, Visitor};

    #[test]
    fn a_claim_is_taken_with_its_count_and_a_loss_settles_once() {
        let claims = Claims::new();
        let v = Visitor {
            id: [7; 16],
            first_seen_secs: 1,
        };
        let count = std::sync::atomic::AtomicU64::new(0);
        let key = mark_key("2026-11-26", Mark::Goal("signup"), &v);
        claims.counted(key.clone(), || {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let (n, writes) = claims.take_with(|| count.swap(0, std::sync::atomic::Ordering::Relaxed));
        assert_eq!((n, writes.add.len(), writes.settled.len()), (1, 1, 0));
        claims.give_back(writes);
        let (_, writes) = claims.take_with(|| ());
        assert_eq!(writes.add, vec![key.clone()]);

        claims.lost(vec![key.clone(), key.clone()], |_| true);
        assert!(claims.settling(&key));
        let c = claims.pending_corrections();
        assert_eq!(c["2026-11-26"].conversions, vec![("signup".into(), 1)]);
        let (_, writes) = claims.take_with(|| ());
        assert_eq!(writes.settled, vec![key.clone()]);
        claims.settled(&writes.settled);
        assert!(!claims.settling(&key));
        assert!(claims.pending_corrections().is_empty());
        // Read again before its flush settled it, lost again after: not kept, dropped.
        claims.lost(vec![key.clone()], |_| false);
        assert!(!claims.settling(&key));
        assert!(claims.take_with(|| ()).1.settled.is_empty());
    }
}
