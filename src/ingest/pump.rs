//! The pump: the ring's single consumer. It wakes on a push or on a tick (so the window
//! slides and the factor decays when events stop), drains the ring and its spill
//! queue, records each event at its received time, applies the purge rules the events
//! carry, and publishes the factor.
//!
//! **Invariant:** the pump is the only writer of the computed factor.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::ingest::factor::Factor;
use crate::ingest::ring::Ring;
use crate::ingest::velocity::Window;
use crate::telemetry;

/// Applies purge rules by their numbers; returns the cache entries dropped.
type ApplyPurges = Box<dyn Fn(&[u16]) -> usize + Send>;

/// The single consumer: owns the window, writes the computed factor.
pub struct Pump {
    ring: Ring,
    window: Window,
    factor: Factor,
    /// Applies the purge rules numbered in the events drained; returns the entries
    /// dropped. The rules and the cache are the edge's: `app` hands this in.
    purge: Option<ApplyPurges>,
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

    /// Applies the cache's event-driven purge rules to the events drained: `apply`
    /// gets the distinct rule numbers the events carried (`RingEvent::purge_rule`)
    /// and returns how many cache entries it dropped.
    pub fn with_purge(mut self, apply: impl Fn(&[u16]) -> usize + Send + 'static) -> Pump {
        self.purge = Some(Box::new(apply));
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
        if let (Some(apply), false) = (&self.purge, purge_rules.is_empty()) {
            let dropped = apply(&purge_rules);
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
                _ = ring.woken() => {}
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
