//! The pump: the ring's single consumer. It wakes on a push or on a tick (so the window
//! slides and the factor decays when events stop), drains the ring and its spill
//! queue, records each event at its received time, applies the purge rules the events
//! carry, and publishes the factor.
//!
//! The purge rules (`cache.purge_on`) are the cache's; ingest sees them through
//! [`Purges`]. `app` builds them once and hands the same `Arc` to the ingestor, which
//! numbers each event's rule into its ring event, and to the pump, which applies the
//! numbers it drains: one numbering, so a number means the rule it was given for.
//!
//! **Invariant:** the pump is the only writer of the computed factor.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::ingest::factor::Factor;
use crate::ingest::ring::Ring;
use crate::ingest::velocity::Window;
use crate::telemetry;

/// The cache's event-driven purge rules, as ingest sees them: a number for an event
/// type, and the purge of numbered rules. Implemented by the edge.
pub trait Purges: Send + Sync {
    /// The rule `event_type` triggers: 0 for none, else a number `apply` knows.
    fn rule_of(&self, event_type: &str) -> u16;
    /// Applies the rules numbered `rules` (distinct, none 0); returns the cache
    /// entries dropped.
    fn apply(&self, rules: &[u16]) -> usize;
}

/// The single consumer: owns the window, writes the computed factor.
pub struct Pump {
    ring: Ring,
    window: Window,
    factor: Factor,
    /// The purge rules numbered in the events drained; the edge's, handed in by `app`
    /// (the same value the ingestor numbers them with).
    purges: Option<Arc<dyn Purges>>,
}

impl Pump {
    pub fn new(ring: Ring, window: Window, factor: Factor) -> Pump {
        Pump {
            ring,
            window,
            factor,
            purges: None,
        }
    }

    /// Applies the cache's event-driven purge rules to the events drained:
    /// `Purges::apply` gets the distinct rule numbers the events carried
    /// (`RingEvent::purge_rule`, written by the ingestor from the same `purges`).
    pub fn with_purges(mut self, purges: Arc<dyn Purges>) -> Pump {
        self.purges = Some(purges);
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
        if let (Some(purges), false) = (&self.purges, purge_rules.is_empty()) {
            let dropped = purges.apply(&purge_rules);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ingest::store::Store;
    use crate::ingest::webhook::signature::Keys;
    use crate::ingest::webhook::Ingestor;
    use parking_lot::Mutex;

    /// Rules numbered as the edge numbers them (position + 1), recording what the
    /// pump applies by the rule's name.
    struct Rules {
        names: Vec<&'static str>,
        applied: Mutex<Vec<&'static str>>,
    }

    impl Purges for Rules {
        fn rule_of(&self, event_type: &str) -> u16 {
            self.names
                .iter()
                .position(|n| *n == event_type)
                .map_or(0, |i| (i + 1) as u16)
        }

        fn apply(&self, rules: &[u16]) -> usize {
            let mut applied = self.applied.lock();
            for r in rules {
                applied.push(self.names[*r as usize - 1]);
            }
            rules.len()
        }
    }

    #[test]
    fn the_rules_the_ingestor_numbers_are_the_rules_the_pump_applies() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse("").unwrap();
        let ring = Ring::new(16);
        let clock = Clock::manual(1_000_000);
        let rules = Arc::new(Rules {
            names: vec!["launched", "maker_comment"],
            applied: Mutex::new(Vec::new()),
        });
        let ingestor = Ingestor::new(
            &config,
            Keys::new(Vec::new()),
            Store::open(dir.path()).unwrap(),
            ring.clone(),
            clock.clone(),
        )
        .with_purges(rules.clone());
        let mut pump = Pump::new(
            ring,
            Window::new(&config.velocity, clock.now_ms()),
            Factor::new(),
        )
        .with_purges(rules.clone());
        for (id, event_type) in [
            ("a", "upvote"),
            ("b", "maker_comment"),
            ("c", "maker_comment"),
            ("d", "launched"),
        ] {
            ingestor
                .ingest_synthetic(id, event_type, Vec::new())
                .unwrap();
        }
        assert_eq!(pump.drain(clock.now_ms()), 4);
        assert_eq!(*rules.applied.lock(), ["maker_comment", "launched"]);
        // A duplicate reaches neither the ring nor the purges.
        ingestor
            .ingest_synthetic("b", "maker_comment", Vec::new())
            .unwrap();
        assert_eq!(pump.drain(clock.now_ms()), 0);
        assert_eq!(rules.applied.lock().len(), 2);
    }
}
