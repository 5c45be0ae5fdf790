//! The engagement-velocity window and the scale factor. Pure: no I/O, no clock;
//! every call takes `now_ms`, so tests drive time by hand.
//!
//! The window is `window_secs` one-second buckets in a ring. Weights are kept as
//! integer milli-units, so sums are exact: when the last event leaves the window the
//! sum is exactly zero and the factor exactly 1.0, with no floating-point residue.
//!
//! ```text
//! eps    = weighted_sum_in_window / window_secs
//! factor = min(1 + gain * eps, max_concurrency / base_concurrency)
//! ```
//!
//! **Invariant:** `factor()` is always within `[1.0, cap]`.
//! **Invariant:** an event counts for exactly `window_secs` whole seconds: the second
//! it arrived in and the `window_secs - 1` after it.

use crate::config::VelocityConfig;

/// Weights are stored in thousandths, so 1.2 is 1200 and sums stay exact.
pub const MILLI: f64 = 1000.0;

/// Converts a configured weight to milli-units.
pub fn to_milli(weight: f64) -> u64 {
    (weight * MILLI).round().max(0.0) as u64
}

#[derive(Debug, Clone)]
pub struct Window {
    buckets: Vec<u64>,
    /// The second (Unix seconds) that the newest bucket stands for.
    head_sec: u64,
    /// Sum of all buckets, milli-units.
    sum: u64,
    gain: f64,
    cap: f64,
}

impl Window {
    pub fn new(cfg: &VelocityConfig, now_ms: u64) -> Window {
        Window::with_params(cfg.window_secs, cfg.gain, cfg.cap(), now_ms)
    }

    pub fn with_params(window_secs: u32, gain: f64, cap: f64, now_ms: u64) -> Window {
        assert!(window_secs > 0, "window must have at least one bucket");
        assert!(cap >= 1.0, "cap below 1.0 would publish factors under 1");
        Window {
            buckets: vec![0; window_secs as usize],
            head_sec: now_ms / 1000,
            sum: 0,
            gain,
            cap,
        }
    }

    pub fn window_secs(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Slides the window so its newest bucket is the second of `now_ms`, emptying
    /// the buckets that fell out. Time never goes backwards here: an older `now_ms`
    /// leaves the window as it is.
    pub fn advance(&mut self, now_ms: u64) {
        let now_sec = now_ms / 1000;
        if now_sec <= self.head_sec {
            return;
        }
        let n = self.window_secs();
        let steps = now_sec - self.head_sec;
        if steps >= n {
            self.buckets.iter_mut().for_each(|b| *b = 0);
            self.sum = 0;
        } else {
            for sec in self.head_sec + 1..=now_sec {
                let slot = (sec % n) as usize;
                self.sum -= self.buckets[slot];
                self.buckets[slot] = 0;
            }
        }
        self.head_sec = now_sec;
    }

    /// Records an event of `weight_milli` received at `at_ms`, seen at `now_ms`.
    /// Events older than the window are ignored (they no longer count); events
    /// stamped in the future count in the current second. Returns whether it counted.
    pub fn record(&mut self, at_ms: u64, weight_milli: u64, now_ms: u64) -> bool {
        self.advance(now_ms.max(at_ms));
        let at_sec = (at_ms / 1000).min(self.head_sec);
        if self.head_sec - at_sec >= self.window_secs() {
            return false;
        }
        let slot = (at_sec % self.window_secs()) as usize;
        self.buckets[slot] += weight_milli;
        self.sum += weight_milli;
        true
    }

    /// Weighted events in the window, in whole units.
    pub fn weighted_sum(&self) -> f64 {
        self.sum as f64 / MILLI
    }

    /// Weighted events per second over the window.
    pub fn velocity(&self) -> f64 {
        self.weighted_sum() / self.window_secs() as f64
    }

    /// The scale factor for the window as it stands.
    pub fn factor(&self) -> f64 {
        if self.sum == 0 {
            return 1.0;
        }
        (1.0 + self.gain * self.velocity()).clamp(1.0, self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: u32 = 60;

    fn window(now_ms: u64) -> Window {
        Window::new(&VelocityConfig::default(), now_ms)
    }

    #[test]
    fn formula_matches_design() {
        // 30 upvotes (1.2) in one window: eps = 36/60 = 0.6, factor = 1 + 0.4*0.6.
        let mut w = window(1_000_000);
        for i in 0..30 {
            w.record(1_000_000 + i * 100, to_milli(1.2), 1_000_000 + i * 100);
        }
        assert_eq!(w.weighted_sum(), 36.0);
        assert!((w.factor() - 1.24).abs() < 1e-12, "{}", w.factor());
    }

    #[test]
    fn cap_is_max_over_base() {
        let mut w = window(0);
        for _ in 0..10_000 {
            w.record(0, to_milli(1.5), 0);
        }
        assert_eq!(w.factor(), 5.0);
    }

    #[test]
    fn event_counts_for_exactly_window_secs() {
        let mut w = window(10_500);
        w.record(10_500, 1000, 10_500);
        w.advance(10_000 + 59_999); // second 69: still inside (10..=69)
        assert!(w.factor() > 1.0);
        w.advance(70_000); // second 70: out
        assert_eq!(w.factor(), 1.0);
    }

    #[test]
    fn old_events_do_not_count_future_events_do() {
        let mut w = window(100_000);
        assert!(!w.record(100_000 - 61_000, 1000, 100_000));
        assert_eq!(w.factor(), 1.0);
        assert!(w.record(200_000, 1000, 100_000));
        assert!(w.factor() > 1.0);
    }

    #[derive(Debug, Clone)]
    struct Ev {
        gap_ms: u64,
        weight: u64,
    }

    fn events() -> impl Strategy<Value = Vec<Ev>> {
        prop::collection::vec(
            (0u64..3_000, 0u64..5_000).prop_map(|(gap_ms, weight)| Ev { gap_ms, weight }),
            0..300,
        )
    }

    proptest! {
        #[test]
        fn factor_stays_within_one_and_cap(evs in events(), start in 0u64..1u64 << 40) {
            let mut w = window(start);
            let mut now = start;
            for e in &evs {
                now += e.gap_ms;
                w.record(now, e.weight, now);
                let f = w.factor();
                prop_assert!((1.0..=5.0).contains(&f), "factor {f}");
            }
        }

        #[test]
        fn decays_to_exactly_one_after_the_window(evs in events(), start in 0u64..1u64 << 40) {
            let mut w = window(start);
            let mut now = start;
            for e in &evs {
                now += e.gap_ms;
                w.record(now, e.weight, now);
            }
            w.advance((now / 1000 + u64::from(W)) * 1000);
            prop_assert_eq!(w.factor(), 1.0);
            prop_assert_eq!(w.weighted_sum(), 0.0);
        }

        #[test]
        fn sum_matches_a_naive_recount(evs in events(), start in 0u64..1u64 << 40) {
            let mut w = window(start);
            let mut now = start;
            let mut seen = Vec::new();
            for e in &evs {
                now += e.gap_ms;
                w.record(now, e.weight, now);
                seen.push((now / 1000, e.weight));
                let head = now / 1000;
                let naive: u64 = seen
                    .iter()
                    .filter(|(s, _)| head - s < u64::from(W))
                    .map(|(_, wt)| wt)
                    .sum();
                prop_assert_eq!(w.sum, naive);
            }
        }

        #[test]
        fn one_more_event_never_lowers_the_factor(evs in events(), extra in 1u64..5_000) {
            let mut a = window(0);
            let mut now = 0;
            for e in &evs {
                now += e.gap_ms;
                a.record(now, e.weight, now);
            }
            let mut b = a.clone();
            b.record(now, extra, now);
            prop_assert!(b.factor() >= a.factor());
        }
    }
}
