//! The public request path for everything that is not a webhook: admission →
//! edge cache → origin, plus the operations around the cache (purge, warm-up) and the
//! page-view hook. The event-driven purge rules are the cache's (`cache::purges`).
//!
//! ```text
//! front door (front.rs: host, canonical path) ─► routing ─► classify the canonical path
//!   ─► shed? (factor > shed_factor and not critical) ─► the funnel grace?
//!        ─► let in by the waiting room? (a session cookie, or its turn)
//!        else the waiting page (a page view) or 503
//!   └─► cache (cache/) ─► origin (origin.rs) under a permit
//! ```
//!
//! **Invariant:** a request is served under one factor, read once by the front door
//! and carried as [`Scale`]; the admission decision uses it and matches immutable glob
//! sets; it takes no lock (the funnel grace, asked only about a request about to be
//! shed, may).

//!
//! Where a visitor goes, in this folder: `server` (connections, parking, limits) →
//! `front` (host and path) → here (routing, admission; `waiting` for a shed page
//! view) → `cache` → `origin`; and `warming` (refresh-ahead of the funnel pages when
//! the factor rises).

pub mod admission;
pub mod cache;
pub(crate) mod front;
pub mod origin;
pub mod server;
pub mod tls;
pub mod waiting;
pub mod warming;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::edge::admission::{Class, Classifier, Grace, OriginLimit};
use crate::edge::cache::Cache;
use crate::edge::front::Verified;
use crate::edge::origin::{Forwarded, Origin};
use crate::error::{ApiError, Code};
use crate::ingest::factor::Factor;
use crate::telemetry;

/// Admission and cache, built once. A clone is cheap.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<EdgeInner>,
}

struct EdgeInner {
    classifier: Classifier,
    /// Warm-ups are fetched under this host (`Front::primary_host`).
    primary_host: axum::http::HeaderValue,
    cache: Cache,
    shed_factor: f64,
    retry_after_secs: u64,
    warm_urls: Vec<String>,
    /// `conversions.funnel_paths`: the pages refresh-ahead keeps fresh (`warming.rs`).
    funnel: crate::syntax::globs::PathSet,
    /// `cache.refresh_ahead_factor` (0 = off).
    refresh_ahead_factor: f64,
    /// The waiting room for shed page views (`waiting_room.enabled`).
    room: Option<waiting::Room>,
    /// Read only for a request that carries no [`Scale`].
    factor: Factor,
    rejections: [metrics::Counter; 2],
    /// The funnel grace, when `backpressure.funnel_grace_secs` is on.
    grace: Option<Arc<dyn Grace>>,
    /// Requests the grace admitted, by the class shed (normal, low).
    graced: [metrics::Counter; 2],
    clock: Clock,
}

impl Edge {
    /// `primary_host`: the host warm-ups fill the cache under (`Front::primary_host`).
    pub fn new(
        config: &Config,
        factor: Factor,
        clock: Clock,
        primary_host: axum::http::HeaderValue,
    ) -> Result<Edge, ConfigError> {
        let classifier = Classifier::new(&config.backpressure, &config.webhook.path)
            .map_err(|p| ConfigError::invalid("backpressure.critical_paths", p))?;
        let origin = Origin::new(&config.origin)?;
        let limit = OriginLimit::new(
            &config.velocity,
            config.origin.bypass_share,
            Duration::from_millis(config.origin.queue_timeout_ms),
        );
        let cache = Cache::new(
            &config.cache,
            config.backpressure.retry_after_secs,
            origin,
            limit,
            factor.clone(),
            clock.clone(),
        );
        Ok(Edge {
            inner: Arc::new(EdgeInner {
                classifier,
                primary_host,
                cache,
                shed_factor: config.backpressure.shed_factor,
                retry_after_secs: config.backpressure.retry_after_secs,
                warm_urls: config.cache.warm_urls.clone(),
                funnel: crate::syntax::globs::PathSet::new(&config.conversions.funnel_paths, &[])
                    .map_err(|p| ConfigError::invalid("conversions.funnel_paths", p))?,
                refresh_ahead_factor: config.cache.refresh_ahead_factor,
                room: None,
                factor,
                rejections: [Class::Normal, Class::Low].map(|c| {
                    metrics::counter!(telemetry::BACKPRESSURE_REJECTIONS_TOTAL, "class" => c.as_str())
                }),
                grace: None,
                graced: [Class::Normal, Class::Low].map(|c| {
                    metrics::counter!(telemetry::FUNNEL_GRACE_ADMITTED_TOTAL, "class" => c.as_str())
                }),
                clock,
            }),
        })
    }

    /// Admits, among the requests that would be shed, those `grace` vouches for (the
    /// funnel grace). Called once, before the edge is shared.
    pub fn with_grace(mut self, grace: Arc<dyn Grace>) -> Edge {
        Arc::get_mut(&mut self.inner)
            .expect("the grace is set before the edge is shared")
            .grace = Some(grace);
        self
    }

    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// Shed page views wait in `room` instead of getting the plain 503. Only before
    /// the edge is shared (at startup).
    pub fn with_waiting_room(mut self, room: waiting::Room) -> Edge {
        Arc::get_mut(&mut self.inner)
            .expect("the waiting room is set before the edge is shared")
            .room = Some(room);
        self
    }

    /// The waiting room, when it is on.
    pub fn waiting_room(&self) -> Option<&waiting::Room> {
        self.inner.room.as_ref()
    }

    pub fn classify(&self, path: &str) -> Class {
        self.inner.classifier.classify(path)
    }

    /// Fetches each path into the cache (as a plain GET under the primary host),
    /// compresses it at once, and reports what happened.
    pub async fn warm(&self, paths: &[String]) -> Vec<WarmResult> {
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let fwd = Forwarded {
                client: None,
                host: self.inner.primary_host.clone(),
                proto: "http",
            };
            let (status, cache) = match self.inner.cache.warm(path, fwd).await {
                Ok(r) => r,
                Err(e) => (0, e),
            };
            out.push(WarmResult {
                path: path.clone(),
                status,
                cache,
            });
        }
        out
    }

    /// The configured `cache.warm_urls`.
    pub fn warm_urls(&self) -> &[String] {
        &self.inner.warm_urls
    }

    /// `cache.refresh_ahead_factor` (0 = off).
    pub fn refresh_ahead_factor(&self) -> f64 {
        self.inner.refresh_ahead_factor
    }

    /// Whether `path` is a funnel page (`conversions.funnel_paths`).
    pub fn is_funnel(&self, path: &str) -> bool {
        self.inner.funnel.is_match(path)
    }

    /// Whether a GET of `url` (path and query) under the primary host is in the cache.
    pub fn is_cached(&self, url: &str) -> bool {
        let (path, query) = cache::key::split(url);
        let Ok(canonical) = front::canonical_path(path) else {
            return false;
        };
        let host = self.inner.primary_host.to_str().unwrap_or_default();
        self.inner
            .cache
            .key_of(host, &canonical, query)
            .is_some_and(|k| {
                self.inner
                    .cache
                    .store()
                    .get(k.as_str(), &axum::http::HeaderMap::new())
                    .0
                    .is_some()
            })
    }

    fn shed_response(&self, class: Class, factor: f64) -> Response<Body> {
        let idx = if class == Class::Low { 1 } else { 0 };
        self.inner.rejections[idx].increment(1);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Shed,
            format!(
                "launch traffic is high (scale factor {factor:.2} > backpressure.shed_factor {}); this {} page is paused, retry in {} s",
                self.inner.shed_factor,
                class.as_str(),
                self.inner.retry_after_secs
            ),
        )
        .retry_after(self.inner.retry_after_secs)
        .into_response_with(admission::Rejected)
    }
}

/// What warming one path did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WarmResult {
    pub path: String,
    pub status: u16,
    pub cache: String,
}

/// The scale factor one public request is served under. The front door (the
/// outermost public layer, `front.rs`) reads the factor once and puts it in the
/// request's extensions; admission, the cache (freshness, stale fallback, origin
/// permits), the counters and the `X-Edge-Scale-Factor` header (`server.rs`) all use
/// this one value, so the header shows the factor the decision used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale(pub f64);

impl Scale {
    /// The factor `req` carries; `fallback` (a fresh read) for a request that did not
    /// come through a front door (warm-ups, tests of the router alone).
    pub fn of<B>(req: &axum::http::Request<B>, fallback: impl FnOnce() -> f64) -> f64 {
        req.extensions()
            .get::<Scale>()
            .map_or_else(fallback, |s| s.0)
    }
}

/// The public fallback handler: admission, then the cache. (Every public request,
/// this one included, is timed by `telemetry::HttpTimer` around the whole router.)
pub async fn handle(edge: Edge, req: Request) -> Response<Body> {
    let factor = Scale::of(&req, || edge.inner.factor.current());
    admit(&edge, factor, req).await
}

async fn admit(edge: &Edge, factor: f64, req: Request) -> Response<Body> {
    let class = edge.inner.classifier.classify(req.uri().path());
    let mut let_in = Vec::new();
    if admission::shed(class, factor, edge.inner.shed_factor) {
        // Only now, and only with the grace on, are the visitor's cookies verified.
        let graced = edge
            .inner
            .grace
            .as_ref()
            .is_some_and(|g| g.admits(req.headers(), edge.inner.clock.now_ms()));
        if graced {
            edge.inner.graced[usize::from(class == Class::Low)].increment(1);
        } else {
            match &edge.inner.room {
                // A visitor let in from the waiting room keeps access for its session.
                Some(room) if room.lets_in(req.headers()) => {}
                // A page view (not a low-priority asset or feed) waits in line.
                Some(room) if class == Class::Normal && is_get(&req) => {
                    let secure = req
                        .extensions()
                        .get::<Verified>()
                        .is_some_and(|v| v.proto == "https");
                    match room.decide(req.headers(), wants_json(req.headers()), factor, secure) {
                        waiting::Decision::Admit(cookies) => let_in = cookies,
                        waiting::Decision::Wait { mut response, .. } => {
                            edge.inner.rejections[0].increment(1);
                            response.extensions_mut().insert(admission::Rejected);
                            return response;
                        }
                    }
                }
                _ => return edge.shed_response(class, factor),
            }
        }
    }
    let fwd = match req.extensions().get::<Verified>() {
        Some(v) => Forwarded {
            client: v.client,
            host: v.host.clone(),
            proto: v.proto,
        },
        None => Forwarded {
            client: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            host: edge.inner.primary_host.clone(),
            proto: "http",
        },
    };
    let mut res = edge.inner.cache.handle(req, fwd, factor).await;
    for c in let_in {
        res.headers_mut().append(axum::http::header::SET_COOKIE, c);
    }
    res
}

fn is_get(req: &Request) -> bool {
    req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD
}

/// `Accept` asks for JSON and not for HTML (an API client, not a browser).
fn wants_json(headers: &axum::http::HeaderMap) -> bool {
    let accept = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    accept.contains("application/json") && !accept.contains("text/html")
}

/// The cache's admin routes: `POST /admin/purge`, `POST /admin/warm`.
pub fn admin_routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Edge: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/admin/purge", post(purge))
        .route("/admin/warm", post(warm))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    prefix: String,
}

/// JSON bodies are read whatever the `Content-Type`, so `curl -d` works as typed.
async fn purge(
    State(edge): State<Edge>,
    body: axum::body::Bytes,
) -> Result<Response<Body>, ApiError> {
    let req: PurgeRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            Code::InvalidRequest,
            format!("{e}; expected {{\"prefix\": \"/launch/\"}}"),
        )
    })?;
    if !req.prefix.starts_with('/') {
        return Err(ApiError::bad_request(
            Code::InvalidRequest,
            format!(
                "prefix must be a path starting with \"/\" (\"/\" purges everything), got {:?}",
                req.prefix
            ),
        )
        .field("prefix"));
    }
    let purged = edge.cache().purge_prefix(&req.prefix);
    tracing::info!(prefix = %req.prefix, purged, "cache purged by operator");
    Ok(
        Json(json!({"prefix": req.prefix, "purged": purged, "bytes": edge.cache().bytes()}))
            .into_response(),
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WarmRequest {
    urls: Option<Vec<String>>,
}

async fn warm(
    State(edge): State<Edge>,
    body: axum::body::Bytes,
) -> Result<Response<Body>, ApiError> {
    let req: WarmRequest = if body.iter().all(u8::is_ascii_whitespace) {
        WarmRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                Code::InvalidRequest,
                format!("{e}; expected {{\"urls\": [\"/launch/\"]}} or an empty body for cache.warm_urls"),
            )
        })?
    };
    let urls = req.urls.unwrap_or_else(|| edge.warm_urls().to_vec());
    if let Some(bad) = urls.iter().find(|u| !u.starts_with('/')) {
        return Err(ApiError::bad_request(
            Code::InvalidRequest,
            format!("every url must be a path starting with \"/\", got {bad:?}"),
        )
        .field("urls"));
    }
    let results = edge.warm(&urls).await;
    tracing::info!(urls = urls.len(), "cache warmed by operator");
    Ok(Json(json!({"warmed": results})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(factor: &Factor) -> Edge {
        let config = Config::parse("").unwrap();
        Edge::new(
            &config,
            factor.clone(),
            Clock::system(),
            axum::http::HeaderValue::from_static("launch.example"),
        )
        .unwrap()
    }

    fn request(scale: Option<f64>) -> Request {
        let mut req = axum::http::Request::builder()
            .uri("/pricing")
            .body(Body::empty())
            .unwrap();
        if let Some(f) = scale {
            req.extensions_mut().insert(Scale(f));
        }
        req
    }

    async fn code_of(res: Response<Body>) -> Option<String> {
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
    }

    /// Admission judges by the factor the request carries, not by a fresh read: the
    /// factor moving after the front door read it does not change the decision.
    #[tokio::test]
    async fn admission_uses_the_factor_the_request_carries() {
        let factor = Factor::new();
        let e = edge(&factor);
        // The live factor is 1.0; the request was admitted at 7.0: shed.
        let res = handle(e.clone(), request(Some(7.0))).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code_of(res).await.as_deref(), Some("shed"));
        // The live factor is 7.0; the request was admitted at 1.0: not shed.
        factor.set_computed(7.0, 0.0, 0);
        assert_eq!(factor.current(), 7.0);
        let res = handle(e.clone(), request(Some(1.0))).await;
        assert_ne!(code_of(res).await.as_deref(), Some("shed"));
        // Without a carried factor (no front door), the live one decides.
        let res = handle(e, request(None)).await;
        assert_eq!(code_of(res).await.as_deref(), Some("shed"));
    }

    /// Admits requests that carry `x-test-grace`, and counts every question.
    struct TestGrace(std::sync::atomic::AtomicUsize);

    impl Grace for TestGrace {
        fn admits(&self, headers: &axum::http::HeaderMap, _now_ms: u64) -> bool {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            headers.contains_key("x-test-grace")
        }
    }

    /// The grace is asked only about a request that would be shed, and what it
    /// vouches for goes on to the cache instead of a 503.
    #[tokio::test]
    async fn the_grace_is_asked_only_when_a_request_would_be_shed() {
        let factor = Factor::new();
        let grace = Arc::new(TestGrace(Default::default()));
        let e = edge(&factor).with_grace(grace.clone());
        let asked = || grace.0.load(std::sync::atomic::Ordering::Relaxed);
        // Not shedding: never asked.
        let res = handle(e.clone(), request(Some(1.0))).await;
        assert_ne!(code_of(res).await.as_deref(), Some("shed"));
        assert_eq!(asked(), 0);
        // Shedding, nothing to vouch for: asked, and shed.
        let res = handle(e.clone(), request(Some(7.0))).await;
        assert_eq!(code_of(res).await.as_deref(), Some("shed"));
        assert_eq!(asked(), 1);
        // Shedding, vouched for: served.
        let mut req = request(Some(7.0));
        req.headers_mut()
            .insert("x-test-grace", axum::http::HeaderValue::from_static("1"));
        let res = handle(e.clone(), req).await;
        assert!(res.extensions().get::<admission::Rejected>().is_none());
        assert_ne!(code_of(res).await.as_deref(), Some("shed"));
        assert_eq!(asked(), 2);
        // A critical path is never shed, so never asked.
        let mut req = request(Some(7.0));
        *req.uri_mut() = "/launch/".parse().unwrap();
        handle(e, req).await;
        assert_eq!(asked(), 2);
    }
}
