//! The live feed: one sample a second of what an operator watches on launch day,
//! served as Server-Sent Events on `GET /api/live` and drawn by `/dashboard`.
//!
//! One sampler task builds each sample once (factor, velocity, per-second rates of
//! requests, rejections, webhooks, visits and conversions, the cache hit ratio, the
//! webhook events that arrived, today's totals and economics) and broadcasts it as a
//! JSON string; every connected dashboard gets the same bytes. Rates are differences
//! of today's exact totals (flushed rows plus live counters, read under the flush
//! lock), so the live view and `/api/analytics` never disagree.
//!
//! The dashboard page itself is `dashboard/index.html`, compiled into the binary: no
//! CDN, no build step, its charts drawn by its own canvas code.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::ingest::store::StoreError;
use crate::insight::analytics::{self, Economics, Pricing};
use crate::insight::history::{DayTotals, Tally};

/// The dashboard page.
pub const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");

/// Webhook events listed per sample at most.
const FEED_LIMIT: usize = 20;

/// Handle to the feed; a clone is cheap.
#[derive(Clone)]
pub struct LiveFeed {
    inner: Arc<Inner>,
}

struct Inner {
    tx: broadcast::Sender<Arc<str>>,
    /// The newest sample, sent first to a dashboard that connects.
    last: Mutex<Option<Arc<str>>>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed::new()
    }
}

impl LiveFeed {
    pub fn new() -> LiveFeed {
        let (tx, _) = broadcast::channel(16);
        LiveFeed {
            inner: Arc::new(Inner {
                tx,
                last: Mutex::new(None),
            }),
        }
    }

    fn publish(&self, sample: Arc<str>) {
        *self.inner.last.lock() = Some(sample.clone());
        // No dashboard connected is fine.
        let _ = self.inner.tx.send(sample);
    }

    /// The newest sample, then every following one. A dashboard that falls behind
    /// skips to the newest rather than blocking the sampler.
    fn subscribe(&self) -> impl Stream<Item = Arc<str>> + Send + 'static {
        let rx = self.inner.tx.subscribe();
        let first = self.inner.last.lock().clone();
        tokio_stream::iter(first).chain(BroadcastStream::new(rx).filter_map(|r| r.ok()))
    }
}

/// One sample, as the dashboard reads it.
#[derive(Debug, Serialize)]
pub struct Sample {
    /// Unix ms.
    pub t: u64,
    pub factor: f64,
    pub computed_factor: f64,
    pub velocity: f64,
    pub pinned: bool,
    /// Non-critical paths are answered 503 now (factor above `backpressure.shed_factor`).
    pub shedding: bool,
    pub ring_depth: usize,
    pub requests_per_s: f64,
    pub rejections_per_s: f64,
    pub webhooks_per_s: f64,
    pub visits_per_s: f64,
    pub conversions_per_s: f64,
    /// Hits / (hits + misses) over the last interval; `None` without cache lookups.
    pub hit_ratio: Option<f64>,
    /// Today's totals so far.
    pub requests_total: u64,
    pub webhooks_total: u64,
    /// Webhook events stored since the previous sample, oldest first.
    pub events: Vec<FeedEvent>,
    pub today: Today,
}

#[derive(Debug, Serialize)]
pub struct FeedEvent {
    pub seq: u64,
    pub id: String,
    pub event_type: String,
    pub received_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Today {
    pub day: String,
    pub timezone: String,
    /// Page views under the funnel paths.
    pub visits: u64,
    /// Visitors by their cookie, once each.
    pub unique_visitors: u64,
    pub converting_visitors: u64,
    pub conversions: Vec<(String, u64)>,
    pub conversions_total: u64,
    #[serde(flatten)]
    pub economics: Economics,
    pub peak_factor: f64,
    pub peak_rps: f64,
}

/// What the sampler remembers between two samples.
#[derive(Debug, Default)]
struct Previous {
    t: u64,
    day: String,
    tally: Tally,
    last_seq: u64,
}

/// What a sample reads: the counters and history, the store's events, the factor, the
/// ring, the config and the clock. `app` builds it.
#[derive(Clone)]
pub struct Sources {
    pub conversions: crate::insight::counters::Conversions,
    pub store: crate::ingest::store::Store,
    pub factor: crate::ingest::factor::Factor,
    pub ring: crate::ingest::ring::Ring,
    pub config: std::sync::Arc<crate::config::Config>,
    pub clock: crate::clock::Clock,
}

/// Builds a sample every `every` until `shutdown`, and publishes it.
pub async fn sample_loop(
    state: Sources,
    feed: LiveFeed,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut prev = Previous::default();
    let mut last_tick = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Rates are per second of real time between two samples (the launch-day
        // clock may be a test's manual one).
        let elapsed = last_tick.elapsed();
        last_tick = tokio::time::Instant::now();
        let s = state.clone();
        let taken = std::mem::take(&mut prev);
        match tokio::task::spawn_blocking(move || sample(&s, taken, elapsed)).await {
            Ok((Ok(sample), next)) => {
                prev = next;
                match serde_json::to_string(&sample) {
                    Ok(json) => feed.publish(json.into()),
                    Err(e) => tracing::warn!("live sample not encodable: {e}"),
                }
            }
            Ok((Err(e), back)) => {
                prev = back;
                tracing::warn!("live sample skipped: {e}");
            }
            Err(e) => tracing::warn!("live sampler task failed: {e}"),
        }
    }
}

/// The sample, or why none could be taken, and what to remember for the next one.
type SampleResult = (Result<Sample, StoreError>, Previous);

fn sample(state: &Sources, prev: Previous, elapsed: Duration) -> SampleResult {
    let now = state.clock.now_ms();
    let conv = &state.conversions;
    let day = analytics::day_of(now, conv.timezone()).to_string();
    let totals = conv.consistent(now, |history, live| {
        let mut totals = history.day(&day)?.unwrap_or_else(|| DayTotals::empty(&day));
        if analytics::day_of(live.window_start_ms, conv.timezone()).to_string() == day {
            totals.add_batch(&live.batch);
        }
        Ok(totals)
    });
    let totals = match totals {
        Ok(t) => t,
        Err(e) => return (Err(e), prev),
    };
    // First sample: the newest events; then whatever arrived since.
    let events = if prev.t == 0 {
        state.store.recent_events(FEED_LIMIT / 2).map(|mut v| {
            v.reverse();
            v
        })
    } else {
        state.store.events_after(prev.last_seq, FEED_LIMIT)
    };
    let events = match events {
        Ok(e) => e,
        Err(e) => return (Err(e), prev),
    };

    let tally = &totals.tally;
    // Across midnight the totals start again from zero: count from there.
    let base = if prev.day == day {
        prev.tally.clone()
    } else {
        Tally::default()
    };
    let secs = if prev.t == 0 {
        1.0
    } else {
        elapsed.as_secs_f64().max(0.001)
    };
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
    let (hits, misses) = (
        tally.cache_hits.saturating_sub(base.cache_hits),
        tally.cache_misses.saturating_sub(base.cache_misses),
    );
    let factor = state.factor.current();
    let economics = analytics::economics(
        tally.unique_visitors,
        tally.converting_visitors,
        tally.conversions_total(),
        &Pricing::of(&state.config.conversions),
    );
    let last_seq = events.last().map_or(prev.last_seq, |(seq, _)| *seq);
    let sample = Sample {
        t: now,
        factor,
        computed_factor: state.factor.computed(),
        velocity: state.factor.velocity(),
        pinned: state.factor.pinned(now).is_some(),
        shedding: factor > state.config.backpressure.shed_factor,
        ring_depth: state.ring.depth(),
        requests_per_s: rate(tally.requests, base.requests),
        rejections_per_s: rate(tally.rejections, base.rejections),
        webhooks_per_s: rate(tally.webhooks_accepted, base.webhooks_accepted),
        visits_per_s: rate(tally.visits, base.visits),
        conversions_per_s: rate(tally.conversions_total(), base.conversions_total()),
        hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        requests_total: tally.requests,
        webhooks_total: tally.webhooks_accepted,
        events: events
            .into_iter()
            .map(|(seq, e)| FeedEvent {
                seq,
                id: e.id,
                event_type: e.event_type,
                received_ms: e.received_ms,
            })
            .collect(),
        today: Today {
            day: day.clone(),
            timezone: state.config.conversions.timezone.clone(),
            visits: tally.visits,
            unique_visitors: tally.unique_visitors,
            converting_visitors: tally.converting_visitors,
            conversions: tally.conversions.clone(),
            conversions_total: tally.conversions_total(),
            economics,
            peak_factor: totals.peak_factor,
            peak_rps: totals.peak_rps,
        },
    };
    let next = Previous {
        t: now,
        day,
        tally: totals.tally,
        last_seq,
    };
    (Ok(sample), next)
}

/// `GET /api/live`: the samples as Server-Sent Events, the newest first.
pub async fn stream(State(feed): State<LiveFeed>) -> Response {
    let events = feed
        .subscribe()
        .map(|json| Ok::<_, Infallible>(Event::default().data(&*json)));
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /dashboard`.
pub async fn dashboard() -> Response {
    let mut res = Html(DASHBOARD_HTML).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page loads nothing from elsewhere; say so to the browser.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'",
        ),
    );
    res
}
