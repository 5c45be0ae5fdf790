//! Freshness, decided at serve time with the factor of that moment. Pure: every
//! function takes `now_ms` and the factor, and reads nothing else.
//!
//! - Dynamic lifetime: `max(min_ttl, base_ttl / factor)`; when the crowd arrives the
//!   pages in the cache get younger without anything being rewritten.
//! - The origin's word wins, as for a shared cache (RFC 9111): explicit freshness
//!   (`s-maxage`, else `max-age`, else `Expires - Date`, less `Age`) caps the
//!   lifetime; `no-cache` or a zero lifetime → revalidate before each use;
//!   `must-revalidate` / `proxy-revalidate` → never served stale.
//! - Past its lifetime an object is served stale for `stale_while_revalidate` while
//!   one refresh runs, and for `stale_if_error` when the origin fails.
//! - 301 and 404 are kept briefly: at most `min_ttl`.

use axum::http::{header, HeaderMap, HeaderName, StatusCode};

/// Lifetimes from `[cache]`, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub base_ttl_ms: u64,
    pub min_ttl_ms: u64,
    pub swr_ms: u64,
    pub sie_ms: u64,
}

impl Policy {
    pub fn from_config(c: &crate::config::CacheConfig) -> Policy {
        Policy {
            base_ttl_ms: c.base_ttl_secs * 1000,
            min_ttl_ms: c.min_ttl_secs * 1000,
            swr_ms: c.stale_while_revalidate_secs * 1000,
            sie_ms: c.stale_if_error_secs * 1000,
        }
    }

    /// `max(min_ttl, base_ttl / factor)`.
    pub fn dynamic_ttl_ms(&self, factor: f64) -> u64 {
        let f = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        ((self.base_ttl_ms as f64 / f) as u64).max(self.min_ttl_ms)
    }
}

/// The `Cache-Control` directives a shared cache acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// Unqualified `private`: the whole response is for one user.
    pub private: bool,
    /// Unqualified `no-cache`: revalidate before each use.
    pub no_cache: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// `no-transform`: the edge serves no encoded variant of its own.
    pub no_transform: bool,
    /// Fields named by `private="..."` and `no-cache="..."`: the response may be
    /// stored, but never with these (RFC 9111 §5.2.2.4, §5.2.2.7).
    pub withheld: Vec<HeaderName>,
}

/// Splits one `Cache-Control` value into directives, honouring quoted strings (a
/// field list such as `no-cache="set-cookie, x-user"` holds commas).
fn split_directives(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if escaped {
                escaped = false;
            } else if in_quotes && c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = !in_quotes;
            } else if c == ',' && !in_quotes {
                end = i;
                break;
            }
        }
        let part = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("");
        if part.is_empty() {
            continue;
        }
        let (name, arg) = match part.split_once('=') {
            Some((n, a)) => {
                let a = a.trim();
                let a = a
                    .strip_prefix('"')
                    .and_then(|a| a.strip_suffix('"'))
                    .unwrap_or(a);
                (n.trim(), Some(a.to_string()))
            }
            None => (part, None),
        };
        out.push((name.to_ascii_lowercase(), arg));
    }
    out
}

/// Parses every `Cache-Control` header value. Unknown directives are ignored;
/// a malformed number makes the directive count as 0 (stale), the safe reading.
pub fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for (name, arg) in split_directives(text) {
            let secs = || {
                arg.as_deref()
                    .and_then(|a| a.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let fields = |d: &mut Directives| {
                for f in arg.as_deref().unwrap_or("").split(',') {
                    if let Ok(n) = HeaderName::from_bytes(f.trim().as_bytes()) {
                        d.withheld.push(n);
                    }
                }
            };
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-transform" => d.no_transform = true,
                "private" if arg.is_some() => fields(&mut d),
                "private" => d.private = true,
                "no-cache" if arg.is_some() => fields(&mut d),
                "no-cache" => d.no_cache = true,
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                "max-age" => d.max_age = Some(secs()),
                "s-maxage" => {
                    d.s_maxage = Some(secs());
                    // s-maxage implies proxy-revalidate for a shared cache.
                    d.must_revalidate = true;
                }
                _ => {}
            }
        }
    }
    d
}

/// The origin's explicit freshness lifetime in ms, less the `Age` it reports; `None`
/// when the origin is silent.
pub fn origin_lifetime_ms(headers: &HeaderMap, d: &Directives) -> Option<u64> {
    let secs = match (d.s_maxage, d.max_age) {
        (Some(s), _) => Some(s),
        (None, Some(m)) => Some(m),
        (None, None) => {
            let expires = headers.get(header::EXPIRES)?.to_str().ok()?;
            match httpdate::parse_http_date(expires) {
                Ok(exp) => {
                    let date = headers
                        .get(header::DATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| httpdate::parse_http_date(v).ok());
                    // Without Date, Expires cannot be read against the origin's clock.
                    date.map(|date| exp.duration_since(date).map(|d| d.as_secs()).unwrap_or(0))
                }
                // An invalid Expires means "already expired".
                Err(_) => Some(0),
            }
        }
    }?;
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(secs.saturating_sub(age).saturating_mul(1000))
}

/// What the stored object's own headers said, fixed when it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    pub stored_at_ms: u64,
    /// The origin's explicit lifetime, if it gave one.
    pub origin_ttl_ms: Option<u64>,
    /// `no-cache` or a zero lifetime: ask the origin before each use.
    pub revalidate_always: bool,
    /// `must-revalidate`: never served stale.
    pub never_stale: bool,
    /// 301/404: kept at most `min_ttl`.
    pub brief: bool,
    /// The `Age` the origin (or a cache before it) reported, seconds.
    pub initial_age_secs: u64,
}

impl Life {
    pub fn from_response(status: StatusCode, headers: &HeaderMap, now_ms: u64) -> Life {
        let d = directives(headers);
        let origin_ttl_ms = origin_lifetime_ms(headers, &d);
        Life {
            stored_at_ms: now_ms,
            origin_ttl_ms,
            revalidate_always: d.no_cache || origin_ttl_ms == Some(0),
            never_stale: d.must_revalidate,
            brief: matches!(
                status,
                StatusCode::MOVED_PERMANENTLY | StatusCode::NOT_FOUND
            ),
            initial_age_secs: headers
                .get(header::AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0),
        }
    }

    /// The `Age` to send: what the origin reported plus the time spent here.
    pub fn served_age_secs(&self, now_ms: u64) -> u64 {
        self.initial_age_secs + self.age_ms(now_ms) / 1000
    }

    /// The lifetime in force at `factor`.
    pub fn ttl_ms(&self, policy: &Policy, factor: f64) -> u64 {
        let mut ttl = policy.dynamic_ttl_ms(factor);
        if let Some(o) = self.origin_ttl_ms {
            ttl = ttl.min(o);
        }
        if self.brief {
            ttl = ttl.min(policy.min_ttl_ms);
        }
        ttl
    }

    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms)
    }
}

/// What to do with a stored object now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it; it stays fresh for `remaining_ms`.
    Fresh { remaining_ms: u64 },
    /// Serve it at once and refresh it in the background (one refresh).
    Stale,
    /// Ask the origin first (conditional request), then serve.
    Revalidate,
}

pub fn verdict(life: &Life, policy: &Policy, factor: f64, now_ms: u64) -> Verdict {
    if life.revalidate_always {
        return Verdict::Revalidate;
    }
    let ttl = life.ttl_ms(policy, factor);
    let age = life.age_ms(now_ms);
    if age < ttl {
        Verdict::Fresh {
            remaining_ms: ttl - age,
        }
    } else if !life.never_stale && age < ttl.saturating_add(policy.swr_ms) {
        Verdict::Stale
    } else {
        Verdict::Revalidate
    }
}

/// Whether refresh-ahead should fetch an object again now: less than a quarter of
/// its lifetime at `factor` is left, or less than `lead_ms` (so it cannot run out
/// between two looks). An object asked for on each use (`no-cache`) is not: the
/// visitor's request asks anyway.
pub fn refresh_due(life: &Life, policy: &Policy, factor: f64, now_ms: u64, lead_ms: u64) -> bool {
    if life.revalidate_always {
        return false;
    }
    let ttl = life.ttl_ms(policy, factor);
    let left = ttl.saturating_sub(life.age_ms(now_ms));
    left < (ttl / 4).max(lead_ms)
}

/// Whether the stored object may stand in when the origin fails.
pub fn usable_on_error(life: &Life, policy: &Policy, factor: f64, now_ms: u64) -> bool {
    if life.never_stale {
        return false;
    }
    let ttl = if life.revalidate_always {
        0
    } else {
        life.ttl_ms(policy, factor)
    };
    life.age_ms(now_ms) < ttl.saturating_add(policy.sie_ms)
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Must not even be shared with other waiters: each request goes to the origin.
    Personal(&'static str),
    /// May be shared with the requests waiting for it, but not kept.
    Transient,
}

/// The not-cached rules: `Set-Cookie` (unless the origin withheld it with
/// `private="set-cookie"` or `no-cache="set-cookie"`), `private`, `no-store`,
/// `Vary: *`, and statuses other than 2xx, 301 and 404.
pub fn storable(status: StatusCode, headers: &HeaderMap) -> Result<(), NotStored> {
    let d = directives(headers);
    let storable_status = status.is_success()
        && status != StatusCode::PARTIAL_CONTENT
        && status != StatusCode::NO_CONTENT
        || status == StatusCode::MOVED_PERMANENTLY
        || status == StatusCode::NOT_FOUND;
    // A withheld Set-Cookie only counts for what is stored; an answer that is shared
    // with the waiters but not stored (a 302, a 500) keeps every header, so it must
    // not be shared at all.
    if headers.contains_key(header::SET_COOKIE)
        && !(storable_status && d.withheld.contains(&header::SET_COOKIE))
    {
        return Err(NotStored::Personal("set-cookie"));
    }
    if d.private {
        return Err(NotStored::Personal("private"));
    }
    if d.no_store {
        return Err(NotStored::Personal("no-store"));
    }
    if headers
        .get_all(header::VARY)
        .iter()
        .any(|v| v.to_str().map(|s| s.contains('*')).unwrap_or(true))
    {
        return Err(NotStored::Personal("vary-star"));
    }
    if !storable_status {
        return Err(NotStored::Transient);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const P: Policy = Policy {
        base_ttl_ms: 60_000,
        min_ttl_ms: 5_000,
        swr_ms: 30_000,
        sie_ms: 600_000,
    };

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn life(pairs: &[(&'static str, &'static str)]) -> Life {
        Life::from_response(StatusCode::OK, &h(pairs), 1_000_000)
    }

    #[test]
    fn refresh_ahead_is_due_in_the_last_quarter_or_the_lead() {
        let l = life(&[]);
        let at = |ms: u64| 1_000_000 + ms;
        // Factor 2: a 30 s lifetime; due from 22.5 s of age on.
        assert!(!refresh_due(&l, &P, 2.0, at(22_000), 1_000));
        assert!(refresh_due(&l, &P, 2.0, at(22_600), 1_000));
        assert!(refresh_due(&l, &P, 2.0, at(40_000), 1_000), "past its end");
        // At the 5 s floor a quarter is 1.25 s; a 2 s lead wins.
        assert!(!refresh_due(&l, &P, 50.0, at(2_900), 2_000));
        assert!(refresh_due(&l, &P, 50.0, at(3_100), 2_000));
        // The origin's own shorter lifetime counts; no-cache is never refreshed ahead.
        let short = life(&[("cache-control", "max-age=8")]);
        assert!(refresh_due(&short, &P, 2.0, at(6_500), 1_000));
        let asked = life(&[("cache-control", "no-cache")]);
        assert!(!refresh_due(&asked, &P, 2.0, at(60_000), 1_000));
    }

    #[test]
    fn the_dynamic_ttl_shrinks_with_the_factor() {
        assert_eq!(P.dynamic_ttl_ms(1.0), 60_000);
        assert_eq!(P.dynamic_ttl_ms(2.0), 30_000);
        assert_eq!(P.dynamic_ttl_ms(5.0), 12_000);
        assert_eq!(P.dynamic_ttl_ms(50.0), 5_000);
        assert_eq!(P.dynamic_ttl_ms(f64::NAN), 60_000);
    }

    #[test]
    fn freshness_is_decided_with_the_factor_of_the_moment() {
        let l = life(&[]);
        let at = |s: u64| 1_000_000 + s * 1000;
        assert_eq!(
            verdict(&l, &P, 1.0, at(20)),
            Verdict::Fresh {
                remaining_ms: 40_000
            }
        );
        // The same object, the crowd arrives: 60/5 = 12 s, so it is now stale.
        assert_eq!(verdict(&l, &P, 5.0, at(20)), Verdict::Stale);
        assert_eq!(verdict(&l, &P, 5.0, at(41)), Verdict::Stale);
        assert_eq!(verdict(&l, &P, 5.0, at(42)), Verdict::Revalidate);
        assert!(usable_on_error(&l, &P, 5.0, at(600)));
        assert!(!usable_on_error(&l, &P, 5.0, at(612)));
    }

    #[test]
    fn the_origin_caps_the_lifetime() {
        let l = life(&[("cache-control", "public, max-age=10")]);
        assert_eq!(l.ttl_ms(&P, 1.0), 10_000);
        let l = life(&[("cache-control", "max-age=100, s-maxage=20")]);
        assert_eq!(l.ttl_ms(&P, 1.0), 20_000);
        assert!(l.never_stale, "s-maxage implies proxy-revalidate");
        let l = life(&[("cache-control", "max-age=100"), ("age", "95")]);
        assert_eq!(l.ttl_ms(&P, 1.0), 5_000);
        assert_eq!(l.served_age_secs(1_003_000), 98);
        let l = life(&[
            ("date", "Wed, 25 Nov 2026 10:00:00 GMT"),
            ("expires", "Wed, 25 Nov 2026 10:00:07 GMT"),
        ]);
        assert_eq!(l.ttl_ms(&P, 1.0), 7_000);
        let l = life(&[("expires", "0"), ("date", "Wed, 25 Nov 2026 10:00:00 GMT")]);
        assert!(l.revalidate_always);
        // A longer origin lifetime does not lengthen the dynamic one.
        let l = life(&[("cache-control", "max-age=3600")]);
        assert_eq!(l.ttl_ms(&P, 5.0), 12_000);
    }

    #[test]
    fn no_cache_and_must_revalidate() {
        let l = life(&[("cache-control", "no-cache")]);
        assert_eq!(verdict(&l, &P, 1.0, 1_000_000), Verdict::Revalidate);
        assert!(usable_on_error(&l, &P, 1.0, 1_000_000));
        let l = life(&[("cache-control", "max-age=0")]);
        assert_eq!(verdict(&l, &P, 1.0, 1_000_000), Verdict::Revalidate);
        let l = life(&[("cache-control", "max-age=10, must-revalidate")]);
        assert_eq!(verdict(&l, &P, 1.0, 1_011_000), Verdict::Revalidate);
        assert!(!usable_on_error(&l, &P, 1.0, 1_011_000));
    }

    #[test]
    fn qualified_private_and_no_cache_withhold_fields_only() {
        let d = directives(&h(&[(
            "cache-control",
            "public, no-cache=\"Set-Cookie, X-User\", max-age=30, private=\"x-debug\"",
        )]));
        assert!(!d.no_cache && !d.private);
        assert_eq!(d.max_age, Some(30));
        assert_eq!(
            d.withheld,
            vec![
                HeaderName::from_static("set-cookie"),
                HeaderName::from_static("x-user"),
                HeaderName::from_static("x-debug")
            ]
        );
        let l = life(&[("cache-control", "no-cache=\"set-cookie\", max-age=30")]);
        assert!(!l.revalidate_always);
        assert_eq!(
            storable(
                StatusCode::OK,
                &h(&[
                    ("set-cookie", "s=1"),
                    ("cache-control", "private=\"set-cookie\"")
                ])
            ),
            Ok(())
        );
        // A 302 with a withheld cookie is shared with nobody.
        assert_eq!(
            storable(
                StatusCode::FOUND,
                &h(&[
                    ("set-cookie", "s=1"),
                    ("cache-control", "no-cache=\"set-cookie\"")
                ])
            ),
            Err(NotStored::Personal("set-cookie"))
        );
        // Unqualified, they still mean the whole response.
        let d = directives(&h(&[("cache-control", "private, no-cache")]));
        assert!(d.private && d.no_cache && d.withheld.is_empty());
    }

    #[test]
    fn brief_statuses() {
        let l = Life::from_response(StatusCode::NOT_FOUND, &HeaderMap::new(), 0);
        assert_eq!(l.ttl_ms(&P, 1.0), 5_000);
    }

    #[test]
    fn not_cached_rules() {
        assert_eq!(storable(StatusCode::OK, &h(&[])), Ok(()));
        assert_eq!(
            storable(StatusCode::OK, &h(&[("set-cookie", "s=1")])),
            Err(NotStored::Personal("set-cookie"))
        );
        assert_eq!(
            storable(
                StatusCode::OK,
                &h(&[("cache-control", "private, max-age=60")])
            ),
            Err(NotStored::Personal("private"))
        );
        assert_eq!(
            storable(StatusCode::OK, &h(&[("cache-control", "no-store")])),
            Err(NotStored::Personal("no-store"))
        );
        assert_eq!(
            storable(StatusCode::OK, &h(&[("vary", "*")])),
            Err(NotStored::Personal("vary-star"))
        );
        assert_eq!(
            storable(StatusCode::INTERNAL_SERVER_ERROR, &h(&[])),
            Err(NotStored::Transient)
        );
        assert_eq!(storable(StatusCode::NOT_FOUND, &h(&[])), Ok(()));
        assert_eq!(storable(StatusCode::MOVED_PERMANENTLY, &h(&[])), Ok(()));
        assert_eq!(
            storable(StatusCode::FOUND, &h(&[])),
            Err(NotStored::Transient)
        );
    }
}
