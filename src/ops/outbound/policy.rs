//! The pure policy of the queue: the wait before the next attempt (doubling, capped,
//! jittered ±40%, never under what the server asked for), the per-host token bucket,
//! and the host a target is budgeted and logged under. No sled, no HTTP, no clock: the
//! worker passes the time in, and the random draw (`unit_draw`, the OS generator).

use axum::http::Uri;

/// Smallest and largest jitter multipliers: ±40%.
pub const JITTER_MIN: f64 = 0.6;
pub const JITTER_MAX: f64 = 1.4;

/// The wait before the next attempt, ms. `exponent` is the number of earlier waits
/// (0 for the first retry), `floor_ms` what the server asked for (`Retry-After`,
/// `X-Rate-Limit-Reset`), `unit` a uniform draw from [0, 1). Pure.
pub fn backoff_ms(base_ms: u64, max_ms: u64, exponent: u32, floor_ms: u64, unit: f64) -> u64 {
    let raw = base_ms.saturating_mul(1u64 << exponent.min(30)).min(max_ms);
    let jitter = JITTER_MIN + (JITTER_MAX - JITTER_MIN) * unit.clamp(0.0, 1.0);
    let jittered = (raw as f64 * jitter).round() as u64;
    jittered.max(floor_ms)
}

/// A uniform draw from [0, 1) from the OS generator.
pub(super) fn unit_draw() -> f64 {
    let bits = getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A token bucket per host: `per_minute` tokens, refilled continuously.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) at_ms: u64,
}

impl Bucket {
    pub(super) fn take(&mut self, per_minute: u32, now_ms: u64) -> bool {
        let cap = f64::from(per_minute);
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens = (self.tokens + elapsed * cap / 60_000.0).min(cap);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The host (and port) of a target URL, for budgets and logs; never the path, which
/// for an incoming webhook is the secret.
pub fn host_of(url: &str) -> String {
    url.parse::<Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "invalid".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn jitter_stays_within_forty_percent_and_never_under_the_server_delay(
            base in 1u64..10_000,
            exponent in 0u32..12,
            floor in prop_oneof![Just(0u64), 0u64..2_000_000],
            unit in 0.0f64..1.0,
        ) {
            let max = 300_000;
            let raw = (base << exponent).min(max);
            let d = backoff_ms(base, max, exponent, floor, unit);
            prop_assert!(d >= floor, "{d} < server delay {floor}");
            if floor == 0 || d > floor {
                let lo = (raw as f64 * JITTER_MIN).floor() as u64;
                let hi = (raw as f64 * JITTER_MAX).ceil() as u64;
                prop_assert!(d >= lo && d <= hi, "{d} outside [{lo}, {hi}] for raw {raw}");
            }
        }
    }

    #[test]
    fn draws_from_the_os_generator_cover_the_jitter_range() {
        let draws: Vec<u64> = (0..5000)
            .map(|_| backoff_ms(1200, 300_000, 0, 0, unit_draw()))
            .collect();
        assert!(draws.iter().all(|d| (720..=1680).contains(d)));
        assert!(draws.iter().any(|d| *d < 800), "no draw near -40%");
        assert!(draws.iter().any(|d| *d > 1600), "no draw near +40%");
        // Retry-After of 5 s wins over every draw.
        assert!((0..5000).all(|_| backoff_ms(1200, 300_000, 0, 5000, unit_draw()) >= 5000));
    }

    #[test]
    fn doubling_stops_at_the_cap_but_a_server_may_ask_for_more() {
        assert_eq!(backoff_ms(1000, 8000, 10, 0, 0.5), 8000);
        assert_eq!(backoff_ms(1000, 8000, 10, 60_000, 0.5), 60_000);
        assert_eq!(backoff_ms(1000, 8000, 1, 0, 0.0), 1200);
        assert_eq!(backoff_ms(1000, 8000, 1, 0, 1.0), 2800);
    }

    #[test]
    fn a_host_budget_refills_over_a_minute() {
        let mut b = Bucket {
            tokens: 2.0,
            at_ms: 0,
        };
        assert!(b.take(2, 0));
        assert!(b.take(2, 0));
        assert!(!b.take(2, 1000));
        assert!(b.take(2, 30_000));
        assert!(!b.take(2, 30_000));
    }

    #[test]
    fn hosts_of_targets_key_their_budgets() {
        assert_eq!(
            host_of("https://hooks.slack.com/services/T/B/X"),
            "hooks.slack.com"
        );
    }
}
