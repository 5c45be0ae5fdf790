//! Which fills a purge spoils.
//!
//! A fill (a miss, a refresh, a revalidation, a compressed copy) reads the page from
//! the origin while the site may change under it: an operator purges `/launch/`, a
//! maker comment purges it by rule, a signup POST invalidates its own URL. A fill
//! that started before such a purge must not store what it got, because it may be
//! the very page the purge meant to drop. Every other fill stores, however many
//! POSTs to other URLs happen meanwhile (launch day is full of them).
//!
//! Each purge bumps an epoch and is logged with it. A fill remembers the epoch it
//! started at and, when it is ready to store, looks only at the purges logged since:
//! it is dropped when one of them covers its key (a prefix of it, or the key itself).
//! The check and the store happen under the log's lock, and so does a purge's sweep
//! of the store, so a purge never slips between a fill's check and its insert.
//!
//! The log keeps the last [`KEEP`] purges; a fill older than all of them is dropped,
//! the safe side. Fills end within `origin.timeout_ms`, a few seconds: at 50
//! invalidations a second that is a few hundred entries.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Purges remembered for fills still running.
pub const KEEP: usize = 4096;

/// What one purge covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purged {
    /// Every key starting with this path prefix, on every host.
    Prefix(String),
    /// One key (`Key::as_str`), with its `Vary` variants.
    Exact(String),
}

impl Purged {
    /// Whether this purge covers the fill of `key`.
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
    recent: VecDeque<(u64, Purged)>,
    /// Purges up to this epoch were dropped from `recent`.
    forgotten: u64,
}

/// The purge log; shared by the cache's handles.
#[derive(Default)]
pub struct PurgeLog {
    epoch: AtomicU64,
    log: Mutex<Log>,
}

impl PurgeLog {
    pub fn new() -> PurgeLog {
        PurgeLog::default()
    }

    /// The epoch a fill starts at.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Logs a purge of each of `what` and runs `sweep` (which drops the entries from
    /// the store) before any fill may check against it.
    pub fn purge<R>(&self, what: impl IntoIterator<Item = Purged>, sweep: impl FnOnce() -> R) -> R {
        let mut log = self.log.lock();
        for p in what {
            let e = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
            log.recent.push_back((e, p));
        }
        while log.recent.len() > KEEP {
            if let Some((e, _)) = log.recent.pop_front() {
                log.forgotten = e;
            }
        }
        sweep()
    }

    /// Runs `store` for the fill of `key` that started at `since`, unless a purge
    /// logged since covers it; `None` when it was spoiled.
    pub fn unless_purged<R>(&self, since: u64, key: &str, store: impl FnOnce() -> R) -> Option<R> {
        let log = self.log.lock();
        if self.epoch.load(Ordering::Acquire) != since {
            if since < log.forgotten {
                return None;
            }
            let spoiled = log
                .recent
                .iter()
                .rev()
                .take_while(|(e, _)| *e > since)
                .any(|(_, p)| p.covers(key));
            if spoiled {
                return None;
            }
        }
        Some(store())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_is_spoiled_only_by_a_purge_of_its_own_key() {
        let log = PurgeLog::new();
        let key = "/b1\0launch.example";
        let since = log.epoch();
        log.purge([Purged::Exact("/api/signup\0launch.example".into())], || ());
        log.purge([Purged::Exact("/b1\0other.example".into())], || ());
        log.purge([Purged::Exact("/b\0launch.example".into())], || ());
        log.purge([Purged::Prefix("/launch/".into())], || ());
        assert_eq!(log.unless_purged(since, key, || 7), Some(7));
        log.purge([Purged::Prefix("/b".into())], || ());
        assert_eq!(log.unless_purged(since, key, || 7), None);
        let later = log.epoch();
        assert_eq!(log.unless_purged(later, key, || 7), Some(7));
        log.purge([Purged::Exact(key.into())], || ());
        assert_eq!(log.unless_purged(later, key, || 7), None);
        // A variant's key is covered by its URL's invalidation.
        let variant = "/b1\0launch.example\x003\0fr,";
        assert!(Purged::Exact(key.into()).covers(variant));
        assert!(!Purged::Exact("/b1\0launch.ex".into()).covers(key));
    }

    #[test]
    fn a_fill_older_than_the_log_is_dropped() {
        let log = PurgeLog::new();
        let since = log.epoch();
        for i in 0..KEEP + 1 {
            log.purge([Purged::Exact(format!("/other/{i}"))], || ());
        }
        assert_eq!(log.unless_purged(since, "/b1\0h", || ()), None);
        let since = log.epoch();
        log.purge([Purged::Exact("/other".into())], || ());
        assert_eq!(log.unless_purged(since, "/b1\0h", || ()), Some(()));
    }
}
