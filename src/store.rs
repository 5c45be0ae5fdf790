//! The sled store: trees, key encodings, record versions, and the one write that
//! matters — an event and its dedup entry committed together.
//!
//! Trees (DESIGN.md, Storage):
//! - `events`: `u64` BE seq → `[version][bincode EventRecord]`
//! - `dedup`: event id → `[version][received ms u64 BE][seq u64 BE]`, swept after the TTL
//! - `meta`: `schema_version` → `u32` BE; `pin` → the operator's factor pin
//!
//! **Invariant:** an event and its dedup entry are written in one sled transaction, so
//! after any crash either both exist or neither does.
//! **Invariant:** seqs are dense and increasing: the next one is `events.last() + 1`,
//! never sled's `generate_id` (which jumps after a crash).
//! **Invariant:** a record or store written by a newer schema is refused, never misread.
//!
//! All methods here block (sled does I/O); async callers run `flush_durable` in
//! `spawn_blocking`. Inserts are in-memory until a flush and cost microseconds.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::factor::Pin;

/// The store layout this build writes. A store with a higher number is refused.
pub const SCHEMA_VERSION: u32 = 1;
const EVENT_RECORD_VERSION: u8 = 1;
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
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::ProductHunt => "producthunt",
            Scheme::StandardWebhooks => "standard-webhooks",
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
    next_seq: AtomicU64,
    /// Serializes dedup check + seq allocation + insert. Held for microseconds,
    /// never across an await.
    commit_lock: Mutex<()>,
}

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
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| StoreError::Open {
                dir: dir.to_path_buf(),
                detail: open_hint(&e),
            })?;
        let events = db.open_tree("events")?;
        let dedup = db.open_tree("dedup")?;
        let meta = db.open_tree("meta")?;

        match meta.get("schema_version")? {
            Some(v) => {
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
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
        }

        let next_seq = match events.last()? {
            Some((k, _)) => decode_seq(&k)? + 1,
            None => 1,
        };
        let db_file = File::open(dir.join("db")).map_err(|e| StoreError::Open {
            dir: dir.to_path_buf(),
            detail: format!("cannot open the data file for fsync: {e}"),
        })?;
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db,
                events,
                dedup,
                meta,
                db_file,
                next_seq: AtomicU64::new(next_seq),
                commit_lock: Mutex::new(()),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Commits `record` unless its id was seen less than `dedup_ttl_ms` ago.
    /// The write is in memory until the next flush.
    pub fn commit_event(
        &self,
        record: &EventRecord,
        dedup_ttl_ms: u64,
    ) -> Result<Commit, StoreError> {
        let encoded = encode_event(record)?;
        let inner = &*self.inner;
        let _serial = inner.commit_lock.lock();
        let seq = inner.next_seq.load(Ordering::Acquire);
        let dedup_value = encode_dedup(record.received_ms, seq);
        let outcome = (&inner.events, &inner.dedup).transaction(|(events, dedup)| {
            if let Some(existing) = dedup.get(record.id.as_bytes())? {
                let (seen_ms, seen_seq) =
                    decode_dedup(&existing).map_err(ConflictableTransactionError::Abort)?;
                if record.received_ms.saturating_sub(seen_ms) < dedup_ttl_ms {
                    return Ok(Commit::Duplicate { seq: seen_seq });
                }
            }
            events.insert(&seq.to_be_bytes(), encoded.as_slice())?;
            dedup.insert(record.id.as_bytes(), dedup_value.as_slice())?;
            Ok(Commit::Accepted { seq })
        });
        let outcome = outcome.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })?;
        if let Commit::Accepted { .. } = outcome {
            inner.next_seq.store(seq + 1, Ordering::Release);
        }
        Ok(outcome)
    }

    /// Writes everything pending to the log; with `fsync`, also forces the data file
    /// to the disk (sled's flush alone is `sync_file_range`, which survives a process
    /// crash but not a power cut). Blocks: call from `spawn_blocking`.
    pub fn flush_durable(&self, fsync: bool) -> Result<(), StoreError> {
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

    pub fn event(&self, seq: u64) -> Result<Option<EventRecord>, StoreError> {
        self.inner
            .events
            .get(seq.to_be_bytes())?
            .map(|v| decode_event(&v))
            .transpose()
    }

    /// Up to `limit` events with seq greater than `after`, oldest first.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.inner
            .events
            .range(start..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((decode_seq(&k)?, decode_event(&v)?))
            })
            .collect()
    }

    /// The newest `limit` events, newest first.
    pub fn recent_events(&self, limit: usize) -> Result<Vec<(u64, EventRecord)>, StoreError> {
        self.inner
            .events
            .iter()
            .rev()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((decode_seq(&k)?, decode_event(&v)?))
            })
            .collect()
    }

    /// Events received at or after `since_ms`, oldest first: what the velocity
    /// window is rebuilt from at startup. Walks back from the newest event.
    pub fn events_since(&self, since_ms: u64) -> Result<Vec<EventRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.events.iter().rev() {
            let (_, v) = kv?;
            let record = decode_event(&v)?;
            if record.received_ms < since_ms {
                break;
            }
            out.push(record);
        }
        out.reverse();
        Ok(out)
    }

    /// The dedup entry for `id`: (received ms, seq).
    pub fn dedup_entry(&self, id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        self.inner
            .dedup
            .get(id.as_bytes())?
            .map(|v| decode_dedup(&v))
            .transpose()
    }

    /// Removes dedup entries older than `ttl_ms` at `now_ms`. An entry rewritten
    /// meanwhile is left alone (compare-and-swap). Returns how many were removed.
    pub fn sweep_dedup(&self, now_ms: u64, ttl_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kv in self.inner.dedup.iter() {
            let (k, v) = kv?;
            let (seen_ms, _) = decode_dedup(&v)?;
            if now_ms.saturating_sub(seen_ms) >= ttl_ms
                && self
                    .inner
                    .dedup
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
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

fn open_hint(e: &sled::Error) -> String {
    let text = e.to_string();
    if text.contains("lock")
        || text.contains("WouldBlock")
        || text.contains("Resource temporarily unavailable")
    {
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

pub fn encode_event(record: &EventRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64 + record.payload.len());
    out.push(EVENT_RECORD_VERSION);
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
