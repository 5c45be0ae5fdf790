//! The bounded store: quick_cache 0.7 keyed by normalized URL, weighed in bytes.
//!
//! quick_cache rather than moka: its weights are exact and checked on insert (the
//! `cache.max_bytes` bound is a hard one, not an eventually-consistent estimate), a
//! read is a sharded lookup without a background maintenance thread, and its
//! eviction (S3-FIFO-like: a small probationary queue, a main queue, a ghost list)
//! keeps pages that are asked for again while one-hit wonders, such as a crawler's
//! sweep of 100,000 URLs, leave first. Its weight cap is per shard, so an object
//! heavier than a shard's share is never stored ([`Objects::max_object_bytes`]).
//!
//! An object is stored as the origin sent it. Its compressed variants (gzip, br) are
//! made later, off the async workers, once it has been asked for twice
//! ([`Entry::note_use`], `Cache::compress`): a cache-busting miss costs no
//! compression. The compressed copy replaces the stored one only if that one is still
//! in place ([`Objects::replace`]), and is weighed anew. A response with `Vary` (other
//! than `Accept-Encoding`) stores a marker under the URL that names the headers, and
//! the object under the URL plus their values; the marker carries a generation, so
//! invalidating the URL orphans every variant.
//!
//! **Invariant:** `weight()` ≤ `cache.max_bytes`; every stored byte (body, variants,
//! headers, key) is counted in its entry's weight.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use quick_cache::sync::Cache as Qc;
use quick_cache::{OptionsBuilder, Weighter};

use super::freshness::{self, Life};

/// Bodies below this are not compressed: the headers would cost more than the gain.
const COMPRESS_MIN_BYTES: usize = 256;
/// Fixed cost per entry for the allocations around it (Arc, HeaderMap, shard slot).
const ENTRY_OVERHEAD: u64 = 256;
const SHARDS: usize = 16;

/// One stored response: immutable except for its refresh and use flags.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The origin's end-to-end headers as it sent them (its `Cache-Control`,
    /// `Expires` and `Vary` included), less those the cache sets per answer and the
    /// fields it withheld (`private="..."`, `no-cache="..."`).
    pub headers: HeaderMap,
    pub identity: Bytes,
    pub gzip: Option<Bytes>,
    pub br: Option<Bytes>,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
    pub life: Life,
    /// The origin sent the body already encoded (`Content-Encoding`); served as is.
    pub encoded: bool,
    /// Text-like and large enough: gzip and br variants are (or will be) served.
    pub compressible: bool,
    /// The origin said how long the object stays fresh (`Cache-Control` or
    /// `Expires`): clients get its words, not the edge's dynamic header.
    pub origin_speaks: bool,
    /// The `Vary` answers carry: the origin's, with `Accept-Encoding` added when the
    /// object is compressible.
    pub vary_out: Option<HeaderValue>,
    /// The request headers this object varies on (from `Vary`, less `Accept-Encoding`).
    pub vary: Vec<HeaderName>,
    weight: u64,
    refreshing: AtomicBool,
    /// Answers served from this entry (saturating), to compress on the second.
    uses: AtomicU32,
    /// A compression was started for this entry.
    compressing: AtomicBool,
}

impl Entry {
    /// Builds an entry from a complete origin response. No compression happens here.
    pub fn new(status: StatusCode, mut headers: HeaderMap, body: Bytes, life: Life) -> Entry {
        let vary = vary_headers(&headers);
        // Cache-Control and Expires stay: clients get them, and a 304 that does not
        // repeat them must not lose them (RFC 9111 §4.3.4).
        // Accept-Ranges goes too: answers from the store are whole bodies, and a
        // Range request gets the whole 200 (which RFC 9110 allows), so it must not
        // be promised.
        for h in [
            header::AGE,
            header::CONTENT_LENGTH,
            header::ACCEPT_RANGES,
            HeaderName::from_static("x-cache"),
        ] {
            headers.remove(h);
        }
        for h in freshness::directives(&headers).withheld {
            headers.remove(h);
        }
        headers.remove(header::SET_COOKIE);
        let encoded = headers.contains_key(header::CONTENT_ENCODING);
        let compressible = !encoded
            && !freshness::directives(&headers).no_transform
            && body.len() >= COMPRESS_MIN_BYTES
            && headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(compressible_type);
        let etag = headers.get(header::ETAG).cloned();
        let last_modified = headers.get(header::LAST_MODIFIED).cloned();
        Entry::assemble(Parts {
            status,
            headers,
            identity: body,
            gzip: None,
            br: None,
            etag,
            last_modified,
            life,
            encoded,
            compressible,
            vary,
        })
    }

    fn assemble(p: Parts) -> Entry {
        let header_bytes: usize = p
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let weight = ENTRY_OVERHEAD
            + (p.identity.len()
                + p.gzip.as_ref().map_or(0, Bytes::len)
                + p.br.as_ref().map_or(0, Bytes::len)
                + header_bytes) as u64;
        let origin_speaks = p.headers.contains_key(header::CACHE_CONTROL)
            || p.headers.contains_key(header::EXPIRES);
        let vary_out = vary_out(&p.headers, p.compressible);
        Entry {
            status: p.status,
            headers: p.headers,
            identity: p.identity,
            gzip: p.gzip,
            br: p.br,
            etag: p.etag,
            last_modified: p.last_modified,
            life: p.life,
            encoded: p.encoded,
            compressible: p.compressible,
            origin_speaks,
            vary_out,
            vary: p.vary,
            weight,
            refreshing: AtomicBool::new(false),
            uses: AtomicU32::new(0),
            compressing: AtomicBool::new(false),
        }
    }

    fn parts(&self) -> Parts {
        Parts {
            status: self.status,
            headers: self.headers.clone(),
            identity: self.identity.clone(),
            gzip: self.gzip.clone(),
            br: self.br.clone(),
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            life: self.life,
            encoded: self.encoded,
            compressible: self.compressible,
            vary: self.vary.clone(),
        }
    }

    /// The entry after a 304: same bodies, the 304's headers merged in, stored anew.
    pub fn revalidated(&self, not_modified: &HeaderMap, now_ms: u64) -> Entry {
        let mut p = self.parts();
        let skip = |name: &HeaderName| {
            matches!(
                *name,
                header::CONTENT_LENGTH
                    | header::CONTENT_ENCODING
                    | header::TRANSFER_ENCODING
                    | header::SET_COOKIE
            )
        };
        // Each field the 304 names replaces the stored one, every line of it.
        for name in not_modified.keys() {
            if !skip(name) {
                p.headers.remove(name);
            }
        }
        for (name, value) in not_modified {
            if !skip(name) {
                p.headers.append(name.clone(), value.clone());
            }
        }
        // The lifetime comes from the updated headers (RFC 9111 §4.3.4).
        p.life = Life::from_response(self.status, &p.headers, now_ms);
        p.headers.remove(header::AGE);
        for h in freshness::directives(&p.headers).withheld {
            p.headers.remove(h);
        }
        p.etag = p.headers.get(header::ETAG).cloned();
        p.last_modified = p.headers.get(header::LAST_MODIFIED).cloned();
        Entry::assemble(p)
    }

    /// The same entry with its gzip and br variants; `None` when it is not
    /// compressible or neither variant is smaller. CPU-heavy: call it off the async
    /// workers.
    pub fn compressed(&self) -> Option<Entry> {
        if !self.compressible || self.gzip.is_some() || self.br.is_some() {
            return None;
        }
        let g = gzip(&self.identity).filter(|g| g.len() < self.identity.len());
        let b = brotli(&self.identity).filter(|b| b.len() < self.identity.len());
        if g.is_none() && b.is_none() {
            return None;
        }
        let mut p = self.parts();
        p.gzip = g;
        p.br = b;
        let e = Entry::assemble(p);
        e.uses
            .store(self.uses.load(Ordering::Relaxed), Ordering::Relaxed);
        e.compressing.store(true, Ordering::Relaxed);
        Some(e)
    }

    /// Counts one answer served from this entry; true exactly once, on the second,
    /// when the entry should now be compressed.
    pub fn note_use(&self) -> bool {
        // A plain load first: once a compression was claimed (or the entry is not
        // compressible), a HIT writes nothing to the entry's shared cache line.
        if !self.compressible || self.compressing.load(Ordering::Relaxed) {
            return false;
        }
        let n = self.uses.fetch_add(1, Ordering::Relaxed);
        n >= 1 && self.claim_compression()
    }

    /// Claims the one compression of this entry (warm-ups compress at once).
    pub fn claim_compression(&self) -> bool {
        self.compressible
            && self
                .compressing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Gives the claim back (the compression could not run now).
    pub fn release_compression(&self) {
        self.compressing.store(false, Ordering::Release);
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

/// An entry's fields, to build one from another.
struct Parts {
    status: StatusCode,
    headers: HeaderMap,
    identity: Bytes,
    gzip: Option<Bytes>,
    br: Option<Bytes>,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    life: Life,
    encoded: bool,
    compressible: bool,
    vary: Vec<HeaderName>,
}

/// The origin's `Vary` as it sent it, with `Accept-Encoding` appended when the
/// edge serves encoded variants of the object and the origin did not list it.
fn vary_out(headers: &HeaderMap, compressible: bool) -> Option<HeaderValue> {
    let mut values = headers.get_all(header::VARY).iter();
    let (first, more) = (values.next(), values.next().is_some());
    let lists_ae = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding"));
    match first {
        None if compressible => Some(HeaderValue::from_static("Accept-Encoding")),
        None => None,
        Some(v) if !more && (lists_ae || !compressible) => Some(v.clone()),
        Some(_) => {
            let mut joined: Vec<&str> = headers
                .get_all(header::VARY)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if compressible && !lists_ae {
                joined.push("Accept-Encoding");
            }
            HeaderValue::from_str(&joined.join(", ")).ok()
        }
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

/// The cached objects, bounded in bytes (named apart from the sled store,
/// `ingest::store::Store`); a clone is cheap and shares it.
#[derive(Clone)]
pub struct Objects {
    map: Arc<Qc<Arc<str>, Slot, ByBytes>>,
    generation: Arc<AtomicU64>,
    max_object_bytes: u64,
    per_shard: u64,
}

impl Objects {
    pub fn new(max_bytes: u64, max_object_bytes: u64) -> Objects {
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
        Objects {
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

    /// Puts `new` in the slot `slot` (a key, or a variant's full key) if that slot
    /// still holds `old`; false if the slot changed or `new` is too heavy. Call it
    /// under the purge log's lock (`PurgeLog::unless_purged`), which every writer of
    /// the store holds, so nothing changes the slot between the look and the insert;
    /// the insert weighs `new` anew and evicts as any insert does.
    pub fn replace(&self, slot: &str, old: &Arc<Entry>, new: Arc<Entry>) -> bool {
        if new.weight + slot.len() as u64 * 2 + 64 > self.per_shard {
            return false;
        }
        let same = matches!(self.map.peek(slot), Some(Slot::Object(e)) if Arc::ptr_eq(&e, old));
        if same {
            self.map.insert(Arc::from(slot), Slot::Object(new));
        }
        same
    }

    /// Drops what is stored for `key` (and, through the marker, its variants).
    pub fn remove(&self, key: &str) -> bool {
        self.map.remove(key).is_some()
    }

    /// Every object stored under a plain key (not a `Vary` variant) whose key
    /// `wanted` accepts, with the key. A copy: the map moves on meanwhile.
    pub fn objects_where(&self, wanted: impl Fn(&str) -> bool) -> Vec<(Arc<str>, Arc<Entry>)> {
        self.map
            .iter()
            .filter_map(|(k, slot)| match slot {
                Slot::Object(e) if wanted(&k) => Some((k, e)),
                _ => None,
            })
            .collect()
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
    fn variants_are_made_once_for_text_asked_for_twice() {
        let page = "<p>launch day</p>".repeat(100);
        let plain = entry(&page, "text/html; charset=utf-8");
        assert!(
            plain.gzip.is_none() && plain.br.is_none(),
            "no compression on store"
        );
        assert!(plain.compressible);
        assert!(!plain.note_use(), "the first answer does not compress");
        assert!(plain.note_use(), "the second does, once");
        assert!(!plain.note_use());
        let e = plain.compressed().unwrap();
        assert!(e.weight() > plain.weight());
        assert!(e.compressed().is_none(), "compressed once");
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
        assert!(!png.compressible && png.compressed().is_none());
        assert!(!png.note_use() && !png.note_use());
    }

    #[test]
    fn vary_selects_the_variant_and_removal_orphans_them() {
        let s = Objects::new(1 << 20, 1 << 16);
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
        let mut two_lines = HeaderMap::new();
        two_lines.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        );
        two_lines.append(header::CACHE_CONTROL, HeaderValue::from_static("public"));
        let both = e.revalidated(&two_lines, 6_000);
        assert_eq!(
            both.life.origin_ttl_ms,
            Some(300_000),
            "every line of the 304 kept"
        );
        assert_eq!(
            both.headers.get_all(header::CACHE_CONTROL).iter().count(),
            2
        );
        let renewed = e.revalidated(&not_modified, 6_000);
        assert!(!renewed.life.revalidate_always);
        assert_eq!(renewed.life.origin_ttl_ms, Some(30_000));
    }

    #[test]
    fn the_origins_vary_is_kept_and_accept_encoding_added_for_variants() {
        let mk = |vary: Option<&'static str>, ct: &'static str, body: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            if let Some(v) = vary {
                h.insert(header::VARY, HeaderValue::from_static(v));
            }
            Entry::new(StatusCode::OK, h, Bytes::from(body.to_string()), life())
        };
        let big = "x".repeat(1000);
        assert_eq!(
            mk(None, "text/html", &big).vary_out.unwrap(),
            "Accept-Encoding"
        );
        assert_eq!(mk(None, "image/png", &big).vary_out, None);
        assert_eq!(mk(None, "text/html", "tiny").vary_out, None);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60, no-transform"),
        );
        let kept = Entry::new(StatusCode::OK, h, Bytes::from(big.clone()), life());
        assert!(
            !kept.compressible && kept.vary_out.is_none(),
            "no-transform: served as sent"
        );
        assert_eq!(
            mk(Some("Accept-Language"), "text/html", &big)
                .vary_out
                .unwrap(),
            "Accept-Language, Accept-Encoding"
        );
        assert_eq!(
            mk(Some("accept-encoding, Cookie"), "text/html", &big)
                .vary_out
                .unwrap(),
            "accept-encoding, Cookie"
        );
        assert_eq!(
            mk(Some("Accept-Language"), "image/png", &big)
                .vary_out
                .unwrap(),
            "Accept-Language"
        );
    }

    #[test]
    fn replace_swaps_only_the_entry_it_saw() {
        let s = Objects::new(1 << 20, 1 << 16);
        let page = "<p>launch day</p>".repeat(100);
        let a = entry(&page, "text/html");
        s.insert("/p", &HeaderMap::new(), a.clone());
        let b = Arc::new(a.compressed().unwrap());
        assert!(s.replace("/p", &a, b.clone()));
        assert!(s.get("/p", &HeaderMap::new()).0.unwrap().br.is_some());
        // The slot now holds b: a stale swap from a is refused.
        let c = Arc::new(a.compressed().unwrap());
        assert!(!s.replace("/p", &a, c));
        assert!(Arc::ptr_eq(&s.get("/p", &HeaderMap::new()).0.unwrap(), &b));
        // An emptied slot stays empty.
        s.remove("/p");
        assert!(!s.replace("/p", &b, entry("x", "text/plain")));
        assert!(s.get("/p", &HeaderMap::new()).0.is_none());
    }

    #[test]
    fn purge_by_prefix() {
        let s = Objects::new(1 << 20, 1 << 16);
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
            let s = Objects::new(max, 1 << 20);
            for (i, n) in sizes.iter().enumerate() {
                let body = "x".repeat(*n);
                s.insert(&format!("/k{i}"), &HeaderMap::new(), entry(&body, "application/octet-stream"));
                prop_assert!(s.weight() <= max, "{} > {}", s.weight(), max);
            }
        }
    }
}
