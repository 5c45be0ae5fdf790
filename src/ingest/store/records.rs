//! The store's record encodings: the event record, the `events` batch entry, the
//! legacy dedup record and the pin, each behind a version byte (`codec.rs` frames all but the batch).
//!
//! - Event record: `[version][bincode EventRecord]`; version 1 for webhooks (what
//!   builds before the poller read), 2 for the poller's events; version 4 for an
//!   event another node of the cluster accepted: `[4][bincode (node, stored ms,
//!   EventRecord)]` (`Origin`).
//! - Batch entry (an `events` value): `[3][count u32 BE]` then per event
//!   `[len u32 BE][event record]`, holding seqs `key`, `key + 1`, ...; any other first
//!   byte is one event record (stores written before schema 2).
//! - Dedup record (`dedup` tree, schema 1): `[1][received ms u64 BE][seq u64 BE]`.
//! - Pin (`meta.pin`): `[1][factor f64 bits BE][until ms u64 BE]`.
//!
//! **Invariant:** a record written by a newer version is refused, never misread.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{codec, StoreError, MAX_BATCH};
use crate::ingest::factor::Pin;

const EVENT_RECORD_VERSION: u8 = 2;
/// An event replicated from another node (`Origin`). Not 3, the batch entry's byte.
const REPLICA_RECORD_VERSION: u8 = 4;
/// The first byte of an `events` entry holding a batch.
const EVENT_BATCH_VERSION: u8 = 3;
const DEDUP_RECORD_VERSION: u8 = 1;
const PIN_RECORD_VERSION: u8 = 1;

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
    #[serde(with = "payload_bytes")]
    pub payload: Vec<u8>,
    /// `Some` for an event another node of the cluster accepted (stored as record
    /// version 4, which carries it); `None` for this node's own. Not part of the
    /// bincode body (skipped both ways).
    #[serde(skip)]
    pub origin: Option<Origin>,
}

/// The payload through serde as one byte string, not as a sequence of `u8`s taken
/// one by one. In bincode (`config::standard()`) the two are the same bytes, a varint
/// length then the bytes, so the records stored before read as they did and are
/// written as they were (`an_event_record_is_these_bytes`); a sequence is still read
/// (for any other format).
mod payload_bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// Where a replicated event came from, and when this node stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The node that accepted it (`cluster.node_id`).
    pub node: String,
    /// This node's clock when it stored the copy, Unix ms: the store's walk back in
    /// time (`events_since`) goes by it, since a copy may arrive long after the event.
    pub stored_ms: u64,
}

impl EventRecord {
    /// When this node stored the event: its receive time for its own events, the
    /// copy's time for a replica.
    pub fn stored_ms(&self) -> u64 {
        self.origin
            .as_ref()
            .map_or(self.received_ms, |o| o.stored_ms)
    }
}

pub(super) fn decode_seq(k: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(k.try_into().map_err(|_| {
        StoreError::Corrupt {
            what: "events key",
            detail: format!("{} bytes, expected 8", k.len()),
        }
    })?))
}

/// The events of one `events` entry with their seqs: a batch, or one record.
pub(super) fn decode_entry(k: &[u8], v: &[u8]) -> Result<Vec<(u64, EventRecord)>, StoreError> {
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

/// How many of an `events` entry's events were accepted by this node (not replicas
/// of another node's), read off their version bytes without decoding them.
pub(super) fn own_in_entry(k: &[u8], v: &[u8], from: u64) -> Result<(u64, u64), StoreError> {
    let first = decode_seq(k)?;
    if v.first() != Some(&EVENT_BATCH_VERSION) {
        let own = u64::from(first >= from && v.first() != Some(&REPLICA_RECORD_VERSION));
        return Ok((own, first + 1));
    }
    let records = batch_records(v)?;
    let own = records
        .iter()
        .zip(first..)
        .filter(|(r, seq)| *seq >= from && r.first() != Some(&REPLICA_RECORD_VERSION))
        .count() as u64;
    Ok((own, first + records.len() as u64))
}

/// How many events an `events` entry holds.
pub(super) fn entry_len(v: &[u8]) -> Result<u64, StoreError> {
    if v.first() != Some(&EVENT_BATCH_VERSION) {
        return Ok(1);
    }
    Ok(batch_records(v)?.len() as u64)
}

/// Encodes a batch entry from encoded event records.
pub(super) fn encode_batch<'a>(records: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
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
pub(super) fn batch_records(v: &[u8]) -> Result<Vec<&[u8]>, StoreError> {
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

/// The encoded event records of one `events` entry with their seqs, each a slice of
/// the entry as sled gave it (`Bytes::from_owner`: no copy), for the cluster's
/// outbox, which publishes a record's bytes as they are stored.
pub(super) fn entry_encoded(k: &[u8], v: sled::IVec) -> Result<Vec<(u64, Bytes)>, StoreError> {
    let first = decode_seq(k)?;
    if !is_batch(&v) {
        return Ok(vec![(first, Bytes::from_owner(v))]);
    }
    let whole = Bytes::from_owner(v);
    Ok(batch_records(&whole)?
        .into_iter()
        .zip(first..)
        .map(|(record, seq)| (seq, whole.slice_ref(record)))
        .collect())
}

/// What the outbox reads of an encoded event record without decoding the rest:
/// `None` for a replica of another node's event (record version 4), else the
/// event's id, borrowed from the bytes (it is the first field of the bincode body).
/// A record this build cannot read is refused as `decode_event` refuses it.
pub fn own_event_id(v: &[u8]) -> Result<Option<&str>, StoreError> {
    if codec::check_version("event", v, REPLICA_RECORD_VERSION)? == REPLICA_RECORD_VERSION {
        return Ok(None);
    }
    codec::check_version("event", v, EVENT_RECORD_VERSION)?;
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        id: &'a str,
    }
    let (head, _) =
        bincode::serde::borrow_decode_from_slice::<Head, _>(&v[1..], bincode::config::standard())
            .map_err(|e| StoreError::Corrupt {
            what: "event",
            detail: e.to_string(),
        })?;
    Ok(Some(head.id))
}

pub fn encode_event(record: &EventRecord) -> Result<Vec<u8>, StoreError> {
    if let Some(origin) = &record.origin {
        return codec::encode_with_capacity(
            "event",
            REPLICA_RECORD_VERSION,
            &(&origin.node, origin.stored_ms, record),
            96 + record.payload.len(),
        );
    }
    // Version 1 for webhook records (what older builds read), 2 for the poller's.
    let version = if record.scheme == Scheme::Poller {
        EVENT_RECORD_VERSION
    } else {
        1
    };
    codec::encode_with_capacity("event", version, record, 64 + record.payload.len())
}

pub fn decode_event(v: &[u8]) -> Result<EventRecord, StoreError> {
    if codec::check_version("event", v, REPLICA_RECORD_VERSION)? == REPLICA_RECORD_VERSION {
        let (node, stored_ms, mut record): (String, u64, EventRecord) =
            codec::decode("event", REPLICA_RECORD_VERSION, v)?;
        record.origin = Some(Origin { node, stored_ms });
        return Ok(record);
    }
    codec::decode("event", EVENT_RECORD_VERSION, v)
}

pub(super) fn encode_dedup(received_ms: u64, seq: u64) -> Vec<u8> {
    codec::encode_words(DEDUP_RECORD_VERSION, [received_ms, seq])
}

pub(super) fn decode_dedup(v: &[u8]) -> Result<(u64, u64), StoreError> {
    let [received_ms, seq] = codec::decode_words("dedup", DEDUP_RECORD_VERSION, v)?;
    Ok((received_ms, seq))
}

/// Whether an `events` value is a batch entry (else one record of the old layout).
pub(super) fn is_batch(v: &[u8]) -> bool {
    v.first() == Some(&EVENT_BATCH_VERSION)
}

pub(super) fn encode_pin(pin: Pin) -> Vec<u8> {
    codec::encode_words(PIN_RECORD_VERSION, [pin.factor.to_bits(), pin.until_ms])
}

pub(super) fn decode_pin(v: &[u8]) -> Result<Pin, StoreError> {
    let [factor, until_ms] = codec::decode_words("meta.pin", PIN_RECORD_VERSION, v)?;
    Ok(Pin {
        factor: f64::from_bits(factor),
        until_ms,
    })
}

/// An event record for tests.
#[cfg(test)]
pub(super) fn sample(id: &str, at: u64) -> EventRecord {
    EventRecord {
        id: id.into(),
        event_type: "upvote".into(),
        weight_milli: 1200,
        received_ms: at,
        scheme: Scheme::ProductHunt,
        payload: br#"{"id":"x"}"#.to_vec(),
        origin: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_record_round_trips() {
        let r = sample("evt-1", 42);
        assert_eq!(decode_event(&encode_event(&r).unwrap()).unwrap(), r);
    }

    /// The bytes of an event record, pinned: they are the store's durable data and,
    /// as stored, the payload of the cluster's messages.
    #[test]
    fn an_event_record_is_these_bytes() {
        let mut want = vec![1, 5];
        want.extend_from_slice(b"evt-1");
        want.push(6);
        want.extend_from_slice(b"upvote");
        // weight 1200 (a varint: 251, then u16 LE), received 42, scheme 0, payload.
        want.extend_from_slice(&[251, 0xb0, 0x04, 42, 0, 10]);
        want.extend_from_slice(br#"{"id":"x"}"#);
        assert_eq!(encode_event(&sample("evt-1", 42)).unwrap(), want);
        assert_eq!(decode_event(&want).unwrap(), sample("evt-1", 42));
        assert_eq!(own_event_id(&want).unwrap(), Some("evt-1"));
        let mut newer = want.clone();
        newer[0] = EVENT_RECORD_VERSION + 1;
        assert!(matches!(
            own_event_id(&newer),
            Err(StoreError::NewerRecord { .. })
        ));
        assert!(matches!(
            own_event_id(&want[..4]),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// The payload's serde (`payload_bytes`) against the derive before it (a plain
    /// `Vec<u8>`, a sequence of `u8`s), on payloads around bincode's varint steps:
    /// the same bytes written, and each build's bytes read by the other.
    #[test]
    fn the_payload_as_bytes_is_encoded_as_the_sequence_was() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Before {
            id: String,
            event_type: String,
            weight_milli: u64,
            received_ms: u64,
            scheme: Scheme,
            payload: Vec<u8>,
        }
        for len in [0usize, 1, 250, 251, 252, 300, 65_535, 65_536, 70_000] {
            let mut r = sample("evt-len", 7);
            r.scheme = Scheme::StandardWebhooks;
            r.payload = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let before = Before {
                id: r.id.clone(),
                event_type: r.event_type.clone(),
                weight_milli: r.weight_milli,
                received_ms: r.received_ms,
                scheme: r.scheme,
                payload: r.payload.clone(),
            };
            let old = codec::encode("event", 1, &before).unwrap();
            let new = encode_event(&r).unwrap();
            assert_eq!(new, old, "payload of {len} bytes");
            assert_eq!(decode_event(&old).unwrap(), r);
            let back: Before = codec::decode("event", 1, &new).unwrap();
            assert_eq!(back, before);
            let origin = Origin {
                node: "box-2".into(),
                stored_ms: 9,
            };
            let old_replica = codec::encode(
                "event",
                REPLICA_RECORD_VERSION,
                &(&origin.node, 9u64, &before),
            )
            .unwrap();
            r.origin = Some(origin);
            assert_eq!(encode_event(&r).unwrap(), old_replica);
            assert_eq!(decode_event(&old_replica).unwrap(), r);
        }
    }

    #[test]
    fn a_replica_round_trips_with_its_origin() {
        let mut r = sample("evt-2", 42);
        r.origin = Some(Origin {
            node: "box-2".into(),
            stored_ms: 99,
        });
        let bytes = encode_event(&r).unwrap();
        assert_eq!(bytes[0], REPLICA_RECORD_VERSION);
        let back = decode_event(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.stored_ms(), 99);
        assert_eq!(sample("evt-3", 42).stored_ms(), 42);
    }

    #[test]
    fn newer_record_version_is_refused() {
        let mut bytes = encode_event(&sample("a", 1)).unwrap();
        bytes[0] = EVENT_RECORD_VERSION + 1;
        assert!(matches!(
            decode_event(&bytes),
            Err(StoreError::NewerRecord { .. })
        ));
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
}
