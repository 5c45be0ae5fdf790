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
//! The feed keeps the last [`BACKLOG`] samples (five minutes) and sends them first to
//! a dashboard that connects, so its charts are full at once; every SSE event carries
//! its sample's `id`, and a client that reconnects with `Last-Event-ID` gets only what
//! came after it. **Invariant:** a subscriber gets each sample at most once, in
//! order (backlog and channel are split under one lock).
//!
//! The dashboard page itself is `dashboard/index.html`, compiled into the binary: no
//! CDN, no build step, its charts drawn by its own canvas code.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
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
use crate::insight::grace::GraceCounts;
use crate::insight::history::{DayTotals, Tally};

/// The dashboard page.
pub const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");

/// Webhook events listed per sample at most.
const FEED_LIMIT: usize = 20;

/// Samples kept for a dashboard that connects: five minutes at one a second, as many
/// as the dashboard's charts show.
pub const BACKLOG: usize = 300;
/// Samples a slow dashboard may fall behind before it skips ahead.
const LAG: usize = 64;

/// Handle to the feed; a clone is cheap.
#[derive(Clone)]
pub struct LiveFeed {
    inner: Arc<Inner>,
}

/// One published sample: its SSE id and its JSON.
#[derive(Debug)]
struct Published {
    id: u64,
    json: Arc<str>,
}

struct Inner {
    tx: broadcast::Sender<Arc<Published>>,
    /// The last [`BACKLOG`] samples, oldest first, and the id of the next one. Publish
    /// and subscribe both hold this lock, so a subscriber gets every sample exactly
    /// once: from the backlog if it came before, from the channel if after.
    backlog: Mutex<(VecDeque<Arc<Published>>, u64)>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed::new()
    }
}

impl LiveFeed {
    /// Ids start at the second the feed was made, times 1000 (one sample a second
    /// never catches up with that), so a dashboard's `Last-Event-ID` from before a
    /// restart is older than every sample of this process and it gets them all.
    pub fn new() -> LiveFeed {
        let first_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1) * 1000);
        let (tx, _) = broadcast::channel(LAG);
        LiveFeed {
            inner: Arc::new(Inner {
                tx,
                backlog: Mutex::new((VecDeque::with_capacity(BACKLOG), first_id)),
            }),
        }
    }

    fn publish(&self, json: Arc<str>) {
        let mut backlog = self.inner.backlog.lock();
        let (samples, next_id) = &mut *backlog;
        let sample = Arc::new(Published { id: *next_id, json });
        *next_id += 1;
        if samples.len() == BACKLOG {
            samples.pop_front();
        }
        samples.push_back(sample.clone());
        // No dashboard connected is fine.
        let _ = self.inner.tx.send(sample);
    }

    /// The id of the newest sample, if any was published.
    pub fn newest_id(&self) -> Option<u64> {
        self.inner.backlog.lock().0.back().map(|s| s.id)
    }

    /// The backlog after `last_seen` (all of it without one, or for an id this feed
    /// never gave), then every new sample. A dashboard that falls more than a few
    /// dozen samples behind skips to the newest rather than blocking the sampler.
    fn subscribe(
        &self,
        last_seen: Option<u64>,
    ) -> impl Stream<Item = Arc<Published>> + Send + 'static {
        let backlog = self.inner.backlog.lock();
        let rx = self.inner.tx.subscribe();
        let (samples, next_id) = &*backlog;
        let after = last_seen.filter(|&id| id < *next_id).unwrap_or(0);
        let first: Vec<_> = samples.iter().filter(|s| s.id > after).cloned().collect();
        drop(backlog);
        futures_util::stream::iter(first).chain(BroadcastStream::new(rx).filter_map(|r| r.ok()))
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
    /// What the funnel grace did today (the day's totals, as `/api/analytics` has
    /// them); `None` when it is off (`backpressure.funnel_grace_secs = 0`).
    pub grace: Option<GraceCounts>,
    /// The waiting room now; `None` when it is off (`waiting_room.enabled = false`).
    pub waiting_room: Option<crate::edge::waiting::Snapshot>,
    /// In a cluster, each node's share of today (this node's first, with its live
    /// window); empty on one box.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeToday>,
}

/// One node's line of today, in a cluster.
#[derive(Debug, Serialize)]
pub struct NodeToday {
    pub node: String,
    pub requests: u64,
    pub visits: u64,
    pub unique_visitors: u64,
    pub conversions: u64,
    pub webhooks_accepted: u64,
}

impl NodeToday {
    fn of(node: String, t: &DayTotals) -> NodeToday {
        let net = t.tally.net();
        NodeToday {
            node,
            requests: t.tally.requests,
            visits: t.tally.visits,
            unique_visitors: net.unique_visitors,
            conversions: net.conversions_total(),
            webhooks_accepted: t.tally.webhooks_accepted,
        }
    }
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
    pub grace: Option<crate::insight::grace::FunnelGrace>,
    pub waiting_room: Option<crate::edge::waiting::Room>,
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
        let peers = history.node_days(&day)?;
        let mut own = history
            .own_day(&day)?
            .unwrap_or_else(|| DayTotals::empty(&day));
        if analytics::day_of(live.window_start_ms, conv.timezone()).to_string() == day {
            totals.add_batch(&live.batch);
            own.add_batch(&live.batch);
        }
        let nodes = if peers.is_empty() {
            Vec::new()
        } else {
            let me = crate::insight::analytics::own_node(&state.config);
            std::iter::once(NodeToday::of(me, &own))
                .chain(peers.iter().map(|(n, t)| NodeToday::of(n.clone(), t)))
                .collect()
        };
        Ok((totals, nodes))
    });
    let (totals, nodes) = match totals {
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

    // What another node of the cluster counted first is counted there.
    let tally = &totals.tally.net();
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
        grace: state.grace.as_ref().map(|g| g.counts(tally)),
        waiting_room: state.waiting_room.as_ref().map(|r| r.snapshot()),
        nodes,
    };
    let next = Previous {
        t: now,
        day,
        tally: tally.clone(),
        last_seq,
    };
    (Ok(sample), next)
}

/// `GET /api/live`: the samples as Server-Sent Events, each with its `id`: first the
/// last five minutes (those after `Last-Event-ID` when the client sends one it was
/// given), then each new one.
pub async fn stream(State(feed): State<LiveFeed>, headers: HeaderMap) -> Response {
    let events = feed
        .subscribe(last_event_id(&headers))
        .map(|s| Ok::<_, Infallible>(Event::default().id(s.id.to_string()).data(&*s.json)));
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The `Last-Event-ID` a reconnecting client sends: a decimal id, or nothing (any
/// other value is ignored, and the client gets the whole backlog).
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get("last-event-id")?.as_bytes();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// The ids a stream gives without waiting: what it had at once.
    fn ready_ids(stream: impl Stream<Item = Arc<Published>> + Send + 'static) -> Vec<u64> {
        let mut stream = Box::pin(stream);
        let mut ids = Vec::new();
        while let Some(Some(s)) = stream.next().now_or_never() {
            ids.push(s.id);
        }
        ids
    }

    fn publish_n(feed: &LiveFeed, n: usize) {
        for i in 0..n {
            feed.publish(format!("{{\"n\":{i}}}").into());
        }
    }

    #[test]
    fn a_late_subscriber_gets_the_backlog_at_once_then_each_new_sample_once() {
        let feed = LiveFeed::new();
        assert_eq!(feed.newest_id(), None);
        assert!(ready_ids(feed.subscribe(None)).is_empty());
        publish_n(&feed, 7);
        let newest = feed.newest_id().unwrap();
        let first = newest - 6;
        let mut stream = Box::pin(feed.subscribe(None));
        let mut got = Vec::new();
        while let Some(Some(s)) = stream.next().now_or_never() {
            got.push(s.id);
        }
        assert_eq!(got, (first..=newest).collect::<Vec<_>>());
        // Then the next sample, once, and nothing else.
        publish_n(&feed, 1);
        let next = stream.next().now_or_never().flatten().unwrap();
        assert_eq!(next.id, newest + 1);
        assert_eq!(&*next.json, "{\"n\":0}");
        assert!(stream.next().now_or_never().is_none());
    }

    #[test]
    fn a_reconnect_with_last_event_id_gets_only_what_came_after() {
        let feed = LiveFeed::new();
        publish_n(&feed, 10);
        let newest = feed.newest_id().unwrap();
        assert_eq!(
            ready_ids(feed.subscribe(Some(newest - 3))),
            vec![newest - 2, newest - 1, newest]
        );
        assert!(ready_ids(feed.subscribe(Some(newest))).is_empty());
        // An id this feed never gave (a previous process's, or made up): everything.
        assert_eq!(ready_ids(feed.subscribe(Some(newest + 1_000))).len(), 10);
        assert_eq!(ready_ids(feed.subscribe(Some(0))).len(), 10);
    }

    #[test]
    fn the_backlog_keeps_the_last_five_minutes_only() {
        let feed = LiveFeed::new();
        publish_n(&feed, BACKLOG + 50);
        let ids = ready_ids(feed.subscribe(None));
        let newest = feed.newest_id().unwrap();
        assert_eq!(ids.len(), BACKLOG);
        assert_eq!(ids[0], newest + 1 - BACKLOG as u64);
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn last_event_id_is_a_decimal_or_nothing() {
        let h = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("last-event-id", HeaderValue::from_static(v));
            last_event_id(&h)
        };
        assert_eq!(h("1795680000123"), Some(1_795_680_000_123));
        for bad in ["", "-1", "1e3", " 12", "abc", "99999999999999999999"] {
            assert_eq!(h(bad), None, "{bad:?}");
        }
        assert_eq!(last_event_id(&HeaderMap::new()), None);
    }
}
