//! Visits, conversions and the request counters: sharded atomics on the hot path, the
//! conversion beacon, the visit-counting layer and the flusher.
//!
//! - [`Counters`]: every count lives in a cell of a cache-line-padded shard; a thread
//!   always increments its own shard (picked round-robin on its first increment), so
//!   an increment is one uncontended `fetch_add`, no lock, no shared line.
//! - [`count_requests`]: the one layer on the public router that counts requests and
//!   visits (there as [`PublicLayer`], which also runs the request timer). A visit is a `GET` under `conversions.funnel_paths` answered 2xx with
//!   `text/html` (or 304 to a request that accepts `text/html`: a browser reload);
//!   assets, `HEAD`, errors and shed requests (503) are not visits.
//! - [`beacon`]: `POST /api/convert {"goal":"signup"}` (JSON, or a `navigator.sendBeacon`
//!   text/plain body) → 204, counted once per visitor (`lg_v` cookie), goal and launch
//!   day. A client past `conversions.beacons_per_minute` gets 429; a foreign `Origin`
//!   or `Referer`, or no valid visitor cookie, 403; an unknown goal or a malformed
//!   body, 400 naming it; a repeat, 200 `duplicate`. None of those count anywhere but
//!   `launchguard_conversions_rejected_total{reason}`.
//! - [`count_requests`] also counts unique visitors and sets the visitor cookie.
//! - The funnel grace (`grace.rs`) counts here what it admitted and the conversions it
//!   protected, so they are flushed, kept per day and summed by the reports like the
//!   rest (two padded atomics beside the shards: they move only for a request that
//!   was about to be shed).
//! - [`Conversions::flush`]: swaps every cell to zero and writes the sum as one
//!   `MetricsBatch` (`history.rs`); [`flush_loop`] runs it every
//!   `conversions.flush_interval_ms` and once more at shutdown, and sweeps retention
//!   (metrics rows, event payloads, and the visitor marks of `visitor.rs`).
//!
//! - In a cluster, the counts one visitor can make on every node it reaches (a
//!   visitor from an earlier day, a converting visitor, a conversion) are made with
//!   [`Conversions::count_claimed`]: the increment and its claim under the claims'
//!   lock (`claims.rs`), taken by the flush with the cells, so a batch writes exactly
//!   the claims of its counts. One box takes no lock.
//!
//! **Invariant:** no increment is lost or counted twice across a flush: each cell is
//! taken with an atomic `swap(0)`, so an increment lands either in the batch being
//! written or in the next one. A failed write puts the taken counts back (and the
//! claims).
//! **Invariant:** readers see flushed rows plus live cells under the flush lock, so a
//! report is exact at any moment; increments never take that lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use crossbeam::utils::CachePadded;
use jiff::tz::TimeZone;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{ConversionsConfig, MAX_GOALS};
use crate::edge::cache::XCache;
use crate::edge::Scale;
use crate::error::{ApiError, Code};
use crate::ingest::factor::Factor;
use crate::ingest::store::StoreError;
use crate::insight::claims::{self, Claims};
use crate::insight::history::{ClaimWrites, History, MetricsBatch, Tally};
use crate::insight::visitor::{Mark, NoVisitor, Visitor, Visitors};
use crate::syntax::globs::PathSet;
use crate::telemetry;

/// Largest beacon body accepted; `{"goal":"..."}` needs well under this.
pub const BEACON_MAX_BYTES: usize = 1024;
/// The beacon's path on the public listener: admission's, which always treats it as
/// critical.
pub use crate::edge::admission::BEACON_PATH;

const VISITS: usize = 0;
const REQUESTS: usize = 1;
const CACHE_HITS: usize = 2;
const CACHE_MISSES: usize = 3;
const REJECTIONS: usize = 4;
const WEBHOOKS: usize = 5;
/// Visitors seen for the first time in their launch day.
const UNIQUE_VISITORS: usize = 6;
/// Visitors converting (any goal) for the first time in their launch day.
const CONVERTING_VISITORS: usize = 7;
const FIRST_GOAL: usize = 8;
/// The sharded cells: one padded line per shard.
const CELLS: usize = FIRST_GOAL + MAX_GOALS;
/// Requests the funnel grace admitted (`insight::grace`). This count and the next are
/// kept in one padded atomic each, not in the shards: they move only for a request
/// about to be shed whose visitor the grace vouches for (two MACs and a table lookup
/// already), and sharding them would give every shard a second line.
const GRACE_ADMITTED: usize = CELLS;
/// Conversions the funnel grace protected.
const GRACE_CONVERSIONS: usize = CELLS + 1;
/// Every count: the sharded cells, then the two of the funnel grace.
const COUNTS: usize = CELLS + 2;

/// One thread's cells. Padded to its own cache line(s), so two threads never write
/// the same line.
struct Shard([AtomicU64; CELLS]);

impl Shard {
    fn new() -> Shard {
        Shard(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number, handed out round-robin on first use.
    static THREAD_SHARD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// Counts taken out of (or read from) the cells, one per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts([u64; COUNTS]);

impl Counts {
    pub fn visits(&self) -> u64 {
        self.0[VISITS]
    }
    pub fn requests(&self) -> u64 {
        self.0[REQUESTS]
    }
    pub fn conversions(&self, goal_index: usize) -> u64 {
        self.0[FIRST_GOAL + goal_index]
    }
    pub fn webhooks_accepted(&self) -> u64 {
        self.0[WEBHOOKS]
    }
    pub fn unique_visitors(&self) -> u64 {
        self.0[UNIQUE_VISITORS]
    }
    pub fn converting_visitors(&self) -> u64 {
        self.0[CONVERTING_VISITORS]
    }
    pub fn grace_admitted(&self) -> u64 {
        self.0[GRACE_ADMITTED]
    }
    pub fn grace_conversions(&self) -> u64 {
        self.0[GRACE_CONVERSIONS]
    }
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }
}

/// The sharded counters. A clone is cheap and shares the same cells.
#[derive(Clone)]
pub struct Counters {
    inner: Arc<CountersInner>,
}

struct CountersInner {
    shards: Box<[CachePadded<Shard>]>,
    mask: usize,
    /// Highest factor a request saw since the last take, as `f64` bits (for positive
    /// floats the bit patterns order like the values).
    peak_factor: CachePadded<AtomicU64>,
    /// The counts past `CELLS` (the funnel grace's), one padded atomic each.
    unsharded: [CachePadded<AtomicU64>; COUNTS - CELLS],
}

impl Counters {
    /// Four shards per CPU (at least 8, a power of two), so threads rarely share one.
    pub fn new() -> Counters {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        Counters::with_shards((cpus * 4).next_power_of_two().clamp(8, 256))
    }

    /// `shards` is rounded up to a power of two.
    pub fn with_shards(shards: usize) -> Counters {
        let n = shards.max(1).next_power_of_two();
        Counters {
            inner: Arc::new(CountersInner {
                shards: (0..n).map(|_| CachePadded::new(Shard::new())).collect(),
                mask: n - 1,
                peak_factor: CachePadded::new(AtomicU64::new(0)),
                unsharded: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
            }),
        }
    }

    #[inline]
    fn add(&self, cell: usize, n: u64) {
        if cell >= CELLS {
            self.inner.unsharded[cell - CELLS].fetch_add(n, Ordering::Relaxed);
            return;
        }
        let shard = THREAD_SHARD.with(|s| *s) & self.inner.mask;
        self.inner.shards[shard].0[cell].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn record_visit(&self) {
        self.add(VISITS, 1);
    }
    #[inline]
    pub fn record_request(&self) {
        self.add(REQUESTS, 1);
    }
    /// For the edge cache: a request answered from the cache.
    #[inline]
    pub fn record_cache_hit(&self) {
        self.add(CACHE_HITS, 1);
    }
    /// For the edge cache: a request that had to go to the origin.
    #[inline]
    pub fn record_cache_miss(&self) {
        self.add(CACHE_MISSES, 1);
    }
    /// For admission: a request shed with 503.
    #[inline]
    pub fn record_rejection(&self) {
        self.add(REJECTIONS, 1);
    }
    #[inline]
    pub fn record_webhook_accepted(&self) {
        self.add(WEBHOOKS, 1);
    }
    /// A visitor seen for the first time in the launch day.
    #[inline]
    pub fn record_unique_visitor(&self) {
        self.add(UNIQUE_VISITORS, 1);
    }
    /// A visitor's first conversion (any goal) in the launch day.
    #[inline]
    pub fn record_converting_visitor(&self) {
        self.add(CONVERTING_VISITORS, 1);
    }
    /// For the funnel grace: a request shedding would have refused, admitted.
    #[inline]
    pub fn record_grace_admitted(&self) {
        self.add(GRACE_ADMITTED, 1);
    }
    /// For the funnel grace: a conversion by a visitor it admitted within the grace.
    #[inline]
    pub fn record_grace_conversion(&self) {
        self.add(GRACE_CONVERSIONS, 1);
    }
    /// `goal_index` is the goal's position in `conversions.goals`.
    /// An index past [`MAX_GOALS`] is ignored (config validation prevents it).
    #[inline]
    pub fn record_conversion(&self, goal_index: usize) {
        debug_assert!(goal_index < MAX_GOALS);
        if goal_index < MAX_GOALS {
            self.add(FIRST_GOAL + goal_index, 1);
        }
    }

    /// Notes the factor a request saw; keeps the highest until the next take.
    /// A plain load first: the line stays shared until the factor actually rises.
    #[inline]
    pub fn observe_factor(&self, factor: f64) {
        let bits = factor.to_bits();
        if factor > 0.0 && bits > self.inner.peak_factor.load(Ordering::Relaxed) {
            self.inner.peak_factor.fetch_max(bits, Ordering::Relaxed);
        }
    }

    /// Takes every count out (each cell swapped to zero) and the peak factor.
    pub fn take(&self) -> (Counts, f64) {
        let mut out = [0u64; COUNTS];
        for shard in self.inner.shards.iter() {
            for (sum, cell) in out.iter_mut().zip(shard.0.iter()) {
                *sum += cell.swap(0, Ordering::AcqRel);
            }
        }
        for (sum, cell) in out[CELLS..].iter_mut().zip(&self.inner.unsharded) {
            *sum = cell.swap(0, Ordering::AcqRel);
        }
        let peak = f64::from_bits(self.inner.peak_factor.swap(0, Ordering::AcqRel));
        (Counts(out), peak)
    }

    /// Puts counts back (after a failed write), so nothing is lost.
    pub fn give_back(&self, counts: &Counts) {
        for (cell, &n) in counts.0.iter().enumerate() {
            if n > 0 {
                self.add(cell, n);
            }
        }
    }

    /// Reads every count without taking it.
    pub fn peek(&self) -> (Counts, f64) {
        let mut out = [0u64; COUNTS];
        for shard in self.inner.shards.iter() {
            for (sum, cell) in out.iter_mut().zip(shard.0.iter()) {
                *sum += cell.load(Ordering::Acquire);
            }
        }
        for (sum, cell) in out[CELLS..].iter_mut().zip(&self.inner.unsharded) {
            *sum = cell.load(Ordering::Acquire);
        }
        let peak = f64::from_bits(self.inner.peak_factor.load(Ordering::Acquire));
        (Counts(out), peak)
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

/// The live window: what the cells hold now and since when.
#[derive(Debug, Clone)]
pub struct Live {
    pub window_start_ms: u64,
    pub now_ms: u64,
    pub batch: MetricsBatch,
}

/// Conversions, visits and counters, with their history. A clone is cheap.
#[derive(Clone)]
pub struct Conversions {
    inner: Arc<ConvInner>,
}

struct ConvInner {
    counters: Counters,
    history: History,
    /// `conversions.funnel_paths`: which paths' page views are visits.
    funnel: PathSet,
    goals: Vec<String>,
    tz: TimeZone,
    factor: Factor,
    /// Start of the window the cells are counting. Taken by the flusher and by readers
    /// that need flushed rows and live cells to agree; never by an increment.
    window_start_ms: Mutex<u64>,
    /// In a cluster, the claims of the counts it decides on (`claims.rs`); `None` on
    /// one box, where nothing is claimed.
    claims: Option<Claims>,
}

impl Conversions {
    /// `config` must have passed validation (the time zone resolves).
    pub fn new(
        config: &ConversionsConfig,
        history: History,
        factor: Factor,
        now_ms: u64,
    ) -> Result<Conversions, crate::config::ConfigError> {
        let tz = TimeZone::get(&config.timezone).map_err(|e| {
            crate::config::ConfigError::invalid("conversions.timezone", e.to_string())
        })?;
        Ok(Conversions {
            inner: Arc::new(ConvInner {
                counters: Counters::new(),
                history,
                funnel: PathSet::new(&config.funnel_paths, &[]).map_err(|e| {
                    crate::config::ConfigError::invalid("conversions.funnel_paths", e)
                })?,
                goals: config.goals.clone(),
                tz,
                factor,
                window_start_ms: Mutex::new(now_ms),
                claims: None,
            }),
        })
    }

    /// Claims the counts a cluster decides on (`claims.rs`). Before any clone.
    pub fn with_claims(mut self, claims: Claims) -> Conversions {
        Arc::get_mut(&mut self.inner)
            .expect("set before the conversions are shared")
            .claims = Some(claims);
        self
    }

    /// The claims, in a cluster.
    pub fn claims(&self) -> Option<&Claims> {
        self.inner.claims.as_ref()
    }

    /// Counts `mark` of `visitor` on `day` with `count`, and in a cluster keeps its
    /// claim with it (`Claims::counted`).
    pub fn count_claimed(
        &self,
        day: &str,
        mark: Mark<'_>,
        visitor: &Visitor,
        count: impl FnOnce(&Counters),
    ) {
        let counters = &self.inner.counters;
        match &self.inner.claims {
            None => count(counters),
            Some(c) => c.counted(
                crate::insight::visitor::mark_key(day, mark, visitor),
                || count(counters),
            ),
        }
    }

    /// Puts the corrections of `writes.settled` (lost claims) into `batch`: those of
    /// its own day or later in its tally (a count is in the row of its window, whose
    /// day is the day the window started), those of earlier days in `earlier`.
    fn correct(&self, batch: &mut MetricsBatch, day: &str, writes: &ClaimWrites) {
        for (d, e) in claims::corrections(&writes.settled) {
            if d.as_str() >= day {
                batch.tally.elsewhere.merge(&e);
            } else {
                batch.earlier.push((d, e));
            }
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub fn history(&self) -> &History {
        &self.inner.history
    }

    pub fn goals(&self) -> &[String] {
        &self.inner.goals
    }

    pub fn timezone(&self) -> &TimeZone {
        &self.inner.tz
    }

    pub fn goal_index(&self, goal: &str) -> Option<usize> {
        self.inner.goals.iter().position(|g| g == goal)
    }

    fn batch_of(&self, counts: &Counts, peak: f64, start_ms: u64, now_ms: u64) -> MetricsBatch {
        let mut tally = Tally {
            visits: counts.0[VISITS],
            conversions: Vec::with_capacity(self.inner.goals.len()),
            requests: counts.0[REQUESTS],
            cache_hits: counts.0[CACHE_HITS],
            cache_misses: counts.0[CACHE_MISSES],
            rejections: counts.0[REJECTIONS],
            webhooks_accepted: counts.0[WEBHOOKS],
            unique_visitors: counts.0[UNIQUE_VISITORS],
            converting_visitors: counts.0[CONVERTING_VISITORS],
            grace_admitted: counts.0[GRACE_ADMITTED],
            grace_conversions: counts.0[GRACE_CONVERSIONS],
            elsewhere: Default::default(),
        };
        for (i, goal) in self.inner.goals.iter().enumerate() {
            tally.add_conversions(goal, counts.0[FIRST_GOAL + i]);
        }
        MetricsBatch {
            window_start_ms: start_ms,
            window_ms: now_ms.saturating_sub(start_ms),
            tally,
            peak_factor: peak.max(self.inner.factor.current()),
            velocity: self.inner.factor.velocity(),
            earlier: Vec::new(),
        }
    }

    /// Takes the cells and writes them as one batch keyed by the window start, into
    /// the day (in the launch time zone) the window started in. An empty window
    /// writes nothing. Blocks on sled briefly (an in-memory insert).
    /// Returns the batch written, if any.
    pub fn flush(&self, now_ms: u64) -> Result<Option<MetricsBatch>, StoreError> {
        let mut start = self.inner.window_start_ms.lock();
        // Webhooks are counted from the log (every event this node accepted since the
        // last flush), not from memory: a crash between two flushes then loses none,
        // and one in flight at a flush is counted by the next.
        let history = &self.inner.history;
        let from = history.counted_from()?;
        let (accepted, counted_to) = history.store().count_own_from(from)?;
        let ((counts, peak), writes) = match &self.inner.claims {
            Some(c) => c.take_with(|| self.inner.counters.take()),
            None => (self.inner.counters.take(), ClaimWrites::default()),
        };
        if counts.is_zero() && accepted == 0 && writes.settled.is_empty() {
            *start = now_ms.max(*start);
            return Ok(None);
        }
        let mut batch = self.batch_of(&counts, peak, *start, now_ms);
        batch.tally.webhooks_accepted = accepted;
        let day =
            crate::insight::analytics::day_of(batch.window_start_ms, &self.inner.tz).to_string();
        self.correct(&mut batch, &day, &writes);
        if let Err(e) = history.record_claimed(&batch, &day, Some(counted_to), &writes) {
            self.inner.counters.give_back(&counts);
            if peak > 0.0 {
                self.inner.counters.observe_factor(peak);
            }
            if let Some(c) = &self.inner.claims {
                c.give_back(writes);
            }
            return Err(e);
        }
        if let Some(c) = &self.inner.claims {
            c.settled(&writes.settled);
        }
        *start = now_ms.max(*start);
        drop(start);
        metrics::counter!(telemetry::VISITS_TOTAL).increment(batch.tally.visits);
        metrics::counter!(telemetry::UNIQUE_VISITORS_TOTAL).increment(batch.tally.unique_visitors);
        for (goal, n) in &batch.tally.conversions {
            metrics::counter!(telemetry::CONVERSIONS_TOTAL, "goal" => goal.clone()).increment(*n);
        }
        Ok(Some(batch))
    }

    /// Runs `read` with the history and the live window, while no flush can move
    /// counts between them: flushed rows plus live cells are then exact.
    pub fn consistent<T>(
        &self,
        now_ms: u64,
        read: impl FnOnce(&History, &Live) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let start = self.inner.window_start_ms.lock();
        let (counts, peak) = self.inner.counters.peek();
        let mut batch = self.batch_of(&counts, peak, *start, now_ms.max(*start));
        // Lost claims not flushed yet: their corrections, as the flush will write them.
        if let Some(c) = &self.inner.claims {
            let day = crate::insight::analytics::day_of(*start, &self.inner.tz).to_string();
            for (d, e) in c.pending_corrections() {
                if d >= day {
                    batch.tally.elsewhere.merge(&e);
                }
            }
        }
        let live = Live {
            window_start_ms: *start,
            now_ms,
            batch,
        };
        read(&self.inner.history, &live)
    }
}

/// What [`count_requests`] needs: the counters, the visitor cookie and the clock. One
/// `Arc`: the layer clones its state for every public request, and one shared count
/// to bump costs less than three.
#[derive(Clone)]
pub struct Counting(Arc<CountingParts>);

pub struct CountingParts {
    pub conversions: Conversions,
    pub visitors: Visitors,
    pub clock: Clock,
    /// `backpressure.funnel_grace_secs`: a known visitor's funnel page view refreshes
    /// its `lg_f` mark for this long; 0 = off, no mark.
    pub funnel_grace_secs: u64,
}

impl Counting {
    /// Without the funnel grace (see [`Counting::with_funnel_grace`]).
    pub fn new(conversions: Conversions, visitors: Visitors, clock: Clock) -> Counting {
        Counting(Arc::new(CountingParts {
            conversions,
            visitors,
            clock,
            funnel_grace_secs: 0,
        }))
    }

    /// Sets `lg_f` on each known visitor's funnel page view, kept `secs` (0 = off).
    pub fn with_funnel_grace(mut self, secs: u64) -> Counting {
        Arc::get_mut(&mut self.0)
            .expect("set before the layer is built")
            .funnel_grace_secs = secs;
        self
    }
}

impl std::ops::Deref for Counting {
    type Target = CountingParts;

    fn deref(&self) -> &CountingParts {
        &self.0
    }
}

/// The one place the public router counts: every request, visits (HTML page views
/// under the funnel paths), cache hits and misses (the cache's typed result on the
/// answer, `XCache`: HIT and STALE are hits, MISS a miss, BYPASS neither) and admission's rejections (the
/// answer carries `admission::Rejected`). It wraps the whole public router and only
/// looks at the method, the path and the final answer, so a shed request (503) or an
/// asset is never a visit.
///
/// A visit is also where visitors are counted: a valid `lg_v` cookie counts its
/// visitor once a launch day, and a visit without one gets a new cookie (added here,
/// after the cache, so the cached page stays the same for everyone). With the funnel
/// grace on, a known visitor's visit also renews its `lg_f` mark, the same way.
pub async fn count_requests(State(c): State<Counting>, req: Request, next: Next) -> Response {
    let seen = c.before(&req);
    let mut res = next.run(req).await;
    c.after(seen, &mut res);
    res
}

/// What [`Counting::before`] saw of a request, for [`Counting::after`] to judge its
/// answer by.
pub struct Seen {
    maybe_visit: bool,
    wants_html: bool,
    /// The visitor's cookie, whether the request came over HTTPS, and when.
    visitor: Option<(Option<Visitor>, bool, u64)>,
}

impl Counting {
    /// The request side of [`count_requests`]: counts the request and its factor.
    pub fn before(&self, req: &Request) -> Seen {
        let conv = &self.conversions;
        let counters = conv.counters();
        counters.record_request();
        counters.observe_factor(Scale::of(req, || conv.inner.factor.current()));
        let maybe_visit =
            req.method() == Method::GET && conv.inner.funnel.is_match(req.uri().path());
        // A reload answered 304 Not Modified carries no content type; a browser asking
        // for a page says so in Accept, an asset request does not.
        let wants_html = maybe_visit && accepts_html(req.headers());
        let visitor = maybe_visit.then(|| {
            let now = self.clock.now_ms();
            let secure = req
                .extensions()
                .get::<crate::edge::front::Verified>()
                .is_some_and(|v| v.proto == "https");
            (
                self.visitors.of_request(req.headers(), now).ok(),
                secure,
                now,
            )
        });
        Seen {
            maybe_visit,
            wants_html,
            visitor,
        }
    }

    /// The answer side of [`count_requests`]: cache hits and misses, rejections, the
    /// visit and its visitor (the cookie goes on `res`).
    pub fn after(&self, seen: Seen, res: &mut Response) {
        let counters = self.conversions.counters();
        let status = res.status();
        match res.extensions().get::<XCache>() {
            Some(XCache::Hit | XCache::Stale) => counters.record_cache_hit(),
            Some(XCache::Miss) => counters.record_cache_miss(),
            Some(XCache::Bypass) | None => {}
        }
        if res
            .extensions()
            .get::<crate::edge::admission::Rejected>()
            .is_some()
        {
            counters.record_rejection();
        }
        if seen.maybe_visit
            && ((status.is_success() && is_html(res))
                || (status == StatusCode::NOT_MODIFIED && seen.wants_html))
        {
            counters.record_visit();
            if let Some((known, secure, now)) = seen.visitor {
                self.visited(known, secure, now, res);
            }
        }
    }
}

/// [`count_requests`] and [`telemetry::HttpTimer`] as one hand-written layer for the
/// public router: the same work in the same order (the timer around the counting),
/// without `from_fn`'s boxed `Next` and cloned inner service per layer per request.
#[derive(Clone)]
pub struct PublicLayer(Arc<(Counting, telemetry::HttpTimer)>);

impl PublicLayer {
    pub fn new(counting: Counting, timer: telemetry::HttpTimer) -> PublicLayer {
        PublicLayer(Arc::new((counting, timer)))
    }
}

impl<S> tower::Layer<S> for PublicLayer {
    type Service = PublicService<S>;

    fn layer(&self, inner: S) -> PublicService<S> {
        PublicService {
            inner,
            parts: self.0.clone(),
        }
    }
}

/// The service [`PublicLayer`] wraps the router's routes in.
#[derive(Clone)]
pub struct PublicService<S> {
    inner: S,
    parts: Arc<(Counting, telemetry::HttpTimer)>,
}

impl<S> tower::Service<Request> for PublicService<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = std::time::Instant::now();
        let seen = self.parts.0.before(&req);
        let answer = self.inner.call(req);
        let parts = self.parts.clone();
        Box::pin(async move {
            let mut res = answer.await?;
            parts.0.after(seen, &mut res);
            parts
                .1
                .record(res.status(), started.elapsed().as_secs_f64());
            Ok(res)
        })
    }
}

impl Counting {
    /// Counts a visit's visitor once in its launch day, issuing a cookie to a new one
    /// and renewing a known one's funnel mark.
    fn visited(&self, known: Option<Visitor>, secure: bool, now_ms: u64, res: &mut Response) {
        // `Visitors::page_view`, with a new visitor's cookie written straight into its
        // header value.
        match &known {
            None => {
                let cookie = self.visitors.issue_set_cookie(now_ms, secure);
                self.conversions.counters().record_unique_visitor();
                res.headers_mut().append(header::SET_COOKIE, cookie);
            }
            // A visitor from an earlier day: counted on every node it reaches, claimed
            // (on the day its mark was set) so that one keeps it.
            Some(v) => match self.visitors.first_today(v, now_ms) {
                Ok(Some(day)) => {
                    self.conversions
                        .count_claimed(&day, Mark::Visited, v, |c| c.record_unique_visitor());
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot record a visitor: {e}"),
            },
        }
        // A new visitor's lg_v says when it viewed the funnel; a known one's last
        // view is its lg_f mark, renewed here (`insight::grace`).
        if let (Some(visitor), secs @ 1..) = (known, self.funnel_grace_secs) {
            let mark = self.visitors.funnel_mark(&visitor, now_ms);
            res.headers_mut().append(
                header::SET_COOKIE,
                Visitors::set_funnel_cookie(&mark, secs, secure),
            );
        }
    }
}

fn accepts_html(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

fn is_html(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))
        })
}

/// What the beacon reads: the counters, the visitor cookie and budget, the config and
/// the clock. `app` builds it from its state.
#[derive(Clone)]
pub struct BeaconState {
    pub conversions: Conversions,
    pub visitors: Visitors,
    pub config: Arc<crate::config::Config>,
    pub clock: Clock,
    /// The funnel grace, to count conversions it protected; `None` when off.
    pub grace: Option<crate::insight::grace::FunnelGrace>,
}

/// Why a beacon did not count: the `reason` label of
/// `launchguard_conversions_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Past `conversions.beacons_per_minute` for its client: 429.
    RateLimited,
    /// A bad content type, body or goal: 4xx naming what is wrong.
    Invalid,
    /// `Origin` (or `Referer`) names another site: 403.
    CrossSite,
    /// No `lg_v` visitor cookie: 403.
    NoVisitor,
    /// A `lg_v` cookie this site did not issue (or expired): 403.
    ForgedVisitor,
    /// The visitor already converted this goal this launch day: 200 `duplicate`.
    Repeat,
    /// The store could not record it: 503, retry.
    Unavailable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::Invalid => "invalid",
            Refusal::CrossSite => "cross_site",
            Refusal::NoVisitor => "no_visitor",
            Refusal::ForgedVisitor => "forged_visitor",
            Refusal::Repeat => "repeat",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// `POST /api/convert`: one conversion of a configured goal, counted once per visitor,
/// goal and launch day. Every beacon that does not count is counted by its reason in
/// `launchguard_conversions_rejected_total{reason}`, and nowhere else.
pub async fn beacon(State(state): State<BeaconState>, req: Request) -> Response {
    let no_store = |mut res: Response| {
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    };
    match beacon_inner(&state, req).await {
        Ok(()) => no_store(StatusCode::NO_CONTENT.into_response()),
        Err((reason, answer)) => {
            metrics::counter!(telemetry::CONVERSIONS_REJECTED_TOTAL, "reason" => reason.as_str())
                .increment(1);
            match answer {
                Some(e) => e.into_response(),
                None => {
                    no_store(axum::Json(serde_json::json!({"status": "duplicate"})).into_response())
                }
            }
        }
    }
}

type Refused = (Refusal, Option<ApiError>);

fn refuse(reason: Refusal, e: ApiError) -> Refused {
    (reason, Some(e))
}

async fn beacon_inner(state: &BeaconState, req: Request) -> Result<(), Refused> {
    let (parts, body) = req.into_parts();
    let now = state.clock.now_ms();
    let verified = parts.extensions.get::<crate::edge::front::Verified>();
    let client = verified.and_then(|v| v.client).or_else(|| {
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
    });
    if let Err(wait) = state.visitors.take_beacon_token(client, now) {
        return Err(refuse(
            Refusal::RateLimited,
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Code::RateLimited,
                format!(
                    "more than conversions.beacons_per_minute ({}) beacons from this client; retry in {wait} s",
                    state.config.conversions.beacons_per_minute
                ),
            )
            .retry_after(wait),
        ));
    }
    let invalid = |e: ApiError| refuse(Refusal::Invalid, e);
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        let mime = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && mime != "text/plain" {
            return Err(invalid(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::UnsupportedMediaType,
                format!(
                    "content-type {mime:?} is not accepted; send application/json or text/plain (navigator.sendBeacon with a string)"
                ),
            )));
        }
    }
    let host = verified
        .map(|v| v.host.as_bytes())
        .or_else(|| parts.headers.get(header::HOST).map(|h| h.as_bytes()))
        .unwrap_or_default();
    if let Some(foreign) = cross_site(&parts.headers, host) {
        return Err(refuse(
            Refusal::CrossSite,
            ApiError::new(
                StatusCode::FORBIDDEN,
                Code::CrossSite,
                format!("{foreign} names another site; a conversion is counted only from this site's own pages"),
            )
            .field(foreign),
        ));
    }
    let timeout = Duration::from_millis(state.config.server.body_timeout_ms);
    let bytes =
        match tokio::time::timeout(timeout, axum::body::to_bytes(body, BEACON_MAX_BYTES)).await {
            Err(_) => {
                return Err(invalid(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    Code::BodyTimeout,
                    "the body did not arrive in time; send it in one go",
                )))
            }
            Ok(Err(_)) => {
                return Err(invalid(
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Code::BodyTooLarge,
                        format!(
                            "a beacon body is at most {BEACON_MAX_BYTES} bytes; send {{\"goal\":\"<goal>\"}}"
                        ),
                    )
                    .field("body"),
                ))
            }
            Ok(Ok(b)) => b,
        };
    let goal = parse_goal(&bytes).map_err(invalid)?;
    let conv = &state.conversions;
    let Some(index) = conv.goal_index(&goal) else {
        return Err(invalid(
            ApiError::bad_request(
                Code::UnknownGoal,
                format!(
                    "goal: {goal:?} is not a configured goal (conversions.goals: {}); send one of those",
                    conv.goals().join(", ")
                ),
            )
            .field("goal"),
        ));
    };
    let visitor = match state.visitors.of_request(&parts.headers, now) {
        Ok(v) => v,
        Err(NoVisitor::Missing) => {
            return Err(refuse(
                Refusal::NoVisitor,
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    Code::NoVisitor,
                    "no lg_v visitor cookie: a conversion counts only from a browser that loaded a page under conversions.funnel_paths first",
                )
                .field("lg_v"),
            ))
        }
        Err(NoVisitor::Forged) => {
            return Err(refuse(
                Refusal::ForgedVisitor,
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    Code::ForgedVisitor,
                    "the lg_v visitor cookie was not issued by this site, or has expired; load a page under conversions.funnel_paths for a new one",
                )
                .field("lg_v"),
            ))
        }
    };
    let day = state.visitors.today(now).day;
    // Nothing is counted until the goal's mark is set: a store that cannot set it
    // refuses the beacon (503, retry) and counts it as `unavailable`.
    let first = state
        .visitors
        .first(&day, Mark::Goal(&goal), &visitor)
        .map_err(|e| {
            tracing::warn!("cannot record a conversion: {e}");
            refuse(
                Refusal::Unavailable,
                ApiError::unavailable(
                    Code::Storage,
                    "the conversion could not be recorded; retry",
                    state.config.backpressure.retry_after_secs,
                ),
            )
        })?;
    if !first {
        return Err((Refusal::Repeat, None));
    }
    conv.count_claimed(&day, Mark::Goal(&goal), &visitor, |c| {
        c.record_conversion(index)
    });
    if let Some(grace) = &state.grace {
        grace.converted(&visitor, now);
    }
    // The conversion is counted (a retry would be a repeat), so the answer is 204 even
    // if a visitor mark below cannot be set; the visitor counts are then left short,
    // never over. Visited before converted: a day's converting visitors never exceed
    // its visitors (a cookie from an earlier day converts without a page view today).
    let marks = state.visitors.first_today(&visitor, now).and_then(|new| {
        if let Some(day) = new {
            conv.count_claimed(&day, Mark::Visited, &visitor, |c| c.record_unique_visitor());
        }
        state.visitors.first(&day, Mark::Converted, &visitor)
    });
    match marks {
        Ok(true) => conv.count_claimed(&day, Mark::Converted, &visitor, |c| {
            c.record_converting_visitor()
        }),
        Ok(false) => {}
        Err(e) => tracing::warn!("conversion counted, but not its visitor: {e}"),
    }
    Ok(())
}

/// The header (`origin` or `referer`) that names a site other than `host`, if any.
/// `Origin` decides when present (`null`, an opaque origin, is another site); else
/// `Referer`; a request with neither (an old browser, a privacy setting) passes.
fn cross_site(headers: &axum::http::HeaderMap, host: &[u8]) -> Option<&'static str> {
    let same = |value: &HeaderValue| {
        let Ok(uri) = axum::http::Uri::try_from(value.as_bytes()) else {
            return false;
        };
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => return false,
        };
        let Some(authority) = uri.authority() else {
            return false;
        };
        let Ok(theirs) =
            crate::syntax::host::parse_host(authority.as_str().as_bytes(), default_port)
        else {
            return false;
        };
        crate::syntax::host::parse_host(host, default_port).is_ok_and(|ours| ours.key == theirs.key)
            || theirs.key.as_bytes() == host
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        return (!same(origin)).then_some("origin");
    }
    if let Some(referer) = headers.get(header::REFERER) {
        return (!same(referer)).then_some("referer");
    }
    None
}

/// The goal of a beacon body `{"goal": "<name>"}`; other fields are ignored.
pub fn parse_goal(body: &[u8]) -> Result<String, ApiError> {
    let hint = "send {\"goal\":\"signup\"}";
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(Code::InvalidBody, format!("body: not JSON ({e}); {hint}"))
            .field("body")
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request(
            Code::InvalidBody,
            format!("body: expected a JSON object; {hint}"),
        )
        .field("body"));
    };
    match obj.get("goal") {
        None => Err(
            ApiError::bad_request(Code::InvalidBody, format!("goal: missing; {hint}"))
                .field("goal"),
        ),
        Some(serde_json::Value::String(g)) => Ok(g.clone()),
        Some(_) => Err(ApiError::bad_request(
            Code::InvalidBody,
            format!("goal: expected a string; {hint}"),
        )
        .field("goal")),
    }
}

/// How often retention runs in [`flush_loop`].
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Flushes every `every`, sweeps retention every [`RETENTION_EVERY`] (and once at
/// start), and flushes once more when `shutdown` fires.
pub async fn flush_loop(
    conv: Conversions,
    visitors: Visitors,
    clock: Clock,
    every: Duration,
    metrics_retention_ms: u64,
    payload_retention_ms: u64,
    shutdown: CancellationToken,
) {
    let mut flush = tokio::time::interval(every);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.tick().await;
    let mut retention = tokio::time::interval(RETENTION_EVERY);
    loop {
        let done = tokio::select! {
            _ = flush.tick() => false,
            _ = retention.tick() => {
                let h = conv.history().clone();
                let v = visitors.clone();
                let now = clock.now_ms();
                let cutoff = now.saturating_sub(metrics_retention_ms);
                let cutoff_day = crate::insight::analytics::day_of(cutoff, conv.timezone()).to_string();
                let swept = tokio::task::spawn_blocking(move || {
                    Ok::<_, StoreError>((
                        h.sweep_metrics(cutoff)?,
                        h.sweep_payloads(now.saturating_sub(payload_retention_ms))?,
                        v.sweep_before(&cutoff_day)?,
                    ))
                })
                .await;
                match swept {
                    Ok(Ok((rows, payloads, marks))) if rows + payloads + marks > 0 => {
                        tracing::info!(rows, payloads, marks, "retention swept old metrics rows, event payloads and visitor marks");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("retention sweep failed: {e}"),
                    Err(e) => tracing::warn!("retention sweep task failed: {e}"),
                }
                continue;
            }
            _ = shutdown.cancelled() => true,
        };
        let c = conv.clone();
        let now = clock.now_ms();
        match tokio::task::spawn_blocking(move || c.flush(now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("counter flush failed, counts kept for the next one: {e}"),
            Err(e) => tracing::warn!("counter flush task failed: {e}"),
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_one_padded_line() {
        assert_eq!(std::mem::size_of::<Shard>(), 128);
        assert!(std::mem::align_of::<CachePadded<Shard>>() >= 64);
        assert_eq!(std::mem::size_of::<CachePadded<Shard>>() % 64, 0);
    }

    #[test]
    fn take_swaps_out_and_peek_does_not() {
        let c = Counters::with_shards(4);
        c.record_visit();
        c.record_visit();
        c.record_conversion(1);
        c.record_cache_hit();
        c.record_grace_admitted();
        c.record_grace_admitted();
        c.record_grace_conversion();
        c.observe_factor(1.5);
        c.observe_factor(1.2);
        let (peek, peak) = c.peek();
        assert_eq!(peek.visits(), 2);
        assert_eq!((peek.grace_admitted(), peek.grace_conversions()), (2, 1));
        assert_eq!(peak, 1.5);
        let (taken, peak) = c.take();
        assert_eq!(taken, peek);
        assert_eq!(peak, 1.5);
        assert!(c.peek().0.is_zero());
        c.give_back(&taken);
        assert_eq!(c.take().0, taken);
    }

    #[test]
    fn concurrent_increments_racing_take_sum_exactly() {
        const THREADS: u64 = 4;
        const EACH: u64 = 200_000;
        let c = Counters::with_shards(2); // fewer shards than threads: shared cells too
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let taker = {
            let (c, done) = (c.clone(), done.clone());
            std::thread::spawn(move || {
                let mut visits = 0;
                let mut goal = 0;
                let mut takes = 0u64;
                while !done.load(Ordering::Acquire) {
                    let (t, _) = c.take();
                    visits += t.visits();
                    goal += t.conversions(2);
                    takes += 1;
                }
                (visits, goal, takes)
            })
        };
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..EACH {
                        c.record_visit();
                        c.record_conversion(2);
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        done.store(true, Ordering::Release);
        let (mut visits, mut goal, takes) = taker.join().unwrap();
        let (rest, _) = c.take();
        visits += rest.visits();
        goal += rest.conversions(2);
        assert_eq!(visits, THREADS * EACH);
        assert_eq!(goal, THREADS * EACH);
        assert!(takes > 0);
    }

    /// In a cluster, a claimed count and its claim are written by the same flush; a
    /// lost claim's correction is written once, by the flush that removes the claim.
    #[test]
    fn a_claim_is_flushed_with_its_count_and_a_loss_subtracted_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::ingest::store::Store::open(dir.path()).unwrap();
        let config = ConversionsConfig::default();
        const NOW: u64 = 1_795_720_000_000;
        let conv = Conversions::new(&config, History::open(&store).unwrap(), Factor::new(), NOW)
            .unwrap()
            .with_claims(Claims::new());
        let day = crate::insight::analytics::day_of(NOW, conv.timezone()).to_string();
        let visitor = Visitor {
            id: [3; 16],
            first_seen_secs: 1,
        };
        conv.count_claimed(&day, Mark::Visited, &visitor, |c| c.record_unique_visitor());
        let pending = |conv: &Conversions| conv.history().pending_claims(10, |_| false).unwrap();
        assert!(pending(&conv).is_empty(), "not before its count is flushed");
        conv.flush(NOW + 5_000).unwrap();
        let key = crate::insight::visitor::mark_key(&day, Mark::Visited, &visitor);
        assert_eq!(pending(&conv), vec![key.clone()]);
        let net = |conv: &Conversions| {
            conv.consistent(NOW + 20_000, |h, live| {
                let mut t = h.day(&day)?.unwrap();
                t.add_batch(&live.batch);
                Ok(t.tally.net().unique_visitors)
            })
            .unwrap()
        };
        assert_eq!(net(&conv), 1);
        // Another node holds it: the live view subtracts it at once, the next flush
        // writes the correction and removes the claim, and a later one nothing more.
        let kept = |k: &[u8]| conv.history().claim_kept(k).unwrap();
        conv.claims().unwrap().lost(vec![key.clone()], kept);
        assert!(conv.claims().unwrap().settling(&key));
        assert_eq!(net(&conv), 0);
        let batch = conv.flush(NOW + 10_000).unwrap().unwrap();
        assert_eq!(batch.tally.elsewhere.unique_visitors, 1);
        assert!(pending(&conv).is_empty());
        assert!(!conv.claims().unwrap().settling(&key));
        assert_eq!(conv.flush(NOW + 15_000).unwrap(), None);
        assert_eq!(net(&conv), 0);
        // Read before that flush removed it (a cached leaf), decided lost again after:
        // no longer kept, so not subtracted a second time.
        conv.claims().unwrap().lost(vec![key.clone()], kept);
        assert!(!conv.claims().unwrap().settling(&key));
        assert_eq!(conv.flush(NOW + 16_000).unwrap(), None);
        assert_eq!(net(&conv), 0);
        assert_eq!(
            conv.history()
                .day(&day)
                .unwrap()
                .unwrap()
                .tally
                .unique_visitors,
            1,
            "the count stays; the correction is beside it"
        );
    }

    #[test]
    fn beacon_bodies() {
        assert_eq!(parse_goal(br#"{"goal":"signup"}"#).unwrap(), "signup");
        assert_eq!(
            parse_goal(br#"{"goal":"signup","page":"/launch/"}"#).unwrap(),
            "signup"
        );
        for (body, field) in [
            (&b"goal=signup"[..], "body"),
            (b"[]", "body"),
            (b"{}", "goal"),
            (br#"{"goal":3}"#, "goal"),
        ] {
            let e = parse_goal(body).unwrap_err();
            assert_eq!(e.field, Some(field), "{}", e.message);
            assert!(e.message.starts_with(field), "{}", e.message);
        }
    }
}
