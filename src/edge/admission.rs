//! Admission: which class a path belongs to, whether it is shed at the current
//! factor, and the origin concurrency limit.
//!
//! - Classes come from `backpressure.critical_paths` and `low_paths`, glob patterns
//!   compiled once into two [`PathSet`]s at startup (the
//!   pattern language of `syntax::globs`, shared with the funnel paths); the rest is normal. The webhook
//!   path and the conversion beacon (`/api/convert`) are always critical.
//! - `factor > backpressure.shed_factor` → every non-critical request is answered
//!   503 + `Retry-After` + `Cache-Control: no-store` before it costs anything.
//! - Origin fetches (misses, revalidations, refreshes) hold an [`OriginPermit`] from a
//!   limit of `clamp(base_concurrency × factor, base, max)`, at the factor the request
//!   was admitted under. A request that waits longer than `origin.queue_timeout_ms` gets
//!   503, never a hang.
//! - The limit is split in two shares: requests that bypass the cache (Authorization,
//!   personal cookies, unsafe methods) hold at most `max(1, floor(limit ×
//!   origin.bypass_share))` permits, and cache fills (misses, refreshes, revalidations)
//!   the rest. However many logged-in clients pile onto a slow origin, a visitor's
//!   cold page still finds a permit; however many fills a cache-busting flood starts,
//!   a signup POST still finds one. Neither share borrows the other's idle permits:
//!   the guarantee is worth more than the spare capacity.
//!
//! - A request that would be shed is asked of the funnel grace ([`Grace`]) first: a
//!   visitor whose cookies show a funnel page view within
//!   `backpressure.funnel_grace_secs` passes, whatever the path.
//!
//! **Invariant:** the shed decision is one atomic load of the factor plus a glob match
//! on immutable sets; taking a permit is a compare-and-swap on one word (both counts,
//! all permits in the low half, bypass permits in the high half). Neither
//! takes a lock. Only a request that must *wait* for a permit parks on a `Notify`,
//! and only a request about to be shed is put to the grace (MACs, and for one it
//! admits, one shard lock of its table).
//! **Invariant:** a permit given is a permit returned (`Drop`), whatever happens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::{BackpressureConfig, VelocityConfig};
use crate::syntax::globs::PathSet;
use crate::telemetry;

/// The conversion beacon's path; always critical.
pub const BEACON_PATH: &str = "/api/convert";

/// How much a path matters when the crowd arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Critical,
    Normal,
    Low,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::Normal => "normal",
            Class::Low => "low",
        }
    }
}

/// Path classes, compiled once.
#[derive(Debug, Clone)]
pub struct Classifier {
    critical: Arc<PathSet>,
    low: Arc<PathSet>,
}

impl Classifier {
    /// `always_critical` holds the webhook path (and anything else that must pass).
    pub fn new(config: &BackpressureConfig, webhook_path: &str) -> Result<Classifier, String> {
        Ok(Classifier {
            critical: Arc::new(PathSet::new(
                &config.critical_paths,
                &[webhook_path, BEACON_PATH],
            )?),
            low: Arc::new(PathSet::new(&config.low_paths, &[])?),
        })
    }

    pub fn classify(&self, path: &str) -> Class {
        if self.critical.is_match(path) {
            Class::Critical
        } else if self.low.is_match(path) {
            Class::Low
        } else {
            Class::Normal
        }
    }
}

/// A second look at a request admission would shed: the funnel grace
/// (`backpressure.funnel_grace_secs`). The visitor cookies and their key are
/// insight's (`insight::grace`); the edge sees them as this trait, one value `app`
/// builds and hands to [`crate::edge::Edge::with_grace`].
pub trait Grace: Send + Sync {
    /// Whether the request may pass although its class is shed at `now_ms`. Asked
    /// only for a request that would otherwise be shed.
    fn admits(&self, headers: &axum::http::HeaderMap, now_ms: u64) -> bool;
}

/// Marks a response as refused by admission (shed, or no origin permit in time), for
/// the counters that judge the final answer (`counters::count_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

/// Whether a request of `class` is shed at `factor`. Pure.
#[inline]
pub fn shed(class: Class, factor: f64, shed_factor: f64) -> bool {
    class != Class::Critical && factor > shed_factor
}

/// `clamp(base × factor, base, max)`, the number of origin fetches allowed at once. Pure.
#[inline]
pub fn origin_limit(base: u32, max: u32, factor: f64) -> usize {
    let want = (f64::from(base) * factor).floor();
    let want = if want.is_finite() { want } else { 0.0 };
    (want as u64).clamp(u64::from(base), u64::from(max)) as usize
}

/// What an origin fetch is for, which decides the permits it may draw on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A cache fill, revalidation or refresh: serves everyone; the whole limit.
    Fill,
    /// A request that bypasses the cache: serves one client; its bounded share.
    Bypass,
}

/// The bypass share of `limit` permits: `max(1, floor(limit × share))`, below `limit`
/// whenever `limit > 1`. Pure.
#[inline]
pub fn bypass_limit(limit: usize, share: f64) -> usize {
    let n = (limit as f64 * share).floor() as usize;
    n.clamp(1, limit.saturating_sub(1).max(1))
}

const LOW: u64 = 0xffff_ffff;

/// The origin concurrency limit. A clone is cheap and shares the counter.
#[derive(Clone)]
pub struct OriginLimit {
    inner: Arc<LimitInner>,
}

struct LimitInner {
    /// All permits held (low 32 bits) and bypass permits held (high 32 bits).
    inflight: AtomicU64,
    /// Woken one at a time as permits come back, per use: a released permit may be
    /// one a fill can take and a bypass cannot.
    released: [Notify; 2],
    base: u32,
    max: u32,
    bypass_share: f64,
    queue_timeout: Duration,
}

/// Why no permit was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTimeout;

impl OriginLimit {
    pub fn new(
        velocity: &VelocityConfig,
        bypass_share: f64,
        queue_timeout: Duration,
    ) -> OriginLimit {
        OriginLimit {
            inner: Arc::new(LimitInner {
                inflight: AtomicU64::new(0),
                released: [Notify::new(), Notify::new()],
                base: velocity.base_concurrency,
                max: velocity.max_concurrency,
                bypass_share,
                queue_timeout,
            }),
        }
    }

    /// Permits held, of both shares.
    pub fn inflight(&self) -> usize {
        (self.inner.inflight.load(Ordering::Relaxed) & LOW) as usize
    }

    /// Permits held by requests that bypass the cache.
    pub fn bypass_inflight(&self) -> usize {
        (self.inner.inflight.load(Ordering::Relaxed) >> 32) as usize
    }

    /// Fill permits free at `factor` now: the fill share of the limit less the fill
    /// permits held (what the waiting room lets visitors in by).
    pub fn free_fills(&self, factor: f64) -> usize {
        let limit = origin_limit(self.inner.base, self.inner.max, factor);
        let cap = limit
            .saturating_sub(bypass_limit(limit, self.inner.bypass_share))
            .max(1);
        let held = self.inflight().saturating_sub(self.bypass_inflight());
        cap.saturating_sub(held)
    }

    /// Takes a permit for `use_` if one is free in its share at `factor`; never waits.
    pub fn try_acquire(&self, factor: f64, use_: Use) -> Option<OriginPermit> {
        let limit = origin_limit(self.inner.base, self.inner.max, factor);
        let bypass_cap = bypass_limit(limit, self.inner.bypass_share);
        let step = match use_ {
            Use::Fill => 1u64,
            Use::Bypass => 1 + (1 << 32),
        };
        let mut cur = self.inner.inflight.load(Ordering::Relaxed);
        loop {
            let (all, bypass) = ((cur & LOW) as usize, (cur >> 32) as usize);
            let full = match use_ {
                Use::Fill => all - bypass >= limit.saturating_sub(bypass_cap).max(1),
                Use::Bypass => bypass >= bypass_cap,
            };
            if full {
                return None;
            }
            match self.inner.inflight.compare_exchange_weak(
                cur,
                cur + step,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    metrics::gauge!(telemetry::ORIGIN_INFLIGHT).increment(1.0);
                    return Some(OriginPermit {
                        limit: self.clone(),
                        step,
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes a permit, waiting at most `origin.queue_timeout_ms`. The limit is the
    /// one of `factor`, the factor the request was admitted under (read once, by the
    /// front door), on every wake-up too.
    pub async fn acquire(&self, factor: f64, use_: Use) -> Result<OriginPermit, QueueTimeout> {
        if let Some(p) = self.try_acquire(factor, use_) {
            return Ok(p);
        }
        let deadline = tokio::time::Instant::now() + self.inner.queue_timeout;
        loop {
            let notified = self.inner.released[use_ as usize].notified();
            tokio::pin!(notified);
            // Register before re-checking, so a release between the check and the
            // wait is not missed.
            notified.as_mut().enable();
            if let Some(p) = self.try_acquire(factor, use_) {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.try_acquire(factor, use_).ok_or(QueueTimeout);
            }
        }
    }
}

/// One origin fetch in flight; returned on drop.
pub struct OriginPermit {
    limit: OriginLimit,
    step: u64,
}

impl Drop for OriginPermit {
    fn drop(&mut self) {
        self.limit
            .inner
            .inflight
            .fetch_sub(self.step, Ordering::AcqRel);
        metrics::gauge!(telemetry::ORIGIN_INFLIGHT).decrement(1.0);
        // One waiter of each use: each re-checks, and one that cannot take the
        // permit waits again.
        for n in &self.limit.inner.released {
            n.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        let c = BackpressureConfig {
            low_paths: vec!["/assets/*".into(), "/*.png".into()],
            ..BackpressureConfig::default()
        };
        Classifier::new(&c, "/webhooks/producthunt").unwrap()
    }

    #[test]
    fn classes_follow_the_patterns() {
        let c = classifier();
        assert_eq!(c.classify("/"), Class::Critical);
        assert_eq!(c.classify("/launch/"), Class::Critical);
        assert_eq!(c.classify("/launch"), Class::Critical);
        assert_eq!(c.classify("/launch/deep/page"), Class::Critical);
        assert_eq!(c.classify("/api/leaderboard"), Class::Critical);
        assert_eq!(c.classify("/webhooks/producthunt"), Class::Critical);
        assert_eq!(c.classify("/api/convert"), Class::Critical);
        assert_eq!(c.classify("/assets/app.js"), Class::Low);
        assert_eq!(c.classify("/img/logo.png"), Class::Low);
        assert_eq!(c.classify("/pricing"), Class::Normal);
        assert_eq!(c.classify("/launchpad"), Class::Normal);
    }

    #[test]
    fn shedding_spares_critical_paths_only_above_the_threshold() {
        assert!(!shed(Class::Normal, 2.0, 2.0));
        assert!(shed(Class::Normal, 2.01, 2.0));
        assert!(shed(Class::Low, 3.0, 2.0));
        assert!(!shed(Class::Critical, 5.0, 2.0));
    }

    #[test]
    fn the_limit_scales_with_the_factor_within_bounds() {
        assert_eq!(origin_limit(50, 250, 1.0), 50);
        assert_eq!(origin_limit(50, 250, 0.5), 50);
        assert_eq!(origin_limit(50, 250, 2.5), 125);
        assert_eq!(origin_limit(50, 250, 9.0), 250);
        assert_eq!(origin_limit(50, 250, f64::NAN), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_a_released_permit_or_time_out() {
        let v = VelocityConfig {
            base_concurrency: 2,
            max_concurrency: 4,
            ..VelocityConfig::default()
        };
        let limit = OriginLimit::new(&v, 0.5, Duration::from_millis(100));
        let first = limit.try_acquire(1.0, Use::Fill).unwrap();
        assert!(limit.try_acquire(1.0, Use::Fill).is_none());
        // A higher factor makes room at once.
        let second = limit.try_acquire(2.0, Use::Fill).unwrap();
        drop(second);
        // The waiter is released by the drop of the first permit.
        let l2 = limit.clone();
        let waiter = tokio::spawn(async move { l2.acquire(1.0, Use::Fill).await.is_ok() });
        tokio::task::yield_now().await;
        drop(first);
        assert!(waiter.await.unwrap());
        assert_eq!(limit.inflight(), 0);
        // Nobody releases: the waiter gives up after queue_timeout.
        let _held = limit.try_acquire(1.0, Use::Fill).unwrap();
        assert_eq!(
            limit.acquire(1.0, Use::Fill).await.err(),
            Some(QueueTimeout)
        );
    }

    #[test]
    fn bypass_requests_never_take_the_fills_share() {
        assert_eq!(bypass_limit(50, 0.5), 25);
        assert_eq!(bypass_limit(250, 0.5), 125);
        assert_eq!(bypass_limit(2, 0.9), 1);
        assert_eq!(bypass_limit(1, 0.5), 1);
        assert_eq!(bypass_limit(10, 0.01), 1);
        let v = VelocityConfig {
            base_concurrency: 10,
            max_concurrency: 20,
            ..VelocityConfig::default()
        };
        let limit = OriginLimit::new(&v, 0.5, Duration::from_millis(100));
        let bypass: Vec<_> = (0..60)
            .filter_map(|_| limit.try_acquire(1.0, Use::Bypass))
            .collect();
        assert_eq!(bypass.len(), 5);
        assert_eq!(limit.bypass_inflight(), 5);
        let fills: Vec<_> = (0..10)
            .filter_map(|_| limit.try_acquire(1.0, Use::Fill))
            .collect();
        assert_eq!(fills.len(), 5, "the other half is the fills'");
        drop(bypass);
        // Neither share borrows the other's idle permits.
        assert!(limit.try_acquire(1.0, Use::Fill).is_none());
        let posts: Vec<_> = (0..10)
            .filter_map(|_| limit.try_acquire(1.0, Use::Bypass))
            .collect();
        assert_eq!(posts.len(), 5, "fills never starve a signup");
        // A higher factor widens both shares.
        assert!(limit.try_acquire(2.0, Use::Fill).is_some());
        drop((fills, posts));
        assert_eq!(limit.inflight(), 0);
        assert_eq!(limit.bypass_inflight(), 0);
    }
}
