//! The visitor cookie, and what it lets the edge count once: unique visitors per
//! launch day, and conversions per visitor, goal and day.
//!
//! - **The cookie** `lg_v=1.<id>.<first seen>.<mac>`: a random 128-bit visitor id
//!   (base64url), the Unix second it was issued, and the first 128 bits of
//!   HMAC-SHA256 over `1.<id>.<first seen>` under a 256-bit key made at first start
//!   and kept in the store (`meta.visitor_key`), so a restart keeps every cookie
//!   valid and no one without the store can forge one. It is set on a funnel page
//!   view that came without a valid one, `HttpOnly`, `SameSite=Lax`, `Secure` when
//!   the visitor reached us over TLS, `Path=/`, for 400 days (the most browsers
//!   keep). It is added after the cache (in `counters::count_requests`), so cached
//!   pages stay shared; the cache ignores `lg_*` cookies and never sends them on.
//! - **The funnel mark** `lg_f=1.<second>.<mac>`: when the visitor last viewed a
//!   funnel page, the MAC (same key, a text that cannot be a visitor cookie's) over
//!   the visitor's id and that second, so it is worth nothing beside another
//!   visitor's `lg_v`. Set on each funnel page view of a known visitor while
//!   `backpressure.funnel_grace_secs` is on (a new visitor's `lg_v` already says when:
//!   its first-seen second), for that many seconds, with the same attributes as
//!   `lg_v`; read only by admission, for a request it would otherwise shed
//!   (`insight::grace`).
//! - **Unique visitors**: a new visitor is counted when its cookie is issued, with no
//!   write at all; a visitor whose cookie was issued that same launch day is not
//!   counted again, also without a write. Only a visitor from an earlier day leaves a
//!   mark, so a flood of cookie-less page views costs no storage, and marks grow only
//!   with cookies this store signed (one each a day at most).
//! - **Seen marks**, in the sled tree `visitors`: `day NUL tag NUL id` → empty, where
//!   tag is `v` (a returning visitor counted that day), `c` (converted that day, any
//!   goal) or `g:<goal>`. `first` sets a mark and says whether it was new, in one
//!   compare-and-swap, so two racing requests never both count. Marks of days past
//!   `conversions.retention_days` are swept with the metrics rows.
//! - **The beacon budget**: a token bucket per client (an IPv6 client by its /64,
//!   which one subscriber usually holds whole), `conversions.beacons_per_minute`
//!   tokens a minute, as many in a burst.
//!
//! **Invariant:** a cookie verifies only if this store's key made it, and its first-seen
//! time is neither in the future nor older than the cookie's lifetime.
//! **Invariant:** a visitor counted as converted on a day is counted as a visitor
//! that day too (`counters::beacon` sets the `v` mark before the `c` mark), so a
//! day's converting visitors never exceed its unique visitors.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jiff::tz::TimeZone;
use parking_lot::Mutex;

use crate::ingest::store::keyring::Keyring;
use crate::ingest::store::{codec, trees, Store, StoreError};

/// The cookie's name.
pub const COOKIE: &str = "lg_v";
/// The cookie's lifetime: 400 days, the most Chromium and Firefox keep a cookie.
pub const MAX_AGE_SECS: u64 = 400 * 86_400;
/// Version of the cookie-signing key record (`meta.visitor_key`): `[version][32 bytes]`.
const KEY_RECORD_VERSION: u8 = 1;
const COOKIE_VERSION: &str = "1";
/// Bytes of the MAC kept in the cookie.
const MAC_BYTES: usize = 16;
/// The funnel mark's name: when the visitor last viewed a funnel page
/// (`backpressure.funnel_grace_secs`, `insight::grace`).
pub const FUNNEL_COOKIE: &str = "lg_f";
const FUNNEL_VERSION: &str = "1";
/// Cookies of one name verified per request on the grace path, at most.
const MAX_CANDIDATES: usize = 4;
/// Budget table entries per shard before idle buckets are dropped.
const BUDGET_ENTRIES: usize = 4096;
const BUDGET_SHARDS: usize = 16;

/// A visitor, as its cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visitor {
    pub id: [u8; 16],
    pub first_seen_secs: u64,
}

/// What a day's mark records of a visitor.
#[derive(Debug, Clone, Copy)]
pub enum Mark<'a> {
    /// Counted among the day's unique visitors.
    Visited,
    /// Converted at least once that day.
    Converted,
    /// Converted this goal that day.
    Goal(&'a str),
}

/// Why a request carries no usable visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoVisitor {
    /// No `lg_v` cookie at all.
    Missing,
    /// A `lg_v` cookie this store did not make, or one past its lifetime.
    Forged,
}

/// The cookie key, the seen marks and the beacon budget. A clone shares them.
#[derive(Clone)]
pub struct Visitors {
    inner: Arc<Inner>,
}

struct Inner {
    /// The cookie key (and, in a cluster that adopted its key while running, the
    /// one this node signed with before, still verified).
    keys: Keyring,
    marks: sled::Tree,
    budget: Budget,
    tz: TimeZone,
    /// The launch day last asked about, so most calls compare two numbers.
    today: Mutex<Today>,
}

/// A launch day: its name and its two midnights in Unix ms.
#[derive(Debug, Clone, Default)]
pub struct Today {
    pub day: Arc<str>,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Visitors {
    /// Loads the cookie key from the store, making one at first start. Launch days are
    /// midnight to midnight in `tz` (`conversions.timezone`).
    pub fn open(
        store: &Store,
        beacons_per_minute: u32,
        tz: TimeZone,
    ) -> Result<Visitors, StoreError> {
        let meta = store.open_tree(trees::META)?;
        let mut fresh = [0u8; 33];
        fresh[0] = KEY_RECORD_VERSION;
        getrandom::fill(&mut fresh[1..]).map_err(|e| StoreError::Corrupt {
            what: "meta.visitor_key",
            detail: format!("no randomness for a new key: {e}"),
        })?;
        // Set only if absent, so two processes can never end up with two keys.
        let stored = match meta.compare_and_swap(
            trees::META_VISITOR_KEY,
            None as Option<&[u8]>,
            Some(&fresh[..]),
        )? {
            Ok(()) => fresh.to_vec(),
            Err(e) => e.current.expect("present when the swap failed").to_vec(),
        };
        let key: [u8; 32] = codec::decode_bytes("meta.visitor_key", KEY_RECORD_VERSION, &stored)?;
        let retired = store.retired_keys(trees::META_VISITOR_KEY)?;
        Ok(Visitors {
            inner: Arc::new(Inner {
                keys: Keyring::new(&key, &retired),
                marks: store.open_tree(trees::VISITORS)?,
                budget: Budget::new(beacons_per_minute),
                tz,
                today: Mutex::new(Today::default()),
            }),
        })
    }

    /// The cookie keys: a cluster node adopts the cluster's here while running
    /// (`ops::cluster::keys`).
    pub fn keys(&self) -> &Keyring {
        &self.inner.keys
    }

    /// A new visitor first seen at `now_ms`, and its cookie value.
    pub fn issue(&self, now_ms: u64) -> (Visitor, String) {
        let visitor = Self::new_visitor(now_ms);
        let mut value = String::with_capacity(64);
        self.push_value(&visitor, &mut value);
        (visitor, value)
    }

    /// A new visitor's `Set-Cookie` header: the bytes of
    /// `Visitors::set_cookie(&self.issue(now_ms).1, secure)`, written into one buffer
    /// (a page view without a cookie, on the hot path).
    pub fn issue_set_cookie(&self, now_ms: u64, secure: bool) -> HeaderValue {
        use std::fmt::Write;
        let visitor = Self::new_visitor(now_ms);
        let mut out = String::with_capacity(160);
        out.push_str(COOKIE);
        out.push('=');
        self.push_value(&visitor, &mut out);
        let _ = write!(
            out,
            "; Path=/; Max-Age={MAX_AGE_SECS}; HttpOnly; SameSite=Lax"
        );
        if secure {
            out.push_str("; Secure");
        }
        HeaderValue::try_from(out).expect("the cookie is base64url, digits and dots")
    }

    fn new_visitor(now_ms: u64) -> Visitor {
        // getrandom fails only where the OS has no randomness at all; an id from the
        // clock and the hasher's random keys is then still unique enough to count.
        let id = random_id().unwrap_or_else(|| {
            let mut id = [0u8; 16];
            let h = RandomState::new().hash_one(now_ms);
            id[..8].copy_from_slice(&h.to_le_bytes());
            id[8..].copy_from_slice(&now_ms.to_le_bytes());
            id
        });
        Visitor {
            id,
            first_seen_secs: now_ms / 1000,
        }
    }

    /// Appends `visitor`'s cookie value, `1.<id>.<first seen>.<mac>`, to `out`.
    fn push_value(&self, visitor: &Visitor, out: &mut String) {
        use std::fmt::Write;
        let start = out.len();
        out.push_str(COOKIE_VERSION);
        out.push('.');
        B64.encode_string(visitor.id, out);
        let _ = write!(out, ".{}", visitor.first_seen_secs);
        let tag = self.inner.keys.tag(&out.as_bytes()[start..]);
        out.push('.');
        B64.encode_string(&tag[..MAC_BYTES], out);
    }

    /// The visitor a cookie value names, if this store's key signed it and it is
    /// within its lifetime at `now_ms`.
    pub fn verify(&self, value: &[u8], now_ms: u64) -> Option<Visitor> {
        let value = std::str::from_utf8(value).ok()?;
        if value.len() > 128 {
            return None;
        }
        let (signed, tag) = value.rsplit_once('.')?;
        let mut parts = signed.split('.');
        let (version, id, first_seen) = (parts.next()?, parts.next()?, parts.next()?);
        if version != COOKIE_VERSION || parts.next().is_some() {
            return None;
        }
        let tag = B64.decode(tag).ok()?;
        if tag.len() != MAC_BYTES {
            return None;
        }
        if !self.inner.keys.verify(signed.as_bytes(), &tag) {
            return None;
        }
        let id: [u8; 16] = B64.decode(id).ok()?.try_into().ok()?;
        let first_seen_secs: u64 = first_seen.parse().ok()?;
        let now = now_ms / 1000;
        // A minute's leeway for a clock stepped back; never a cookie from the future
        // or past its lifetime (one stolen long ago).
        if first_seen_secs > now + 60 || now.saturating_sub(first_seen_secs) > MAX_AGE_SECS {
            return None;
        }
        Some(Visitor {
            id,
            first_seen_secs,
        })
    }

    /// The signed text of a funnel mark: `lg_f.1.<id>.<secs>`. It starts unlike a
    /// visitor cookie's (`1.<id>.<secs>`), so no MAC of one is ever a MAC of the other.
    fn funnel_signed(id: &[u8; 16], view_secs: u64) -> String {
        format!(
            "{FUNNEL_COOKIE}.{FUNNEL_VERSION}.{}.{view_secs}",
            B64.encode(id)
        )
    }

    /// The `lg_f` value for `visitor`'s funnel page view at `now_ms`:
    /// `1.<second>.<mac>`, the MAC over the visitor's id and that second, so it means
    /// nothing beside another visitor's `lg_v`.
    pub fn funnel_mark(&self, visitor: &Visitor, now_ms: u64) -> String {
        let secs = now_ms / 1000;
        let tag = self
            .inner
            .keys
            .tag(Self::funnel_signed(&visitor.id, secs).as_bytes());
        format!("{FUNNEL_VERSION}.{secs}.{}", B64.encode(&tag[..MAC_BYTES]))
    }

    /// The second of `visitor`'s last funnel page view an `lg_f` value states, if this
    /// store's key signed it for this visitor and it is not from the future (a
    /// minute's leeway) at `now_ms`. How recent it must be is the caller's business.
    pub fn verify_funnel_mark(&self, visitor: &Visitor, value: &[u8], now_ms: u64) -> Option<u64> {
        if value.len() > 64 {
            return None;
        }
        let value = std::str::from_utf8(value).ok()?;
        let (version, rest) = value.split_once('.')?;
        let (secs, tag) = rest.split_once('.')?;
        if version != FUNNEL_VERSION || secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let view_secs: u64 = secs.parse().ok()?;
        let tag = B64.decode(tag).ok()?;
        if tag.len() != MAC_BYTES {
            return None;
        }
        if !self
            .inner
            .keys
            .verify(Self::funnel_signed(&visitor.id, view_secs).as_bytes(), &tag)
        {
            return None;
        }
        (view_secs <= now_ms / 1000 + 60).then_some(view_secs)
    }

    /// The visitor of a request and the second of its last funnel page view that this
    /// store can vouch for: the later of its `lg_v` issue (a visitor cookie is only
    /// issued on a funnel page view) and its `lg_f` mark. `None` without a valid
    /// `lg_v`. At most [`MAX_CANDIDATES`] cookies of each name are verified, so a
    /// header stuffed with copies costs a bounded number of MACs.
    pub fn last_funnel_view(&self, headers: &HeaderMap, now_ms: u64) -> Option<(Visitor, u64)> {
        let mut visitors: [&[u8]; MAX_CANDIDATES] = [&[]; MAX_CANDIDATES];
        let mut marks: [&[u8]; MAX_CANDIDATES] = [&[]; MAX_CANDIDATES];
        let (mut nv, mut nm) = (0, 0);
        for value in headers.get_all(header::COOKIE) {
            for pair in value.as_bytes().split(|&b| b == b';') {
                let Some((name, v)) = split_pair(pair) else {
                    continue;
                };
                if name == COOKIE.as_bytes() && nv < MAX_CANDIDATES {
                    visitors[nv] = v;
                    nv += 1;
                } else if name == FUNNEL_COOKIE.as_bytes() && nm < MAX_CANDIDATES {
                    marks[nm] = v;
                    nm += 1;
                }
            }
        }
        let visitor = visitors[..nv].iter().find_map(|v| self.verify(v, now_ms))?;
        let last = marks[..nm]
            .iter()
            .filter_map(|m| self.verify_funnel_mark(&visitor, m, now_ms))
            .fold(visitor.first_seen_secs, u64::max);
        Some((visitor, last))
    }

    /// The `Set-Cookie` value of a funnel mark, kept by the browser `max_age_secs`
    /// (`backpressure.funnel_grace_secs`).
    pub fn set_funnel_cookie(value: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
        let secure = if secure { "; Secure" } else { "" };
        HeaderValue::try_from(format!(
            "{FUNNEL_COOKIE}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Lax{secure}"
        ))
        .expect("the cookie is base64url, digits and dots")
    }

    /// The visitor of a request's `lg_v` cookie. Several `lg_v` cookies (one set by a
    /// sibling subdomain, say): the first that verifies.
    pub fn of_request(&self, headers: &HeaderMap, now_ms: u64) -> Result<Visitor, NoVisitor> {
        let mut found = false;
        for value in headers.get_all(header::COOKIE) {
            for pair in value.as_bytes().split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                let Some(v) = pair.strip_prefix(COOKIE.as_bytes()) else {
                    continue;
                };
                let Some(v) = v.trim_ascii_start().strip_prefix(b"=") else {
                    continue;
                };
                found = true;
                if let Some(visitor) = self.verify(v.trim_ascii(), now_ms) {
                    return Ok(visitor);
                }
            }
        }
        Err(if found {
            NoVisitor::Forged
        } else {
            NoVisitor::Missing
        })
    }

    /// The `Set-Cookie` value for a new visitor's cookie.
    pub fn set_cookie(value: &str, secure: bool) -> HeaderValue {
        let secure = if secure { "; Secure" } else { "" };
        HeaderValue::try_from(format!(
            "{COOKIE}={value}; Path=/; Max-Age={MAX_AGE_SECS}; HttpOnly; SameSite=Lax{secure}"
        ))
        .expect("the cookie is base64url, digits and dots")
    }

    /// The launch day `now_ms` falls in.
    pub fn today(&self, now_ms: u64) -> Today {
        let mut t = self.inner.today.lock();
        if !(t.start_ms..t.end_ms).contains(&now_ms) {
            let date = crate::insight::analytics::day_of(now_ms, &self.inner.tz);
            // A zone that cannot place midnight is already refused by config
            // validation; a one-millisecond day is the harmless fallback.
            let (start_ms, end_ms) = crate::insight::analytics::day_bounds(date, &self.inner.tz)
                .unwrap_or((now_ms, now_ms + 1));
            *t = Today {
                day: date.to_string().into(),
                start_ms,
                end_ms,
            };
        }
        t.clone()
    }

    /// A funnel page view by `known` (or, without one, by a new visitor): whether it
    /// is the visitor's first of its launch day, and the cookie value to set for a new
    /// visitor.
    pub fn page_view(
        &self,
        known: Option<Visitor>,
        now_ms: u64,
    ) -> Result<(bool, Option<String>), StoreError> {
        match known {
            None => Ok((true, Some(self.issue(now_ms).1))),
            Some(v) => Ok((self.first_today(&v, now_ms)?.is_some(), None)),
        }
    }

    /// Counts `visitor` among the visitors of `now_ms`'s launch day: the day
    /// (`YYYY-MM-DD`) the first time, `None` after. A visitor whose cookie was issued
    /// that day was counted at its issue.
    pub fn first_today(
        &self,
        visitor: &Visitor,
        now_ms: u64,
    ) -> Result<Option<Arc<str>>, StoreError> {
        let today = self.today(now_ms);
        if visitor.first_seen_secs.saturating_mul(1000) >= today.start_ms {
            return Ok(None);
        }
        Ok(self
            .first(&today.day, Mark::Visited, visitor)?
            .then_some(today.day))
    }

    /// Sets `mark` for `visitor` on `day` (`YYYY-MM-DD`); true if it was not set yet.
    pub fn first(&self, day: &str, mark: Mark<'_>, visitor: &Visitor) -> Result<bool, StoreError> {
        let key = mark_key(day, mark, visitor);
        Ok(self
            .inner
            .marks
            .compare_and_swap(key, None as Option<&[u8]>, Some(&[][..]))?
            .is_ok())
    }

    /// Removes the marks of days before `day` (`YYYY-MM-DD`). Returns how many.
    pub fn sweep_before(&self, day: &str) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for kv in self.inner.marks.range(..day.as_bytes()) {
            batch.remove(kv?.0);
            removed += 1;
        }
        if removed > 0 {
            self.inner.marks.apply_batch(batch)?;
        }
        Ok(removed)
    }

    /// Takes one beacon token for `client` at `now_ms`; past the budget, the seconds
    /// until the next token.
    pub fn take_beacon_token(&self, client: Option<IpAddr>, now_ms: u64) -> Result<(), u64> {
        self.inner.budget.take(client, now_ms)
    }
}

/// The name and value of one `name=value` piece of a `Cookie` header, trimmed.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let pair = pair.trim_ascii();
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
}

/// The key of `visitor`'s `mark` on `day`: `day NUL tag NUL id`. In a cluster it is
/// also the key of the count's claim (`insight::claims`).
pub fn mark_key(day: &str, mark: Mark<'_>, visitor: &Visitor) -> Vec<u8> {
    let mut key = Vec::with_capacity(day.len() + 24);
    key.extend_from_slice(day.as_bytes());
    key.push(0);
    match mark {
        Mark::Visited => key.push(b'v'),
        Mark::Converted => key.push(b'c'),
        Mark::Goal(goal) => {
            key.extend_from_slice(b"g:");
            key.extend_from_slice(goal.as_bytes());
        }
    }
    key.push(0);
    key.extend_from_slice(&visitor.id);
    key
}

/// The day, mark and visitor id of a [`mark_key`].
pub fn parse_mark_key(key: &[u8]) -> Option<(&str, Mark<'_>, [u8; 16])> {
    let (rest, id) = key.split_last_chunk::<16>()?;
    let rest = rest.strip_suffix(&[0])?;
    let sep = rest.iter().position(|&b| b == 0)?;
    let day = std::str::from_utf8(&rest[..sep]).ok()?;
    let mark = match &rest[sep + 1..] {
        b"v" => Mark::Visited,
        b"c" => Mark::Converted,
        tag => Mark::Goal(std::str::from_utf8(tag.strip_prefix(b"g:")?).ok()?),
    };
    Some((day, mark, *id))
}

/// The beacon budget per client, as GCRA (a token bucket kept as one time per
/// client: when its bucket will be full again).
struct Budget {
    /// Between two tokens, in µs.
    interval_us: u64,
    /// How far ahead of now that time may run and still give a token: a burst of
    /// `per_minute` at once.
    tolerance_us: u64,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<IpAddr, u64>>]>,
}

impl Budget {
    fn new(per_minute: u32) -> Budget {
        let interval_us = 60_000_000 / u64::from(per_minute.max(1));
        Budget {
            interval_us,
            tolerance_us: interval_us * u64::from(per_minute.max(1) - 1),
            hasher: RandomState::new(),
            shards: (0..BUDGET_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn take(&self, client: Option<IpAddr>, now_ms: u64) -> Result<(), u64> {
        let client = client.map_or(IpAddr::from([0u8; 4]), by_subscriber);
        let now = now_ms.saturating_mul(1000);
        let shard = &self.shards[self.hasher.hash_one(client) as usize % BUDGET_SHARDS];
        let mut map = shard.lock();
        if map.len() >= BUDGET_ENTRIES && !map.contains_key(&client) {
            // A full bucket holds nothing worth keeping: a new one starts full.
            map.retain(|_, full_at| *full_at > now);
            if map.len() >= BUDGET_ENTRIES {
                // Under a spray of addresses, forget them all rather than grow.
                map.clear();
            }
        }
        let full_at = map.entry(client).or_insert(now);
        let start = (*full_at).max(now);
        if start - now > self.tolerance_us {
            let wait_us = start - now - self.tolerance_us;
            return Err(wait_us.div_ceil(1_000_000).max(1));
        }
        *full_at = start + self.interval_us;
        Ok(())
    }
}

/// An IPv4 address as is; an IPv6 address by its /64 (one subscriber's network).
fn by_subscriber(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
        },
    }
}

/// 16 bytes of OS randomness for a visitor id, from a per-thread pool refilled 4 KiB
/// at a time: one `getrandom` call per 256 new visitors, not one per page view of a
/// visitor without a cookie. (The id is no secret: it is in the cookie, and the MAC,
/// not the id, is what cannot be forged. Each byte is handed out once.)
fn random_id() -> Option<[u8; 16]> {
    use std::cell::RefCell;
    const POOL: usize = 4096;
    thread_local! {
        static RANDOM: RefCell<([u8; POOL], usize)> = const { RefCell::new(([0; POOL], POOL)) };
    }
    RANDOM.with_borrow_mut(|(pool, used)| {
        if *used + 16 > POOL {
            getrandom::fill(pool).ok()?;
            *used = 0;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&pool[*used..*used + 16]);
        pool[*used..*used + 16].fill(0);
        *used += 16;
        Some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_ids_stay_distinct_across_pool_refills() {
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..1_000).map(|_| random_id().unwrap()).collect();
        assert_eq!(
            ids.len(),
            1_000,
            "1,000 ids over four refills, all different"
        );
        assert!(!ids.contains(&[0u8; 16]));
    }

    const NOW: u64 = 1_795_680_000_000;

    fn visitors(dir: &std::path::Path) -> Visitors {
        let tz = TimeZone::get("America/Los_Angeles").unwrap();
        Visitors::open(&Store::open(dir).unwrap(), 6, tz).unwrap()
    }

    #[test]
    fn an_issued_cookie_verifies_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (visitor, value) = {
            let v = visitors(dir.path());
            let (visitor, value) = v.issue(NOW);
            assert_eq!(v.verify(value.as_bytes(), NOW + 5_000), Some(visitor));
            (visitor, value)
        };
        let again = visitors(dir.path());
        assert_eq!(
            again.verify(value.as_bytes(), NOW + 86_400_000),
            Some(visitor)
        );
        assert_eq!(visitor.first_seen_secs, NOW / 1000);
    }

    /// A key adopted while running signs from then on; the cookies and funnel marks
    /// of the key before still verify.
    #[test]
    fn after_adopting_a_key_the_cookies_of_the_one_before_still_verify() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        let (visitor, before) = v.issue(NOW);
        let mark = v.funnel_mark(&visitor, NOW);
        assert!(v.keys().adopt(&[9; 32]).is_some());
        assert_eq!(v.verify(before.as_bytes(), NOW), Some(visitor));
        assert_eq!(
            v.verify_funnel_mark(&visitor, mark.as_bytes(), NOW),
            Some(NOW / 1000)
        );
        // What it signs now is signed with the adopted key alone.
        let (_, after) = v.issue(NOW);
        assert!(v.verify(after.as_bytes(), NOW).is_some());
        let (signed, tag) = after.rsplit_once('.').unwrap();
        let adopted = Keyring::new(&[9; 32], &[]);
        assert!(adopted.verify(signed.as_bytes(), &B64.decode(tag).unwrap()));
    }

    /// The hot path's one-buffer `Set-Cookie` is byte for byte what `set_cookie`
    /// makes of an issued value, and the value in it verifies.
    #[test]
    fn the_one_buffer_set_cookie_matches_set_cookie_of_an_issued_value() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        for secure in [false, true] {
            let header = v.issue_set_cookie(NOW, secure);
            let text = header.to_str().unwrap();
            let value = text
                .strip_prefix("lg_v=")
                .and_then(|t| t.split(';').next())
                .unwrap();
            let visitor = v.verify(value.as_bytes(), NOW).unwrap();
            assert_eq!(visitor.first_seen_secs, NOW / 1000);
            assert_eq!(header, Visitors::set_cookie(value, secure));
            let (_, issued) = v.issue(NOW);
            assert_eq!(issued.len(), value.len());
        }
    }

    #[test]
    fn forged_altered_foreign_expired_and_future_cookies_do_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        let (_, value) = v.issue(NOW);
        // Another store's key.
        let other_dir = tempfile::tempdir().unwrap();
        let other = visitors(other_dir.path());
        assert_eq!(other.verify(value.as_bytes(), NOW), None);
        // Any one character changed.
        for i in 0..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(
                v.verify(&bytes, NOW),
                None,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        // Past its lifetime, or from the future.
        assert_eq!(
            v.verify(value.as_bytes(), NOW + (MAX_AGE_SECS + 1) * 1000),
            None
        );
        let (_, early) = v.issue(NOW + 3_600_000);
        assert_eq!(v.verify(early.as_bytes(), NOW), None);
        for junk in ["", "1", "1...", "2.a.1.b", &"x".repeat(500)] {
            assert_eq!(v.verify(junk.as_bytes(), NOW), None, "{junk}");
        }
    }

    #[test]
    fn the_request_cookie_is_found_among_others_and_forgeries_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        let (visitor, value) = v.issue(NOW);
        let mut h = HeaderMap::new();
        assert_eq!(v.of_request(&h, NOW), Err(NoVisitor::Missing));
        h.insert(header::COOKIE, HeaderValue::from_static("_ga=1; lg_vx=2"));
        assert_eq!(v.of_request(&h, NOW), Err(NoVisitor::Missing));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("lg_v=1.AAAA.1.BBBB"),
        );
        assert_eq!(v.of_request(&h, NOW), Err(NoVisitor::Forged));
        h.append(
            header::COOKIE,
            HeaderValue::try_from(format!("theme=dark; lg_v = {value} ")).unwrap(),
        );
        assert_eq!(v.of_request(&h, NOW), Ok(visitor));
    }

    #[test]
    fn the_funnel_mark_is_http_only_lax_and_secure_over_tls() {
        assert_eq!(
            Visitors::set_funnel_cookie("1.2.x", 900, true),
            "lg_f=1.2.x; Path=/; Max-Age=900; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            Visitors::set_funnel_cookie("1.2.x", 60, false),
            "lg_f=1.2.x; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn a_mark_is_new_once_per_day_tag_and_visitor() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        let (a, _) = v.issue(NOW);
        let (b, _) = v.issue(NOW);
        assert!(v.first("2026-11-26", Mark::Visited, &a).unwrap());
        assert!(!v.first("2026-11-26", Mark::Visited, &a).unwrap());
        assert!(v.first("2026-11-26", Mark::Visited, &b).unwrap());
        assert!(v.first("2026-11-27", Mark::Visited, &a).unwrap());
        assert!(v.first("2026-11-26", Mark::Converted, &a).unwrap());
        assert!(v.first("2026-11-26", Mark::Goal("signup"), &a).unwrap());
        assert!(v.first("2026-11-26", Mark::Goal("demo"), &a).unwrap());
        assert!(!v.first("2026-11-26", Mark::Goal("signup"), &a).unwrap());
        for mark in [Mark::Visited, Mark::Converted, Mark::Goal("sign\0up")] {
            let key = mark_key("2026-11-26", mark, &a);
            let (day, back, id) = parse_mark_key(&key).unwrap();
            assert_eq!((day, id), ("2026-11-26", a.id));
            assert_eq!(format!("{back:?}"), format!("{mark:?}"));
        }
        assert_eq!(v.sweep_before("2026-11-27").unwrap(), 5);
        assert!(!v.first("2026-11-27", Mark::Visited, &a).unwrap());
    }

    #[test]
    fn a_visitor_counts_once_a_day_and_only_a_returning_one_leaves_a_mark() {
        const HOUR: u64 = 3_600_000;
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        // NOW is midnight in Los Angeles: a new visitor at 01:00 counts, no mark.
        let (new, cookie) = v.page_view(None, NOW + HOUR).unwrap();
        assert!(new);
        let visitor = v.verify(cookie.unwrap().as_bytes(), NOW + HOUR).unwrap();
        assert_eq!(v.inner.marks.len(), 0, "a new visitor costs no write");
        // Back the same day: not again, still no mark.
        for h in [2, 12, 23] {
            assert_eq!(
                v.page_view(Some(visitor), NOW + h * HOUR).unwrap(),
                (false, None)
            );
        }
        assert_eq!(v.inner.marks.len(), 0);
        // The next day: once, with a mark.
        assert_eq!(
            v.page_view(Some(visitor), NOW + 25 * HOUR).unwrap(),
            (true, None)
        );
        assert_eq!(
            v.page_view(Some(visitor), NOW + 30 * HOUR).unwrap(),
            (false, None)
        );
        assert_eq!(v.inner.marks.len(), 1);
        assert_eq!(&*v.today(NOW + 25 * HOUR).day, "2026-11-27");
        assert_eq!(v.today(NOW + 25 * HOUR).start_ms, NOW + 24 * HOUR);
    }

    #[test]
    fn the_beacon_budget_refills_per_client_and_per_ipv6_network() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path()); // 6 a minute: one every 10 s
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let b: IpAddr = "198.51.100.8".parse().unwrap();
        for _ in 0..6 {
            assert_eq!(v.take_beacon_token(Some(a), NOW), Ok(()));
        }
        assert_eq!(v.take_beacon_token(Some(a), NOW), Err(10));
        assert_eq!(v.take_beacon_token(Some(b), NOW), Ok(()));
        assert_eq!(v.take_beacon_token(Some(a), NOW + 4_000), Err(6));
        assert_eq!(v.take_beacon_token(Some(a), NOW + 10_000), Ok(()));
        assert_eq!(v.take_beacon_token(Some(a), NOW + 10_000), Err(10));
        // One /64 is one client, whatever its last 64 bits.
        for i in 0..6u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            assert_eq!(v.take_beacon_token(Some(ip), NOW), Ok(()));
        }
        let ip: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(v.take_beacon_token(Some(ip), NOW).is_err());
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(v.take_beacon_token(Some(other), NOW), Ok(()));
    }

    #[test]
    fn a_spray_of_addresses_keeps_the_budget_table_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let v = visitors(dir.path());
        for i in 0..200_000u32 {
            let _ = v.take_beacon_token(Some(IpAddr::from(i.to_be_bytes())), NOW);
        }
        let held: usize = v.inner.budget.shards.iter().map(|s| s.lock().len()).sum();
        assert!(held <= BUDGET_ENTRIES * BUDGET_SHARDS, "{held}");
    }
}
