//! Which request cookies make a page personal.
//!
//! Three kinds of cookie reach the edge:
//! - **launchguard's own** (names starting `lg_`, also behind the `__Host-` and
//!   `__Secure-` prefixes): the visitor cookie and funnel mark (`lg_v`, `lg_f`), and
//!   the waiting-room cookie to come. They never make a request personal and never
//!   reach the origin.
//! - **ignored** (`cache.ignore_cookies`, globs; default the common analytics
//!   cookies): the site's scripts read them in the browser, the origin's HTML does not
//!   depend on them. They do not make a request personal, and they are removed from
//!   shared fetches, so the page stored for everyone was built without them.
//! - **the rest** (a session, a cart): the request bypasses the cache and goes to the
//!   origin with its cookies (less launchguard's own).
//!
//! A piece of the header without `=` is a cookie with an empty name, as browsers
//! send it; it is not ignored. Pure, no I/O.
//!
//! `Authorization` is judged with the cookies in `Cache::handle`: such a request
//! bypasses too, and a cached answer is never built from either.

use axum::http::{header, HeaderMap, HeaderValue};
use globset::GlobSet;

/// launchguard's own cookie names start with this (after an optional `__Host-` or
/// `__Secure-` prefix).
pub const OWN_PREFIX: &str = "lg_";

/// Whether `name` is one of launchguard's own cookies.
pub fn is_own(name: &str) -> bool {
    let bare = name
        .strip_prefix("__Host-")
        .or_else(|| name.strip_prefix("__Secure-"))
        .unwrap_or(name);
    bare.starts_with(OWN_PREFIX)
}

/// What a request's cookies say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No cookie, or only ignored and own ones: the request may share the cache; its
    /// `Cookie` header is removed before anything reaches the origin.
    Shared,
    /// A cookie the page may depend on: the request bypasses the cache.
    Personal,
}

/// `cache.ignore_cookies`, compiled once.
#[derive(Debug, Clone)]
pub struct CookiePolicy {
    ignored: GlobSet,
}

impl CookiePolicy {
    pub fn new(ignored: GlobSet) -> CookiePolicy {
        CookiePolicy { ignored }
    }

    /// Judges every `Cookie` header of a request.
    pub fn verdict(&self, headers: &HeaderMap) -> Verdict {
        for value in headers.get_all(header::COOKIE) {
            for (name, _) in pairs(value.as_bytes()) {
                if !is_own(name) && (name.is_empty() || !self.ignored.is_match(name)) {
                    return Verdict::Personal;
                }
            }
        }
        Verdict::Shared
    }
}

/// Removes launchguard's own cookies from a request bound for the origin, joining
/// what is left into one `Cookie` header (HTTP/2 may split it in several).
pub fn strip_own(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let several = values.next().is_some() && values.next().is_some();
    let has_own = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| pairs(v.as_bytes()).any(|(name, _)| is_own(name)));
    if !has_own && !several {
        return;
    }
    let mut kept = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        for (name, pair) in pairs(value.as_bytes()) {
            if !is_own(name) {
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(pair);
            }
        }
    }
    headers.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_bytes(&kept) {
        if !kept.is_empty() {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// The `name=value` pieces of a `Cookie` value, with their names (lossy for non-UTF-8
/// names, which then match no glob and count as personal).
fn pairs(value: &[u8]) -> impl Iterator<Item = (&str, &[u8])> {
    value
        .split(|&b| b == b';')
        .map(|p| p.trim_ascii())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let name = match p.iter().position(|&b| b == b'=') {
                Some(i) => p[..i].trim_ascii(),
                None => &[][..],
            };
            (std::str::from_utf8(name).unwrap_or("\u{fffd}"), p)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CookiePolicy {
        let defaults: Vec<String> = crate::config::DEFAULT_IGNORED_COOKIES
            .iter()
            .map(|s| s.to_string())
            .collect();
        CookiePolicy::new(crate::syntax::globs::cookie_names(&defaults).unwrap())
    }

    fn verdict(cookies: &[&'static str]) -> Verdict {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_static(c));
        }
        policy().verdict(&h)
    }

    #[test]
    fn analytics_and_own_cookies_share_the_cache() {
        assert_eq!(verdict(&[]), Verdict::Shared);
        assert_eq!(
            verdict(&["_ga=GA1.1.1; _ga_ABC=GS1; _gid=x; _gcl_au=1; _fbp=fb"]),
            Verdict::Shared
        );
        assert_eq!(
            verdict(&["_hjSessionUser_1=x; ajs_anonymous_id=y; ph_phc_x_posthog=z"]),
            Verdict::Shared
        );
        assert_eq!(
            verdict(&["_pk_id.1.1fff=a", "plausible_ignore=true"]),
            Verdict::Shared
        );
        assert_eq!(verdict(&["lg_vid=abc; __Host-lg_wr=t"]), Verdict::Shared);
    }

    #[test]
    fn a_session_cookie_makes_the_request_personal() {
        assert_eq!(verdict(&["session=alice"]), Verdict::Personal);
        assert_eq!(
            verdict(&["_ga=1; session=alice; lg_vid=abc"]),
            Verdict::Personal
        );
        assert_eq!(verdict(&["lg_vid=abc", "cart=3"]), Verdict::Personal);
        // A bare value is a cookie with an empty name: not ignored.
        assert_eq!(verdict(&["alice"]), Verdict::Personal);
        // Names are matched whole: `_gid` is ignored, `_gidx` is not.
        assert_eq!(verdict(&["_gidx=1"]), Verdict::Personal);
        assert_eq!(verdict(&["x_ga=1"]), Verdict::Personal);
    }

    #[test]
    fn own_cookies_never_reach_the_origin() {
        let strip = |cookies: &[&'static str]| {
            let mut h = HeaderMap::new();
            for c in cookies {
                h.append(header::COOKIE, HeaderValue::from_static(c));
            }
            strip_own(&mut h);
            h.get_all(header::COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&["session=alice"]), ["session=alice"]);
        assert_eq!(
            strip(&["_ga=1; session=alice; lg_vid=abc"]),
            ["_ga=1; session=alice"]
        );
        assert_eq!(strip(&["lg_vid=abc", "cart=3"]), ["cart=3"]);
        assert_eq!(strip(&["a=1", "b=2"]), ["a=1; b=2"]);
        assert!(strip(&["lg_vid=abc; __Secure-lg_wr=1"]).is_empty());
        assert!(strip(&[]).is_empty());
    }

    /// The visitor cookie and the funnel mark (`lg_v`, `lg_f`): a page asked for with
    /// them is the shared one, and the origin never sees them.
    #[test]
    fn the_visitor_cookie_and_funnel_mark_are_shared_and_stripped() {
        let (v, f) = ("lg_v", "lg_f");
        assert!(is_own(v) && is_own(f));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::try_from(format!("{v}=1.AAAA.1.BBBB; _ga=1; {f}=1.1795680000.CCCC"))
                .unwrap(),
        );
        h.append(
            header::COOKIE,
            HeaderValue::try_from(format!("{f}=x")).unwrap(),
        );
        assert_eq!(policy().verdict(&h), Verdict::Shared);
        strip_own(&mut h);
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, ["_ga=1"]);
    }

    #[test]
    fn bad_patterns_name_their_entry() {
        assert_eq!(
            crate::syntax::globs::cookie_names(&["ok".into(), "a=b".into()])
                .unwrap_err()
                .0,
            1
        );
        assert!(crate::syntax::globs::cookie_names(&["[".into()]).is_err());
    }
}
