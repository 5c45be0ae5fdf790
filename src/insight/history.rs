//! Launch history in the store: the `metrics` and `launches` trees, and retention.
//!
//! Trees (DESIGN.md, Storage), beside the ones `ingest::store` owns (every name is in
//! `ingest/store/trees.rs`):
//! - `metrics`: window start ms as `u64` BE → `[version][bincode MetricsBatch]`, one row
//!   per flush of the counters; swept after `conversions.retention_days`.
//! - `launches`: launch day `"YYYY-MM-DD"` (in `conversions.timezone`) →
//!   `[version][bincode DayTotals]`, the running totals of that day; kept forever.
//!
//! - `peer_metrics`: window start ms `u64` BE, then the node id → a batch another node
//!   of the cluster flushed (`ops::cluster::numbers` stores them); `peer_launches`:
//!   `"YYYY-MM-DD" NUL node` → that node's totals of the day. Empty on one box.
//!
//! What the reports read (`day`, `days`, `batches`) is the cluster's: this node's rows
//! and totals plus every other node's, batches merged into `CLUSTER_BUCKET_MS` slots
//! when other nodes' rows are in range; `own_*` and `node_days` read one side.
//!
//! **Invariant:** a batch row and its day's totals are written in one sled transaction,
//! so the totals always equal the sum of the day's batches (until retention removes
//! batches; the totals stay).
//! **Invariant:** two batches that share a window start are merged, never overwritten.
//! **Invariant:** a record written by a newer version is refused, never misread.
//!
//! Retention also strips the raw payload of events older than `webhook.retention_days`
//! (the event itself stays: seqs remain dense, and id, type, weight and time remain).
//! Every method blocks on sled; async callers use `spawn_blocking`.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::ingest::store::{codec, trees, Store, StoreError};

/// Version 2 added unique and converting visitors to the tally. Version 1 records are
/// still read, with page views as unique visitors and conversions as converting
/// visitors: the figures their reports were made from. Version 3 added the funnel
/// grace's counts; version 2 records read with none (nothing was kept of them).
/// Version 4 added what was counted here and counted elsewhere first (the tally's
/// `elsewhere`, and a batch's `earlier`: the same for days before the batch's);
/// version 3 and older records read with none (one box, or a cluster before it
/// claimed its counts).
const BATCH_RECORD_VERSION: u8 = 4;
const DAY_RECORD_VERSION: u8 = 4;
const CURSOR_RECORD_VERSION: u8 = 1;
/// The slot other nodes' batches are merged into with this node's, for the series a
/// report draws: the default flush interval.
pub const CLUSTER_BUCKET_MS: u64 = 5_000;

/// Counts over some span of time. Conversions are kept by goal name, so a store read
/// under a different `conversions.goals` list is still read correctly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// HTML page views under the funnel paths.
    pub visits: u64,
    /// `(goal, count)`, in the order goals were first seen. At most one per visitor,
    /// goal and launch day.
    pub conversions: Vec<(String, u64)>,
    pub requests: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub rejections: u64,
    pub webhooks_accepted: u64,
    /// Visitors (by their `lg_v` cookie) counted the first time each was seen in the
    /// launch day: over a whole day, the day's unique visitors.
    pub unique_visitors: u64,
    /// Visitors counted at their first conversion (any goal) in the launch day.
    pub converting_visitors: u64,
    /// Requests the funnel grace admitted that shedding would have refused
    /// (`insight::grace`).
    pub grace_admitted: u64,
    /// Conversions by visitors the funnel grace admitted within
    /// `backpressure.funnel_grace_secs` before converting.
    pub grace_conversions: u64,
    /// Of the counts above, those another node of the cluster counted first (its
    /// claim won, `ops::cluster::claims`): subtracted by every report
    /// ([`Tally::net`]). Zero on one box.
    pub elsewhere: Elsewhere,
}

/// Counts of a day this node made and another node made first: a visitor from an
/// earlier day, a converting visitor, a conversion of a goal, each counted once per
/// launch day on every node it reached, and claimed in the cluster so that one node
/// keeps it. Every report subtracts these.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Elsewhere {
    pub unique_visitors: u64,
    pub converting_visitors: u64,
    /// `(goal, count)`.
    pub conversions: Vec<(String, u64)>,
}

impl Elsewhere {
    pub fn merge(&mut self, other: &Elsewhere) {
        self.unique_visitors += other.unique_visitors;
        self.converting_visitors += other.converting_visitors;
        for (goal, n) in &other.conversions {
            add_goal(&mut self.conversions, goal, *n);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.unique_visitors == 0
            && self.converting_visitors == 0
            && self.conversions.iter().all(|(_, n)| *n == 0)
    }
}

fn add_goal(list: &mut Vec<(String, u64)>, goal: &str, n: u64) {
    match list.iter_mut().find(|(g, _)| g == goal) {
        Some((_, c)) => *c += n,
        None => list.push((goal.to_string(), n)),
    }
}

/// The tally as version 3 records hold it: nothing counted elsewhere.
#[derive(Deserialize)]
struct TallyV3 {
    visits: u64,
    conversions: Vec<(String, u64)>,
    requests: u64,
    cache_hits: u64,
    cache_misses: u64,
    rejections: u64,
    webhooks_accepted: u64,
    unique_visitors: u64,
    converting_visitors: u64,
    grace_admitted: u64,
    grace_conversions: u64,
}

impl From<TallyV3> for Tally {
    fn from(t: TallyV3) -> Tally {
        Tally {
            visits: t.visits,
            conversions: t.conversions,
            requests: t.requests,
            cache_hits: t.cache_hits,
            cache_misses: t.cache_misses,
            rejections: t.rejections,
            webhooks_accepted: t.webhooks_accepted,
            unique_visitors: t.unique_visitors,
            converting_visitors: t.converting_visitors,
            grace_admitted: t.grace_admitted,
            grace_conversions: t.grace_conversions,
            elsewhere: Elsewhere::default(),
        }
    }
}

/// The tally as version 2 records hold it: no funnel grace counts.
#[derive(Deserialize)]
struct TallyV2 {
    visits: u64,
    conversions: Vec<(String, u64)>,
    requests: u64,
    cache_hits: u64,
    cache_misses: u64,
    rejections: u64,
    webhooks_accepted: u64,
    unique_visitors: u64,
    converting_visitors: u64,
}

impl From<TallyV2> for Tally {
    fn from(t: TallyV2) -> Tally {
        Tally {
            visits: t.visits,
            conversions: t.conversions,
            requests: t.requests,
            cache_hits: t.cache_hits,
            cache_misses: t.cache_misses,
            rejections: t.rejections,
            webhooks_accepted: t.webhooks_accepted,
            unique_visitors: t.unique_visitors,
            converting_visitors: t.converting_visitors,
            grace_admitted: 0,
            grace_conversions: 0,
            elsewhere: Elsewhere::default(),
        }
    }
}

/// The tally as version 1 records hold it.
#[derive(Deserialize)]
struct TallyV1 {
    visits: u64,
    conversions: Vec<(String, u64)>,
    requests: u64,
    cache_hits: u64,
    cache_misses: u64,
    rejections: u64,
    webhooks_accepted: u64,
}

impl From<TallyV1> for Tally {
    fn from(t: TallyV1) -> Tally {
        let converted = t.conversions.iter().map(|(_, n)| n).sum();
        Tally {
            visits: t.visits,
            conversions: t.conversions,
            requests: t.requests,
            cache_hits: t.cache_hits,
            cache_misses: t.cache_misses,
            rejections: t.rejections,
            webhooks_accepted: t.webhooks_accepted,
            unique_visitors: t.visits,
            converting_visitors: converted,
            grace_admitted: 0,
            grace_conversions: 0,
            elsewhere: Elsewhere::default(),
        }
    }
}

impl Tally {
    /// Adds `other` into `self`, goal by goal.
    pub fn merge(&mut self, other: &Tally) {
        self.visits += other.visits;
        self.requests += other.requests;
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.rejections += other.rejections;
        self.webhooks_accepted += other.webhooks_accepted;
        self.unique_visitors += other.unique_visitors;
        self.converting_visitors += other.converting_visitors;
        self.grace_admitted += other.grace_admitted;
        self.grace_conversions += other.grace_conversions;
        for (goal, n) in &other.conversions {
            self.add_conversions(goal, *n);
        }
        self.elsewhere.merge(&other.elsewhere);
    }

    pub fn add_conversions(&mut self, goal: &str, n: u64) {
        add_goal(&mut self.conversions, goal, n);
    }

    /// The counts as reports show them: what was counted elsewhere first taken off
    /// (never below zero: over a window shorter than the day, a correction may come
    /// after the count it corrects), and `elsewhere` empty.
    pub fn net(&self) -> Tally {
        let mut t = self.clone();
        let e = std::mem::take(&mut t.elsewhere);
        t.unique_visitors = t.unique_visitors.saturating_sub(e.unique_visitors);
        t.converting_visitors = t.converting_visitors.saturating_sub(e.converting_visitors);
        for (goal, n) in &e.conversions {
            if let Some((_, c)) = t.conversions.iter_mut().find(|(g, _)| g == goal) {
                *c = c.saturating_sub(*n);
            }
        }
        t
    }

    pub fn conversions_of(&self, goal: &str) -> u64 {
        self.conversions
            .iter()
            .find(|(g, _)| g == goal)
            .map_or(0, |(_, n)| *n)
    }

    pub fn conversions_total(&self) -> u64 {
        self.conversions.iter().map(|(_, n)| n).sum()
    }

    /// Nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.visits == 0
            && self.requests == 0
            && self.cache_hits == 0
            && self.cache_misses == 0
            && self.rejections == 0
            && self.webhooks_accepted == 0
            && self.unique_visitors == 0
            && self.converting_visitors == 0
            && self.grace_admitted == 0
            && self.grace_conversions == 0
            && self.conversions_total() == 0
            && self.elsewhere.is_empty()
    }
}

/// One flush of the counters: what happened in `[window_start_ms, + window_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsBatch {
    pub window_start_ms: u64,
    pub window_ms: u64,
    pub tally: Tally,
    /// Highest scale factor seen by a request in the window, or in force at the flush.
    pub peak_factor: f64,
    /// Engagement velocity (weighted events/s) at the flush.
    pub velocity: f64,
    /// Counts of days before this batch's day that were counted elsewhere first,
    /// found out only now (claims made late, NATS having been unreachable): added
    /// to those days' totals, by day `YYYY-MM-DD`. Empty on one box.
    pub earlier: Vec<(String, Elsewhere)>,
}

impl MetricsBatch {
    /// Requests per second over the window. Windows shorter than a second (a flush at
    /// shutdown right after a regular one) are taken as one second, so a handful of
    /// requests cannot read as a spike.
    pub fn rps(&self) -> f64 {
        rps(self.tally.requests, self.window_ms)
    }

    fn merge(&mut self, other: &MetricsBatch) {
        self.window_ms = self.window_ms.max(other.window_ms);
        self.tally.merge(&other.tally);
        self.peak_factor = self.peak_factor.max(other.peak_factor);
        self.velocity = other.velocity;
        for (day, e) in &other.earlier {
            match self.earlier.iter_mut().find(|(d, _)| d == day) {
                Some((_, mine)) => mine.merge(e),
                None => self.earlier.push((day.clone(), e.clone())),
            }
        }
    }
}

/// Requests per second over `window_ms`, counting a window under 1 s as 1 s.
pub fn rps(requests: u64, window_ms: u64) -> f64 {
    requests as f64 * 1000.0 / window_ms.max(1000) as f64
}

/// The running totals of one launch day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayTotals {
    /// `YYYY-MM-DD` in `conversions.timezone`.
    pub day: String,
    pub tally: Tally,
    pub peak_factor: f64,
    pub peak_rps: f64,
    /// How many batches were rolled up.
    pub batches: u64,
}

impl DayTotals {
    pub fn empty(day: &str) -> DayTotals {
        DayTotals {
            day: day.to_string(),
            tally: Tally::default(),
            peak_factor: 1.0,
            peak_rps: 0.0,
            batches: 0,
        }
    }

    pub fn add_batch(&mut self, b: &MetricsBatch) {
        self.tally.merge(&b.tally);
        self.peak_factor = self.peak_factor.max(b.peak_factor);
        self.peak_rps = self.peak_rps.max(b.rps());
        self.batches += 1;
    }

    /// Adds another node's totals of the same day: counts summed, peaks the highest
    /// (a report that has the day's batches raises the cluster's peak rate from them).
    pub fn merge(&mut self, other: &DayTotals) {
        self.tally.merge(&other.tally);
        self.peak_factor = self.peak_factor.max(other.peak_factor);
        self.peak_rps = self.peak_rps.max(other.peak_rps);
        self.batches += other.batches;
    }
}

/// Handle to the history trees; a clone is cheap and shares the same sled trees.
#[derive(Clone)]
pub struct History {
    metrics: sled::Tree,
    launches: sled::Tree,
    peer_metrics: sled::Tree,
    peer_launches: sled::Tree,
    /// Counts this node made that the cluster must decide on (`ops::cluster::claims`):
    /// a visitor mark's key → nothing. Empty on one box.
    claims: sled::Tree,
    store: Store,
    meta: sled::Tree,
}

/// What a flush writes to the claims tree beside its batch ([`History::record_claimed`]).
#[derive(Debug, Clone, Default)]
pub struct ClaimWrites {
    /// Claims of counts in the batch, to be made.
    pub add: Vec<Vec<u8>>,
    /// Claims lost, whose correction is in the batch.
    pub settled: Vec<Vec<u8>>,
}

impl History {
    pub fn open(store: &Store) -> Result<History, StoreError> {
        // A store that never counted from its log starts counting at its next event
        // (what came before was counted in memory, and is in its rows already).
        let meta = store.open_tree(trees::META)?;
        let _ = meta.compare_and_swap(
            trees::META_COUNTED_FROM,
            None as Option<&[u8]>,
            Some(codec::encode_words(
                CURSOR_RECORD_VERSION,
                [store.next_seq()],
            )),
        )?;
        Ok(History {
            metrics: store.open_tree(trees::METRICS)?,
            launches: store.open_tree(trees::LAUNCHES)?,
            peer_metrics: store.open_tree(trees::PEER_METRICS)?,
            peer_launches: store.open_tree(trees::PEER_LAUNCHES)?,
            claims: store.open_tree(trees::CLAIMS)?,
            store: store.clone(),
            meta: store.open_tree(trees::META)?,
        })
    }

    /// Writes `batch` (merged into a row with the same window start, if any) and adds
    /// it to the totals of `day`, in one transaction. In memory until the next flush.
    pub fn record(&self, batch: &MetricsBatch, day: &str) -> Result<(), StoreError> {
        self.record_counted(batch, day, None)
    }

    /// The first event seq not yet counted as accepted (`Store::count_own_from`).
    pub fn counted_from(&self) -> Result<u64, StoreError> {
        match self.meta.get(trees::META_COUNTED_FROM)? {
            Some(v) => {
                Ok(codec::decode_words::<1>("meta.counted_from", CURSOR_RECORD_VERSION, &v)?[0])
            }
            None => Ok(self.store.next_seq()),
        }
    }

    /// The store's events, for counting from the log.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `record`, and with `counted_from` the new `meta.counted_from`, in the same
    /// transaction: a batch's webhook count and the mark of what it counted are
    /// written together, so an event is counted in exactly one batch.
    pub fn record_counted(
        &self,
        batch: &MetricsBatch,
        day: &str,
        counted_from: Option<u64>,
    ) -> Result<(), StoreError> {
        self.record_claimed(batch, day, counted_from, &ClaimWrites::default())
    }

    /// `record_counted`, and in the same transaction the claims of `claims`
    /// (`ops::cluster::claims`): the new ones (each counted in `batch`) kept until
    /// claimed, the settled ones (each counted elsewhere first, subtracted in
    /// `batch`) removed. A count and its claim are then durable together, and a
    /// correction is in exactly one batch.
    pub fn record_claimed(
        &self,
        batch: &MetricsBatch,
        day: &str,
        counted_from: Option<u64>,
        claims: &ClaimWrites,
    ) -> Result<(), StoreError> {
        let key = batch.window_start_ms.to_be_bytes();
        let cursor = counted_from.map(|c| codec::encode_words(CURSOR_RECORD_VERSION, [c]));
        let result = (&self.metrics, &self.launches, &self.meta, &self.claims).transaction(
            |(metrics, launches, meta, pending)| {
                let abort = ConflictableTransactionError::Abort;
                let row = match metrics.get(key)? {
                    Some(old) => {
                        let mut old = decode_batch(&old).map_err(abort)?;
                        old.merge(batch);
                        old
                    }
                    None => batch.clone(),
                };
                let mut totals = match launches.get(day.as_bytes())? {
                    Some(v) => decode_day(&v).map_err(abort)?,
                    None => DayTotals::empty(day),
                };
                totals.add_batch(batch);
                metrics.insert(&key, encode_batch(&row).map_err(abort)?)?;
                launches.insert(day.as_bytes(), encode_day(&totals).map_err(abort)?)?;
                for (d, e) in batch.earlier.iter().filter(|(d, _)| d != day) {
                    let mut t = match launches.get(d.as_bytes())? {
                        Some(v) => decode_day(&v).map_err(abort)?,
                        None => DayTotals::empty(d),
                    };
                    t.tally.elsewhere.merge(e);
                    launches.insert(d.as_bytes(), encode_day(&t).map_err(abort)?)?;
                }
                if let Some(c) = &cursor {
                    meta.insert(trees::META_COUNTED_FROM, c.as_slice())?;
                }
                for k in &claims.add {
                    pending.insert(k.as_slice(), &[][..])?;
                }
                for k in &claims.settled {
                    pending.remove(k.as_slice())?;
                }
                Ok(())
            },
        );
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }

    /// Up to `limit` claims kept and not yet settled, oldest day first, skipping
    /// those `skip` says are being settled.
    pub fn pending_claims(
        &self,
        limit: usize,
        skip: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for kv in self.claims.iter() {
            let (k, _) = kv?;
            if !skip(&k) {
                out.push(k.to_vec());
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Whether claim `key` is still kept (not settled, nor won).
    pub fn claim_kept(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.claims.contains_key(key)?)
    }

    /// How many claims are kept, not yet settled.
    pub fn pending_claims_len(&self) -> usize {
        self.claims.len()
    }

    /// Removes claims this node won (nothing to subtract): a claim removed twice,
    /// or never kept, is no error.
    pub fn claims_won(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k.as_slice());
        }
        self.claims.apply_batch(batch)?;
        Ok(())
    }

    /// This node's batches whose window starts in `[from_ms, to_ms)`, oldest first.
    pub fn own_batches(&self, from_ms: u64, to_ms: u64) -> Result<Vec<MetricsBatch>, StoreError> {
        if to_ms <= from_ms {
            return Ok(Vec::new());
        }
        self.metrics
            .range(from_ms.to_be_bytes()..to_ms.to_be_bytes())
            .map(|kv| decode_batch(&kv?.1))
            .collect()
    }

    /// The cluster's batches whose window starts in `[from_ms, to_ms)`, oldest first:
    /// this node's alone on one box; with other nodes' rows in range, every row
    /// merged into its `CLUSTER_BUCKET_MS` slot (counts summed, peaks the highest).
    pub fn batches(&self, from_ms: u64, to_ms: u64) -> Result<Vec<MetricsBatch>, StoreError> {
        let own = self.own_batches(from_ms, to_ms)?;
        if to_ms <= from_ms {
            return Ok(own);
        }
        let peers: Vec<MetricsBatch> = self
            .peer_metrics
            .range(from_ms.to_be_bytes()..to_ms.to_be_bytes())
            .map(|kv| decode_batch(&kv?.1))
            .collect::<Result<_, _>>()?;
        if peers.is_empty() {
            return Ok(own);
        }
        let mut slots: std::collections::BTreeMap<u64, MetricsBatch> = Default::default();
        for b in own.iter().chain(&peers) {
            let slot = b.window_start_ms / CLUSTER_BUCKET_MS * CLUSTER_BUCKET_MS;
            match slots.get_mut(&slot) {
                Some(row) => {
                    row.window_start_ms = row.window_start_ms.min(b.window_start_ms);
                    row.merge(b);
                }
                None => {
                    slots.insert(slot, b.clone());
                }
            }
        }
        Ok(slots.into_values().collect())
    }

    /// This node's newest row, if any.
    pub fn last_own_batch(&self) -> Result<Option<MetricsBatch>, StoreError> {
        self.metrics
            .last()?
            .map(|(_, v)| decode_batch(&v))
            .transpose()
    }

    /// This node's totals of one day (`YYYY-MM-DD`), if anything was recorded on it.
    pub fn own_day(&self, day: &str) -> Result<Option<DayTotals>, StoreError> {
        self.launches
            .get(day.as_bytes())?
            .map(|v| decode_day(&v))
            .transpose()
    }

    /// The other nodes' totals of one day, by node id.
    pub fn node_days(&self, day: &str) -> Result<Vec<(String, DayTotals)>, StoreError> {
        let mut prefix = day.as_bytes().to_vec();
        prefix.push(0);
        self.peer_launches
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let node = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((node, decode_day(&v)?))
            })
            .collect()
    }

    /// The cluster's totals of one day: this node's and every other node's, summed
    /// (peaks: the highest of any node).
    pub fn day(&self, day: &str) -> Result<Option<DayTotals>, StoreError> {
        let mut total = self.own_day(day)?;
        for (_, t) in self.node_days(day)? {
            match &mut total {
                Some(sum) => sum.merge(&t),
                None => total = Some(t),
            }
        }
        Ok(total)
    }

    /// Every recorded day of the cluster, oldest first.
    pub fn days(&self) -> Result<Vec<DayTotals>, StoreError> {
        let mut days: std::collections::BTreeMap<String, DayTotals> = self
            .launches
            .iter()
            .map(|kv| decode_day(&kv?.1).map(|d| (d.day.clone(), d)))
            .collect::<Result<_, StoreError>>()?;
        for kv in self.peer_launches.iter() {
            let t = decode_day(&kv?.1)?;
            match days.get_mut(&t.day) {
                Some(sum) => sum.merge(&t),
                None => {
                    days.insert(t.day.clone(), t);
                }
            }
        }
        Ok(days.into_values().collect())
    }

    /// Stores a batch another node flushed, and adds it to that node's day, in one
    /// transaction. A batch already stored (a redelivery) changes nothing: returns
    /// false.
    pub fn record_peer(
        &self,
        node: &str,
        batch: &MetricsBatch,
        day: &str,
    ) -> Result<bool, StoreError> {
        let mut key = batch.window_start_ms.to_be_bytes().to_vec();
        key.extend_from_slice(node.as_bytes());
        let mut day_key = day.as_bytes().to_vec();
        day_key.push(0);
        day_key.extend_from_slice(node.as_bytes());
        let result =
            (&self.peer_metrics, &self.peer_launches).transaction(|(metrics, launches)| {
                let abort = ConflictableTransactionError::Abort;
                if metrics.get(&key)?.is_some() {
                    return Ok(false);
                }
                let mut totals = match launches.get(&day_key)? {
                    Some(v) => decode_day(&v).map_err(abort)?,
                    None => DayTotals::empty(day),
                };
                totals.add_batch(batch);
                metrics.insert(key.as_slice(), encode_batch(batch).map_err(abort)?)?;
                launches.insert(day_key.as_slice(), encode_day(&totals).map_err(abort)?)?;
                for (d, e) in batch.earlier.iter().filter(|(d, _)| d != day) {
                    let mut earlier_key = d.as_bytes().to_vec();
                    earlier_key.push(0);
                    earlier_key.extend_from_slice(node.as_bytes());
                    let mut t = match launches.get(&earlier_key)? {
                        Some(v) => decode_day(&v).map_err(abort)?,
                        None => DayTotals::empty(d),
                    };
                    t.tally.elsewhere.merge(e);
                    launches.insert(earlier_key, encode_day(&t).map_err(abort)?)?;
                }
                Ok(true)
            });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }

    /// Removes metrics rows whose window started before `before_ms`. Daily totals stay.
    pub fn sweep_metrics(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for kv in self.metrics.range(..before_ms.to_be_bytes()) {
            let (k, _) = kv?;
            batch.remove(k);
            removed += 1;
        }
        if removed > 0 {
            self.metrics.apply_batch(batch)?;
        }
        let mut peers = sled::Batch::default();
        for kv in self.peer_metrics.range(..before_ms.to_be_bytes()) {
            peers.remove(kv?.0);
            removed += 1;
        }
        self.peer_metrics.apply_batch(peers)?;
        Ok(removed)
    }

    /// Empties the stored payload of events received before `before_ms`, oldest first,
    /// stopping at the first newer event. Resumes where the last sweep stopped.
    /// Returns how many payloads were emptied.
    pub fn sweep_payloads(&self, before_ms: u64) -> Result<usize, StoreError> {
        let cursor = self.payload_cursor()?;
        let (swept, last) = self.store.strip_payloads(cursor, before_ms)?;
        if last != cursor {
            let v = codec::encode_words(CURSOR_RECORD_VERSION, [last]);
            self.meta.insert(trees::META_PAYLOAD_SWEEP_SEQ, v)?;
        }
        Ok(swept)
    }

    fn payload_cursor(&self) -> Result<u64, StoreError> {
        let Some(v) = self.meta.get(trees::META_PAYLOAD_SWEEP_SEQ)? else {
            return Ok(0);
        };
        let [seq] = codec::decode_words("meta.payload_sweep_seq", CURSOR_RECORD_VERSION, &v)?;
        Ok(seq)
    }
}

pub fn encode_batch(b: &MetricsBatch) -> Result<Vec<u8>, StoreError> {
    codec::encode("metrics batch", BATCH_RECORD_VERSION, b)
}

pub fn decode_batch(v: &[u8]) -> Result<MetricsBatch, StoreError> {
    match v.first() {
        Some(&1) => Ok(codec::decode::<OldBatch<TallyV1>>("metrics batch", 1, v)?.into()),
        Some(&2) => Ok(codec::decode::<OldBatch<TallyV2>>("metrics batch", 2, v)?.into()),
        Some(&3) => Ok(codec::decode::<OldBatch<TallyV3>>("metrics batch", 3, v)?.into()),
        _ => codec::decode("metrics batch", BATCH_RECORD_VERSION, v),
    }
}

/// A metrics batch as version 1 to 3 records hold it, with their tally.
#[derive(Deserialize)]
struct OldBatch<T> {
    window_start_ms: u64,
    window_ms: u64,
    tally: T,
    peak_factor: f64,
    velocity: f64,
}

impl<T: Into<Tally>> From<OldBatch<T>> for MetricsBatch {
    fn from(old: OldBatch<T>) -> MetricsBatch {
        MetricsBatch {
            window_start_ms: old.window_start_ms,
            window_ms: old.window_ms,
            tally: old.tally.into(),
            peak_factor: old.peak_factor,
            velocity: old.velocity,
            earlier: Vec::new(),
        }
    }
}

/// A day's totals as version 1 to 3 records hold them, with their tally.
#[derive(Deserialize)]
struct OldDay<T> {
    day: String,
    tally: T,
    peak_factor: f64,
    peak_rps: f64,
    batches: u64,
}

impl<T: Into<Tally>> From<OldDay<T>> for DayTotals {
    fn from(old: OldDay<T>) -> DayTotals {
        DayTotals {
            day: old.day,
            tally: old.tally.into(),
            peak_factor: old.peak_factor,
            peak_rps: old.peak_rps,
            batches: old.batches,
        }
    }
}

fn encode_day(d: &DayTotals) -> Result<Vec<u8>, StoreError> {
    codec::encode("launch day", DAY_RECORD_VERSION, d)
}

fn decode_day(v: &[u8]) -> Result<DayTotals, StoreError> {
    match v.first() {
        Some(&1) => Ok(codec::decode::<OldDay<TallyV1>>("launch day", 1, v)?.into()),
        Some(&2) => Ok(codec::decode::<OldDay<TallyV2>>("launch day", 2, v)?.into()),
        Some(&3) => Ok(codec::decode::<OldDay<TallyV3>>("launch day", 3, v)?.into()),
        _ => codec::decode("launch day", DAY_RECORD_VERSION, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::store::{EventRecord, Scheme};

    fn batch(start: u64, visits: u64, signups: u64) -> MetricsBatch {
        let mut tally = Tally {
            visits,
            requests: visits * 3,
            ..Tally::default()
        };
        tally.add_conversions("signup", signups);
        MetricsBatch {
            window_start_ms: start,
            window_ms: 5000,
            tally,
            peak_factor: 1.5,
            velocity: 2.0,
            earlier: Vec::new(),
        }
    }

    #[test]
    fn other_nodes_rows_are_summed_once_and_merged_into_slots() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let h = History::open(&store).unwrap();
        h.record(&batch(10_000, 2, 1), "2026-11-26").unwrap();
        assert!(h
            .record_peer("b", &batch(11_000, 3, 0), "2026-11-26")
            .unwrap());
        // A redelivered row changes nothing.
        assert!(!h
            .record_peer("b", &batch(11_000, 3, 0), "2026-11-26")
            .unwrap());
        // Another node's funnel grace counts travel with its rows (the outbox
        // publishes `encode_batch` rows as they are stored).
        let mut from_c = batch(16_000, 4, 2);
        from_c.tally.grace_admitted = 7;
        from_c.tally.grace_conversions = 2;
        let from_c = decode_batch(&encode_batch(&from_c).unwrap()).unwrap();
        assert!(h.record_peer("c", &from_c, "2026-11-26").unwrap());
        let day = h.day("2026-11-26").unwrap().unwrap();
        assert_eq!(day.tally.visits, 9);
        assert_eq!(
            (day.tally.grace_admitted, day.tally.grace_conversions),
            (7, 2)
        );
        assert_eq!(day.tally.conversions_of("signup"), 3);
        assert_eq!(h.own_day("2026-11-26").unwrap().unwrap().tally.visits, 2);
        let nodes = h.node_days("2026-11-26").unwrap();
        let visits: Vec<(String, u64)> = nodes
            .iter()
            .map(|(n, t)| (n.clone(), t.tally.visits))
            .collect();
        assert_eq!(visits, vec![("b".into(), 3), ("c".into(), 4)]);
        // a's row at 10 s and b's at 11 s share the 10–15 s slot; c's is in the next.
        let rows = h.batches(0, 60_000).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].window_start_ms, rows[0].tally.visits), (10_000, 5));
        assert_eq!((rows[1].window_start_ms, rows[1].tally.visits), (16_000, 4));
        assert_eq!(h.own_batches(0, 60_000).unwrap().len(), 1);
        assert_eq!(h.days().unwrap().len(), 1);
        assert_eq!(h.days().unwrap()[0].tally.visits, 9);
        // Retention sweeps the other nodes' rows too; the day's totals stay.
        assert_eq!(h.sweep_metrics(60_000).unwrap(), 3);
        assert!(h.batches(0, 60_000).unwrap().is_empty());
        assert_eq!(h.day("2026-11-26").unwrap().unwrap().tally.visits, 9);
    }

    #[test]
    fn batch_round_trips_and_newer_versions_are_refused() {
        let b = batch(7, 3, 1);
        let mut bytes = encode_batch(&b).unwrap();
        assert_eq!(decode_batch(&bytes).unwrap(), b);
        bytes[0] = BATCH_RECORD_VERSION + 1;
        assert!(matches!(
            decode_batch(&bytes),
            Err(StoreError::NewerRecord { .. })
        ));
    }

    #[test]
    fn same_window_start_merges_and_totals_follow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let h = History::open(&store).unwrap();
        h.record(&batch(1000, 2, 1), "2026-11-26").unwrap();
        h.record(&batch(1000, 5, 0), "2026-11-26").unwrap();
        h.record(&batch(6000, 1, 1), "2026-11-26").unwrap();
        let rows = h.batches(0, u64::MAX).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].tally.visits, 7);
        assert_eq!(rows[0].tally.conversions_of("signup"), 1);
        let day = h.day("2026-11-26").unwrap().unwrap();
        assert_eq!(day.tally.visits, 8);
        assert_eq!(day.tally.conversions_total(), 2);
        assert_eq!(day.batches, 3);
        assert_eq!(h.days().unwrap().len(), 1);
    }

    #[test]
    fn version_1_rows_read_with_views_and_conversions_as_visitors() {
        // A version 1 batch and day, encoded as builds before visitors wrote them.
        #[derive(Serialize)]
        struct T1 {
            visits: u64,
            conversions: Vec<(String, u64)>,
            requests: u64,
            cache_hits: u64,
            cache_misses: u64,
            rejections: u64,
            webhooks_accepted: u64,
        }
        let tally = || T1 {
            visits: 40,
            conversions: vec![("signup".into(), 3), ("waitlist".into(), 1)],
            requests: 90,
            cache_hits: 50,
            cache_misses: 5,
            rejections: 2,
            webhooks_accepted: 7,
        };
        let row = codec::encode(
            "metrics batch",
            1,
            &(1000u64, 5000u64, tally(), 2.5f64, 1.5f64),
        )
        .unwrap();
        let b = decode_batch(&row).unwrap();
        assert_eq!(
            (b.window_start_ms, b.window_ms, b.peak_factor),
            (1000, 5000, 2.5)
        );
        assert_eq!(
            (b.tally.visits, b.tally.requests, b.tally.webhooks_accepted),
            (40, 90, 7)
        );
        assert_eq!(
            (b.tally.unique_visitors, b.tally.converting_visitors),
            (40, 4)
        );
        let day = codec::encode(
            "launch day",
            1,
            &("2026-11-26", tally(), 2.5f64, 3.0f64, 4u64),
        )
        .unwrap();
        let d = decode_day(&day).unwrap();
        assert_eq!(
            (d.day.as_str(), d.batches, d.peak_rps),
            ("2026-11-26", 4, 3.0)
        );
        assert_eq!(d.tally.conversions_total(), 4);
        assert_eq!(
            (d.tally.unique_visitors, d.tally.converting_visitors),
            (40, 4)
        );
        // What this build writes is version 4, and reads back whole.
        let mut b2 = b.clone();
        b2.tally.unique_visitors = 30;
        b2.tally.grace_admitted = 12;
        b2.tally.grace_conversions = 2;
        let again = decode_batch(&encode_batch(&b2).unwrap()).unwrap();
        assert_eq!(again, b2);
        assert_eq!(encode_batch(&b2).unwrap()[0], 4);
    }

    /// A batch row and a day record of an older `version`, their tally written as
    /// `tally` (that version's layout): both decode to `want`, and a store holding
    /// them (the batch at window 1000, the day 2026-11-26) is returned to go on
    /// counting into them.
    fn older_rows<T: Serialize>(
        version: u8,
        tally: impl Fn() -> T,
        want: Tally,
    ) -> (tempfile::TempDir, History) {
        let row = codec::encode(
            "metrics batch",
            version,
            &(1000u64, 5000u64, tally(), 2.5f64, 1.5f64),
        )
        .unwrap();
        assert_eq!(
            decode_batch(&row).unwrap(),
            MetricsBatch {
                window_start_ms: 1000,
                window_ms: 5000,
                tally: want.clone(),
                peak_factor: 2.5,
                velocity: 1.5,
                earlier: Vec::new(),
            }
        );
        let day = codec::encode(
            "launch day",
            version,
            &("2026-11-26", tally(), 2.5f64, 3.0f64, 4u64),
        )
        .unwrap();
        assert_eq!(
            decode_day(&day).unwrap(),
            DayTotals {
                day: "2026-11-26".into(),
                tally: want,
                peak_factor: 2.5,
                peak_rps: 3.0,
                batches: 4,
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let h = History::open(&store).unwrap();
        h.launches.insert("2026-11-26", day).unwrap();
        h.metrics.insert(1000u64.to_be_bytes(), row).unwrap();
        (dir, h)
    }

    /// The tally both older layouts below hold: 40 visits, 3 signups, 31 visitors.
    fn older_want(grace_admitted: u64, grace_conversions: u64) -> Tally {
        Tally {
            visits: 40,
            conversions: vec![("signup".into(), 3)],
            requests: 90,
            cache_hits: 50,
            cache_misses: 5,
            rejections: 2,
            webhooks_accepted: 7,
            unique_visitors: 31,
            converting_visitors: 3,
            grace_admitted,
            grace_conversions,
            elsewhere: Elsewhere::default(),
        }
    }

    #[test]
    fn version_2_rows_read_with_no_grace_counts_and_the_rest_whole() {
        // Tallies as builds before the funnel grace's counts were kept wrote them.
        #[derive(Serialize)]
        struct T2 {
            visits: u64,
            conversions: Vec<(String, u64)>,
            requests: u64,
            cache_hits: u64,
            cache_misses: u64,
            rejections: u64,
            webhooks_accepted: u64,
            unique_visitors: u64,
            converting_visitors: u64,
        }
        let tally = || T2 {
            visits: 40,
            conversions: vec![("signup".into(), 3)],
            requests: 90,
            cache_hits: 50,
            cache_misses: 5,
            rejections: 2,
            webhooks_accepted: 7,
            unique_visitors: 31,
            converting_visitors: 3,
        };
        // A store holding a version 2 day goes on counting into it: the old totals
        // and the new grace counts, written as this build's version.
        let (_dir, h) = older_rows(2, tally, older_want(0, 0));
        let mut b = batch(1000, 1, 0);
        b.tally.grace_admitted = 5;
        b.tally.grace_conversions = 1;
        h.record(&b, "2026-11-26").unwrap();
        let d = h.day("2026-11-26").unwrap().unwrap();
        assert_eq!(d.tally.visits, 41);
        assert_eq!((d.tally.grace_admitted, d.tally.grace_conversions), (5, 1));
        assert_eq!(d.batches, 5);
        assert_eq!(
            h.launches.get("2026-11-26").unwrap().unwrap()[0],
            DAY_RECORD_VERSION
        );
        let rows = h.batches(0, u64::MAX).unwrap();
        assert_eq!(rows.len(), 1, "merged into the version 2 row");
        assert_eq!(
            (rows[0].tally.visits, rows[0].tally.grace_admitted),
            (41, 5)
        );
    }

    #[test]
    fn version_3_rows_read_with_nothing_counted_elsewhere_and_the_rest_whole() {
        // Tallies as builds before the cluster's claims wrote them.
        #[derive(Serialize)]
        struct T3 {
            visits: u64,
            conversions: Vec<(String, u64)>,
            requests: u64,
            cache_hits: u64,
            cache_misses: u64,
            rejections: u64,
            webhooks_accepted: u64,
            unique_visitors: u64,
            converting_visitors: u64,
            grace_admitted: u64,
            grace_conversions: u64,
        }
        let tally = || T3 {
            visits: 40,
            conversions: vec![("signup".into(), 3)],
            requests: 90,
            cache_hits: 50,
            cache_misses: 5,
            rejections: 2,
            webhooks_accepted: 7,
            unique_visitors: 31,
            converting_visitors: 3,
            grace_admitted: 6,
            grace_conversions: 1,
        };
        // A store holding version 3 rows goes on counting into them, corrections
        // included, written as version 4.
        let (_dir, h) = older_rows(3, tally, older_want(6, 1));
        let mut b = batch(1000, 1, 0);
        b.tally.elsewhere.unique_visitors = 2;
        h.record(&b, "2026-11-26").unwrap();
        let d = h.day("2026-11-26").unwrap().unwrap();
        assert_eq!((d.tally.visits, d.tally.grace_admitted), (41, 6));
        assert_eq!(d.tally.net().unique_visitors, 29);
        assert_eq!(h.launches.get("2026-11-26").unwrap().unwrap()[0], 4);
        assert_eq!(h.metrics.get(1000u64.to_be_bytes()).unwrap().unwrap()[0], 4);
    }

    #[test]
    fn corrections_are_subtracted_in_their_own_day_and_travel_with_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let h = History::open(&store).unwrap();
        let mut counted = batch(1000, 3, 2);
        counted.tally.unique_visitors = 3;
        counted.tally.converting_visitors = 2;
        h.record(&counted, "2026-11-26").unwrap();
        // The next day's batch says two of the 26th's were counted elsewhere first,
        // and one of its own.
        let mut next = batch(90_000_000, 1, 0);
        next.tally.unique_visitors = 1;
        next.tally.elsewhere.unique_visitors = 1;
        next.earlier.push((
            "2026-11-26".into(),
            Elsewhere {
                unique_visitors: 2,
                converting_visitors: 1,
                conversions: vec![("signup".into(), 1)],
            },
        ));
        let claims = ClaimWrites {
            add: vec![b"k1".to_vec(), b"k2".to_vec()],
            settled: vec![],
        };
        h.record_claimed(&next, "2026-11-27", None, &claims)
            .unwrap();
        let d26 = h.day("2026-11-26").unwrap().unwrap().tally.net();
        assert_eq!(
            (
                d26.unique_visitors,
                d26.converting_visitors,
                d26.conversions_of("signup")
            ),
            (1, 1, 1)
        );
        assert_eq!(h.day("2026-11-26").unwrap().unwrap().batches, 1);
        let d27 = h.day("2026-11-27").unwrap().unwrap().tally.net();
        assert_eq!(d27.unique_visitors, 0);
        assert_eq!(
            h.pending_claims(10, |_| false).unwrap(),
            vec![b"k1".to_vec(), b"k2".to_vec()]
        );
        assert_eq!(
            h.pending_claims(10, |k| k == b"k1").unwrap(),
            vec![b"k2".to_vec()]
        );
        // A lost claim leaves with the batch that holds its correction.
        let settle = ClaimWrites {
            add: vec![],
            settled: vec![b"k1".to_vec()],
        };
        h.record_claimed(&batch(90_005_000, 0, 0), "2026-11-27", None, &settle)
            .unwrap();
        h.claims_won(&[b"k2".to_vec(), b"never".to_vec()]).unwrap();
        assert_eq!(h.pending_claims_len(), 0);
        // Another node's row carries its corrections to this node's line of it.
        let row = decode_batch(&encode_batch(&next).unwrap()).unwrap();
        assert_eq!(row, next);
        assert!(h.record_peer("b", &row, "2026-11-27").unwrap());
        let b = h.node_days("2026-11-26").unwrap();
        assert_eq!(b[0].0, "b");
        assert_eq!(b[0].1.tally.elsewhere.unique_visitors, 2);
        assert_eq!(b[0].1.batches, 0);
        assert_eq!(
            h.day("2026-11-26")
                .unwrap()
                .unwrap()
                .tally
                .net()
                .unique_visitors,
            0
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Whatever the batches (window starts repeat, goals vary), the rows sum to the
        /// day's totals and to a naive recount.
        #[test]
        fn rows_sum_to_the_day_totals(
            batches in proptest::collection::vec((0u64..20, 0u64..1000, 0u64..50, 0usize..3), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let h = History::open(&store).unwrap();
            let goals = ["signup", "waitlist", "demo"];
            let (mut visits, mut conv) = (0, 0);
            for (slot, v, c, g) in &batches {
                let mut b = batch(slot * 5000, *v, 0);
                b.tally.conversions.clear();
                b.tally.add_conversions(goals[*g], *c);
                h.record(&b, "2026-11-26").unwrap();
                visits += v;
                conv += c;
            }
            let rows = h.batches(0, u64::MAX).unwrap();
            let mut sum = Tally::default();
            rows.iter().for_each(|r| sum.merge(&r.tally));
            let day = h.day("2026-11-26").unwrap().unwrap();
            proptest::prop_assert_eq!(sum.visits, visits);
            proptest::prop_assert_eq!(sum.conversions_total(), conv);
            proptest::prop_assert_eq!(day.tally.visits, visits);
            proptest::prop_assert_eq!(day.tally.conversions_total(), conv);
            proptest::prop_assert_eq!(day.batches, batches.len() as u64);
            for g in goals {
                proptest::prop_assert_eq!(sum.conversions_of(g), day.tally.conversions_of(g));
            }
        }
    }

    #[test]
    fn retention_removes_rows_but_keeps_days() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let h = History::open(&store).unwrap();
        h.record(&batch(1000, 2, 1), "2026-11-25").unwrap();
        h.record(&batch(90_000, 2, 1), "2026-11-26").unwrap();
        assert_eq!(h.sweep_metrics(50_000).unwrap(), 1);
        assert_eq!(h.batches(0, u64::MAX).unwrap().len(), 1);
        assert_eq!(h.days().unwrap().len(), 2);
        assert_eq!(h.sweep_metrics(50_000).unwrap(), 0);
    }

    #[test]
    fn payload_sweep_empties_old_payloads_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let h = History::open(&store).unwrap();
        for (i, at) in [100u64, 200, 300].iter().enumerate() {
            let r = EventRecord {
                id: format!("e{i}"),
                event_type: "upvote".into(),
                weight_milli: 1200,
                received_ms: *at,
                scheme: Scheme::ProductHunt,
                payload: b"{\"secret\":\"stuff\"}".to_vec(),
                origin: None,
            };
            store.commit_event(&r, 1000).unwrap();
        }
        assert_eq!(h.sweep_payloads(250).unwrap(), 2);
        assert!(store.event(1).unwrap().unwrap().payload.is_empty());
        assert!(store.event(2).unwrap().unwrap().payload.is_empty());
        let third = store.event(3).unwrap().unwrap();
        assert!(!third.payload.is_empty());
        assert_eq!(third.id, "e2");
        assert_eq!(h.payload_cursor().unwrap(), 2);
        assert_eq!(h.sweep_payloads(250).unwrap(), 0);
        assert_eq!(h.sweep_payloads(1000).unwrap(), 1);
        // Seqs stay dense: the next event still follows the last one.
        assert_eq!(store.next_seq(), 4);
    }
}
