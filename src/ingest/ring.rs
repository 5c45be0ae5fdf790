//! The event ring between ingestion and the pump, and the pump that drains it into
//! the velocity window and publishes the factor.
//!
//! Producers (webhook handlers, any number) push small `Copy` events into a bounded
//! lock-free `ArrayQueue`. When it is full, the event goes to an unbounded lock-free
//! spill queue instead: the webhook never blocks and the event still reaches the
//! window; the overflow is counted in `launchguard_ring_overflow_total`.
//! One pump task is the only consumer. It wakes on a push or on a tick (so the
//! window slides and the factor decays when events stop), drains both queues,
//! records each event at its received time, and publishes the factor.
//!
//! **Invariant:** every pushed event is drained exactly once (ring or spill).
//! **Invariant:** the pump is the only writer of the computed factor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::queue::{ArrayQueue, SegQueue};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::ingest::factor::Factor;
use crate::ingest::velocity::Window;
use crate::telemetry;

/// What the window needs of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingEvent {
    pub seq: u64,
    pub received_ms: u64,
    pub weight_milli: u64,
    /// The `cache.purge_on` rule this event triggers: 0 for none, else its number.
    pub purge_rule: u16,
}

/// Handle to the ring; a clone is cheap and shares the queues.
#[derive(Clone)]
pub struct Ring {
    inner: Arc<Inner>,
}

struct Inner {
    queue: ArrayQueue<RingEvent>,
    spill: SegQueue<RingEvent>,
    wake: Notify,
    overflows: AtomicU64,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            inner: Arc::new(Inner {
                queue: ArrayQueue::new(capacity),
                spill: SegQueue::new(),
                wake: Notify::new(),
                overflows: AtomicU64::new(0),
            }),
        }
    }

    /// Pushes without blocking. A full ring spills; nothing is dropped.
    #[inline]
    pub fn push(&self, ev: RingEvent) {
        if let Err(ev) = self.inner.queue.push(ev) {
            self.inner.spill.push(ev);
            self.inner.overflows.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::RING_OVERFLOW_TOTAL).increment(1);
        }
        self.inner.wake.notify_one();
    }

    /// Events waiting for the pump.
    pub fn depth(&self) -> usize {
        self.inner.queue.len() + self.inner.spill.len()
    }

    /// Pushes that found the ring full since start.
    pub fn overflows(&self) -> u64 {
        self.inner.overflows.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.inner.queue.capacity()
    }

    fn pop(&self) -> Option<RingEvent> {
        self.inner.queue.pop().or_else(|| self.inner.spill.pop())
    }
}

/// The single consumer: owns the window, writes the computed factor.
pub struct Pump {
    ring: Ring,
    window: Window,
    factor: Factor,
    purge: Option<(crate::edge::PurgeRules, crate::edge::cache::Cache)>,
}

impl Pump {
    pub fn new(ring: Ring, window: Window, factor: Factor) -> Pump {
        Pump {
            ring,
            window,
            factor,
            purge: None,
        }
    }

    /// Applies the cache's event-driven purge rules to the events drained.
    pub fn with_purge(
        mut self,
        rules: crate::edge::PurgeRules,
        cache: crate::edge::cache::Cache,
    ) -> Pump {
        self.purge = Some((rules, cache));
        self
    }

    /// Drains every waiting event into the window, slides it to `now_ms`, and
    /// publishes the factor. Returns how many events were applied.
    pub fn drain(&mut self, now_ms: u64) -> usize {
        metrics::gauge!(telemetry::RING_DEPTH).set(self.ring.depth() as f64);
        let mut n = 0;
        let mut purge_rules: Vec<u16> = Vec::new();
        while let Some(ev) = self.ring.pop() {
            self.window.record(ev.received_ms, ev.weight_milli, now_ms);
            if ev.purge_rule != 0 && !purge_rules.contains(&ev.purge_rule) {
                purge_rules.push(ev.purge_rule);
            }
            n += 1;
        }
        if let (Some((rules, cache)), false) = (&self.purge, purge_rules.is_empty()) {
            let dropped = rules.apply(cache, &purge_rules);
            metrics::counter!(telemetry::CACHE_PURGED_TOTAL).increment(dropped as u64);
        }
        self.window.advance(now_ms);
        let lapsed = self
            .factor
            .set_computed(self.window.factor(), self.window.velocity(), now_ms);
        if let Some(pin) = lapsed {
            tracing::info!(
                pinned = pin.factor,
                "factor pin lapsed; the computed factor is in force again"
            );
        }
        if n > 0 {
            metrics::counter!(telemetry::EVENTS_PUMPED_TOTAL).increment(n as u64);
        }
        metrics::gauge!(telemetry::ENGAGEMENT_VELOCITY).set(self.window.velocity());
        metrics::gauge!(telemetry::SCALE_FACTOR).set(self.factor.current());
        metrics::gauge!(telemetry::SCALE_FACTOR_PINNED).set(
            if self.factor.pinned(now_ms).is_some() {
                1.0
            } else {
                0.0
            },
        );
        n
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Runs until `shutdown`, waking on every push and at least every `tick`.
    /// Drains once more on the way out.
    pub async fn run(mut self, clock: Clock, tick: Duration, shutdown: CancellationToken) {
        let ring = self.ring.clone();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ring.inner.wake.notified() => {}
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => {
                    self.drain(clock.now_ms());
                    return;
                }
            }
            self.drain(clock.now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VelocityConfig;

    fn ev(seq: u64, at: u64) -> RingEvent {
        RingEvent {
            seq,
            received_ms: at,
            weight_milli: 1000,
            purge_rule: 0,
        }
    }

    #[test]
    fn a_full_ring_spills_and_loses_nothing() {
        let ring = Ring::new(16);
        for i in 0..100 {
            ring.push(ev(i, 5_000));
        }
        assert_eq!(ring.overflows(), 84);
        assert_eq!(ring.depth(), 100);
        let factor = Factor::new();
        let mut pump = Pump::new(
            ring.clone(),
            Window::new(&VelocityConfig::default(), 5_000),
            factor.clone(),
        );
        assert_eq!(pump.drain(5_000), 100);
        assert_eq!(ring.depth(), 0);
        assert_eq!(pump.window().weighted_sum(), 100.0);
        // 100 / 60 * 0.4 + 1
        assert!((factor.current() - (1.0 + 0.4 * 100.0 / 60.0)).abs() < 1e-12);
    }

    #[test]
    fn concurrent_producers_are_all_counted() {
        let ring = Ring::new(64);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        ring.push(ev(t * 10_000 + i, 1_000));
                    }
                })
            })
            .collect();
        let factor = Factor::new();
        let mut pump = Pump::new(
            ring.clone(),
            Window::with_params(60, 0.0, 5.0, 1_000),
            factor,
        );
        let mut total = 0;
        while threads.iter().any(|t| !t.is_finished()) {
            total += pump.drain(1_000);
        }
        total += pump.drain(1_000);
        assert_eq!(total, 40_000);
        assert_eq!(pump.window().weighted_sum(), 40_000.0);
    }
}
