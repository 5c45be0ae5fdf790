//! Which fills a purge spoils.
//!
//! A fill (a miss, a refresh, a revalidation, a compressed copy) reads the page from
//! the origin while the site may change under it: an operator purges `/launch/`, a
//! maker comment purges it by rule, a signup POST invalidates its own URL. A fill
//! that started before such a purge must not store what it got, because it may be
//! the very page the purge meant to drop. Every other fill stores, however many
//! POSTs to other URLs happen meanwhile (launch day is full of them).
//!
//! Each purge bumps an epoch and is logged with it. A fill takes a [`Ticket`] when it
//! starts (the epoch of that moment) and, when it is ready to store, looks only at the
//! purges logged since: it is dropped when one covers its key. The check and the
//! store happen under the log's lock, and so does a purge's sweep of the store, so a
//! purge never slips between a fill's check and its insert.
//!
//! - Exact invalidations (unsafe requests) are kept in a map by key, for as long as a
//!   fill that started before them is running: memory follows the invalidations made
//!   during the longest running fill (bounded by `origin.timeout_ms` and by what the
//!   origin accepted), and no count of POSTs can spoil an unrelated fill.
//! - Prefix purges (the operator, event rules) are rare; the last [`KEEP_PREFIXES`]
//!   are kept, and a fill older than all of them is dropped, the safe side.
//!
//! [`EventPurges`] holds the event-driven rules (`cache.purge_on`) with the cache they
//! purge, as one list. `app` builds it once and hands the same value to the ingestor
//! and the pump as `ingest::pump::Purges`: the ring carries a `u16` index into that
//! list (`RingEvent::purge_rule`, 0 for none, else position + 1), numbered by the
//! ingestor and applied by the pump through the one value both use.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Cache;
use crate::config::Config;
use crate::ingest::pump::Purges;

/// Prefix purges remembered for fills still running.
pub const KEEP_PREFIXES: usize = 1024;

/// What one purge covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purged {
    /// Every key starting with this path prefix, on every host.
    Prefix(String),
    /// One key (`Key::as_str`), with its `Vary` variants.
    Exact(String),
}

impl Purged {
    /// Whether this purge covers `key` (a key, or a variant's or flight's full key).
    pub fn covers(&self, key: &str) -> bool {
        match self {
            Purged::Prefix(p) => key.starts_with(p.as_str()),
            Purged::Exact(k) => {
                key.starts_with(k.as_str())
                    && (key.len() == k.len() || key.as_bytes()[k.len()] == 0)
            }
        }
    }
}

#[derive(Default)]
struct Log {
    prefixes: VecDeque<(u64, String)>,
    /// Prefix purges up to this epoch were dropped from `prefixes`.
    forgotten: u64,
    /// Key → epoch of its latest invalidation, while a fill older than it runs.
    exact: HashMap<String, u64>,
    /// The same, in epoch order, to forget them.
    exact_order: VecDeque<(u64, String)>,
    /// Start epochs of the running fills, with their counts.
    running: BTreeMap<u64, usize>,
}

impl Log {
    /// Forgets invalidations no running fill started before.
    fn prune(&mut self) {
        let oldest = self.running.keys().next().copied().unwrap_or(u64::MAX);
        while let Some((e, _)) = self.exact_order.front() {
            if *e > oldest {
                break;
            }
            let (e, k) = self.exact_order.pop_front().expect("front exists");
            if self.exact.get(&k) == Some(&e) {
                self.exact.remove(&k);
            }
        }
    }
}

/// The purge log; shared by the cache's handles.
#[derive(Default)]
pub struct PurgeLog {
    epoch: AtomicU64,
    log: Mutex<Log>,
}

/// A running fill's place in the log; its drop ends the fill.
pub struct Ticket {
    log: Arc<PurgeLog>,
    since: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut log = self.log.log.lock();
        if let Some(n) = log.running.get_mut(&self.since) {
            *n -= 1;
            if *n == 0 {
                log.running.remove(&self.since);
            }
        }
        log.prune();
    }
}

impl PurgeLog {
    pub fn new() -> Arc<PurgeLog> {
        Arc::new(PurgeLog::default())
    }

    /// A fill starts now.
    pub fn begin(self: &Arc<Self>) -> Ticket {
        let mut log = self.log.lock();
        let since = self.epoch.load(Ordering::Acquire);
        *log.running.entry(since).or_insert(0) += 1;
        Ticket {
            log: self.clone(),
            since,
        }
    }

    /// Logs a purge of each of `what` and runs `sweep` (which drops the entries from
    /// the store) before any fill may check against it.
    pub fn purge<R>(&self, what: impl IntoIterator<Item = Purged>, sweep: impl FnOnce() -> R) -> R {
        let mut log = self.log.lock();
        for p in what {
            let e = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            match p {
                Purged::Prefix(prefix) => {
                    log.prefixes.push_back((e, prefix));
                    while log.prefixes.len() > KEEP_PREFIXES {
                        if let Some((old, _)) = log.prefixes.pop_front() {
                            log.forgotten = old;
                        }
                    }
                }
                Purged::Exact(key) if !log.running.is_empty() => {
                    log.exact.insert(key.clone(), e);
                    log.exact_order.push_back((e, key));
                }
                // No fill is running: nothing to remember.
                Purged::Exact(_) => {}
            }
        }
        sweep()
    }

    /// Runs `store` for the fill of `key` holding `ticket`, unless a purge logged since
    /// it began covers the key; `None` when it was spoiled. Ends the fill.
    pub fn unless_purged<R>(
        &self,
        ticket: Ticket,
        key: &str,
        store: impl FnOnce() -> R,
    ) -> Option<R> {
        let since = ticket.since;
        let result = {
            let log = self.log.lock();
            let spoiled = self.epoch.load(Ordering::Acquire) != since
                && (since < log.forgotten
                    || log.exact.get(key).is_some_and(|e| *e > since)
                    || log
                        .prefixes
                        .iter()
                        .rev()
                        .take_while(|(e, _)| *e > since)
                        .any(|(_, p)| key.starts_with(p.as_str())));
            (!spoiled).then(store)
        };
        drop(ticket);
        result
    }

    /// Invalidations remembered for running fills.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.log.lock().exact.len()
    }
}

/// The event-driven purge rules (`cache.purge_on`) with the cache they purge: one
/// list, numbered for the ring (module doc).
pub struct EventPurges {
    /// `cache.purge_on` in its (sorted) order: rule `n` is `rules[n - 1]`.
    rules: Vec<(String, Vec<String>)>,
    cache: Cache,
}

impl EventPurges {
    pub fn new(config: &Config, cache: Cache) -> EventPurges {
        EventPurges {
            rules: config
                .cache
                .purge_on
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cache,
        }
    }
}

impl Purges for EventPurges {
    /// The rule for an event type: 0 for none, else its index + 1.
    fn rule_of(&self, event_type: &str) -> u16 {
        self.rules
            .iter()
            .position(|(k, _)| k == event_type)
            .map_or(0, |i| (i + 1) as u16)
    }

    /// Applies the rules seen (by number) to the cache; returns entries dropped.
    fn apply(&self, rules: &[u16]) -> usize {
        let mut n = 0;
        for r in rules {
            if let Some((event, prefixes)) =
                (*r as usize).checked_sub(1).and_then(|i| self.rules.get(i))
            {
                for p in prefixes {
                    let dropped = self.cache.purge_prefix(p);
                    tracing::info!(event = %event, prefix = %p, dropped, "purged the cache on an event");
                    n += dropped;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_is_spoiled_only_by_a_purge_of_its_own_key() {
        let log = PurgeLog::new();
        let key = "/b1\0launch.example";
        let t = log.begin();
        log.purge([Purged::Exact("/api/signup\0launch.example".into())], || ());
        log.purge([Purged::Exact("/b1\0other.example".into())], || ());
        log.purge([Purged::Exact("/b\0launch.example".into())], || ());
        log.purge([Purged::Prefix("/launch/".into())], || ());
        assert_eq!(log.unless_purged(t, key, || 7), Some(7));
        let t = log.begin();
        log.purge([Purged::Prefix("/b".into())], || ());
        assert_eq!(log.unless_purged(t, key, || 7), None);
        let t = log.begin();
        assert_eq!(log.unless_purged(log.begin(), key, || 7), Some(7));
        log.purge([Purged::Exact(key.into())], || ());
        assert_eq!(log.unless_purged(t, key, || 7), None);
        // A variant's key is covered by its URL's invalidation.
        let variant = "/b1\0launch.example\x003\0fr,";
        assert!(Purged::Exact(key.into()).covers(variant));
        assert!(!Purged::Exact("/b1\0launch.ex".into()).covers(key));
    }

    #[test]
    fn no_number_of_invalidations_elsewhere_spoils_a_fill_and_none_are_kept_for_long() {
        let log = PurgeLog::new();
        let key = "/b1\0h";
        let t = log.begin();
        for i in 0..100_000 {
            log.purge([Purged::Exact(format!("/api/signup?{i}\0h"))], || ());
        }
        assert_eq!(log.remembered(), 100_000);
        assert_eq!(log.unless_purged(t, key, || ()), Some(()));
        assert_eq!(log.remembered(), 0, "forgotten once no older fill runs");
        // With no fill running, invalidations are not even remembered.
        log.purge([Purged::Exact("/x\0h".into())], || ());
        assert_eq!(log.remembered(), 0);
    }

    #[test]
    fn a_fill_older_than_the_prefix_log_is_dropped() {
        let log = PurgeLog::new();
        let t = log.begin();
        for i in 0..KEEP_PREFIXES + 1 {
            log.purge([Purged::Prefix(format!("/other/{i}"))], || ());
        }
        assert_eq!(log.unless_purged(t, "/b1\0h", || ()), None);
        let t = log.begin();
        log.purge([Purged::Prefix("/other".into())], || ());
        assert_eq!(log.unless_purged(t, "/b1\0h", || ()), Some(()));
    }
}
