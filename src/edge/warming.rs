//! Warming ahead of the wave (refresh-ahead): from `cache.refresh_ahead_factor` on,
//! the cached funnel pages (`conversions.funnel_paths`) and `cache.warm_urls` are
//! fetched again before their lifetime runs out, so the crowd meets full-lifetime
//! entries and no visitor waits on a miss or is served a stale copy.
//!
//! - **When.** A task looks once every `every` (1 s) at the factor and the clock
//!   (injected). When the factor crosses the threshold upwards, every such page is
//!   fetched at once (its lifetime shrank with the factor: `base_ttl / factor`); while
//!   the factor stays at or above it, each one is fetched again once it is due
//!   ([`freshness::refresh_due`]: in the last quarter of its lifetime, or within two
//!   looks of its end). A `warm_urls` page missing from the cache is warmed.
//! - **How.** Each refresh is the one shared fetch of its key (a visitor's refresh of
//!   the same key and this one never both run), conditional when the page has
//!   validators, under an origin fill permit like any miss, and compressed at once.
//!   Pages are refreshed one after another, so refresh-ahead never holds more than
//!   one origin permit.
//! - **Counted** in `launchguard_cache_refresh_ahead_total{result}`: `refreshed`, or
//!   `skipped` (a refresh of that page ran already, the origin failed, or no permit).
//!
//! **Invariant:** refresh-ahead only ever replaces an entry with what the origin
//! answered now; it never extends a lifetime on its own.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::edge::cache::freshness;
use crate::edge::cache::key::{self, Key};
use crate::edge::origin::Forwarded;
use crate::edge::Edge;
use crate::ingest::factor::Factor;
use crate::telemetry;

/// What one look did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub refreshed: usize,
    pub skipped: usize,
    pub warmed: usize,
}

/// The refresh-ahead task (module docs), until `shutdown`.
pub async fn run(
    edge: Edge,
    factor: Factor,
    clock: Clock,
    every: Duration,
    shutdown: CancellationToken,
) {
    if edge.refresh_ahead_factor() <= 0.0 {
        return;
    }
    let mut above = false;
    loop {
        let f = factor.current();
        let now = clock.now_ms();
        if f >= edge.refresh_ahead_factor() {
            let crossing = !above;
            above = true;
            if crossing {
                tracing::info!(
                    factor = f,
                    threshold = edge.refresh_ahead_factor(),
                    "refresh-ahead: the factor crossed the threshold; refreshing the funnel pages and warm_urls"
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = look(&edge, f, now, crossing, every) => {}
            }
        } else {
            above = false;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One look at `factor` and `now_ms`: refreshes what is due (everything when
/// `crossing`), warms missing `warm_urls`.
pub async fn look(edge: &Edge, factor: f64, now_ms: u64, crossing: bool, every: Duration) -> Look {
    let cache = edge.cache();
    let lead_ms = 2 * every.as_millis() as u64;
    let mut done = Look::default();
    let wanted = |text: &str| {
        let Some((url, _host)) = text.split_once('\0') else {
            return false;
        };
        let (path, _) = key::split(url);
        edge.is_funnel(path) || edge.warm_urls().iter().any(|w| w == url)
    };
    let due: Vec<_> = cache
        .store()
        .objects_where(wanted)
        .into_iter()
        .filter(|(_, e)| {
            crossing || freshness::refresh_due(&e.life, cache.policy(), factor, now_ms, lead_ms)
        })
        .filter_map(|(k, e)| Some((Key::from_stored(&k)?, e)))
        .collect();
    for (key, entry) in due {
        let Ok(host) = axum::http::HeaderValue::from_str(key.host()) else {
            continue;
        };
        let fwd = Forwarded {
            client: None,
            host,
            proto: "http",
        };
        if cache.refresh_ahead(&key, &entry, fwd, factor).await {
            done.refreshed += 1;
            metrics::counter!(telemetry::CACHE_REFRESH_AHEAD_TOTAL, "result" => "refreshed")
                .increment(1);
        } else {
            done.skipped += 1;
            metrics::counter!(telemetry::CACHE_REFRESH_AHEAD_TOTAL, "result" => "skipped")
                .increment(1);
        }
    }
    // warm_urls not in the cache at all (never fetched, purged, evicted).
    let missing: Vec<String> = edge
        .warm_urls()
        .iter()
        .filter(|u| !edge.is_cached(u))
        .cloned()
        .collect();
    for r in edge.warm(&missing).await {
        if r.status == 200 {
            done.warmed += 1;
        }
    }
    done
}
