//! The edge cache: what a GET or HEAD that passed admission gets, and where it
//! comes from.
//!
//! ```text
//! request ─► unsafe method? ─► origin (BYPASS, bypass permits), then invalidate its URL
//!         ─► Authorization or a personal cookie (cookies.rs)? ─► origin (BYPASS)
//!         ─► key: host + canonical path + query (key.rs) ─► store (store.rs)
//!              ─► verdict at today's factor (freshness.rs)
//!              Fresh      ─► HIT
//!              Stale      ─► STALE at once; one background refresh (flight.rs)
//!              Revalidate ─► conditional fetch (ETag / Last-Modified) ─► 304 → HIT
//!              missing    ─► one fetch for all waiters ─► MISS
//!         origin failed or no permit in time ─► the stale copy (STALE) or 502/504/503
//! ```
//!
//! **What reaches the origin on a shared fetch** is built from the key, not from the
//! request that happened to come first: the key's URL (what `cache.query` keeps),
//! the client's headers less its conditionals, directives and cookies (only ignored
//! and launchguard's own cookies are left by then, and both are removed), and never
//! the routing or override headers (`origin.rs` strips those from every request).
//! A request with `Authorization` or a personal cookie never joins a shared fetch.
//!
//! The shared fetch runs in a spawned task holding an origin permit; it buffers a
//! storable body up to the per-object limit, stores the entry unless a purge of its
//! own key happened meanwhile (purges.rs) and hands it to every waiter. A personal
//! response (`Set-Cookie`, `private`, `no-store`, `Vary: *`) or an over-large one is
//! never shared: it streams to the request that fetched it, and each waiter asks the
//! origin itself.
//!
//! **Compression** is not on the miss path: an entry is compressed (gzip and br) when
//! it is served a second time, on the blocking pool, one object at a time
//! ([`COMPRESS_AT_ONCE`]), and the compressed copy replaces the stored one only if
//! nothing purged or replaced it meanwhile. A cache-busting flood of one-off URLs
//! therefore costs no compression at all. Warm-ups compress at once.
//!
//! **The origin's word wins**: where it sent `Cache-Control` or `Expires`, answers
//! carry them unchanged (plus `Age`); the edge's dynamic
//! `Cache-Control: public, max-age=<remaining>, stale-while-revalidate=<swr>` is
//! sent only where the origin was silent. The origin's `Vary` is passed on, with
//! `Accept-Encoding` added when encoded variants are served. Request directives
//! (`Cache-Control: no-cache` on reload) are ignored: a reload storm must not reach
//! the origin.

pub(crate) mod cookies;
pub(crate) mod flight;
pub mod freshness;
pub mod key;
pub(crate) mod purges;
pub(crate) mod store;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;

use crate::clock::Clock;
use crate::config::CacheConfig;
use crate::config::QueryMode;
use crate::edge::admission::{OriginLimit, Use};
use crate::edge::origin::{Forwarded, Origin, OriginError};
use crate::error::{ApiError, Code};
use crate::ingest::factor::Factor;
use crate::telemetry;
use cookies::CookiePolicy;
use flight::{Flights, Role};
use freshness::{Life, NotStored, Policy, Verdict};
use key::Key;
use purges::{PurgeLog, Purged};
use store::{Entry, Objects};

/// The `X-Cache` header.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Compressions running at once on the blocking pool: one, so that on a 2-core box
/// at least one core is always left for serving, whatever the traffic.
pub const COMPRESS_AT_ONCE: usize = 1;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XCache {
    Hit,
    Stale,
    Miss,
    Bypass,
}

impl XCache {
    /// Sets `X-Cache` on an answer and carries the same result, typed, in its
    /// extensions, for the layers outside (the counters read that, not the header).
    pub fn mark(self, res: &mut Response<Body>) {
        res.headers_mut()
            .insert(X_CACHE, HeaderValue::from_static(self.as_str()));
        res.extensions_mut().insert(self);
    }

    pub fn as_str(self) -> &'static str {
        match self {
            XCache::Hit => "HIT",
            XCache::Stale => "STALE",
            XCache::Miss => "MISS",
            XCache::Bypass => "BYPASS",
        }
    }

    fn label(self) -> &'static str {
        match self {
            XCache::Hit => "hit",
            XCache::Stale => "stale",
            XCache::Miss => "miss",
            XCache::Bypass => "bypass",
        }
    }
}

/// What one shared fetch produced.
#[derive(Debug)]
pub enum Fetched {
    /// Stored; `revalidated` when the origin answered 304 to a conditional request.
    Stored {
        entry: Arc<Entry>,
        revalidated: bool,
        /// The leader's values of the headers the object varies on.
        vary_values: Vec<Option<HeaderValue>>,
    },
    /// Shareable with the waiters, but not kept (a 500, a 302).
    Transient {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// Personal or too large: only the fetching request gets it.
    Pass,
    Failed(OriginError),
    /// No origin permit within `origin.queue_timeout_ms`.
    Queued,
}

/// What only the leader of a shared fetch gets.
enum Own {
    /// The whole response (personal or too large to store).
    Response(Response<Body>),
    /// Fields the origin withheld from the stored copy (`private="set-cookie"`).
    Withheld(HeaderMap),
}

/// The cache; a clone is cheap and shares everything.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Objects,
    flights: Flights<Fetched>,
    policy: Policy,
    cookies: CookiePolicy,
    query: QueryMode,
    max_key_bytes: usize,
    swr_secs: u64,
    retry_after_secs: u64,
    origin: Origin,
    limit: OriginLimit,
    factor: Factor,
    clock: Clock,
    results: [metrics::Counter; 4],
    bytes: metrics::Gauge,
    purges: Arc<PurgeLog>,
    /// Compressions running now (at most [`COMPRESS_AT_ONCE`]).
    compressing: AtomicUsize,
    compressions: [metrics::Counter; 2],
}

/// The headers a client sends that must not reach the origin on a shared fetch: its
/// conditionals and directives, its cookies, and anything that frames a body (a
/// shared fetch has none: a `Content-Length` left on it would make the origin wait
/// for bytes that never come, or read the next request on the pooled connection as
/// this one's body).
const CLIENT_ONLY: [HeaderName; 13] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::EXPECT,
    header::TRANSFER_ENCODING,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
    header::CACHE_CONTROL,
    header::PRAGMA,
    header::COOKIE,
];

impl Cache {
    /// `config` is validated (`cache.ignore_cookies` compiles).
    pub fn new(
        config: &CacheConfig,
        retry_after_secs: u64,
        origin: Origin,
        limit: OriginLimit,
        factor: Factor,
        clock: Clock,
    ) -> Cache {
        let results = [XCache::Hit, XCache::Stale, XCache::Miss, XCache::Bypass]
            .map(|x| metrics::counter!(telemetry::CACHE_REQUESTS_TOTAL, "result" => x.label()));
        let ignored = crate::syntax::globs::cookie_names(&config.ignore_cookies)
            .unwrap_or_else(|_| globset::GlobSet::empty());
        Cache {
            inner: Arc::new(Inner {
                store: Objects::new(config.max_bytes, config.max_object_bytes),
                flights: Flights::new(),
                policy: Policy::from_config(config),
                cookies: CookiePolicy::new(ignored),
                query: config.query.clone(),
                max_key_bytes: config.max_key_bytes,
                swr_secs: config.stale_while_revalidate_secs,
                retry_after_secs,
                origin,
                limit,
                factor,
                clock,
                results,
                bytes: metrics::gauge!(telemetry::CACHE_BYTES),
                purges: PurgeLog::new(),
                compressing: AtomicUsize::new(0),
                compressions: ["done", "busy"]
                    .map(|r| metrics::counter!(telemetry::CACHE_COMPRESSIONS_TOTAL, "result" => r)),
            }),
        }
    }

    /// The freshness policy (`[cache]` lifetimes).
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    pub fn store(&self) -> &Objects {
        &self.inner.store
    }

    pub fn origin_limit(&self) -> &OriginLimit {
        &self.inner.limit
    }

    /// Bytes held, as weighed against `cache.max_bytes`.
    pub fn bytes(&self) -> u64 {
        self.inner.store.weight()
    }

    /// The key a GET of `path_and_query` on `host` is stored under, if it is cached.
    pub fn key_of(&self, host: &str, path: &str, query: Option<&str>) -> Option<Key> {
        key::normalize(
            host,
            path,
            query,
            &self.inner.query,
            self.inner.max_key_bytes,
        )
    }

    /// Drops every entry whose key starts with `prefix` (a path prefix, on every
    /// host); returns how many. Fills under way for those keys will not store, and
    /// requests from now on do not join them.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let i = &self.inner;
        let purged = Purged::Prefix(prefix.to_string());
        let n = i.purges.purge([purged.clone()], || {
            i.flights.forget(|k| purged.covers(k));
            i.store.purge_prefix(prefix)
        });
        i.bytes.set(self.bytes() as f64);
        n
    }

    /// Answers one public request that passed admission, under the scale factor the
    /// request carries (`edge::Scale`, read once by the front door): freshness, the
    /// stale fallback and the origin permits all judge by that one value.
    pub async fn handle(
        &self,
        mut req: Request<Body>,
        fwd: Forwarded,
        factor: f64,
    ) -> Response<Body> {
        let i = &self.inner;
        // What names a header in `Connection` is not forwarded (origin.rs); drop it
        // here already, so that a `Vary` variant is keyed on what the origin saw.
        // (Without `Connection`, origin.rs strips the fixed hop-by-hop list itself.)
        if req.headers().contains_key(header::CONNECTION) {
            crate::edge::origin::strip_hop_by_hop(req.headers_mut());
        }
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            cookies::strip_own(req.headers_mut());
            return self.pass_unsafe(req, fwd, factor).await;
        }
        if req.headers().contains_key(header::AUTHORIZATION)
            || i.cookies.verdict(req.headers()) == cookies::Verdict::Personal
        {
            cookies::strip_own(req.headers_mut());
            return self
                .pass(req, fwd, XCache::Bypass, Use::Bypass, factor)
                .await;
        }
        // Only ignored and launchguard's own cookies are left: none reaches the origin.
        req.headers_mut().remove(header::COOKIE);
        let Some(key) = key::normalize(
            host_str(&fwd),
            req.uri().path(),
            req.uri().query(),
            &i.query,
            i.max_key_bytes,
        ) else {
            return self
                .pass(req, fwd, XCache::Bypass, Use::Bypass, factor)
                .await;
        };
        let now = i.clock.now_ms();
        let (stale, full_key) = i.store.get(key.as_str(), req.headers());
        if let Some(e) = &stale {
            match freshness::verdict(&e.life, &i.policy, factor, now) {
                Verdict::Fresh { remaining_ms } => {
                    self.note_use(&key, full_key.as_deref(), e);
                    return self.respond(e, &req, XCache::Hit, remaining_ms, now);
                }
                Verdict::Stale => {
                    if e.start_refresh() {
                        self.spawn_refresh(key, full_key, e.clone(), &req, fwd, factor);
                    }
                    return self.respond(e, &req, XCache::Stale, 0, now);
                }
                Verdict::Revalidate => {}
            }
        }
        let flight_key = full_key.unwrap_or_else(|| key.as_str().to_string());
        let (outcome, own) = match i.flights.join(&flight_key) {
            Role::Leader(leader) => {
                let waiter = leader.follower();
                let this = self.clone();
                let origin_req = origin_request(&key, req.headers(), stale.as_deref());
                let client_headers = req.headers().clone();
                let task_fwd = fwd.clone();
                let stale_for_task = stale.clone();
                let task_key = key.clone();
                // The fetch outlives this request if the client goes away.
                let task = tokio::spawn(async move {
                    let (outcome, own) = this
                        .fetch(
                            &task_key,
                            origin_req,
                            &client_headers,
                            task_fwd,
                            stale_for_task,
                            factor,
                        )
                        .await;
                    leader.finish(Arc::new(outcome));
                    own
                });
                let own = task.await.ok().flatten();
                (waiter.wait().await, own)
            }
            Role::Follower(waiter) => (waiter.wait().await, None),
        };
        let now = i.clock.now_ms();
        let Some(outcome) = outcome else {
            return self.on_failure(
                stale.as_deref(),
                &req,
                OriginError::Unreachable("the shared fetch ended without an answer".into())
                    .answer(i.retry_after_secs),
                now,
                factor,
            );
        };
        match &*outcome {
            Fetched::Stored {
                entry,
                revalidated,
                vary_values,
            } => {
                let same_variant = entry
                    .vary
                    .iter()
                    .zip(vary_values)
                    .all(|(name, v)| req.headers().get(name) == v.as_ref());
                if !same_variant {
                    return self.pass(req, fwd, XCache::Miss, Use::Fill, factor).await;
                }
                let remaining = match freshness::verdict(&entry.life, &i.policy, factor, now) {
                    Verdict::Fresh { remaining_ms } => remaining_ms,
                    _ => 0,
                };
                let x = if *revalidated {
                    XCache::Hit
                } else {
                    XCache::Miss
                };
                if entry.compressible {
                    let (_, slot) = i.store.get(key.as_str(), req.headers());
                    self.note_use(&key, slot.as_deref(), entry);
                }
                let mut res = self.respond(entry, &req, x, remaining, now);
                if let Some(Own::Withheld(fields)) = own {
                    for (name, value) in &fields {
                        res.headers_mut().append(name, value.clone());
                    }
                }
                res
            }
            Fetched::Transient { status, .. } if status.is_server_error() && stale.is_some() => {
                // A 5xx counts as an origin failure when a stale copy may stand in
                // (as nginx's proxy_cache_use_stale http_500..http_504).
                let res = self.transient(&outcome, &req);
                self.on_failure(stale.as_deref(), &req, res, now, factor)
            }
            Fetched::Transient { .. } => {
                self.count(XCache::Miss);
                self.transient(&outcome, &req)
            }
            Fetched::Pass => match own {
                Some(Own::Response(mut res)) => {
                    self.count(XCache::Miss);
                    XCache::Miss.mark(&mut res);
                    if req.method() == Method::HEAD {
                        *res.body_mut() = Body::empty();
                    }
                    res
                }
                _ => self.pass(req, fwd, XCache::Miss, Use::Fill, factor).await,
            },
            Fetched::Failed(e) => self.on_failure(
                stale.as_deref(),
                &req,
                e.clone().answer(i.retry_after_secs),
                now,
                factor,
            ),
            Fetched::Queued => {
                let res = self.queue_timeout();
                self.on_failure(stale.as_deref(), &req, res, now, factor)
            }
        }
    }

    /// Counts one answer from `e` (stored under `key`, in the slot `slot` when it is a
    /// `Vary` variant) and starts its compression on the second.
    fn note_use(&self, key: &Key, slot: Option<&str>, e: &Arc<Entry>) {
        if e.note_use() {
            self.spawn_compress(key.clone(), slot.map(str::to_string), e.clone());
        }
    }

    /// Compresses `e` on the blocking pool and puts the compressed copy in its slot,
    /// unless the slot changed or a purge covered it meanwhile. At most
    /// [`COMPRESS_AT_ONCE`] run at once; past that the claim is given back and a later
    /// answer tries again.
    fn spawn_compress(&self, key: Key, slot: Option<String>, e: Arc<Entry>) {
        let i = &self.inner;
        let taken = i
            .compressing
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < COMPRESS_AT_ONCE).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            e.release_compression();
            i.compressions[1].increment(1);
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.compress(&key, slot.as_deref(), e).await;
            this.inner.compressing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// The compression itself; also used by warm-ups, which wait for it.
    async fn compress(&self, key: &Key, slot: Option<&str>, e: Arc<Entry>) {
        let i = &self.inner;
        let ticket = i.purges.begin();
        let old = e.clone();
        let Ok(Some(compressed)) = tokio::task::spawn_blocking(move || old.compressed()).await
        else {
            return;
        };
        i.compressions[0].increment(1);
        let slot = slot.unwrap_or(key.as_str());
        let store = &i.store;
        i.purges.unless_purged(ticket, key.as_str(), || {
            store.replace(slot, &e, Arc::new(compressed))
        });
        i.bytes.set(self.bytes() as f64);
    }

    /// Fetches one path into the cache as a plain GET under `host`, and compresses
    /// it at once; the answer's status and `X-Cache`.
    pub async fn warm(&self, path: &str, fwd: Forwarded) -> Result<(u16, String), String> {
        let uri: Uri = path.parse().map_err(|e| format!("invalid path: {e}"))?;
        let canonical = crate::edge::front::canonical_path(uri.path())
            .map_err(|e| format!("invalid path: {}", e.message()))?
            .into_owned();
        let key = self.key_of(host_str(&fwd), &canonical, uri.query());
        let pq = match uri.query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical,
        };
        let req = Request::builder()
            .method(Method::GET)
            .uri(pq)
            .body(Body::empty())
            .map_err(|e| format!("invalid path: {e}"))?;
        let res = self.handle(req, fwd, self.inner.factor.current()).await;
        let x = res
            .headers()
            .get(X_CACHE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if let Some(key) = key {
            let (entry, slot) = self.inner.store.get(key.as_str(), &HeaderMap::new());
            if let Some(e) = entry.filter(|e| e.claim_compression()) {
                self.compress(&key, slot.as_deref(), e).await;
            }
        }
        Ok((res.status().as_u16(), x))
    }

    /// Refresh-ahead of one stored object: fetched again from the origin (conditional
    /// when it has validators) as the one fetch of its key, and compressed at once.
    /// Nothing happens when a refresh of it runs already (a visitor's, or another
    /// fetch of the key). True when a new or revalidated entry was stored.
    pub async fn refresh_ahead(
        &self,
        key: &Key,
        old: &Arc<Entry>,
        fwd: Forwarded,
        factor: f64,
    ) -> bool {
        if !old.start_refresh() {
            return false;
        }
        let Some(leader) = self.inner.flights.lead(key.as_str()) else {
            old.end_refresh();
            return false;
        };
        let none = HeaderMap::new();
        let origin_req = origin_request(key, &none, Some(old));
        let (outcome, _) = self
            .fetch(key, origin_req, &none, fwd, Some(old.clone()), factor)
            .await;
        let stored = matches!(outcome, Fetched::Stored { .. });
        leader.finish(Arc::new(outcome));
        let (current, slot) = self.inner.store.get(key.as_str(), &none);
        match current {
            // Not replaced (the fetch failed, or a purge kept its result out): a later
            // look, or a visitor, may try again.
            Some(e) if Arc::ptr_eq(&e, old) => old.end_refresh(),
            Some(e) if e.claim_compression() => self.compress(key, slot.as_deref(), e).await,
            _ => {}
        }
        stored
    }

    /// A shared, unstored answer (a 500, a 302) for one waiter.
    fn transient(&self, outcome: &Fetched, req: &Request<Body>) -> Response<Body> {
        let Fetched::Transient {
            status,
            headers,
            body,
        } = outcome
        else {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                Code::OriginUnreachable,
                "no answer",
            )
            .into_response();
        };
        let mut res = Response::new(if req.method() == Method::HEAD {
            Body::empty()
        } else {
            Body::from(body.clone())
        });
        *res.status_mut() = *status;
        *res.headers_mut() = headers.clone();
        XCache::Miss.mark(&mut res);
        res
    }

    fn queue_timeout(&self) -> Response<Body> {
        metrics::counter!(telemetry::BACKPRESSURE_REJECTIONS_TOTAL, "class" => "queue")
            .increment(1);
        ApiError::unavailable(
            Code::OriginBusy,
            "every origin slot is taken and none came free within origin.queue_timeout_ms; retry shortly",
            self.inner.retry_after_secs,
        )
        .into_response_with(crate::edge::admission::Rejected)
    }

    /// The stale copy if it may stand in, else `fallback`.
    fn on_failure(
        &self,
        stale: Option<&Entry>,
        req: &Request<Body>,
        fallback: Response<Body>,
        now: u64,
        factor: f64,
    ) -> Response<Body> {
        let i = &self.inner;
        if let Some(e) = stale {
            if freshness::usable_on_error(&e.life, &i.policy, factor, now) {
                return self.respond(e, req, XCache::Stale, 0, now);
            }
        }
        self.count(XCache::Miss);
        fallback
    }

    /// The one background refresh of a stale entry.
    fn spawn_refresh(
        &self,
        key: Key,
        full_key: Option<String>,
        stale: Arc<Entry>,
        req: &Request<Body>,
        fwd: Forwarded,
        factor: f64,
    ) {
        let flight_key = full_key.unwrap_or_else(|| key.as_str().to_string());
        let Some(leader) = self.inner.flights.lead(&flight_key) else {
            // A fetch for this key is already under way; it will store the result.
            stale.end_refresh();
            return;
        };
        let origin_req = origin_request(&key, req.headers(), Some(&stale));
        let client_headers = req.headers().clone();
        let this = self.clone();
        tokio::spawn(async move {
            let (outcome, _) = this
                .fetch(
                    &key,
                    origin_req,
                    &client_headers,
                    fwd,
                    Some(stale.clone()),
                    factor,
                )
                .await;
            // If the store still holds the stale entry (the fetch failed, or a purge
            // kept its result out), let a later request try again.
            let (current, _) = this.inner.store.get(key.as_str(), &client_headers);
            if current.is_some_and(|e| Arc::ptr_eq(&e, &stale)) {
                stale.end_refresh();
            }
            leader.finish(Arc::new(outcome));
        });
    }

    /// One origin fetch under a permit; stores what may be stored.
    async fn fetch(
        &self,
        key: &Key,
        origin_req: Result<Request<Body>, OriginError>,
        client_headers: &HeaderMap,
        fwd: Forwarded,
        stale: Option<Arc<Entry>>,
        factor: f64,
    ) -> (Fetched, Option<Own>) {
        let i = &self.inner;
        let ticket = i.purges.begin();
        let origin_req = match origin_req {
            Ok(r) => r,
            Err(e) => return (Fetched::Failed(e), None),
        };
        let Ok(_permit) = i.limit.acquire(factor, Use::Fill).await else {
            return (Fetched::Queued, None);
        };
        let res = match i.origin.fetch(origin_req, &fwd).await {
            Ok(r) => r,
            Err(e) => return (Fetched::Failed(e), None),
        };
        let now = i.clock.now_ms();
        if res.status() == StatusCode::NOT_MODIFIED {
            if let Some(stale) = stale {
                let entry = Arc::new(stale.revalidated(res.headers(), now));
                self.store_unless_purged(ticket, key, client_headers, &entry);
                let vary_values = vary_values(&entry, client_headers);
                return (
                    Fetched::Stored {
                        entry,
                        revalidated: true,
                        vary_values,
                    },
                    None,
                );
            }
        }
        let verdict = freshness::storable(res.status(), res.headers());
        if let Err(NotStored::Personal(_)) = verdict {
            return (Fetched::Pass, Some(Own::Response(res)));
        }
        let limit = i.store.max_object_bytes();
        let declared = res
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return (Fetched::Pass, Some(Own::Response(res)));
        }
        let (parts, body) = res.into_parts();
        let timeout = Duration::from_millis(i.origin.timeout_ms());
        let body = match tokio::time::timeout(timeout, collect_limited(body, limit)).await {
            Err(_) => {
                return (
                    Fetched::Failed(OriginError::Timeout(i.origin.timeout_ms())),
                    None,
                )
            }
            Ok(Err(e)) => return (Fetched::Failed(OriginError::Body(e)), None),
            Ok(Ok(Collected::Over(body))) => {
                return (
                    Fetched::Pass,
                    Some(Own::Response(Response::from_parts(parts, body))),
                )
            }
            Ok(Ok(Collected::Whole(bytes))) => bytes,
        };
        if verdict.is_err() {
            return (
                Fetched::Transient {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                },
                None,
            );
        }
        let life = Life::from_response(parts.status, &parts.headers, now);
        // What the origin withheld from the stored copy still goes to this client.
        let mut withheld = HeaderMap::new();
        for name in freshness::directives(&parts.headers).withheld {
            for v in parts.headers.get_all(&name) {
                withheld.append(name.clone(), v.clone());
            }
        }
        let entry = Arc::new(Entry::new(parts.status, parts.headers, body, life));
        self.store_unless_purged(ticket, key, client_headers, &entry);
        let vary_values = vary_values(&entry, client_headers);
        (
            Fetched::Stored {
                entry,
                revalidated: false,
                vary_values,
            },
            (!withheld.is_empty()).then_some(Own::Withheld(withheld)),
        )
    }

    /// Stores a fetched entry unless a purge of its key happened since the fetch
    /// began; the waiters get the entry either way.
    fn store_unless_purged(
        &self,
        ticket: purges::Ticket,
        key: &Key,
        req: &HeaderMap,
        entry: &Arc<Entry>,
    ) {
        let i = &self.inner;
        let store = &i.store;
        let stored = i.purges.unless_purged(ticket, key.as_str(), || {
            store.insert(key.as_str(), req, entry.clone())
        });
        if stored.is_none() {
            tracing::debug!(%key, "not storing a page fetched before a purge of it");
        }
        i.bytes.set(self.bytes() as f64);
    }

    /// Straight to the origin under a permit of `use_`, nothing stored.
    async fn pass(
        &self,
        req: Request<Body>,
        fwd: Forwarded,
        x: XCache,
        use_: Use,
        factor: f64,
    ) -> Response<Body> {
        self.count(x);
        let i = &self.inner;
        let Ok(_permit) = i.limit.acquire(factor, use_).await else {
            return self.queue_timeout();
        };
        let mut res = match i.origin.fetch(req, &fwd).await {
            Ok(r) => r,
            Err(e) => e.answer(i.retry_after_secs),
        };
        x.mark(&mut res);
        res
    }

    /// POST, PUT, PATCH, DELETE and the rest: to the origin on a bypass permit; a
    /// success invalidates the stored entries for the URL and its `Location` /
    /// `Content-Location` on the same host.
    async fn pass_unsafe(&self, req: Request<Body>, fwd: Forwarded, factor: f64) -> Response<Body> {
        let unsafe_method = !matches!(
            *req.method(),
            Method::OPTIONS | Method::TRACE | Method::CONNECT
        );
        let uri = req.uri().clone();
        let host = fwd.host.clone();
        let res = self
            .pass(req, fwd, XCache::Bypass, Use::Bypass, factor)
            .await;
        let ok = res.status().is_success() || res.status().is_redirection();
        if unsafe_method && ok {
            let host = host.to_str().unwrap_or("");
            let mut targets = vec![(uri.path().to_string(), uri.query().map(str::to_string))];
            for h in [header::LOCATION, header::CONTENT_LOCATION] {
                if let Some(u) = res
                    .headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Uri>().ok())
                {
                    // Only same-site references: a path, or an absolute URL on this host.
                    let same_host = match u.authority() {
                        None => true,
                        Some(a) => {
                            crate::syntax::host::parse_host(a.as_str().as_bytes(), default_port(&u))
                                .is_ok_and(|h| h.key == host)
                        }
                    };
                    if let (true, Ok(path)) =
                        (same_host, crate::edge::front::canonical_path(u.path()))
                    {
                        targets.push((path.into_owned(), u.query().map(str::to_string)));
                    }
                }
            }
            let keys: Vec<Key> = targets
                .iter()
                .filter_map(|(path, query)| self.key_of(host, path, query.as_deref()))
                .collect();
            let i = &self.inner;
            let purged: Vec<Purged> = keys
                .iter()
                .map(|k| Purged::Exact(k.as_str().to_string()))
                .collect();
            i.purges.purge(purged.iter().cloned(), || {
                i.flights.forget(|k| purged.iter().any(|p| p.covers(k)));
                for k in &keys {
                    i.store.remove(k.as_str());
                }
            });
            self.inner.bytes.set(self.bytes() as f64);
        }
        res
    }

    fn count(&self, x: XCache) {
        let idx = match x {
            XCache::Hit => 0,
            XCache::Stale => 1,
            XCache::Miss => 2,
            XCache::Bypass => 3,
        };
        self.inner.results[idx].increment(1);
    }

    /// An answer from a stored entry: the encoding the client takes, a 304 when its
    /// validator matches, `Age`, `Cache-Control` (the origin's, or the edge's where
    /// the origin was silent) and `X-Cache`.
    fn respond(
        &self,
        e: &Entry,
        req: &Request<Body>,
        x: XCache,
        remaining_ms: u64,
        now: u64,
    ) -> Response<Body> {
        self.count(x);
        let accept = req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (body, encoding) = if e.encoded {
            (&e.identity, None)
        } else {
            match (&e.br, &e.gzip) {
                (Some(br), _) if accepts(accept, "br") => (br, Some("br")),
                (_, Some(gz)) if accepts(accept, "gzip") => (gz, Some("gzip")),
                _ => (&e.identity, None),
            }
        };
        // A compressed variant is not byte-identical to the origin's: its tag is weak.
        let etag = match (&e.etag, encoding) {
            (Some(t), Some(_)) if !t.as_bytes().starts_with(b"W/") => {
                let mut weak = Vec::with_capacity(t.len() + 2);
                weak.extend_from_slice(b"W/");
                weak.extend_from_slice(t.as_bytes());
                HeaderValue::from_bytes(&weak).ok()
            }
            (t, _) => t.clone(),
        };
        let not_modified = match (req.headers().get(header::IF_NONE_MATCH), &etag) {
            (Some(inm), Some(tag)) => etag_matches(inm, tag),
            (Some(_), None) => false,
            (None, _) => match (
                req.headers().get(header::IF_MODIFIED_SINCE),
                &e.last_modified,
            ) {
                (Some(ims), Some(lm)) => not_modified_since(ims, lm),
                _ => false,
            },
        };
        let age = e.life.served_age_secs(now);
        let status = if not_modified && e.status == StatusCode::OK {
            StatusCode::NOT_MODIFIED
        } else {
            e.status
        };
        let send_body = req.method() != Method::HEAD && status != StatusCode::NOT_MODIFIED;
        let mut res = Response::new(if send_body {
            Body::from(body.clone())
        } else {
            Body::empty()
        });
        *res.status_mut() = status;
        let h = res.headers_mut();
        if status == StatusCode::NOT_MODIFIED {
            // RFC 9110 §15.4.5: what a 200 would have carried of these.
            for name in [
                header::CACHE_CONTROL,
                header::CONTENT_LOCATION,
                header::DATE,
                header::EXPIRES,
                header::LAST_MODIFIED,
            ] {
                for v in e.headers.get_all(&name) {
                    h.append(name.clone(), v.clone());
                }
            }
        } else {
            // The stored headers, copied into a map with room for what this answer and
            // the layers outside add (a clone would have to grow and rehash for them).
            let mut copy = HeaderMap::with_capacity(e.headers.len() + ANSWER_HEADERS);
            for (name, value) in &e.headers {
                copy.append(name.clone(), value.clone());
            }
            *h = copy;
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            if let Some(enc) = encoding {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
            }
        }
        match etag {
            Some(t) => {
                h.insert(header::ETAG, t);
            }
            None => {
                h.remove(header::ETAG);
            }
        }
        if !e.origin_speaks {
            if let Some(v) = edge_cache_control(remaining_ms / 1000, self.inner.swr_secs) {
                h.insert(header::CACHE_CONTROL, v);
            }
        }
        h.insert(header::AGE, age_value(age));
        match &e.vary_out {
            Some(v) => {
                h.insert(header::VARY, v.clone());
            }
            None => {
                h.remove(header::VARY);
            }
        }
        x.mark(&mut res);
        res
    }
}

/// The edge's own `Cache-Control` (`public, max-age=M, stale-while-revalidate=S`),
/// remembered per thread for the last `(M, S)`: every hit on a page within the same
/// second carries the same value, so most answers clone it instead of formatting one.
fn edge_cache_control(max_age: u64, swr: u64) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, u64, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((m, s, v)) = &*last {
            if (*m, *s) == (max_age, swr) {
                return Some(v.clone());
            }
        }
        let v = HeaderValue::try_from(format!(
            "public, max-age={max_age}, stale-while-revalidate={swr}"
        ))
        .ok()?;
        *last = Some((max_age, swr, v.clone()));
        Some(v)
    })
}

/// Headers a hit's answer gets besides the stored ones: `Content-Length`,
/// `Content-Encoding`, `ETag`, `Cache-Control`, `Age`, `Vary`, `X-Cache` here; the
/// visitor cookies, `X-Edge-Scale-Factor` and `Strict-Transport-Security` outside.
const ANSWER_HEADERS: usize = 11;

/// Ages below this come from a table made once (an age is seconds in the cache, so
/// nearly every answer's is small); larger ones are formatted.
const AGE_TABLE: u64 = 4096;

/// The `Age` header for `age` seconds.
fn age_value(age: u64) -> HeaderValue {
    static AGES: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..AGE_TABLE).map(HeaderValue::from).collect());
    match AGES.get(age as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(age),
    }
}

fn host_str(fwd: &Forwarded) -> &str {
    fwd.host.to_str().unwrap_or("")
}

fn default_port(u: &Uri) -> u16 {
    if u.scheme_str() == Some("https") {
        443
    } else {
        80
    }
}

fn vary_values(e: &Entry, req: &HeaderMap) -> Vec<Option<HeaderValue>> {
    e.vary.iter().map(|n| req.get(n).cloned()).collect()
}

/// The request a shared fetch sends: always GET of the key's URL, the client's
/// headers less its conditionals, directives and cookies, `Accept-Encoding: identity`
/// (the cache compresses), and the stored validators when there is a stale copy.
fn origin_request(
    key: &Key,
    client: &HeaderMap,
    stale: Option<&Entry>,
) -> Result<Request<Body>, OriginError> {
    let mut headers = client.clone();
    for h in CLIENT_ONLY.iter() {
        headers.remove(h);
    }
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(e) = stale {
        if let Some(t) = &e.etag {
            headers.insert(header::IF_NONE_MATCH, t.clone());
        }
        if let Some(lm) = &e.last_modified {
            headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let mut req = Request::new(Body::empty());
    // The URL is made of a parsed URI's canonical path and query pieces, so it parses;
    // if it ever did not, nothing is fetched (or stored) for it.
    *req.uri_mut() = key
        .url()
        .parse()
        .map_err(|e| OriginError::Unreachable(format!("cache key {key} is not a URL: {e}")))?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Whether `Accept-Encoding` takes `coding` (q > 0, or `*`).
pub fn accepts(accept: &str, coding: &str) -> bool {
    let mut star = false;
    for part in accept.split(',') {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim();
        let q_zero = it.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if name.eq_ignore_ascii_case(coding) {
            return !q_zero;
        }
        if name == "*" && !q_zero {
            star = true;
        }
    }
    star
}

/// Weak comparison of an `If-None-Match` list with a tag (RFC 9110 §13.1.2).
pub fn etag_matches(inm: &HeaderValue, tag: &HeaderValue) -> bool {
    let Ok(list) = inm.to_str() else {
        return false;
    };
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let ours = match tag.to_str() {
        Ok(t) => strip(t),
        Err(_) => return false,
    };
    list.split(',').any(|t| t.trim() == "*" || strip(t) == ours)
}

fn not_modified_since(ims: &HeaderValue, lm: &HeaderValue) -> bool {
    let parse = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
    };
    match (parse(ims), parse(lm)) {
        (Some(ims), Some(lm)) => lm <= ims,
        _ => false,
    }
}

enum Collected {
    Whole(Bytes),
    /// Over the limit: what was read so far, followed by the rest, still streaming.
    Over(Body),
}

/// Reads a body up to `limit` bytes. Past the limit, gives back a body that replays
/// what was read and streams the rest, so nothing is lost and nothing more buffered.
async fn collect_limited(body: Body, limit: u64) -> Result<Collected, String> {
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            chunks.push(data);
            if total > limit {
                let head = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, axum::Error>));
                let rest = body.into_data_stream();
                return Ok(Collected::Over(Body::from_stream(head.chain(rest))));
            }
        }
    }
    // Always copied into a buffer of its own size: a chunk is often a slice of a much
    // larger read buffer (64 KiB from the static origin, hyper's from an upstream),
    // which a stored slice would keep alive unweighed.
    let mut all = Vec::with_capacity(total as usize);
    for c in &chunks {
        all.extend_from_slice(c);
    }
    Ok(Collected::Whole(Bytes::from(all)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The remembered and tabled header values are the formatted ones.
    #[test]
    fn memoized_header_values_are_the_formatted_ones() {
        for age in [0, 1, 59, AGE_TABLE - 1, AGE_TABLE, 1 << 40] {
            assert_eq!(age_value(age), HeaderValue::from(age));
        }
        for (m, swr) in [(59, 30), (59, 30), (58, 30), (58, 0), (0, 0)] {
            assert_eq!(
                edge_cache_control(m, swr).unwrap(),
                format!("public, max-age={m}, stale-while-revalidate={swr}")
            );
        }
    }

    #[test]
    fn accept_encoding() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip;q=1.0, br;q=0.5", "br"));
        assert!(!accepts("gzip, br;q=0", "br"));
        assert!(accepts("*", "gzip"));
        assert!(!accepts("*, gzip;q=0", "gzip"));
        assert!(!accepts("", "gzip"));
        assert!(!accepts("identity", "br"));
    }

    #[test]
    fn etags_compare_weakly() {
        let tag = HeaderValue::from_static("\"abc\"");
        assert!(etag_matches(&HeaderValue::from_static("\"abc\""), &tag));
        assert!(etag_matches(&HeaderValue::from_static("W/\"abc\""), &tag));
        assert!(etag_matches(
            &HeaderValue::from_static("\"x\", \"abc\""),
            &tag
        ));
        assert!(etag_matches(&HeaderValue::from_static("*"), &tag));
        assert!(!etag_matches(&HeaderValue::from_static("\"abd\""), &tag));
    }

    #[tokio::test]
    async fn a_stored_body_does_not_keep_its_read_buffer_alive() {
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let page = buffer.slice(0..5000);
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let Collected::Whole(kept) = collect_limited(Body::from(page), 1 << 20).await.unwrap()
        else {
            panic!("under the limit")
        };
        assert_eq!(kept.len(), 5000);
        assert!(
            !range.contains(&(kept.as_ptr() as usize)),
            "a copy, not a slice"
        );
    }

    #[tokio::test]
    async fn an_over_limit_body_is_replayed_whole() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..10)
            .map(|i| Ok(Bytes::from(vec![b'a' + i; 100])))
            .collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let Collected::Over(rest) = collect_limited(body, 250).await.unwrap() else {
            panic!("over the limit")
        };
        let all = rest.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[999], b'j');
        let body = Body::from("small");
        let Collected::Whole(b) = collect_limited(body, 250).await.unwrap() else {
            panic!("under the limit")
        };
        assert_eq!(&b[..], b"small");
    }
}
