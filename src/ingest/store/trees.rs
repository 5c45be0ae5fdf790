//! Every sled tree and every `meta` key the crate uses, in one list. A name here is a
//! name on disk: renaming one makes a store written under the old name look empty.
//! The module named on each line owns the tree or key and documents its values.

/// `u64` BE seq → a batch entry of event records, or one record (`ingest::store`).
pub const EVENTS: &str = "events";
/// Schema 1's event id → dedup record; read, repaired and swept, not written by new
/// stores (`ingest::store::legacy`).
pub const DEDUP: &str = "dedup";
/// `u64` BE seq → nothing: own events the cluster already had, not counted as
/// accepted (`ingest::store`).
pub const NOT_COUNTED: &str = "not_counted";
/// Single values of the whole store, under the `META_*` keys below.
pub const META: &str = "meta";
/// Window start ms (`u64` BE) → one flush of the counters (`insight::history`).
pub const METRICS: &str = "metrics";
/// Launch day `YYYY-MM-DD` → the day's running totals (`insight::history`).
pub const LAUNCHES: &str = "launches";
/// Window start ms (`u64` BE) then a node id → a batch another node of the cluster
/// flushed (`insight::history`).
pub const PEER_METRICS: &str = "peer_metrics";
/// `YYYY-MM-DD NUL node` → that node's running totals of the day (`insight::history`).
pub const PEER_LAUNCHES: &str = "peer_launches";
/// `day NUL v|c|g:<goal> NUL id` → a visitor's once-a-day mark (`insight::visitor`).
pub const VISITORS: &str = "visitors";
/// A visitor mark's key → nothing: a count the cluster must decide on, kept until
/// claimed (`insight::history`, `ops::cluster::claims`).
pub const CLAIMS: &str = "cluster_claims";
/// Post slug → the counts the poller last recorded (`ingest::producthunt`).
pub const PRODUCTHUNT: &str = "producthunt";
/// `u64` BE id → an outbound job waiting to be sent (`ops::outbound`).
pub const OUTBOUND: &str = "outbound";
/// `u64` BE id → an outbound job given up on (`ops::outbound`).
pub const DEADLETTER: &str = "deadletter";

/// `meta`: the store layout (`u32` BE); a newer one is refused (`ingest::store`).
pub const META_SCHEMA_VERSION: &str = "schema_version";
/// `meta`: the operator's factor pin (`ingest::store`).
pub const META_PIN: &str = "pin";
/// `meta`: the first seq written as a batch entry (`u64` BE, set once); the ids of
/// events before it are in `dedup` (`ingest::store`).
pub const META_BATCHES_FROM: &str = "batches_from";
/// `meta`: the lowest seq whose id the dedup index may still need (`u64` BE, moved
/// up by the sweep) (`ingest::store`).
pub const META_DEDUP_FROM: &str = "dedup_from";
/// `meta`: schema 1's repair mark, the highest seq whose dedup entry is written
/// (`u64` BE) (`ingest::store::legacy`).
pub const META_DEDUP_THROUGH: &str = "dedup_through";
/// `meta`: the highest event seq payload retention has looked at (`insight::history`).
pub const META_PAYLOAD_SWEEP_SEQ: &str = "payload_sweep_seq";
/// `meta`: the key that signs visitor cookies (`insight::visitor`).
pub const META_VISITOR_KEY: &str = "visitor_key";
/// `meta`: the key that signs waiting-room cookies (`edge::waiting`).
pub const META_WAITING_ROOM_KEY: &str = "waiting_room_key";
/// `meta`: keys that signed visitor cookies before the cluster's was adopted while
/// running, still verified (`ingest::store::keyring`).
pub const META_VISITOR_KEY_RETIRED: &str = "visitor_key_retired";
/// `meta`: the same for the waiting room's key.
pub const META_WAITING_ROOM_KEY_RETIRED: &str = "waiting_room_key_retired";

/// The `meta` key of the keys retired from signing under `name`.
pub fn retired(name: &str) -> &'static str {
    match name {
        META_WAITING_ROOM_KEY => META_WAITING_ROOM_KEY_RETIRED,
        _ => META_VISITOR_KEY_RETIRED,
    }
}
/// `meta`: the highest event seq the cluster's outbox has had acknowledged by
/// JetStream (`u64` BE, `[1][u64]`) (`ops::cluster`).
pub const META_CLUSTER_PUBLISHED: &str = "cluster_published";
/// `meta`: the window start of the last own metrics batch the cluster's outbox has had
/// acknowledged by JetStream (`u64` BE, `[1][u64]`) (`ops::cluster`).
pub const META_CLUSTER_METRICS_PUBLISHED: &str = "cluster_metrics_published";
/// `meta`: the first event seq the counter flusher has not counted as accepted yet
/// (`u64` BE, `[1][u64]`) (`insight::history`).
pub const META_COUNTED_FROM: &str = "counted_from";
/// `meta`: the server time (Unix ms) of the last event message the cluster's
/// consumer stored (`ops::cluster`).
pub const META_CLUSTER_CONSUMED_MS: &str = "cluster_consumed_ms";
/// `meta`: the server time (Unix ms) of the last metrics row the cluster's consumer
/// stored (`ops::cluster`).
pub const META_CLUSTER_METRICS_CONSUMED_MS: &str = "cluster_metrics_consumed_ms";
