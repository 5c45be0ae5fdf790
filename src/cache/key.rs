//! Cache keys: the path plus the query, with tracking parameters dropped and the rest
//! sorted, so `/launch/?utm_source=ph&b=2&a=1` and `/launch/?a=1&b=2` are one entry.
//!
//! Pure, no I/O. Parameters are compared as the client sent them (no percent
//! decoding), which keeps normalization idempotent: normalizing a normalized key gives
//! it back unchanged. A key longer than the limit is refused, and the request bypasses
//! the cache.

/// Query parameters that only say where a visitor came from.
const TRACKING_EXACT: &[&str] = &[
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "igshid",
    "mc_cid", "mc_eid", "ref", "_ga", "_gl",
];

/// Whether a query parameter name is a tracking parameter (`utm_*` and the list above).
pub fn is_tracking(name: &str) -> bool {
    name.starts_with("utm_") || TRACKING_EXACT.contains(&name)
}

/// Normalizes `path` and `query` into a cache key of at most `max_len` bytes; `None`
/// when the key would be longer.
pub fn normalize(path: &str, query: Option<&str>, max_len: usize) -> Option<String> {
    let path = if path.is_empty() { "/" } else { path };
    if path.len() > max_len {
        return None;
    }
    let mut pairs: Vec<&str> = match query {
        Some(q) => q
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| !is_tracking(p.split('=').next().unwrap_or(p)))
            .collect(),
        None => Vec::new(),
    };
    if pairs.is_empty() {
        return Some(path.to_string());
    }
    pairs.sort_unstable();
    let len = path.len() + 1 + pairs.iter().map(|p| p.len() + 1).sum::<usize>() - 1;
    if len > max_len {
        return None;
    }
    let mut key = String::with_capacity(len);
    key.push_str(path);
    key.push('?');
    for (i, p) in pairs.iter().enumerate() {
        if i > 0 {
            key.push('&');
        }
        key.push_str(p);
    }
    Some(key)
}

/// Splits a key back into path and query.
pub fn split(key: &str) -> (&str, Option<&str>) {
    match key.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (key, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tracking_params_are_dropped_and_the_rest_sorted() {
        assert_eq!(
            normalize(
                "/launch/",
                Some("utm_source=ph&b=2&fbclid=x&a=1&ref=hn"),
                2048
            )
            .unwrap(),
            "/launch/?a=1&b=2"
        );
        assert_eq!(
            normalize("/launch/", Some("utm_medium=x"), 2048).unwrap(),
            "/launch/"
        );
        assert_eq!(normalize("/", Some(""), 2048).unwrap(), "/");
        assert_eq!(normalize("", None, 2048).unwrap(), "/");
        assert_eq!(normalize("/a", Some("&&x&"), 2048).unwrap(), "/a?x");
        // Not a tracking parameter: only the exact names and the utm_ prefix are.
        assert_eq!(
            normalize("/a", Some("reference=1"), 2048).unwrap(),
            "/a?reference=1"
        );
    }

    #[test]
    fn over_long_keys_are_refused() {
        let long = "a".repeat(100);
        assert!(normalize(&format!("/{long}"), None, 64).is_none());
        assert!(normalize("/x", Some(&format!("q={long}")), 64).is_none());
        assert_eq!(
            normalize("/x", Some(&format!("utm_x={long}")), 64).unwrap(),
            "/x"
        );
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
            if let Some(key) = normalize(&path, Some(&q), 2048) {
                let (p, q2) = split(&key);
                prop_assert_eq!(normalize(p, q2, 2048), Some(key.clone()));
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
                normalize(&path, Some(&params.join("&")), 2048),
                normalize(&path, Some(&shuffled.join("&")), 2048)
            );
        }

        #[test]
        fn tracking_params_never_change_the_key(path in "/[a-z/]{0,20}", params in prop::collection::vec("[a-z]{1,6}=[0-9]{0,4}", 0..5), tracking in "utm_[a-z]{1,5}=[a-z]{0,5}") {
            let base = params.join("&");
            let with = if base.is_empty() { tracking.clone() } else { format!("{base}&{tracking}") };
            prop_assert_eq!(normalize(&path, Some(&base), 2048), normalize(&path, Some(&with), 2048));
        }

        #[test]
        fn keys_respect_the_bound(path in "/[a-z]{0,80}", params in prop::collection::vec(param(), 0..20), max in 64usize..200) {
            if let Some(key) = normalize(&path, Some(&params.join("&")), max) {
                prop_assert!(key.len() <= max);
            }
        }
    }
}
