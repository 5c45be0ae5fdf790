//! The bounded store: quick_cache 0.7 keyed by normalized URL, weighed in bytes.
//!
//! quick_cache rather than moka: its weights are exact and checked on insert (the
//! `cache.max_bytes` bound is a hard one, not an eventually-consistent estimate), a
//! read is a sharded lookup without a background maintenance thread, and its
//! eviction (S3-FIFO-like: a small probationary queue, a main queue, a ghost list)
//! keeps pages that are asked for again while one-hit wonders, such as a crawler's
//! sweep of 100,000 URLs, leave first. Its weight cap is per shard, so an object
//! heavier than a shard's share is never stored ([`Store::max_object_bytes`]).
//!
//! An object is stored once with its compressed variants (gzip, br) made at insert
//! time. A response with `Vary` (other than `Accept-Encoding`) stores a marker under
//! the URL that names the headers, and the object under the URL plus their values;
//! the marker carries a generation, so invalidating the URL orphans every variant.
//!
//! **Invariant:** `weight()` ≤ `cache.max_bytes`; every stored byte (body, variants,
//! headers, key) is counted in its entry's weight.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use quick_cache::sync::Cache as Qc;
use quick_cache::{OptionsBuilder, Weighter};

use super::freshness::Life;

/// Bodies below this are not compressed: the headers would cost more than the gain.
const COMPRESS_MIN_BYTES: usize = 256;
/// Fixed cost per entry for the allocations around it (Arc, HeaderMap, shard slot).
const ENTRY_OVERHEAD: u64 = 256;
const SHARDS: usize = 16;

/// One stored response: immutable except for its refresh flag.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The origin's end-to-end headers, less those the cache sets per answer.
    pub headers: HeaderMap,
    pub identity: Bytes,
    pub gzip: Option<Bytes>,
    pub br: Option<Bytes>,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
    pub life: Life,
    /// The origin sent the body already encoded (`Content-Encoding`); served as is.
    pub encoded: bool,
    /// The request headers this object varies on (from `Vary`, less `Accept-Encoding`).
    pub vary: Vec<HeaderName>,
    weight: u64,
    refreshing: AtomicBool,
}

impl Entry {
    /// Builds an entry from a complete origin response, making the compressed
    /// variants when the type is text-like and the body large enough.
    pub fn new(status: StatusCode, mut headers: HeaderMap, body: Bytes, life: Life) -> Entry {
        let vary = vary_headers(&headers);
        // Cache-Control and Expires stay: a 304 that does not repeat them must not
        // lose them (RFC 9111 §4.3.4). Answers replace Cache-Control with the edge's.
        for h in [
            header::AGE,
            header::CONTENT_LENGTH,
            header::SET_COOKIE,
            header::VARY,
            HeaderName::from_static("x-cache"),
        ] {
            headers.remove(h);
        }
        let encoded = headers.contains_key(header::CONTENT_ENCODING);
        let compressible = !encoded
            && body.len() >= COMPRESS_MIN_BYTES
            && headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(compressible_type);
        let (gzip, br) = if compressible {
            let g = gzip(&body).filter(|g| g.len() < body.len());
            let b = brotli(&body).filter(|b| b.len() < body.len());
            (g, b)
        } else {
            (None, None)
        };
        let etag = headers.get(header::ETAG).cloned();
        let last_modified = headers.get(header::LAST_MODIFIED).cloned();
        Entry::assemble(
            status,
            headers,
            body,
            gzip,
            br,
            etag,
            last_modified,
            life,
            encoded,
            vary,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        status: StatusCode,
        headers: HeaderMap,
        identity: Bytes,
        gzip: Option<Bytes>,
        br: Option<Bytes>,
        etag: Option<HeaderValue>,
        last_modified: Option<HeaderValue>,
        life: Life,
        encoded: bool,
        vary: Vec<HeaderName>,
    ) -> Entry {
        let header_bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let weight = ENTRY_OVERHEAD
            + (identity.len()
                + gzip.as_ref().map_or(0, Bytes::len)
                + br.as_ref().map_or(0, Bytes::len)
                + header_bytes) as u64;
        Entry {
            status,
            headers,
            identity,
            gzip,
            br,
            etag,
            last_modified,
            life,
            encoded,
            vary,
            weight,
            refreshing: AtomicBool::new(false),
        }
    }

    /// The entry after a 304: same bodies, the 304's headers merged in, stored anew.
    pub fn revalidated(&self, not_modified: &HeaderMap, now_ms: u64) -> Entry {
        let mut headers = self.headers.clone();
        for (name, value) in not_modified {
            if matches!(
                *name,
                header::CONTENT_LENGTH | header::CONTENT_ENCODING | header::TRANSFER_ENCODING
            ) {
                continue;
            }
            headers.insert(name.clone(), value.clone());
        }
        // The lifetime comes from the updated headers (RFC 9111 §4.3.4).
        let life = Life::from_response(self.status, &headers, now_ms);
        headers.remove(header::AGE);
        let etag = headers.get(header::ETAG).cloned();
        let last_modified = headers.get(header::LAST_MODIFIED).cloned();
        Entry::assemble(
            self.status,
            headers,
            self.identity.clone(),
            self.gzip.clone(),
            self.br.clone(),
            etag,
            last_modified,
            life,
            self.encoded,
            self.vary.clone(),
        )
    }

    pub fn weight(&self) -> u64 {
        self.weight
    }

    pub fn has_validators(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }

    /// Claims the one background refresh; false if one is already running.
    pub fn start_refresh(&self) -> bool {
        self.refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Lets a later request start a refresh again (the last one failed).
    pub fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

fn compressible_type(ct: &str) -> bool {
    let ct = ct.split(';').next().unwrap_or("").trim();
    ct.starts_with("text/")
        || matches!(
            ct,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/manifest+json"
                | "image/svg+xml"
        )
}

fn gzip(body: &[u8]) -> Option<Bytes> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::new(6),
    );
    enc.write_all(body).ok()?;
    enc.finish().ok().map(Bytes::from)
}

fn brotli(body: &[u8]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(body.len() / 3);
    let params = brotli::enc::BrotliEncoderParams {
        quality: 9,
        lgwin: 22,
        ..Default::default()
    };
    let mut input = body;
    brotli::BrotliCompress(&mut input, &mut out, &params).ok()?;
    Some(Bytes::from(out))
}

/// A `Vary` marker: the request headers that select the variant.
#[derive(Debug)]
pub struct VaryMarker {
    pub headers: Vec<HeaderName>,
    pub generation: u64,
}

#[derive(Debug, Clone)]
pub enum Slot {
    Object(Arc<Entry>),
    Vary(Arc<VaryMarker>),
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Arc<str>, Slot> for ByBytes {
    fn weight(&self, key: &Arc<str>, val: &Slot) -> u64 {
        let v = match val {
            Slot::Object(e) => e.weight,
            Slot::Vary(m) => ENTRY_OVERHEAD + 32 * m.headers.len() as u64,
        };
        key.len() as u64 + v
    }
}

/// The store; a clone is cheap and shares it.
#[derive(Clone)]
pub struct Store {
    map: Arc<Qc<Arc<str>, Slot, ByBytes>>,
    generation: Arc<AtomicU64>,
    max_object_bytes: u64,
    per_shard: u64,
}

impl Store {
    pub fn new(max_bytes: u64, max_object_bytes: u64) -> Store {
        let shards = SHARDS;
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity((max_bytes / 8192).clamp(64, 1 << 20) as usize)
            .weight_capacity(max_bytes)
            .build()
            .expect("cache options are valid");
        let map = Qc::with_options(
            options,
            ByBytes,
            quick_cache::DefaultHashBuilder::default(),
            Default::default(),
        );
        // A body over a quarter of a shard (variants and headers come on top) is not
        // worth evicting a shard's worth of pages for; it streams through instead.
        let per_shard = map.shard_capacity();
        Store {
            map: Arc::new(map),
            generation: Arc::new(AtomicU64::new(1)),
            max_object_bytes: max_object_bytes.min(per_shard / 4),
            per_shard,
        }
    }

    /// The largest body this store keeps.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    /// Bytes held, as weighed.
    pub fn weight(&self) -> u64 {
        self.map.weight()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The object for `key` and these request headers, and the full key it lives
    /// under (`key` itself, or the variant's key behind a `Vary` marker).
    pub fn get(&self, key: &str, req: &HeaderMap) -> (Option<Arc<Entry>>, Option<String>) {
        match self.map.get(key) {
            Some(Slot::Object(e)) => (Some(e), None),
            Some(Slot::Vary(m)) => {
                let full = variant_key(key, &m, req);
                match self.map.get(full.as_str()) {
                    Some(Slot::Object(e)) => (Some(e), Some(full)),
                    _ => (None, Some(full)),
                }
            }
            None => (None, None),
        }
    }

    /// Stores `entry` for `key`, honouring `Vary` (the origin's response headers).
    /// Returns false when the object is too heavy to keep.
    pub fn insert(&self, key: &str, req: &HeaderMap, entry: Arc<Entry>) -> bool {
        let vary = entry.vary.clone();
        if entry.weight + key.len() as u64 * 2 + 64 > self.per_shard {
            return false;
        }
        if vary.is_empty() {
            self.map.insert(Arc::from(key), Slot::Object(entry));
            return true;
        }
        let marker = match self.map.get(key) {
            Some(Slot::Vary(m)) if m.headers == vary => m,
            _ => {
                let m = Arc::new(VaryMarker {
                    headers: vary,
                    generation: self.generation.fetch_add(1, Ordering::Relaxed),
                });
                self.map.insert(Arc::from(key), Slot::Vary(m.clone()));
                m
            }
        };
        let full = variant_key(key, &marker, req);
        self.map
            .insert(Arc::from(full.as_str()), Slot::Object(entry));
        true
    }

    /// Drops what is stored for `key` (and, through the marker, its variants).
    pub fn remove(&self, key: &str) -> bool {
        self.map.remove(key).is_some()
    }

    /// Drops every key that starts with `prefix`; returns how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let before = self.map.len();
        self.map.retain(|k, _| !k.starts_with(prefix));
        before.saturating_sub(self.map.len())
    }
}

fn variant_key(key: &str, marker: &VaryMarker, req: &HeaderMap) -> String {
    let mut full = String::with_capacity(key.len() + 32);
    full.push_str(key);
    full.push('\0');
    full.push_str(&marker.generation.to_string());
    for name in &marker.headers {
        full.push('\0');
        for v in req.get_all(name) {
            full.push_str(&String::from_utf8_lossy(v.as_bytes()));
            full.push(',');
        }
    }
    full
}

/// The request headers a response varies on, less `Accept-Encoding` (the variants'
/// business).
pub fn vary_headers(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| *n != header::ACCEPT_ENCODING)
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn life() -> Life {
        Life::from_response(StatusCode::OK, &HeaderMap::new(), 0)
    }

    fn entry(body: &str, ct: &'static str) -> Arc<Entry> {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        Arc::new(Entry::new(
            StatusCode::OK,
            h,
            Bytes::from(body.to_string()),
            life(),
        ))
    }

    #[test]
    fn variants_are_made_once_for_text() {
        let page = "<p>launch day</p>".repeat(100);
        let e = entry(&page, "text/html; charset=utf-8");
        let gz = e.gzip.as_ref().unwrap();
        let mut d = flate2::read::GzDecoder::new(&gz[..]);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut d, &mut out).unwrap();
        assert_eq!(out, page);
        let br = e.br.as_ref().unwrap();
        let mut out = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut out).unwrap();
        assert_eq!(out, page.as_bytes());
        let png = entry(&page, "image/png");
        assert!(png.gzip.is_none() && png.br.is_none());
    }

    #[test]
    fn vary_selects_the_variant_and_removal_orphans_them() {
        let s = Store::new(1 << 20, 1 << 16);
        let varied = |body: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::VARY,
                HeaderValue::from_static("Accept-Language, Accept-Encoding"),
            );
            Arc::new(Entry::new(
                StatusCode::OK,
                h,
                Bytes::from(body.to_string()),
                life(),
            ))
        };
        let mut en = HeaderMap::new();
        en.insert("accept-language", HeaderValue::from_static("en"));
        let mut fr = HeaderMap::new();
        fr.insert("accept-language", HeaderValue::from_static("fr"));
        assert!(s.insert("/p", &en, varied("hello")));
        assert!(s.insert("/p", &fr, varied("bonjour")));
        assert_eq!(&s.get("/p", &en).0.unwrap().identity[..], b"hello");
        assert_eq!(&s.get("/p", &fr).0.unwrap().identity[..], b"bonjour");
        assert!(s.remove("/p"));
        assert!(s.get("/p", &en).0.is_none());
        // A new marker gets a new generation: the old variants stay unreachable.
        assert!(s.insert("/p", &fr, varied("salut")));
        assert!(s.get("/p", &en).0.is_none());
    }

    #[test]
    fn a_304_keeps_the_stored_directives_and_takes_new_ones() {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let l = Life::from_response(StatusCode::OK, &h, 0);
        let e = Entry::new(StatusCode::OK, h, Bytes::from_static(b"page"), l);
        assert!(e.life.revalidate_always);
        let mut not_modified = HeaderMap::new();
        not_modified.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let again = e.revalidated(&not_modified, 5_000);
        assert!(again.life.revalidate_always, "no-cache survives a bare 304");
        assert_eq!(again.life.stored_at_ms, 5_000);
        assert_eq!(&again.identity[..], b"page");
        not_modified.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=30"),
        );
        let renewed = e.revalidated(&not_modified, 6_000);
        assert!(!renewed.life.revalidate_always);
        assert_eq!(renewed.life.origin_ttl_ms, Some(30_000));
    }

    #[test]
    fn purge_by_prefix() {
        let s = Store::new(1 << 20, 1 << 16);
        for k in ["/launch/", "/launch/?a=1", "/pricing", "/"] {
            s.insert(k, &HeaderMap::new(), entry(k, "text/plain"));
        }
        assert_eq!(s.purge_prefix("/launch/"), 2);
        assert!(s.get("/launch/", &HeaderMap::new()).0.is_none());
        assert!(s.get("/pricing", &HeaderMap::new()).0.is_some());
    }

    proptest! {
        #[test]
        fn the_store_never_exceeds_its_bound(sizes in prop::collection::vec(0usize..20_000, 1..300)) {
            let max = 256 * 1024;
            let s = Store::new(max, 1 << 20);
            for (i, n) in sizes.iter().enumerate() {
                let body = "x".repeat(*n);
                s.insert(&format!("/k{i}"), &HeaderMap::new(), entry(&body, "application/octet-stream"));
                prop_assert!(s.weight() <= max, "{} > {}", s.weight(), max);
            }
        }
    }
}
