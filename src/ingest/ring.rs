//! The event ring between ingestion and the pump (`pump.rs`), which drains it into the
//! velocity window and publishes the factor.
//!
//! Producers (webhook handlers, any number) push small `Copy` events into a bounded
//! lock-free `ArrayQueue`. When it is full, the event goes to an unbounded lock-free
//! spill queue instead: the webhook never blocks and the event still reaches the
//! window; the overflow is counted in `launchguard_ring_overflow_total`.
//! One pump task (`pump.rs`) is the only consumer; a push wakes it.
//!
//! **Invariant:** every pushed event is drained exactly once (ring or spill).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::queue::{ArrayQueue, SegQueue};
use tokio::sync::Notify;

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

    /// Resolves at the next push (or at once if one came since the last wait): for
    /// the pump.
    pub(crate) async fn woken(&self) {
        self.inner.wake.notified().await
    }

    /// The next event, ring first; for the pump, the only consumer.
    pub(crate) fn pop(&self) -> Option<RingEvent> {
        self.inner.queue.pop().or_else(|| self.inner.spill.pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VelocityConfig;
    use crate::ingest::factor::Factor;
    use crate::ingest::pump::Pump;
    use crate::ingest::velocity::Window;

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
