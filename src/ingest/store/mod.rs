//! The sled store: trees, key encodings, record versions, and the write path of
//! events — an in-memory append on the request path, written to sled in batches.
//!
//! Trees (DESIGN.md, Storage):
//! - `events`: `u64` BE seq → an entry: a committer batch, `[3][count u32 BE]` then per
//!   event `[len u32 BE][event record]`, holding seqs `key`, `key + 1`, ...; or (stores
//!   written before schema 2) one event record per key. An event record is
//!   `[version][bincode EventRecord]`.
//! - `dedup`: event id → `[version][received ms u64 BE][seq u64 BE]`, written only by
//!   builds before schema 2; still loaded at open and swept after the TTL.
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
use serde::{Deserialize, Serialize};

use crate::ingest::factor::Pin;

/// The store layout this build writes. A store with a higher number is refused.
pub const SCHEMA_VERSION: u32 = 2;
const EVENT_RECORD_VERSION: u8 = 2;
/// The first byte of an `events` entry holding a batch.
const EVENT_BATCH_VERSION: u8 = 3;
/// Most events in one `events` entry: a committer that fell behind writes several.
const MAX_BATCH: usize = 256;
const DEDUP_RECORD_VERSION: u8 = 1;
const PIN_RECORD_VERSION: u8 = 1;

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

/// How an event arrived, kept with it for audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheme {
    /// `X-ProductHunt-Signature: sha256=<hex>` over the raw body.
    ProductHunt,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// Not a webhook: made by the Product Hunt poller from count deltas. Such records
    /// are written as event record version 2, so an older build refuses them.
    Poller,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::ProductHunt => "producthunt",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Poller => "producthunt-api",
        }
    }
}

/// One stored event. The raw payload is kept as bytes (bincode cannot decode
/// `serde_json::Value`), exactly as it was signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: String,
    pub event_type: String,
    /// Velocity weight at receive time, thousandths.
    pub weight_milli: u64,
    /// Server clock at receipt, Unix ms.
    pub received_ms: u64,
    pub scheme: Scheme,
    pub payload: Vec<u8>,
}

/// The result of committing an event.
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
/// `meta` key (schema 1): the highest seq whose dedup entry is written (u64 BE).
const DEDUP_THROUGH_KEY: &str = "dedup_through";
/// `meta` key: the first seq written as a batch entry; the ids of events before it are
/// in the `dedup` tree (u64 BE).
const BATCHES_FROM_KEY: &str = "batches_from";
/// `meta` key: the lowest seq whose id the dedup index may still need (u64 BE).
const DEDUP_FROM_KEY: &str = "dedup_from";

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

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
        let events = db.open_tree("events")?;
        let dedup = db.open_tree("dedup")?;
        let meta = db.open_tree("meta")?;

        if let Some(v) = meta.get("schema_version")? {
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
        let batches_from = match meta.get(BATCHES_FROM_KEY)? {
            Some(v) => decode_seq(&v)?,
            None => {
                // First open by a build that writes batches: everything before is the
                // old layout, with its ids in the `dedup` tree.
                meta.insert(BATCHES_FROM_KEY, &next_seq.to_be_bytes())?;
                next_seq
            }
        };
        meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        db.flush()?;
        let db_file = File::open(dir.join("db")).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            detail: format!("cannot open the data file for fsync: {e}"),
        })?;
        let mut seen = repair_and_load_dedup(&events, &dedup, &meta, batches_from)?;
        let dedup_from = match meta.get(DEDUP_FROM_KEY)? {
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

    /// The newest `limit` events, newest first.
    pub fn recent_events(&self, limit: usize) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        records_newest_first(&self.inner.events)
            .take(limit)
            .collect()
    }

    /// Events received at or after `since_ms`, oldest first: what the velocity
    /// window is rebuilt from at startup. Walks back from the newest event.
    pub fn events_since(&self, since_ms: u64) -> Result<Vec<EventRecord>, StoreError> {
        let mut out = records_newest_first(&self.inner.events)
            .map(|stored| stored.map(|(_, record)| record))
            .take_while(|stored| !matches!(stored, Ok(r) if r.received_ms < since_ms))
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
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
                let new = if v.first() == Some(&EVENT_BATCH_VERSION) {
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
        for kv in inner.dedup.iter() {
            let (k, v) = kv?;
            let (seen_ms, _) = decode_dedup(&v)?;
            if now_ms.saturating_sub(seen_ms) >= ttl_ms {
                let _ = inner
                    .dedup
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?;
            }
        }
        let current = match inner.meta.get(DEDUP_FROM_KEY)? {
            Some(v) => decode_seq(&v)?,
            None => 0,
        };
        if lowest > current {
            inner.meta.insert(DEDUP_FROM_KEY, &lowest.to_be_bytes())?;
        }
        Ok(forgotten)
    }

    /// The operator's persisted factor pin, if any.
    pub fn load_pin(&self) -> Result<Option<Pin>, StoreError> {
        let Some(v) = self.inner.meta.get("pin")? else {
            return Ok(None);
        };
        let v = v.as_ref();
        check_version("meta.pin", v.first().copied(), PIN_RECORD_VERSION)?;
        if v.len() != 17 {
            return Err(StoreError::Corrupt {
                what: "meta.pin",
                detail: format!("{} bytes, expected 17", v.len()),
            });
        }
        Ok(Some(Pin {
            factor: f64::from_bits(u64::from_be_bytes(v[1..9].try_into().expect("8 bytes"))),
            until_ms: u64::from_be_bytes(v[9..17].try_into().expect("8 bytes")),
        }))
    }

    /// Persists (or with `None`, clears) the factor pin, durably.
    pub fn save_pin(&self, pin: Option<Pin>) -> Result<(), StoreError> {
        match pin {
            Some(p) => {
                let mut v = Vec::with_capacity(17);
                v.push(PIN_RECORD_VERSION);
                v.extend_from_slice(&p.factor.to_bits().to_be_bytes());
                v.extend_from_slice(&p.until_ms.to_be_bytes());
                self.inner.meta.insert("pin", v)?;
            }
            None => {
                self.inner.meta.remove("pin")?;
            }
        }
        self.flush_durable(true)
    }

    /// Another tree of the same database: `history.rs` keeps `metrics` and `launches`
    /// this way, beside the trees this module owns.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.db.open_tree(name)?)
    }

    /// Space sled uses on disk, bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }
}

fn shard_of(hasher: &RandomState, id: &str) -> usize {
    (hasher.hash_one(id) as usize) % SEEN_SHARDS
}

/// Loads the legacy `dedup` tree, after repairing what a crash in the middle of a
/// schema 1 batch can leave among the events before `batches_from`. Such a batch wrote
/// its events, then their dedup entries, then `meta.dedup_through` (the highest seq
/// whose entry is written). So only events above that mark can lack their entry
/// (re-created here from the event), and only entries above it can lack their event,
/// should the log keep a later write and lose an earlier one (dropped here: such an
/// event was never acknowledged).
fn repair_and_load_dedup(
    events: &sled::Tree,
    dedup: &sled::Tree,
    meta: &sled::Tree,
    batches_from: u64,
) -> Result<SeenShard, StoreError> {
    let through = match meta.get(DEDUP_THROUGH_KEY)? {
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
        meta.insert(DEDUP_THROUGH_KEY, &last.to_be_bytes())?;
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

fn check_version(what: &'static str, found: Option<u8>, max: u8) -> Result<(), StoreError> {
    match found {
        None => Err(StoreError::Corrupt {
            what,
            detail: "empty record".into(),
        }),
        Some(found) if found > max => Err(StoreError::NewerRecord { what, found, max }),
        Some(0) => Err(StoreError::Corrupt {
            what,
            detail: "version 0".into(),
        }),
        Some(_) => Ok(()),
    }
}

fn decode_seq(k: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(k.try_into().map_err(|_| {
        StoreError::Corrupt {
            what: "events key",
            detail: format!("{} bytes, expected 8", k.len()),
        }
    })?))
}

/// The `events` entries that can hold `seq` or later ones: the entry at or before
/// `seq` (a batch may hold it), then every later entry.
fn entries_from(
    events: &sled::Tree,
    seq: u64,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
    let at = seq.to_be_bytes();
    events
        .range(..=at)
        .next_back()
        .into_iter()
        .chain(events.range((std::ops::Bound::Excluded(at), std::ops::Bound::Unbounded)))
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

/// The events of one `events` entry with their seqs: a batch, or one record.
fn decode_entry(k: &[u8], v: &[u8]) -> Result<Vec<(u64, EventRecord)>, StoreError> {
    let first = decode_seq(k)?;
    if v.first() != Some(&EVENT_BATCH_VERSION) {
        return Ok(vec![(first, decode_event(v)?)]);
    }
    batch_records(v)?
        .into_iter()
        .zip(first..)
        .map(|(bytes, seq)| Ok((seq, decode_event(bytes)?)))
        .collect()
}

/// How many events an `events` entry holds.
fn entry_len(v: &[u8]) -> Result<u64, StoreError> {
    if v.first() != Some(&EVENT_BATCH_VERSION) {
        return Ok(1);
    }
    Ok(batch_records(v)?.len() as u64)
}

/// Encodes a batch entry from encoded event records.
fn encode_batch<'a>(records: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + records.len() * 320);
    out.push(EVENT_BATCH_VERSION);
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// The encoded event records of a batch entry.
fn batch_records(v: &[u8]) -> Result<Vec<&[u8]>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: "event batch",
        detail,
    };
    let u32_at = |at: usize| {
        v.get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let count = u32_at(1).ok_or_else(|| corrupt("shorter than its header".into()))?;
    let mut out = Vec::with_capacity(count.min(MAX_BATCH));
    let mut at = 5;
    for i in 0..count {
        let record = u32_at(at)
            .and_then(|len| v.get(at + 4..at + 4 + len))
            .ok_or_else(|| corrupt(format!("event {} of {count} is cut short", i + 1)))?;
        at += 4 + record.len();
        out.push(record);
    }
    if at != v.len() {
        return Err(corrupt(format!(
            "{} bytes after the last event",
            v.len() - at
        )));
    }
    Ok(out)
}

pub fn encode_event(record: &EventRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64 + record.payload.len());
    // Version 1 for webhook records (what older builds read), 2 for the poller's.
    out.push(if record.scheme == Scheme::Poller {
        EVENT_RECORD_VERSION
    } else {
        1
    });
    bincode::serde::encode_into_std_write(record, &mut out, bincode_config()).map_err(|e| {
        StoreError::Corrupt {
            what: "event",
            detail: e.to_string(),
        }
    })?;
    Ok(out)
}

pub fn decode_event(v: &[u8]) -> Result<EventRecord, StoreError> {
    check_version("event", v.first().copied(), EVENT_RECORD_VERSION)?;
    let (record, _) =
        bincode::serde::decode_from_slice(&v[1..], bincode_config()).map_err(|e| {
            StoreError::Corrupt {
                what: "event",
                detail: e.to_string(),
            }
        })?;
    Ok(record)
}

fn encode_dedup(received_ms: u64, seq: u64) -> [u8; 17] {
    let mut v = [0u8; 17];
    v[0] = DEDUP_RECORD_VERSION;
    v[1..9].copy_from_slice(&received_ms.to_be_bytes());
    v[9..17].copy_from_slice(&seq.to_be_bytes());
    v
}

fn decode_dedup(v: &[u8]) -> Result<(u64, u64), StoreError> {
    check_version("dedup", v.first().copied(), DEDUP_RECORD_VERSION)?;
    if v.len() != 17 {
        return Err(StoreError::Corrupt {
            what: "dedup",
            detail: format!("{} bytes, expected 17", v.len()),
        });
    }
    Ok((
        u64::from_be_bytes(v[1..9].try_into().expect("8 bytes")),
        u64::from_be_bytes(v[9..17].try_into().expect("8 bytes")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, at: u64) -> EventRecord {
        EventRecord {
            id: id.into(),
            event_type: "upvote".into(),
            weight_milli: 1200,
            received_ms: at,
            scheme: Scheme::ProductHunt,
            payload: br#"{"id":"x"}"#.to_vec(),
        }
    }

    #[test]
    fn event_record_round_trips() {
        let r = record("evt-1", 42);
        assert_eq!(decode_event(&encode_event(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn newer_record_version_is_refused() {
        let mut bytes = encode_event(&record("a", 1)).unwrap();
        bytes[0] = EVENT_RECORD_VERSION + 1;
        assert!(matches!(
            decode_event(&bytes),
            Err(StoreError::NewerRecord { .. })
        ));
    }

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
            db.open_tree("meta")
                .unwrap()
                .insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
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
            let meta = db.open_tree("meta").unwrap();
            meta.insert("schema_version", &1u32.to_be_bytes()).unwrap();
            meta.insert(DEDUP_THROUGH_KEY, &1u64.to_be_bytes()).unwrap();
            let events = db.open_tree("events").unwrap();
            let dedup = db.open_tree("dedup").unwrap();
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
        let meta = s.open_tree("meta").unwrap();
        let version = meta.get("schema_version").unwrap().unwrap();
        assert_eq!(version.as_ref(), &SCHEMA_VERSION.to_be_bytes());
        assert_eq!(
            meta.get(BATCHES_FROM_KEY).unwrap().unwrap().as_ref(),
            &4u64.to_be_bytes()
        );
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
        let events = s.open_tree("events").unwrap();
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
        assert_eq!(s.open_tree("events").unwrap().len(), 3);
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
            let meta = s.open_tree("meta").unwrap();
            assert_eq!(
                meta.get(DEDUP_FROM_KEY).unwrap().unwrap().as_ref(),
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

    #[test]
    fn a_cut_batch_entry_is_named_corrupt() {
        let mut v = encode_batch([b"\x01abc".as_slice(), b"\x01de"].into_iter());
        assert_eq!(batch_records(&v).unwrap().len(), 2);
        v.truncate(v.len() - 1);
        let e = decode_entry(&1u64.to_be_bytes(), &v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("event batch") && e.contains("event 2 of 2"),
            "{e}"
        );
    }

    /// A restart right after a stop waits for the closing owner's lock; a store that
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
