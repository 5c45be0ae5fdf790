//! When to order a certificate: pure, `now` passed in (Unix seconds), so the tests
//! drive it with any clock.
//!
//! - A certificate is renewed once a third of its lifetime is left:
//!   [`renew_at`] = `not_after - (not_after - not_before) / 3`.
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

/// The decision: order when there is no certificate, when it does not cover every
/// domain, or when it is due; but never before `retry_at` (the backoff after a failure).
pub fn decide(now: i64, held: Option<Held>, retry_at: Option<i64>) -> Next {
    let due = match held {
        Some(h) if h.covers_domains => renew_at(h.not_before, h.not_after),
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
        assert_eq!(decide(0, None, None), Next::Order);
        let partial = Some(Held {
            not_before: 0,
            not_after: 90 * DAY,
            covers_domains: false,
        });
        assert_eq!(decide(DAY, partial, None), Next::Order);
    }

    #[test]
    fn a_certificate_with_more_than_a_third_left_is_kept() {
        let h = held(0, 90 * DAY);
        assert_eq!(decide(0, h, None), Next::WaitUntil(60 * DAY));
        assert_eq!(decide(60 * DAY - 1, h, None), Next::WaitUntil(60 * DAY));
        assert_eq!(decide(60 * DAY, h, None), Next::Order);
        // Expired: order.
        assert_eq!(decide(100 * DAY, h, None), Next::Order);
    }

    #[test]
    fn a_failure_holds_the_next_order_back() {
        assert_eq!(decide(0, None, Some(60)), Next::WaitUntil(60));
        assert_eq!(decide(60, None, Some(60)), Next::Order);
        let h = held(0, 90 * DAY);
        assert_eq!(
            decide(61 * DAY, h, Some(61 * DAY + 300)),
            Next::WaitUntil(61 * DAY + 300)
        );
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
