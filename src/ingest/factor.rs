//! The published scale factor: one atomic that every request reads without a lock,
//! and the operator's pin (the rollback switch) that overrides the computed value.
//!
//! The pump writes the computed factor; `publish` picks the pin while it is active.
//! A pin carries its own expiry, checked on every publish, and survives restarts
//! because `admin` persists it in the store's `meta` tree.
//!
//! **Invariant:** `current()` is one relaxed atomic load, nothing more.

/// The response header every public answer carries.
pub const SCALE_FACTOR_HEADER: &str = "x-edge-scale-factor";

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

/// A pinned factor and when it lapses (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pin {
    pub factor: f64,
    pub until_ms: u64,
}

/// Handle to the published factor; a clone is cheap and shares the same atomic.
#[derive(Debug, Clone)]
pub struct Factor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    published: AtomicU64,
    computed: AtomicU64,
    velocity: AtomicU64,
    pin: Mutex<Option<Pin>>,
}

impl Default for Factor {
    fn default() -> Self {
        Factor::new()
    }
}

impl Factor {
    pub fn new() -> Factor {
        Factor {
            inner: Arc::new(Inner {
                published: AtomicU64::new(1.0f64.to_bits()),
                computed: AtomicU64::new(1.0f64.to_bits()),
                velocity: AtomicU64::new(0.0f64.to_bits()),
                pin: Mutex::new(None),
            }),
        }
    }

    /// The factor in force: what admission and caching read on every request.
    #[inline]
    pub fn current(&self) -> f64 {
        f64::from_bits(self.inner.published.load(Ordering::Relaxed))
    }

    /// The factor the velocity window computed, pinned or not.
    pub fn computed(&self) -> f64 {
        f64::from_bits(self.inner.computed.load(Ordering::Relaxed))
    }

    /// Engagement velocity (weighted events per second) behind the computed factor.
    pub fn velocity(&self) -> f64 {
        f64::from_bits(self.inner.velocity.load(Ordering::Relaxed))
    }

    /// Records a newly computed factor and republishes. Returns a pin that lapsed.
    pub fn set_computed(&self, factor: f64, velocity: f64, now_ms: u64) -> Option<Pin> {
        self.inner
            .computed
            .store(factor.to_bits(), Ordering::Relaxed);
        self.inner
            .velocity
            .store(velocity.to_bits(), Ordering::Relaxed);
        self.publish(now_ms)
    }

    /// Pins the factor until `pin.until_ms`, effective at once.
    pub fn pin(&self, pin: Pin, now_ms: u64) {
        *self.inner.pin.lock() = Some(pin);
        self.publish(now_ms);
    }

    /// Removes the pin; the computed factor is in force again at once.
    pub fn unpin(&self, now_ms: u64) -> Option<Pin> {
        let old = self.inner.pin.lock().take();
        self.publish(now_ms);
        old
    }

    /// The active pin, if any.
    pub fn pinned(&self, now_ms: u64) -> Option<Pin> {
        let pin = *self.inner.pin.lock();
        pin.filter(|p| p.until_ms > now_ms)
    }

    /// Publishes the pin while active, else the computed factor. Returns the pin
    /// that just lapsed, if one did, so the caller can log and forget it.
    pub fn publish(&self, now_ms: u64) -> Option<Pin> {
        let mut guard = self.inner.pin.lock();
        let mut lapsed = None;
        let value = match *guard {
            Some(p) if p.until_ms > now_ms => p.factor,
            Some(p) => {
                lapsed = Some(p);
                *guard = None;
                self.computed()
            }
            None => self.computed(),
        };
        self.inner
            .published
            .store(value.to_bits(), Ordering::Relaxed);
        lapsed
    }
}

/// The `X-Edge-Scale-Factor` value for `factor`. The factor changes a few times a
/// second at most while every response needs the header, so each worker thread keeps
/// the last value it formatted and hands out clones (a reference count) until the
/// factor moves.
pub fn header_value(factor: f64) -> Option<axum::http::HeaderValue> {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(u64, axum::http::HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((bits, value)) = last.as_ref() {
            if *bits == factor.to_bits() {
                return Some(value.clone());
            }
        }
        let mut buf = [0u8; 24];
        let text = format_factor(factor, &mut buf);
        let value = axum::http::HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(
            text.as_bytes(),
        ))
        .ok()?;
        *last = Some((factor.to_bits(), value.clone()));
        Some(value)
    })
}

/// Formats a factor with two decimals into `buf`, without allocating.
pub fn format_factor(factor: f64, buf: &mut [u8; 24]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{factor:.2}");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).expect("a formatted float is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_header_follows_the_factor_and_keeps_two_decimals() {
        let header = |f: f64| header_value(f).unwrap().to_str().unwrap().to_string();
        assert_eq!(header(1.0), "1.00");
        assert_eq!(header(1.0), "1.00", "served from the thread's last value");
        assert_eq!(header(1.236), "1.24");
        assert_eq!(header(5.0), "5.00");
        assert_eq!(header(1.0), "1.00", "back again after a change");
    }

    #[test]
    fn pin_overrides_until_it_lapses() {
        let f = Factor::new();
        f.set_computed(3.0, 5.0, 0);
        assert_eq!(f.current(), 3.0);
        f.pin(
            Pin {
                factor: 1.0,
                until_ms: 10_000,
            },
            0,
        );
        assert_eq!(f.current(), 1.0);
        f.set_computed(4.0, 7.5, 5_000);
        assert_eq!(f.current(), 1.0);
        assert_eq!(f.computed(), 4.0);
        let lapsed = f.publish(10_000);
        assert!(lapsed.is_some());
        assert_eq!(f.current(), 4.0);
        assert_eq!(f.pinned(10_000), None);
    }

    #[test]
    fn unpin_restores_computed_at_once() {
        let f = Factor::new();
        f.set_computed(2.5, 3.75, 0);
        f.pin(
            Pin {
                factor: 5.0,
                until_ms: u64::MAX,
            },
            0,
        );
        assert_eq!(f.current(), 5.0);
        f.unpin(1);
        assert_eq!(f.current(), 2.5);
    }
}
