//! Cache keys: the path plus the query, with tracking parameters dropped and the rest
//! sorted, so `/launch/?utm_source=ph&b=2&a=1` and `/launch/?a=1&b=2` are one entry.
//!
//! Pure, no I/O. Parameters are compared as the client sent them (no percent
//! decoding), which keeps normalization idempotent: normalizing a normalized key gives
//! it back unchanged. A key longer than the limit is refused, and the request bypasses
//! the cache.

use crate::config::QueryMode;
/// Query parameters that only say where a visitor came from.
const TRACKING_EXACT: &[&str] = &[
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "igshid",
    "mc_cid", "mc_eid", "ref", "_ga", "_gl",
];

/// Whether a query parameter name is a tracking parameter (`utm_*` and the list above).
pub fn is_tracking(name: &str) -> bool {
    name.starts_with("utm_") || TRACKING_EXACT.contains(&name)
}

/// Whether the key keeps the query parameter `name` under `mode`.
fn keeps(mode: &QueryMode, name: &str) -> bool {
    match mode {
        QueryMode::Sorted => !is_tracking(name),
        QueryMode::Ignore => false,
        QueryMode::Keep(names) => names.iter().any(|n| n == name),
    }
}

/// A cache key: the URL the origin is asked for (normalized path and query), then a
/// NUL, then the normalized host. The URL comes first so that a purge by path prefix
/// covers every host. Neither part can hold a NUL: the front door refuses `%00`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    text: String,
    url_len: usize,
}

impl Key {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The path and query a shared fetch asks the origin for: exactly what is keyed.
    pub fn url(&self) -> &str {
        &self.text[..self.url_len]
    }

    pub fn host(&self) -> &str {
        &self.text[self.url_len + 1..]
    }
}

impl Key {
    /// The key a stored text is (`url NUL host`, as [`Key::as_str`] gives it); None
    /// for a `Vary` variant's key, which carries more after the host.
    pub fn from_stored(text: &str) -> Option<Key> {
        let (url, host) = text.split_once('\0')?;
        if host.contains('\0') || !url.starts_with('/') {
            return None;
        }
        Some(Key {
            text: text.to_string(),
            url_len: url.len(),
        })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.host(), self.url())
    }
}

/// Normalizes `host`, `path` and `query` into a cache key of at most `max_len` bytes;
/// `None` when the key would be longer. `path` is canonical already (`front.rs`).
pub fn normalize(
    host: &str,
    path: &str,
    query: Option<&str>,
    mode: &QueryMode,
    max_len: usize,
) -> Option<Key> {
    let path = if path.is_empty() { "/" } else { path };
    if path.len() + 1 + host.len() > max_len {
        return None;
    }
    let mut pairs: Vec<&str> = match query {
        Some(q) if *mode != QueryMode::Ignore => q
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| keeps(mode, p.split('=').next().unwrap_or(p)))
            .collect(),
        _ => Vec::new(),
    };
    pairs.sort_unstable();
    let query_len = if pairs.is_empty() {
        0
    } else {
        1 + pairs.iter().map(|p| p.len() + 1).sum::<usize>() - 1
    };
    let url_len = path.len() + query_len;
    let len = url_len + 1 + host.len();
    if len > max_len {
        return None;
    }
    let mut text = String::with_capacity(len);
    text.push_str(path);
    for (i, p) in pairs.iter().enumerate() {
        text.push(if i == 0 { '?' } else { '&' });
        text.push_str(p);
    }
    text.push('\0');
    text.push_str(host);
    Some(Key { text, url_len })
}

/// Splits a URL (`Key::url`) into path and query.
pub fn split(url: &str) -> (&str, Option<&str>) {
    match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: &str = "launch.example";

    fn url(path: &str, query: Option<&str>, max: usize) -> Option<String> {
        normalize(H, path, query, &QueryMode::Sorted, max).map(|k| k.url().to_string())
    }

    #[test]
    fn tracking_params_are_dropped_and_the_rest_sorted() {
        assert_eq!(
            url(
                "/launch/",
                Some("utm_source=ph&b=2&fbclid=x&a=1&ref=hn"),
                2048
            )
            .unwrap(),
            "/launch/?a=1&b=2"
        );
        assert_eq!(
            url("/launch/", Some("utm_medium=x"), 2048).unwrap(),
            "/launch/"
        );
        assert_eq!(url("/", Some(""), 2048).unwrap(), "/");
        assert_eq!(url("", None, 2048).unwrap(), "/");
        assert_eq!(url("/a", Some("&&x&"), 2048).unwrap(), "/a?x");
        // Not a tracking parameter: only the exact names and the utm_ prefix are.
        assert_eq!(
            url("/a", Some("reference=1"), 2048).unwrap(),
            "/a?reference=1"
        );
    }

    #[test]
    fn the_host_is_part_of_the_key_and_the_url_is_what_the_origin_gets() {
        let a = normalize(
            "launch.example",
            "/p",
            Some("utm_source=x&b=1"),
            &QueryMode::Sorted,
            2048,
        )
        .unwrap();
        let b = normalize("evil.example", "/p", Some("b=1"), &QueryMode::Sorted, 2048).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.url(), b.url());
        assert_eq!(a.url(), "/p?b=1");
        assert_eq!(a.host(), "launch.example");
        assert!(
            a.as_str().starts_with("/p?b=1"),
            "a path prefix covers every host"
        );
        assert_eq!(a.to_string(), "launch.example/p?b=1");
    }

    #[test]
    fn query_modes() {
        let k = |mode: &QueryMode, q: &str| {
            normalize(H, "/p", Some(q), mode, 2048)
                .unwrap()
                .url()
                .to_string()
        };
        assert_eq!(k(&QueryMode::Ignore, "bust=1&a=2"), "/p");
        let keep = QueryMode::Keep(vec!["page".into(), "utm_source".into()]);
        assert_eq!(
            k(&keep, "bust=1&page=2&utm_source=ph&x"),
            "/p?page=2&utm_source=ph"
        );
        assert_eq!(k(&keep, "bust=1"), "/p");
        assert_eq!(k(&QueryMode::Sorted, "b=1&a=2&gclid=3"), "/p?a=2&b=1");
    }

    #[test]
    fn over_long_keys_are_refused() {
        let long = "a".repeat(100);
        assert!(url(&format!("/{long}"), None, 64).is_none());
        assert!(url("/x", Some(&format!("q={long}")), 64).is_none());
        assert_eq!(url("/x", Some(&format!("utm_x={long}")), 64).unwrap(), "/x");
    }

    fn param() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,6}=[a-z0-9%]{0,6}",
            "[a-z]{1,6}",
            "utm_[a-z]{1,6}=[a-z0-9]{0,6}",
            Just("fbclid=abc".to_string()),
            Just("gclid=1".to_string()),
            Just("ref=producthunt".to_string()),
        ]
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(path in "/[a-z/]{0,20}", params in prop::collection::vec(param(), 0..8)) {
            let q = params.join("&");
            if let Some(key) = url(&path, Some(&q), 2048) {
                let (p, q2) = split(&key);
                prop_assert_eq!(url(p, q2, 2048), Some(key.clone()));
            }
        }

        #[test]
        fn normalization_ignores_order(path in "/[a-z/]{0,20}", params in prop::collection::vec(param(), 0..8), seed in any::<u64>()) {
            let mut shuffled = params.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(
                url(&path, Some(&params.join("&")), 2048),
                url(&path, Some(&shuffled.join("&")), 2048)
            );
        }

        #[test]
        fn tracking_params_never_change_the_key(path in "/[a-z/]{0,20}", params in prop::collection::vec("[a-z]{1,6}=[0-9]{0,4}", 0..5), tracking in "utm_[a-z]{1,5}=[a-z]{0,5}") {
            let base = params.join("&");
            let with = if base.is_empty() { tracking.clone() } else { format!("{base}&{tracking}") };
            prop_assert_eq!(url(&path, Some(&base), 2048), url(&path, Some(&with), 2048));
        }

        #[test]
        fn keys_respect_the_bound(path in "/[a-z]{0,80}", params in prop::collection::vec(param(), 0..20), max in 64usize..200) {
            if let Some(key) = normalize(H, &path, Some(&params.join("&")), &QueryMode::Sorted, max) {
                prop_assert!(key.as_str().len() <= max);
            }
        }
    }
}
