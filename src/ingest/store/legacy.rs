//! Schema 1, kept for the stores it wrote: those of builds before schema 2, which
//! stored one event record per `events` key and each event's id in the `dedup` tree
//! (written after the events of a batch, then `meta.dedup_through`). Such a store is
//! opened and continued by this build: its `dedup` tree is repaired after a crash,
//! loaded into the dedup index, and swept as its ids expire; this build never writes
//! a new entry there except in that repair. A store created by this build has an
//! empty `dedup` tree and nothing here to do.

use std::collections::HashMap;

use super::records::{decode_dedup, decode_event, decode_seq, encode_dedup};
use super::trees;
use super::{SeenShard, StoreError};

/// Loads the legacy `dedup` tree, after repairing what a crash in the middle of a
/// schema 1 batch can leave among the events before `batches_from`. Such a batch wrote
/// its events, then their dedup entries, then `meta.dedup_through` (the highest seq
/// whose entry is written). So only events above that mark can lack their entry
/// (re-created here from the event), and only entries above it can lack their event,
/// should the log keep a later write and lose an earlier one (dropped here: such an
/// event was never acknowledged).
pub(super) fn repair_and_load_dedup(
    events: &sled::Tree,
    dedup: &sled::Tree,
    meta: &sled::Tree,
    batches_from: u64,
) -> Result<SeenShard, StoreError> {
    let through = match meta.get(trees::META_DEDUP_THROUGH)? {
        Some(v) => decode_seq(&v)?,
        None => 0,
    };
    let mut seen = HashMap::new();
    let mut orphans = 0usize;
    for kv in dedup.iter() {
        let (k, v) = kv?;
        let (ms, seq) = decode_dedup(&v)?;
        if seq > through && !events.contains_key(seq.to_be_bytes())? {
            dedup.remove(&k)?;
            orphans += 1;
            continue;
        }
        let id = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
            what: "dedup key",
            detail: "not UTF-8".into(),
        })?;
        seen.insert(id.into_boxed_str(), (ms, seq));
    }
    let mut restored = 0usize;
    let mut last = through;
    let legacy = through.saturating_add(1).to_be_bytes()..batches_from.to_be_bytes();
    for kv in events.range(legacy) {
        let (k, v) = kv?;
        let seq = decode_seq(&k)?;
        let record = decode_event(&v)?;
        last = seq;
        if seen.get(record.id.as_str()).is_some_and(|&(_, s)| s >= seq) {
            continue;
        }
        dedup.insert(
            record.id.as_bytes(),
            &encode_dedup(record.received_ms, seq)[..],
        )?;
        seen.insert(record.id.into_boxed_str(), (record.received_ms, seq));
        restored += 1;
    }
    if last > through {
        meta.insert(trees::META_DEDUP_THROUGH, &last.to_be_bytes())?;
    }
    if orphans + restored > 0 {
        tracing::warn!(
            dropped_dedup_entries = orphans,
            restored_dedup_entries = restored,
            "repaired the store after an interrupted write"
        );
    }
    Ok(seen)
}

/// Removes the entries of the `dedup` tree older than `ttl_ms` at `now_ms`, by
/// compare-and-swap, so an entry rewritten meanwhile is left alone.
pub(super) fn sweep(dedup: &sled::Tree, now_ms: u64, ttl_ms: u64) -> Result<(), StoreError> {
    for kv in dedup.iter() {
        let (k, v) = kv?;
        let (seen_ms, _) = decode_dedup(&v)?;
        if now_ms.saturating_sub(seen_ms) >= ttl_ms {
            let _ = dedup.compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::records::{encode_event, sample as record};
    use super::super::{Commit, Store, SCHEMA_VERSION};
    use super::*;

    /// A store written by a build before schema 2 (one record per key, ids in the
    /// `dedup` tree), cut by a crash between a batch's event inserts and its dedup
    /// inserts: events without entries, and an entry whose event was lost. `open`
    /// repairs both, then writes new events as batches after the old ones.
    #[test]
    fn a_schema_1_store_is_repaired_and_continued() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = 86_400_000;
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree(trees::META).unwrap();
            meta.insert(trees::META_SCHEMA_VERSION, &1u32.to_be_bytes())
                .unwrap();
            meta.insert(trees::META_DEDUP_THROUGH, &1u64.to_be_bytes())
                .unwrap();
            let events = db.open_tree(trees::EVENTS).unwrap();
            let dedup = db.open_tree(trees::DEDUP).unwrap();
            for (seq, id) in [(1u64, "kept"), (2, "no-entry-1"), (3, "no-entry-2")] {
                let at = if seq == 1 { 100 } else { 200 };
                events
                    .insert(seq.to_be_bytes(), encode_event(&record(id, at)).unwrap())
                    .unwrap();
            }
            dedup.insert("kept", &encode_dedup(100, 1)[..]).unwrap();
            dedup
                .insert("lost-event", &encode_dedup(300, 4)[..])
                .unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_seq(), 4);
        assert_eq!(s.dedup_entry("kept").unwrap(), Some((100, 1)));
        assert_eq!(s.dedup_entry("no-entry-1").unwrap(), Some((200, 2)));
        assert_eq!(s.dedup_entry("no-entry-2").unwrap(), Some((200, 3)));
        assert_eq!(s.dedup_entry("lost-event").unwrap(), None);
        assert_eq!(
            s.commit_event(&record("no-entry-2", 500), ttl).unwrap(),
            Commit::Duplicate { seq: 3 }
        );
        assert_eq!(
            s.commit_event(&record("lost-event", 500), ttl).unwrap(),
            Commit::Accepted { seq: 4 },
            "an id whose event was lost is new again"
        );
        s.commit_event(&record("new", 600), ttl).unwrap();
        let ids: Vec<_> = s
            .events_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|(seq, r)| (seq, r.id))
            .collect();
        assert_eq!(
            ids,
            [
                (1, "kept".to_string()),
                (2, "no-entry-1".into()),
                (3, "no-entry-2".into()),
                (4, "lost-event".into()),
                (5, "new".into())
            ]
        );
        drop(s);
        // The repair was written and the new layout recorded: a second open agrees.
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_seq(), 6);
        assert_eq!(s.dedup_entry("no-entry-1").unwrap(), Some((200, 2)));
        assert_eq!(s.dedup_entry("lost-event").unwrap(), Some((500, 4)));
        assert_eq!(s.dedup_entry("new").unwrap(), Some((600, 5)));
        let meta = s.open_tree(trees::META).unwrap();
        let version = meta.get(trees::META_SCHEMA_VERSION).unwrap().unwrap();
        assert_eq!(version.as_ref(), &SCHEMA_VERSION.to_be_bytes());
        assert_eq!(
            meta.get(trees::META_BATCHES_FROM)
                .unwrap()
                .unwrap()
                .as_ref(),
            &4u64.to_be_bytes()
        );
    }
}
