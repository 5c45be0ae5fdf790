//! The sled store: the `Store` handle, opening, and the write path of events — an
//! in-memory append on the request path, written to sled in batches.
//!
//! The files of the folder:
//! - `codec.rs`: the one framing of versioned records (`[version][body]`), for every
//!   record of the crate;
//! - `trees.rs`: every tree name and `meta` key of the crate, as constants;
//! - `records.rs`: the event record, the batch entry, the dedup record and the pin;
//! - `legacy.rs`: schema 1 (one record per `events` key, ids in `dedup`), kept for the
//!   stores older builds wrote: its repair at open and the sweep of its `dedup` tree.
//!
//! Trees this module owns (DESIGN.md, Storage; encodings in `records.rs`):
//! - `events`: `u64` BE seq → an entry: a committer batch holding seqs `key`,
//!   `key + 1`, ...; or (stores written before schema 2) one event record per key.
//! - `dedup`: event id → dedup record, written only by builds before schema 2; still
//!   loaded at open and swept after the TTL.
//! - `meta`: `schema_version` → `u32` BE; `pin` → the operator's factor pin;
//!   `batches_from` → the first seq written as batches (`u64` BE, set once);
//!   `dedup_from` → the lowest seq whose id the dedup index may still need
//!   (`u64` BE, moved up by the sweep); `dedup_through` → schema 1's repair mark.
//!
//! Write path: `append` checks the id against an in-memory dedup index (sharded), takes
//! the next seq and queues the encoded record, all in well under a microsecond and
//! without touching sled. `write_pending` (the committer, off the async workers) takes
//! the whole queue and writes it as one `events` entry (at most `MAX_BATCH` events an
//! entry): one sled insert for a batch instead of two per event (event and dedup entry),
//! which was most of the committer's CPU. `flush_durable` writes what is queued and
//! then flushes (and fsyncs) the log.
//!
//! The dedup index is rebuilt at open from the ids in the `events` entries from
//! `meta.dedup_from` on (and from the legacy `dedup` tree, for events before
//! `meta.batches_from`). An event and its id are one sled insert, so no crash can leave
//! one without the other.
//!
//! **Invariant:** every id accepted within the TTL is in the index after a restart:
//! the sweep moves `dedup_from` only up to the lowest seq the index still holds, and
//! never past the next seq to be taken.
//! **Invariant:** seqs are dense and increasing: they are taken in queue order, the
//! queue is written in order, and the next one after a restart is one past the last
//! event of the last entry, never sled's `generate_id` (which jumps after a crash).
//! **Invariant:** a record that failed to be written stays queued and is written by the
//! next flush, so an id answered "duplicate" always has its event in the store.
//! **Invariant:** a record or store written by a newer schema is refused, never misread;
//! builds before schema 2 refuse a store with batches (`schema_version` 2).
//!
//! All methods block (sled does I/O) except `append`; async callers run
//! `write_pending` and `flush_durable` in `spawn_blocking`.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ingest::factor::Pin;

pub mod codec;
pub mod keyring;
mod legacy;
mod records;
pub mod trees;

use records::{decode_entry, decode_seq, encode_batch, entry_len, is_batch, own_in_entry};
pub use records::{decode_event, encode_event, own_event_id, EventRecord, Origin, Scheme};

/// The store layout this build writes. A store with a higher number is refused.
pub const SCHEMA_VERSION: u32 = 2;
/// Most events in one `events` entry: a committer that fell behind writes several.
const MAX_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {dir}: {detail}")]
    Open { dir: PathBuf, detail: String },
    #[error(
        "the store in {dir} was written by a newer launchguard (schema {found}, this build reads up to {SCHEMA_VERSION}); run the newer binary, or move the directory aside to start empty"
    )]
    NewerSchema { dir: PathBuf, found: u32 },
    #[error("record {what} has version {found}, newer than this build understands ({max})")]
    NewerRecord {
        what: &'static str,
        found: u8,
        max: u8,
    },
    #[error("record {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What became of an event offered to the store (`append`), and so the answer of
/// `Ingestor::ingest`: accepted with a new seq, or a duplicate of an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Accepted {
        seq: u64,
    },
    /// The id was seen within the dedup TTL; nothing was written.
    Duplicate {
        seq: u64,
    },
}

/// Handle to the store; a clone is cheap and shares the same sled `Db`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    events: sled::Tree,
    dedup: sled::Tree,
    meta: sled::Tree,
    /// A second handle on sled's data file, for `sync_data` after `flush`.
    db_file: File,
    /// The seq the next accepted event gets; written under `queue`, read lock-free.
    next_seq: AtomicU64,
    /// Ids seen within the dedup TTL: id → (received ms, seq). Sharded so the sweep
    /// holds one shard at a time.
    seen: Box<[Mutex<SeenShard>]>,
    hasher: RandomState,
    /// Accepted records not yet written to sled, in seq order. Taken under a shard
    /// lock (lock order: shard, then queue), held for a push.
    queue: Mutex<Vec<Pending>>,
    /// Serializes `write_pending`, so batches reach sled in seq order.
    writer: Mutex<()>,
    /// Seqs of own events not to count as accepted (`mark_not_counted`).
    not_counted: sled::Tree,
    /// Woken when the committer has written (and, in fsync mode, flushed) a batch:
    /// the cluster's outbox reads the events it has not published yet then.
    written: tokio::sync::Notify,
}

/// An accepted event waiting for `write_pending`.
struct Pending {
    seq: u64,
    encoded: Vec<u8>,
}

/// One shard of the dedup index: id → (received ms, seq).
type SeenShard = HashMap<Box<str>, (u64, u64)>;

/// Shards of the in-memory dedup index.
const SEEN_SHARDS: usize = 16;

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            detail: format!("cannot create the directory: {e}"),
        })?;
        // sled lets go of its file lock when the last of its threads ends, a moment
        // after the previous owner (this process's last run, or a process that has just
        // exited) closed the store. A restart right after a stop waits that moment out;
        // a store held by a live server is still refused, after LOCK_WAIT.
        let started = std::time::Instant::now();
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(64 * 1024 * 1024)
                .flush_every_ms(Some(500))
                .open()
            {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(StoreError::Open {
                        dir: dir.to_path_buf(),
                        detail: open_hint(&e),
                    })
                }
            }
        };
        let events = db.open_tree(trees::EVENTS)?;
        let dedup = db.open_tree(trees::DEDUP)?;
        let meta = db.open_tree(trees::META)?;
        let not_counted = db.open_tree(trees::NOT_COUNTED)?;

        if let Some(v) = meta.get(trees::META_SCHEMA_VERSION)? {
            let found =
                u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "meta.schema_version",
                    detail: format!("{} bytes, expected 4", v.len()),
                })?);
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    dir: dir.to_path_buf(),
                    found,
                });
            }
        }

        let next_seq = match events.last()? {
            Some((k, v)) => decode_seq(&k)? + entry_len(&v)?,
            None => 1,
        };
        let batches_from = match meta.get(trees::META_BATCHES_FROM)? {
            Some(v) => decode_seq(&v)?,
            None => {
                // First open by a build that writes batches: everything before is the
                // old layout, with its ids in the `dedup` tree.
                meta.insert(trees::META_BATCHES_FROM, &next_seq.to_be_bytes())?;
                next_seq
            }
        };
        meta.insert(trees::META_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes())?;
        db.flush()?;
        let db_file = File::open(dir.join("db")).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            detail: format!("cannot open the data file for fsync: {e}"),
        })?;
        let mut seen = legacy::repair_and_load_dedup(&events, &dedup, &meta, batches_from)?;
        let dedup_from = match meta.get(trees::META_DEDUP_FROM)? {
            Some(v) => decode_seq(&v)?.max(batches_from),
            None => batches_from,
        };
        for stored in records_from(&events, dedup_from) {
            let (seq, record) = stored?;
            let newer = seen
                .get(record.id.as_str())
                .is_none_or(|&(_, known)| known < seq);
            if newer {
                seen.insert(record.id.into_boxed_str(), (record.received_ms, seq));
            }
        }
        let hasher = RandomState::new();
        let shards: Vec<_> = (0..SEEN_SHARDS)
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        for (id, entry) in seen {
            let i = shard_of(&hasher, &id);
            shards[i].lock().insert(id, entry);
        }
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db,
                events,
                dedup,
                meta,
                db_file,
                next_seq: AtomicU64::new(next_seq),
                seen: shards.into_boxed_slice(),
                hasher,
                queue: Mutex::new(Vec::new()),
                writer: Mutex::new(()),
                written: tokio::sync::Notify::new(),
                not_counted,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Accepts `record` unless its id was seen less than `dedup_ttl_ms` ago: the id is
    /// remembered, the next seq taken and the record queued for `write_pending`. No
    /// sled I/O; this is the in-memory append of the webhook path.
    pub fn append(&self, record: &EventRecord, dedup_ttl_ms: u64) -> Result<Commit, StoreError> {
        let encoded = encode_event(record)?;
        let inner = &*self.inner;
        let mut shard = inner.seen[shard_of(&inner.hasher, &record.id)].lock();
        if let Some(&(seen_ms, seen_seq)) = shard.get(record.id.as_str()) {
            if record.received_ms.saturating_sub(seen_ms) < dedup_ttl_ms {
                return Ok(Commit::Duplicate { seq: seen_seq });
            }
        }
        let id: Box<str> = record.id.as_str().into();
        let mut queue = inner.queue.lock();
        let seq = inner.next_seq.load(Ordering::Relaxed);
        queue.push(Pending { seq, encoded });
        inner.next_seq.store(seq + 1, Ordering::Release);
        drop(queue);
        shard.insert(id, (record.received_ms, seq));
        Ok(Commit::Accepted { seq })
    }

    /// `append`, then `write_pending`: the record is in sled (not yet flushed) when
    /// this returns. For callers without a committer (tools, tests).
    pub fn commit_event(
        &self,
        record: &EventRecord,
        dedup_ttl_ms: u64,
    ) -> Result<Commit, StoreError> {
        let outcome = self.append(record, dedup_ttl_ms)?;
        self.write_pending()?;
        Ok(outcome)
    }

    /// Writes every queued record to sled, as batch entries of at most `MAX_BATCH`
    /// events. On an error the batch goes back to the head of the queue (rewriting an
    /// entry with the same events is harmless) and the next call tries again.
    /// Returns how many records were written. Blocks: call from `spawn_blocking`.
    pub fn write_pending(&self) -> Result<usize, StoreError> {
        let inner = &*self.inner;
        let _writer = inner.writer.lock();
        let batch = std::mem::take(&mut *inner.queue.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        let written = batch.chunks(MAX_BATCH).try_for_each(|chunk| {
            let value = encode_batch(chunk.iter().map(|p| p.encoded.as_slice()));
            inner
                .events
                .insert(chunk[0].seq.to_be_bytes(), value)
                .map(|_| ())
        });
        match written {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut queue = inner.queue.lock();
                let newer = std::mem::replace(&mut *queue, batch);
                queue.extend(newer);
                Err(e.into())
            }
        }
    }

    /// How many accepted records wait for `write_pending`.
    pub fn pending(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// Writes what is queued and the log; with `fsync`, also forces the data file to
    /// the disk (sled's flush alone is `sync_file_range`, which survives a process
    /// crash but not a power cut). Blocks: call from `spawn_blocking`.
    pub fn flush_durable(&self, fsync: bool) -> Result<(), StoreError> {
        self.write_pending()?;
        self.inner.db.flush()?;
        if fsync {
            self.inner.db_file.sync_data()?;
        }
        Ok(())
    }

    /// The seq the next accepted event will get.
    pub fn next_seq(&self) -> u64 {
        self.inner.next_seq.load(Ordering::Acquire)
    }

    /// The event with `seq`, written or still queued.
    pub fn event(&self, seq: u64) -> Result<Option<EventRecord>, StoreError> {
        if let Some((found, record)) = records_from(&self.inner.events, seq).next().transpose()? {
            if found == seq {
                return Ok(Some(record));
            }
        }
        let queue = self.inner.queue.lock();
        match queue.binary_search_by_key(&seq, |p| p.seq) {
            Ok(i) => decode_event(&queue[i].encoded).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Up to `limit` events with seq greater than `after`, oldest first.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        records_from(&self.inner.events, after.saturating_add(1))
            .take(limit)
            .collect()
    }

    /// Up to `limit` events with seq greater than `after`, oldest first, as their
    /// encoded records (`[version][bincode]`, each a slice of its sled entry, not
    /// decoded or copied): what the cluster's outbox publishes.
    pub fn encoded_events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, bytes::Bytes)>, StoreError> {
        let from = after.saturating_add(1);
        let mut out = Vec::with_capacity(limit.min(MAX_BATCH));
        for entry in entries_from(&self.inner.events, from) {
            let (k, v) = entry?;
            for (seq, record) in records::entry_encoded(&k, v)? {
                if out.len() == limit {
                    return Ok(out);
                }
                if seq >= from {
                    out.push((seq, record));
                }
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// The newest `limit` events, newest first.
    pub fn recent_events(&self, limit: usize) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        records_newest_first(&self.inner.events)
            .take(limit)
            .collect()
    }

    /// Events received at or after `since_ms`, oldest first: what the velocity
    /// window is rebuilt from at startup. Walks back from the newest event while the
    /// events were stored at or after `since_ms` (`EventRecord::stored_ms`: a
    /// replica from another node may be stored long after it happened, and must not
    /// end the walk early), keeping those received since.
    pub fn events_since(&self, since_ms: u64) -> Result<Vec<EventRecord>, StoreError> {
        let mut out = records_newest_first(&self.inner.events)
            .map(|stored| stored.map(|(_, record)| record))
            .take_while(|stored| !matches!(stored, Ok(r) if r.stored_ms() < since_ms))
            .filter(|stored| !matches!(stored, Ok(r) if r.received_ms < since_ms))
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// How many events with seq `from` or later, written to sled, this node accepted
    /// (replicas of other nodes' events and the seqs marked `not_counted` left
    /// out), and the seq after the last one looked at: what the counter flusher
    /// counts as "webhooks accepted", from the log rather than from memory, so a
    /// crash between two flushes loses none. Reads version bytes only.
    pub fn count_own_from(&self, from: u64) -> Result<(u64, u64), StoreError> {
        let (mut own, mut next) = (0, from);
        for entry in entries_from(&self.inner.events, from) {
            let (k, v) = entry?;
            let (n, after) = own_in_entry(&k, &v, from)?;
            own += n;
            next = next.max(after);
        }
        let skipped = self
            .inner
            .not_counted
            .range(from.to_be_bytes()..next.to_be_bytes())
            .count() as u64;
        Ok((own.saturating_sub(skipped), next))
    }

    /// Marks an event of this node's that the cluster already had (another node
    /// accepted it first, and the sender was answered `duplicate`): it is the same
    /// event once, so `count_own_from` leaves it out.
    pub fn mark_not_counted(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.not_counted.insert(seq.to_be_bytes(), &[])?;
        Ok(())
    }

    /// The lowest seq of the events stored at or after `since_ms` (walking back from
    /// the newest while they were), or the next seq when there are none.
    pub fn first_seq_stored_since(&self, since_ms: u64) -> Result<u64, StoreError> {
        let mut first = self.next_seq();
        for stored in records_newest_first(&self.inner.events) {
            let (seq, record) = stored?;
            if record.stored_ms() < since_ms {
                break;
            }
            first = seq;
        }
        Ok(first)
    }

    /// Wakes whoever waits on `written` (the committer, after each batch).
    pub fn announce_written(&self) {
        self.inner.written.notify_waiters();
    }

    /// Resolves at the next `announce_written`. Create it before reading what is
    /// written, then await it, so no announcement falls between the two.
    pub fn written(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.written.notified()
    }

    /// A `u64` kept under `key` in `meta` (a `[1][u64 BE]` record), 0 when absent.
    pub fn meta_u64(&self, key: &'static str) -> Result<u64, StoreError> {
        match self.inner.meta.get(key)? {
            Some(v) => Ok(codec::decode_words::<1>(key, 1, &v)?[0]),
            None => Ok(0),
        }
    }

    /// Sets `meta_u64(key)`; not flushed (sled's own flusher writes it soon).
    pub fn set_meta_u64(&self, key: &'static str, value: u64) -> Result<(), StoreError> {
        self.inner
            .meta
            .insert(key, codec::encode_words(1, [value]))?;
        Ok(())
    }

    /// A `u64` kept under a key made at run time (`cluster_consumed_ms.<node>`), as
    /// `meta_u64` keeps one; 0 when absent.
    pub fn meta_u64_named(&self, key: &str) -> Result<u64, StoreError> {
        match self.inner.meta.get(key)? {
            Some(v) => Ok(codec::decode_words::<1>("meta (a per-node cursor)", 1, &v)?[0]),
            None => Ok(0),
        }
    }

    /// Sets `meta_u64_named(key)`; not flushed.
    pub fn set_meta_u64_named(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.inner
            .meta
            .insert(key, codec::encode_words(1, [value]))?;
        Ok(())
    }

    /// Empties the payload of events with seq above `after` received before
    /// `before_ms`, oldest first, stopping at the first newer event. Returns how many
    /// payloads were emptied and the last seq done (`after` if none): the retention
    /// sweep (`history.rs`) resumes from there.
    pub fn strip_payloads(&self, after: u64, before_ms: u64) -> Result<(usize, u64), StoreError> {
        let from = after.saturating_add(1);
        let (mut stripped, mut last) = (0, after);
        for entry in entries_from(&self.inner.events, from) {
            let (k, v) = entry?;
            let mut records = decode_entry(&k, &v)?;
            let (mut entry_stripped, mut entry_last) = (0, last);
            let mut reached_newer = false;
            for (seq, record) in records.iter_mut() {
                if *seq < from {
                    continue;
                }
                if record.received_ms >= before_ms {
                    reached_newer = true;
                    break;
                }
                if !record.payload.is_empty() {
                    record.payload = Vec::new();
                    entry_stripped += 1;
                }
                entry_last = *seq;
            }
            let changed = entry_stripped > 0;
            if changed {
                let new = if is_batch(&v) {
                    let encoded = records
                        .iter()
                        .map(|(_, r)| encode_event(r))
                        .collect::<Result<Vec<_>, _>>()?;
                    encode_batch(encoded.iter().map(Vec::as_slice))
                } else {
                    encode_event(&records[0].1)?
                };
                // Only a committer retry rewrites an entry; if one raced this sweep,
                // leave the entry for the next sweep.
                if self
                    .inner
                    .events
                    .compare_and_swap(&k, Some(&v), Some(new))?
                    .is_err()
                {
                    break;
                }
            }
            stripped += entry_stripped;
            last = entry_last;
            if reached_newer {
                break;
            }
        }
        Ok((stripped, last))
    }

    /// The dedup entry for `id`: (received ms, seq), as the index holds it.
    pub fn dedup_entry(&self, id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let inner = &*self.inner;
        Ok(inner.seen[shard_of(&inner.hasher, id)]
            .lock()
            .get(id)
            .copied())
    }

    /// Forgets ids older than `ttl_ms` at `now_ms`, in the index (one shard at a time)
    /// and in the legacy `dedup` tree (compare-and-swap, so an entry rewritten
    /// meanwhile is left alone), then moves `meta.dedup_from` up to the lowest seq the
    /// index still holds. Returns how many ids the index forgot.
    pub fn sweep_dedup(&self, now_ms: u64, ttl_ms: u64) -> Result<usize, StoreError> {
        let inner = &*self.inner;
        // Ids appended while the shards are swept get seqs from here on.
        let next = inner.next_seq.load(Ordering::Acquire);
        let (mut forgotten, mut lowest) = (0, next);
        for shard in inner.seen.iter() {
            shard.lock().retain(|_, &mut (seen_ms, seq)| {
                let keep = now_ms.saturating_sub(seen_ms) < ttl_ms;
                if keep {
                    lowest = lowest.min(seq);
                } else {
                    forgotten += 1;
                }
                keep
            });
        }
        legacy::sweep(&inner.dedup, now_ms, ttl_ms)?;
        let current = match inner.meta.get(trees::META_DEDUP_FROM)? {
            Some(v) => decode_seq(&v)?,
            None => 0,
        };
        if lowest > current {
            inner
                .meta
                .insert(trees::META_DEDUP_FROM, &lowest.to_be_bytes())?;
        }
        Ok(forgotten)
    }

    /// The operator's persisted factor pin, if any.
    pub fn load_pin(&self) -> Result<Option<Pin>, StoreError> {
        self.inner
            .meta
            .get(trees::META_PIN)?
            .map(|v| records::decode_pin(&v))
            .transpose()
    }

    /// Persists (or with `None`, clears) the factor pin, durably.
    pub fn save_pin(&self, pin: Option<Pin>) -> Result<(), StoreError> {
        match pin {
            Some(p) => {
                self.inner
                    .meta
                    .insert(trees::META_PIN, records::encode_pin(p))?;
            }
            None => {
                self.inner.meta.remove(trees::META_PIN)?;
            }
        }
        self.flush_durable(true)
    }

    /// Another tree of the same database: `history.rs` keeps `metrics` and `launches`
    /// this way, beside the trees this module owns.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.db.open_tree(name)?)
    }

    /// A 256-bit signing key kept under `name` in `meta` (a `[1][32 bytes]` record),
    /// made from OS randomness at first use. Set only if absent, so two processes
    /// never end up with two keys.
    pub fn secret_key(&self, name: &'static str) -> Result<[u8; 32], StoreError> {
        let meta = self.open_tree(trees::META)?;
        let mut fresh = [0u8; 33];
        fresh[0] = 1;
        getrandom::fill(&mut fresh[1..]).map_err(|e| StoreError::Corrupt {
            what: name,
            detail: format!("no randomness for a new key: {e}"),
        })?;
        let stored = match meta.compare_and_swap(name, None as Option<&[u8]>, Some(&fresh[..]))? {
            Ok(()) => fresh.to_vec(),
            Err(e) => e.current.expect("present when the swap failed").to_vec(),
        };
        codec::decode_bytes(name, 1, &stored)
    }

    /// The record of the signing key under `name` (`[1][32 bytes]`), made as
    /// `secret_key` makes it when absent: what a cluster shares so that every node
    /// signs with the same key.
    pub fn secret_key_record(&self, name: &'static str) -> Result<Vec<u8>, StoreError> {
        let key = self.secret_key(name)?;
        let mut record = Vec::with_capacity(33);
        record.push(1);
        record.extend_from_slice(&key);
        Ok(record)
    }

    /// Replaces the signing key under `name` with `record` (as `secret_key_record`
    /// gives it), after checking it is one; takes effect for what opens the key next.
    pub fn replace_secret_key(&self, name: &'static str, record: &[u8]) -> Result<(), StoreError> {
        codec::decode_bytes::<32>(name, 1, record)?;
        self.open_tree(trees::META)?.insert(name, record)?;
        Ok(())
    }

    /// The keys retired from signing under `name` (`Store::retire_key`), newest first.
    pub fn retired_keys(&self, name: &'static str) -> Result<Vec<[u8; 32]>, StoreError> {
        let Some(v) = self.open_tree(trees::META)?.get(trees::retired(name))? else {
            return Ok(Vec::new());
        };
        match v.split_first() {
            Some((1, keys)) if keys.len() % 32 == 0 => Ok(keys
                .chunks_exact(32)
                .map(|k| k.try_into().expect("32 bytes"))
                .collect()),
            _ => Err(StoreError::Corrupt {
                what: trees::retired(name),
                detail: "not a version 1 list of 32-byte keys".into(),
            }),
        }
    }

    /// Keeps `key` among the keys retired from signing under `name` (the newest
    /// `keyring::MAX_RETIRED`): cookies it signed still verify after a restart.
    pub fn retire_key(&self, name: &'static str, key: &[u8; 32]) -> Result<(), StoreError> {
        let mut keys = self.retired_keys(name)?;
        keys.retain(|k| k != key);
        keys.insert(0, *key);
        keys.truncate(keyring::MAX_RETIRED);
        let mut record = vec![1u8];
        keys.iter().for_each(|k| record.extend_from_slice(k));
        self.open_tree(trees::META)?
            .insert(trees::retired(name), record)?;
        Ok(())
    }

    /// Space sled uses on disk, bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }
}

fn shard_of(hasher: &RandomState, id: &str) -> usize {
    (hasher.hash_one(id) as usize) % SEEN_SHARDS
}

/// How long `Store::open` waits for a lock a closing owner is about to release.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn is_lock_error(e: &sled::Error) -> bool {
    let text = e.to_string();
    text.contains("could not acquire lock")
        || text.contains("WouldBlock")
        || text.contains("Resource temporarily unavailable")
}

fn open_hint(e: &sled::Error) -> String {
    let text = e.to_string();
    if is_lock_error(e) || text.contains("lock") {
        format!("{text}; another launchguard process probably holds this data dir, stop it first")
    } else {
        format!(
            "{text}; if the files are damaged, move the directory aside (keep it for recovery) and start again with an empty one"
        )
    }
}

/// The `events` entries that can hold `seq` or later ones: the entry at or before
/// `seq` (a batch may hold it), then every later entry, read by one iterator from that
/// entry's key on. (Two reads, the entry before `seq` and then the entries after it,
/// miss a batch written between them that starts exactly at `seq`; the cluster's
/// outbox then moved past events it never published.)
fn entries_from(
    events: &sled::Tree,
    seq: u64,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
    let at = seq.to_be_bytes();
    let (failed, from) = match events.range(..=at).next_back() {
        Some(Ok((k, _))) => (None, k),
        Some(Err(e)) => (Some(Err(e)), sled::IVec::from(&at[..])),
        None => (None, sled::IVec::from(&at[..])),
    };
    failed.into_iter().chain(events.range(from..))
}

/// The events with seq `from` or later, oldest first, across entries of either layout.
fn records_from(
    events: &sled::Tree,
    from: u64,
) -> impl Iterator<Item = Result<(u64, EventRecord), StoreError>> {
    entries_from(events, from)
        .flat_map(|entry| entry_records(entry, false))
        .filter(move |stored| !matches!(stored, Ok((seq, _)) if *seq < from))
}

/// Every event, newest first.
fn records_newest_first(
    events: &sled::Tree,
) -> impl Iterator<Item = Result<(u64, EventRecord), StoreError>> {
    events
        .iter()
        .rev()
        .flat_map(|entry| entry_records(entry, true))
}

/// The events of one entry as read from sled, or the error reading or decoding it.
fn entry_records(
    entry: sled::Result<(sled::IVec, sled::IVec)>,
    newest_first: bool,
) -> Vec<Result<(u64, EventRecord), StoreError>> {
    match entry
        .map_err(StoreError::from)
        .and_then(|(k, v)| decode_entry(&k, &v))
    {
        Ok(mut records) => {
            if newest_first {
                records.reverse();
            }
            records.into_iter().map(Ok).collect()
        }
        Err(e) => vec![Err(e)],
    }
}

#[cfg(test)]
mod tests {
    use super::records::sample as record;
    use super::*;

    #[test]
    fn seqs_are_dense_dedup_holds_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = 86_400_000;
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(
                s.commit_event(&record("a", 1000), ttl).unwrap(),
                Commit::Accepted { seq: 1 }
            );
            assert_eq!(
                s.commit_event(&record("b", 1000), ttl).unwrap(),
                Commit::Accepted { seq: 2 }
            );
            assert_eq!(
                s.commit_event(&record("a", 2000), ttl).unwrap(),
                Commit::Duplicate { seq: 1 }
            );
            s.flush_durable(true).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_seq(), 3);
        assert_eq!(
            s.commit_event(&record("b", 5000), ttl).unwrap(),
            Commit::Duplicate { seq: 2 }
        );
        assert_eq!(
            s.commit_event(&record("c", 5000), ttl).unwrap(),
            Commit::Accepted { seq: 3 }
        );
        assert_eq!(s.event(1).unwrap().unwrap().id, "a");
    }

    /// A reader that follows the writer, as the cluster's outbox does (read after its
    /// cursor, move the cursor to the last seq read), never passes a seq: every batch
    /// it reads starts right after its cursor and has no hole. Each write here is a
    /// batch of one or two entries, so a batch that starts exactly at the reader's
    /// cursor + 1 lands between the reader's lookups again and again.
    #[test]
    fn a_reader_following_the_writer_sees_every_seq_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        const EVENTS: u64 = 40_000;
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..EVENTS {
                    s.append(&record(&format!("e{i}"), i), u64::MAX).unwrap();
                    if i % 3 != 0 {
                        s.write_pending().unwrap();
                    }
                }
                s.write_pending().unwrap();
            })
        };
        let mut cursor = 0;
        while cursor < EVENTS {
            for (seq, _) in s.encoded_events_after(cursor, 64).unwrap() {
                assert_eq!(seq, cursor + 1, "the reader passed seq {}", cursor + 1);
                cursor = seq;
            }
        }
        writer.join().unwrap();
    }

    #[test]
    fn expired_ids_count_again_and_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ttl = 1000;
        s.commit_event(&record("a", 0), ttl).unwrap();
        s.commit_event(&record("b", 900), ttl).unwrap();
        assert_eq!(s.sweep_dedup(1500, ttl).unwrap(), 1);
        assert_eq!(s.dedup_entry("a").unwrap(), None);
        assert!(s.dedup_entry("b").unwrap().is_some());
        assert_eq!(
            s.commit_event(&record("a", 1500), ttl).unwrap(),
            Commit::Accepted { seq: 3 }
        );
    }

    #[test]
    fn newer_schema_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree(trees::META)
                .unwrap()
                .insert(
                    trees::META_SCHEMA_VERSION,
                    &(SCHEMA_VERSION + 1).to_be_bytes(),
                )
                .unwrap();
            db.flush().unwrap();
        }
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("newer launchguard"), "{e}");
    }

    #[test]
    fn events_since_walks_back_from_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for (i, at) in [100, 200, 300, 400].iter().enumerate() {
            s.commit_event(&record(&format!("e{i}"), *at), 10_000)
                .unwrap();
        }
        let ids: Vec<_> = s
            .events_since(250)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["e2", "e3"]);
    }

    #[test]
    fn appended_events_are_readable_before_and_after_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let ttl = 86_400_000;
        assert_eq!(
            s.append(&record("a", 10), ttl).unwrap(),
            Commit::Accepted { seq: 1 }
        );
        assert_eq!(
            s.append(&record("a", 20), ttl).unwrap(),
            Commit::Duplicate { seq: 1 }
        );
        assert_eq!(s.pending(), 1);
        assert_eq!(s.event(1).unwrap().unwrap().id, "a", "read from the queue");
        assert!(s.recent_events(10).unwrap().is_empty(), "not in sled yet");
        assert_eq!(s.write_pending().unwrap(), 1);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.recent_events(10).unwrap()[0].1.id, "a");
        assert_eq!(s.dedup_entry("a").unwrap(), Some((10, 1)));
    }
    /// The outbox publishes each record's bytes as stored, where it used to decode
    /// the record and encode it again: the bytes are the same (so the messages in
    /// the stream are too), for every kind of record and both layouts of an entry.
    #[test]
    fn encoded_events_are_the_bytes_decoding_and_encoding_gave() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = 86_400_000;
        let s = Store::open(dir.path()).unwrap();
        let mut records = vec![record("ph-1", 100)];
        let mut sw = record("évt 2, not plain", 200);
        sw.scheme = Scheme::StandardWebhooks;
        sw.payload = (0..=255u8).chain(0..=255).collect();
        records.push(sw);
        let mut polled = record("poll-3", 300);
        polled.scheme = Scheme::Poller;
        polled.payload.clear();
        records.push(polled);
        let mut replica = record("other-4", 400);
        replica.origin = Some(Origin {
            node: "box-2".into(),
            stored_ms: 450,
        });
        records.push(replica);
        for r in &records {
            s.append(r, ttl).unwrap();
        }
        s.write_pending().unwrap();
        s.append(&record("ph-5", 500), ttl).unwrap();
        s.write_pending().unwrap();
        records.push(record("ph-5", 500));
        // One record alone under its seq: an entry of the layout before batches.
        let mut alone = record("alone-6", 600);
        alone.weight_milli = 70_000;
        s.open_tree(trees::EVENTS)
            .unwrap()
            .insert(6u64.to_be_bytes(), encode_event(&alone).unwrap())
            .unwrap();
        records.push(alone);

        let encoded = s.encoded_events_after(0, 10).unwrap();
        let decoded = s.events_after(0, 10).unwrap();
        assert_eq!(encoded.len(), 6);
        for ((seq, bytes), (r, (dseq, d))) in encoded.iter().zip(records.iter().zip(&decoded)) {
            assert_eq!(seq, dseq);
            assert_eq!(d, r);
            assert_eq!(&bytes[..], &encode_event(d).unwrap()[..], "seq {seq}");
            let id = own_event_id(bytes).unwrap();
            assert_eq!(id, r.origin.is_none().then_some(r.id.as_str()), "seq {seq}");
        }
        let seqs =
            |v: Vec<(u64, bytes::Bytes)>| -> Vec<u64> { v.into_iter().map(|(q, _)| q).collect() };
        assert_eq!(seqs(s.encoded_events_after(2, 2).unwrap()), [3, 4]);
        assert_eq!(seqs(s.encoded_events_after(3, 10).unwrap()), [4, 5, 6]);
        assert_eq!(seqs(s.encoded_events_after(4, 1).unwrap()), [5]);
        assert!(s.encoded_events_after(6, 10).unwrap().is_empty());
    }

    #[test]
    fn a_batch_is_one_entry_and_reads_back_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = 86_400_000;
        let s = Store::open(dir.path()).unwrap();
        for i in 1..=5 {
            s.append(&record(&format!("e{i}"), i * 100), ttl).unwrap();
        }
        assert_eq!(s.write_pending().unwrap(), 5);
        let events = s.open_tree(trees::EVENTS).unwrap();
        assert_eq!(events.len(), 1, "one entry for the batch");
        for i in 6..=8 {
            s.append(&record(&format!("e{i}"), i * 100), ttl).unwrap();
        }
        assert_eq!(s.write_pending().unwrap(), 3);
        assert_eq!(events.len(), 2);

        let ids =
            |v: Vec<(u64, EventRecord)>| -> Vec<u64> { v.into_iter().map(|(q, _)| q).collect() };
        assert_eq!(s.event(3).unwrap().unwrap().id, "e3");
        assert_eq!(s.event(6).unwrap().unwrap().id, "e6");
        assert_eq!(s.event(9).unwrap(), None);
        assert_eq!(ids(s.events_after(2, 2).unwrap()), [3, 4]);
        assert_eq!(
            ids(s.events_after(4, 10).unwrap()),
            [5, 6, 7, 8],
            "across entries"
        );
        assert_eq!(ids(s.events_after(8, 10).unwrap()), Vec::<u64>::new());
        assert_eq!(ids(s.recent_events(4).unwrap()), [8, 7, 6, 5]);
        let since: Vec<_> = s
            .events_since(450)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(since, ["e5", "e6", "e7", "e8"]);
        drop((s, events));

        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_seq(), 9);
        for i in 1..=8u64 {
            assert_eq!(
                s.commit_event(&record(&format!("e{i}"), 1000), ttl)
                    .unwrap(),
                Commit::Duplicate { seq: i },
                "e{i} is remembered after a restart"
            );
        }
    }

    #[test]
    fn a_long_queue_is_written_as_several_entries() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let n = 2 * MAX_BATCH as u64 + 7;
        for i in 0..n {
            s.append(&record(&format!("e{i}"), i), 86_400_000).unwrap();
        }
        assert_eq!(s.write_pending().unwrap(), n as usize);
        assert_eq!(s.open_tree(trees::EVENTS).unwrap().len(), 3);
        assert_eq!(s.events_after(0, usize::MAX).unwrap().len(), n as usize);
        drop(s);
        assert_eq!(Store::open(dir.path()).unwrap().next_seq(), n + 1);
    }

    #[test]
    fn a_restart_after_the_sweep_forgets_expired_ids_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = 1000;
        {
            let s = Store::open(dir.path()).unwrap();
            s.commit_event(&record("a", 0), ttl).unwrap();
            s.commit_event(&record("b", 900), ttl).unwrap();
            s.commit_event(&record("c", 950), ttl).unwrap();
            assert_eq!(s.sweep_dedup(1500, ttl).unwrap(), 1);
            let meta = s.open_tree(trees::META).unwrap();
            assert_eq!(
                meta.get(trees::META_DEDUP_FROM).unwrap().unwrap().as_ref(),
                &2u64.to_be_bytes(),
                "the lowest seq still remembered"
            );
            s.flush_durable(true).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.dedup_entry("a").unwrap(),
            None,
            "not read back from its event"
        );
        assert_eq!(s.dedup_entry("b").unwrap(), Some((900, 2)));
        assert_eq!(
            s.commit_event(&record("c", 1600), ttl).unwrap(),
            Commit::Duplicate { seq: 3 }
        );
        assert_eq!(
            s.commit_event(&record("a", 1600), ttl).unwrap(),
            Commit::Accepted { seq: 4 }
        );
    }

    #[test]
    fn stripping_payloads_stops_at_the_first_newer_event_inside_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for (i, at) in [100, 200, 300, 400].into_iter().enumerate() {
            s.append(&record(&format!("e{i}"), at), 86_400_000).unwrap();
        }
        s.write_pending().unwrap();
        assert_eq!(s.strip_payloads(0, 250).unwrap(), (2, 2));
        assert!(s.event(1).unwrap().unwrap().payload.is_empty());
        assert!(s.event(2).unwrap().unwrap().payload.is_empty());
        assert!(!s.event(3).unwrap().unwrap().payload.is_empty());
        assert_eq!(
            s.event(3).unwrap().unwrap().id,
            "e2",
            "the rest of the batch kept"
        );
        assert_eq!(
            s.strip_payloads(2, 250).unwrap(),
            (0, 2),
            "nothing more yet"
        );
        assert_eq!(s.strip_payloads(2, 1000).unwrap(), (2, 4));
        assert!(s.event(4).unwrap().unwrap().payload.is_empty());
    }

    /// stays held is refused with the hint, after the wait.
    #[test]
    fn open_waits_out_a_closing_owner_but_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let closer = std::thread::spawn(move || {
            rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        tx.send(()).unwrap();
        let second = Store::open(dir.path()).expect("opened once the first let go");
        closer.join().unwrap();
        let e = Store::open(dir.path()).err().expect("held by `second`");
        assert!(e.to_string().contains("another launchguard process"), "{e}");
        drop(second);
    }

    #[test]
    fn pin_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load_pin().unwrap(), None);
        let p = Pin {
            factor: 1.0,
            until_ms: 99,
        };
        s.save_pin(Some(p)).unwrap();
        assert_eq!(s.load_pin().unwrap(), Some(p));
        s.save_pin(None).unwrap();
        assert_eq!(s.load_pin().unwrap(), None);
    }
}
