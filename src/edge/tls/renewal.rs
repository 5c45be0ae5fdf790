//! When to order a certificate: pure, `now` passed in (Unix seconds), so the tests
//! drive it with any clock.
//!
//! - A certificate is renewed once a third of its lifetime is left:
//!   [`renew_at`] = `not_after - (not_after - not_before) / 3`, or earlier at the
//!   moment picked in the CA's ARI window (RFC 9773) when it offers one ([`ari_pick`]:
//!   a uniformly random moment inside the suggested window, so a CA's many clients do
//!   not all come at its start).
//! - A failed order waits [`backoff`] (1, 2, 5, 10, 30 min, 1, 2, 4, 8, 16 h, then a
//!   day) before the next; a success resets it.
//! - Whatever the schedule says, [`OrderBudget`] allows at most [`BUDGET_ORDERS`]
//!   orders in any [`BUDGET_WINDOW_SECS`].

use std::collections::VecDeque;

/// At most this many orders ...
pub const BUDGET_ORDERS: usize = 10;
/// ... in any window of this many seconds.
pub const BUDGET_WINDOW_SECS: i64 = 10;

/// The validity of a certificate in hand, and whether it covers every name wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub not_before: i64,
    pub not_after: i64,
    pub covers_domains: bool,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Order now.
    Order,
    /// Nothing to do before this moment (Unix seconds).
    WaitUntil(i64),
}

/// The moment a certificate valid from `not_before` to `not_after` is due for renewal:
/// a third of its lifetime before its end.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    not_after - lifetime / 3
}

/// The moment to renew inside an ARI window `[start, end]` (Unix seconds), for a
/// `random` draw in `[0, 1)`: RFC 9773 §4.2 asks for a uniformly random moment in the
/// window. A window that ends before it starts counts as its start.
pub fn ari_pick(start: i64, end: i64, random: f64) -> i64 {
    let width = (end - start).max(0) as f64;
    start + (width * random.clamp(0.0, 1.0)) as i64
}

/// The decision: order when there is no certificate, when it does not cover every
/// domain, or when it is due (a third of its lifetime left, or `ari_at`, the moment
/// picked in the CA's ARI window, whichever comes first); but never before
/// `retry_at` (the backoff after a failure).
pub fn decide(now: i64, held: Option<Held>, retry_at: Option<i64>, ari_at: Option<i64>) -> Next {
    let due = match held {
        Some(h) if h.covers_domains => {
            renew_at(h.not_before, h.not_after).min(ari_at.unwrap_or(i64::MAX))
        }
        _ => i64::MIN,
    };
    let at = due.max(retry_at.unwrap_or(i64::MIN));
    if now >= at {
        Next::Order
    } else {
        Next::WaitUntil(at)
    }
}

/// The wait after `failures` failed orders in a row (≥ 1), in seconds.
pub fn backoff(failures: u32) -> i64 {
    const STEPS: [i64; 10] = [
        60, 120, 300, 600, 1_800, 3_600, 7_200, 14_400, 28_800, 57_600,
    ];
    match failures {
        0 => 0,
        n => STEPS.get(n as usize - 1).copied().unwrap_or(86_400),
    }
}

/// The orders placed in the last [`BUDGET_WINDOW_SECS`].
#[derive(Debug, Default)]
pub struct OrderBudget {
    placed: VecDeque<i64>,
}

impl OrderBudget {
    /// Takes one order from the budget at `now`, or says when one is free again.
    pub fn take(&mut self, now: i64) -> Result<(), i64> {
        while self
            .placed
            .front()
            .is_some_and(|&t| t <= now - BUDGET_WINDOW_SECS)
        {
            self.placed.pop_front();
        }
        if self.placed.len() >= BUDGET_ORDERS {
            return Err(self.placed[0] + BUDGET_WINDOW_SECS);
        }
        self.placed.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn held(nb: i64, na: i64) -> Option<Held> {
        Some(Held {
            not_before: nb,
            not_after: na,
            covers_domains: true,
        })
    }

    #[test]
    fn a_third_of_the_lifetime_left_is_the_renewal_moment() {
        assert_eq!(renew_at(0, 90 * DAY), 60 * DAY);
        assert_eq!(renew_at(1000, 1000 + 6 * DAY), 1000 + 4 * DAY);
        // A backwards certificate is due at its end.
        assert_eq!(renew_at(10, 5), 5);
    }

    #[test]
    fn orders_with_nothing_in_hand_or_names_missing() {
        assert_eq!(decide(0, None, None, None), Next::Order);
        let partial = Some(Held {
            not_before: 0,
            not_after: 90 * DAY,
            covers_domains: false,
        });
        assert_eq!(decide(DAY, partial, None, None), Next::Order);
    }

    #[test]
    fn a_certificate_with_more_than_a_third_left_is_kept() {
        let h = held(0, 90 * DAY);
        assert_eq!(decide(0, h, None, None), Next::WaitUntil(60 * DAY));
        assert_eq!(
            decide(60 * DAY - 1, h, None, None),
            Next::WaitUntil(60 * DAY)
        );
        assert_eq!(decide(60 * DAY, h, None, None), Next::Order);
        // Expired: order.
        assert_eq!(decide(100 * DAY, h, None, None), Next::Order);
    }

    #[test]
    fn a_failure_holds_the_next_order_back() {
        assert_eq!(decide(0, None, Some(60), None), Next::WaitUntil(60));
        assert_eq!(decide(60, None, Some(60), None), Next::Order);
        let h = held(0, 90 * DAY);
        assert_eq!(
            decide(61 * DAY, h, Some(61 * DAY + 300), None),
            Next::WaitUntil(61 * DAY + 300)
        );
    }

    #[test]
    fn an_ari_window_earlier_than_a_third_left_brings_the_renewal_forward() {
        let h = held(0, 90 * DAY);
        // The CA asks for renewal from day 30 (a revocation coming, say).
        let at = ari_pick(30 * DAY, 31 * DAY, 0.5);
        assert_eq!(at, 30 * DAY + DAY / 2);
        assert_eq!(decide(30 * DAY, h, None, Some(at)), Next::WaitUntil(at));
        assert_eq!(decide(at, h, None, Some(at)), Next::Order);
        // A window later than a third left does not hold the renewal back.
        let late = ari_pick(70 * DAY, 72 * DAY, 0.0);
        assert_eq!(decide(60 * DAY, h, None, Some(late)), Next::Order);
        // A failure's backoff still holds an ARI renewal back.
        assert_eq!(
            decide(at, h, Some(at + 60), Some(at)),
            Next::WaitUntil(at + 60)
        );
    }

    #[test]
    fn the_ari_pick_stays_inside_the_window() {
        assert_eq!(ari_pick(100, 200, 0.0), 100);
        assert_eq!(ari_pick(100, 200, 0.999), 199);
        assert_eq!(ari_pick(100, 200, 7.0), 200);
        assert_eq!(ari_pick(100, 50, 0.5), 100);
    }

    #[test]
    fn backoff_grows_to_a_day() {
        let waits: Vec<i64> = (1..=12).map(backoff).collect();
        assert_eq!(&waits[..4], &[60, 120, 300, 600]);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(backoff(11), DAY);
        assert_eq!(backoff(1000), DAY);
    }

    #[test]
    fn never_more_than_ten_orders_in_ten_seconds() {
        let mut b = OrderBudget::default();
        for _ in 0..10 {
            assert!(b.take(100).is_ok());
        }
        assert_eq!(b.take(100), Err(110));
        assert_eq!(b.take(109), Err(110));
        assert!(b.take(110).is_ok());
    }
}
