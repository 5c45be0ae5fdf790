//! The funnel grace: shedding that never costs a signup.
//!
//! A visitor who viewed a funnel page (`conversions.funnel_paths`) within
//! `backpressure.funnel_grace_secs` is admitted whatever path it asks for next
//! (pricing, the signup API, assets), while the factor is above
//! `backpressure.shed_factor` and others are shed. The proof is the visitor's own
//! cookies: `lg_v` (issued on a funnel page view, so its first-seen second is one)
//! and the `lg_f` funnel mark refreshed on each later funnel page view (both in
//! `visitor.rs`, signed with the store's visitor key). Admission asks
//! ([`edge::admission::Grace`]) only for a request it would otherwise shed, so a
//! request pays the two MACs only then, never on the way to a HIT when nothing is shed.
//! A forged, altered, expired or other visitor's mark is ignored: the request is then
//! judged as any other.
//!
//! What is counted: requests admitted by the grace, and conversions (first of a goal
//! that day, as `/api/analytics` counts them) by a visitor who had a request admitted
//! by the grace within `funnel_grace_secs` before converting. That second count says
//! the visitor was served something shedding would have refused on the way to
//! converting; it does not prove the signup would have been lost. Both go into the
//! counters (`counters.rs`), so the flusher writes them into each batch and the day's
//! totals like every other count: a restart goes on from the day's totals, and
//! `/api/analytics`, `report` and the dashboard read them per day. The visitors
//! admitted are remembered in a bounded table ([`TABLE_SHARDS`] × [`TABLE_ENTRIES`]),
//! in memory: when a flood of graced visitors fills it, or after a restart (a visitor
//! admitted before it and converting after), some conversions go uncounted here,
//! never counted twice.
//!
//! **Invariant:** only a mark this store's key made for the request's own visitor, of a
//! funnel page view at most `funnel_grace_secs` old, admits a request; the grace never
//! refuses what admission would let through.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use axum::http::HeaderMap;
use parking_lot::Mutex;

use crate::edge::admission::Grace;
use crate::insight::counters::Counters;
use crate::insight::visitor::{Visitor, Visitors};
use crate::telemetry;

/// Shards of the table of visitors admitted by the grace.
pub const TABLE_SHARDS: usize = 16;
/// Entries per shard before expired ones are dropped.
pub const TABLE_ENTRIES: usize = 4096;

/// Whether a funnel page view in second `view_secs` still covers `now_ms` under a
/// grace of `grace_secs`: up to and including `grace_secs` after it. Pure.
#[inline]
pub fn within(view_secs: u64, now_ms: u64, grace_secs: u64) -> bool {
    grace_secs > 0 && now_ms <= view_secs.saturating_add(grace_secs).saturating_mul(1000)
}

/// Visitor id → Unix ms of its last request admitted by the grace.
type Shard = Mutex<HashMap<[u8; 16], u64>>;

/// The funnel grace. A clone is cheap and shares the counts.
#[derive(Clone)]
pub struct FunnelGrace {
    inner: Arc<Inner>,
}

struct Inner {
    visitors: Visitors,
    grace_secs: u64,
    /// Where the admissions and protected conversions are counted (and flushed).
    counters: Counters,
    hasher: RandomState,
    graced: Box<[Shard]>,
}

/// What the grace did in a launch day (the dashboard's tile), from the day's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GraceCounts {
    /// `backpressure.funnel_grace_secs`.
    pub grace_secs: u64,
    /// Requests admitted by the grace that shedding would have refused.
    pub admitted_requests: u64,
    /// Conversions by visitors admitted by the grace within `grace_secs` before.
    pub protected_conversions: u64,
}

impl FunnelGrace {
    /// `None` when `grace_secs` is 0 (off). Counts into `counters`.
    pub fn new(visitors: Visitors, counters: Counters, grace_secs: u64) -> Option<FunnelGrace> {
        (grace_secs > 0).then(|| FunnelGrace {
            inner: Arc::new(Inner {
                visitors,
                grace_secs,
                counters,
                hasher: RandomState::new(),
                graced: (0..TABLE_SHARDS)
                    .map(|_| Mutex::new(HashMap::new()))
                    .collect(),
            }),
        })
    }

    pub fn grace_secs(&self) -> u64 {
        self.inner.grace_secs
    }

    /// The grace's counts in a tally (a day's totals, with the live window).
    pub fn counts(&self, tally: &crate::insight::history::Tally) -> GraceCounts {
        GraceCounts {
            grace_secs: self.inner.grace_secs,
            admitted_requests: tally.grace_admitted,
            protected_conversions: tally.grace_conversions,
        }
    }

    fn shard(&self, id: &[u8; 16]) -> &Shard {
        &self.inner.graced[self.inner.hasher.hash_one(id) as usize % TABLE_SHARDS]
    }

    fn remember(&self, visitor: &Visitor, now_ms: u64) {
        let mut map = self.shard(&visitor.id).lock();
        if map.len() >= TABLE_ENTRIES && !map.contains_key(&visitor.id) {
            let grace_ms = self.inner.grace_secs.saturating_mul(1000);
            map.retain(|_, at| at.saturating_add(grace_ms) >= now_ms);
            if map.len() >= TABLE_ENTRIES {
                return; // full of live entries: this one goes unremembered
            }
        }
        map.insert(visitor.id, now_ms);
    }

    /// A conversion counted for `visitor` at `now_ms`: counted as protected when the
    /// grace admitted one of its requests within `grace_secs` before. True if so.
    pub fn converted(&self, visitor: &Visitor, now_ms: u64) -> bool {
        let graced = self
            .shard(&visitor.id)
            .lock()
            .get(&visitor.id)
            .is_some_and(|&at| {
                at <= now_ms && now_ms - at <= self.inner.grace_secs.saturating_mul(1000)
            });
        if graced {
            self.inner.counters.record_grace_conversion();
            metrics::counter!(telemetry::FUNNEL_GRACE_CONVERSIONS_TOTAL).increment(1);
        }
        graced
    }
}

impl Grace for FunnelGrace {
    fn admits(&self, headers: &HeaderMap, now_ms: u64) -> bool {
        let Some((visitor, view_secs)) = self.inner.visitors.last_funnel_view(headers, now_ms)
        else {
            return false;
        };
        if !within(view_secs, now_ms, self.inner.grace_secs) {
            return false;
        }
        self.inner.counters.record_grace_admitted();
        self.remember(&visitor, now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::store::Store;
    use axum::http::{header, HeaderValue};
    use jiff::tz::TimeZone;

    /// 2026-11-26T08:00:00Z.
    const NOW: u64 = 1_795_680_000_000;
    const GRACE: u64 = 900;

    fn visitors(dir: &std::path::Path) -> Visitors {
        let tz = TimeZone::get("America/Los_Angeles").unwrap();
        Visitors::open(&Store::open(dir).unwrap(), 30, tz).unwrap()
    }

    /// Requests the grace admitted, as its counters hold them.
    fn admitted(g: &FunnelGrace) -> u64 {
        g.inner.counters.peek().0.grace_admitted()
    }

    fn cookies(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let line = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        h.insert(header::COOKIE, HeaderValue::try_from(line).unwrap());
        h
    }

    #[test]
    fn the_window_includes_its_last_second_and_nothing_after() {
        let view = NOW / 1000;
        assert!(within(view, NOW, GRACE));
        assert!(within(view, NOW + GRACE * 1000, GRACE));
        assert!(!within(view, NOW + GRACE * 1000 + 1, GRACE));
        assert!(!within(view, NOW, 0), "0 is off");
        assert!(within(u64::MAX / 1000, NOW, GRACE), "no overflow");
    }

    /// A visitor cookie issued an hour ago, and a funnel mark of `mark_at`.
    fn returning(v: &Visitors, mark_at: u64) -> (Visitor, String, String) {
        let (visitor, lg_v) = v.issue(NOW - 3_600_000);
        let lg_f = v.funnel_mark(&visitor, mark_at);
        (visitor, lg_v, lg_f)
    }

    #[test]
    fn a_funnel_view_within_the_grace_admits_and_just_past_it_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        let g = FunnelGrace::new(v.clone(), Counters::with_shards(2), GRACE).unwrap();
        let (_, lg_v, lg_f) = returning(&v, NOW);
        let h = cookies(&[("lg_v", &lg_v), ("lg_f", &lg_f)]);
        assert!(g.admits(&h, NOW));
        assert!(g.admits(&h, NOW + GRACE * 1000), "the grace's last ms");
        assert!(!g.admits(&h, NOW + GRACE * 1000 + 1), "just past the grace");
        assert_eq!(admitted(&g), 2);
        // The visitor cookie alone, an hour old: no funnel view in the grace.
        assert!(!g.admits(&cookies(&[("lg_v", &lg_v)]), NOW));
        // A new visitor's cookie is itself a funnel view, at its issue.
        let (_, fresh) = v.issue(NOW);
        assert!(g.admits(&cookies(&[("lg_v", &fresh)]), NOW + 60_000));
        assert!(!g.admits(&cookies(&[("lg_v", &fresh)]), NOW + GRACE * 1000 + 1));
        assert!(
            FunnelGrace::new(v, Counters::with_shards(2), 0).is_none(),
            "0 is off"
        );
    }

    #[test]
    fn forged_altered_foreign_and_other_visitors_marks_admit_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        let g = FunnelGrace::new(v.clone(), Counters::with_shards(2), GRACE).unwrap();
        let (_, lg_v, lg_f) = returning(&v, NOW);
        // Every one-character change of the mark.
        for i in 0..lg_f.len() {
            let mut bytes = lg_f.clone().into_bytes();
            bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
            let edited = String::from_utf8(bytes).unwrap();
            let h = cookies(&[("lg_v", &lg_v), ("lg_f", &edited)]);
            assert!(!g.admits(&h, NOW), "{edited}");
        }
        // A mark moved forward by hand: its MAC no longer matches.
        let (secs, mac) = lg_f[2..].split_once('.').unwrap();
        let later = format!("1.{}.{mac}", secs.parse::<u64>().unwrap() + 1000);
        assert!(!g.admits(
            &cookies(&[("lg_v", &lg_v), ("lg_f", &later)]),
            NOW + 1_200_000
        ));
        // Another visitor's mark beside this visitor's cookie.
        let (other, _) = v.issue(NOW - 3_600_000);
        let theirs = v.funnel_mark(&other, NOW);
        assert!(!g.admits(&cookies(&[("lg_v", &lg_v), ("lg_f", &theirs)]), NOW));
        // A mark (and visitor) signed by another store.
        let other_dir = tempfile::tempdir().unwrap();
        let foreign = visitors(other_dir.path());
        let (_, f_v, f_f) = returning(&foreign, NOW);
        assert!(!g.admits(&cookies(&[("lg_v", &lg_v), ("lg_f", &f_f)]), NOW));
        assert!(!g.admits(&cookies(&[("lg_v", &f_v), ("lg_f", &f_f)]), NOW));
        // A mark without a visitor cookie, and one from the future.
        assert!(!g.admits(&cookies(&[("lg_f", &lg_f)]), NOW));
        let (_, lg_v2, future) = returning(&v, NOW + 3_600_000);
        assert!(!g.admits(&cookies(&[("lg_v", &lg_v2), ("lg_f", &future)]), NOW));
        for junk in ["", "1", "1..", "1.x.y", &"9".repeat(100)] {
            assert!(!g.admits(&cookies(&[("lg_v", &lg_v), ("lg_f", junk)]), NOW));
        }
        assert_eq!(admitted(&g), 0);
        // The real mark after all those copies: at most four of each name are read.
        let mut pairs = vec![("lg_v", lg_v.as_str())];
        pairs.extend(std::iter::repeat_n(("lg_f", theirs.as_str()), 4));
        pairs.push(("lg_f", lg_f.as_str()));
        assert!(
            !g.admits(&cookies(&pairs), NOW),
            "the fifth mark is not read"
        );
        assert!(g.admits(
            &cookies(&[("lg_f", &theirs), ("lg_f", &lg_f), ("lg_v", &lg_v)]),
            NOW
        ));
    }

    #[test]
    fn a_conversion_is_protected_only_after_a_grace_admission_within_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        let g = FunnelGrace::new(v.clone(), Counters::with_shards(2), GRACE).unwrap();
        let (graced, lg_v, lg_f) = returning(&v, NOW);
        let (never, _) = v.issue(NOW);
        assert!(g.admits(&cookies(&[("lg_v", &lg_v), ("lg_f", &lg_f)]), NOW));
        assert!(!g.converted(&never, NOW + 1_000));
        assert!(g.converted(&graced, NOW + 1_000));
        assert!(
            !g.converted(&graced, NOW + GRACE * 1000 + 1),
            "too long after"
        );
        let (counts, _) = g.inner.counters.peek();
        assert_eq!(
            (counts.grace_admitted(), counts.grace_conversions()),
            (1, 1)
        );
    }

    #[test]
    fn the_table_of_graced_visitors_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        let g = FunnelGrace::new(v.clone(), Counters::with_shards(2), GRACE).unwrap();
        for i in 0..(TABLE_SHARDS * TABLE_ENTRIES + 5_000) as u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            g.remember(
                &Visitor {
                    id,
                    first_seen_secs: NOW / 1000,
                },
                NOW,
            );
        }
        let held: usize = g.inner.graced.iter().map(|s| s.lock().len()).sum();
        assert!(held <= TABLE_SHARDS * TABLE_ENTRIES, "{held}");
        // Once their grace is over, their room is given to new visitors.
        let (late, _) = v.issue(NOW);
        g.remember(&late, NOW + GRACE * 1000 + 1);
        assert!(g.converted(&late, NOW + GRACE * 1000 + 2));
    }
}
