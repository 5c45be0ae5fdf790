//! The admin listener: health, readiness, Prometheus metrics, and the admin API.
//!
//! - `GET /healthz`: the process answers.
//! - `GET /readyz`: 200 while serving, 503 once shutdown has begun.
//! - `GET /metrics`: Prometheus text format.
//! - `GET /dashboard`: the live dashboard page; `GET /api/live`: its Server-Sent Events,
//!   one sample a second (`live.rs`).
//! - `GET /admin/factor`, `POST /admin/factor {"pin": F, "for_secs": N}`, `DELETE /admin/factor`:
//!   read, pin (the rollback switch) and unpin the scale factor. A pin is persisted,
//!   so it survives a restart until it lapses.
//! - `GET /admin/events?after=SEQ&limit=N`: stored events (newest first without `after`).
//! - `GET /api/analytics?day=D` or `?from=D&to=D`, `GET /api/launches`: launch-day
//!   reports (`insight/analytics/`).
//! - `POST /admin/purge {"prefix": "/launch/"}`, `POST /admin/warm {"urls"?: [...]}`: the
//!   edge cache (handlers in `edge/mod.rs`).
//! - `GET /admin/outbound/deadletters`, `POST /admin/outbound/deadletters/{id}/retry`,
//!   `DELETE /admin/outbound/deadletters/{id}`: outbound calls that failed every retry
//!   (`outbound.rs`).
//!
//! `/admin/*`, `/api/live`, `/api/analytics` and `/api/launches` need
//! `Authorization: Bearer <token>` whenever a token is configured (always, off
//! loopback); the token is compared as a SHA-256 digest in constant time, so neither
//! its bytes nor its length leak through timing. The dashboard page itself holds no
//! data: it asks for the token when its feed answers 401. Every admin action
//! that changes state is logged at info.
//!
//! Before the token, the same routes refuse what a web page could make a browser
//! send (with or without a token, since the loopback default has none):
//! - a `Host` that is not a loopback address, `localhost`, the admin listener's own
//!   address or one of `server.admin_hosts` gets 403 (a DNS-rebound name);
//! - an `Origin` other than the listener's own (`http://<Host>`) gets 403 (a page
//!   on another site, CSRF);
//! - a POST, PUT or PATCH without `Content-Type: application/json` gets 415 (a
//!   `text/plain` form post needs no CORS preflight; JSON does).

use std::sync::atomic::Ordering;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRef, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, Code};
use crate::ingest::factor::Pin;
use crate::ingest::store::EventRecord;

/// Longest pin an operator may set: one week.
pub const MAX_PIN_SECS: u64 = 7 * 24 * 3600;

/// SHA-256 of the admin token; the token itself is not kept.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.0).into()
    }
}

/// What the admin handlers read and change: the config, the store, the factor, the
/// clock, the token, the metrics, the shutdown flag and the public connections.
/// `app` builds it.
#[derive(Clone)]
pub struct AdminState {
    pub config: std::sync::Arc<crate::config::Config>,
    pub store: crate::ingest::store::Store,
    pub factor: crate::ingest::factor::Factor,
    pub clock: crate::clock::Clock,
    pub admin_token: Option<AdminToken>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub shutting_down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub connections: crate::edge::server::Connections,
    pub certs: Option<crate::edge::tls::Certs>,
    /// The waiting room, when it is on (its gauges are set when `/metrics` is read).
    pub waiting_room: Option<crate::edge::waiting::Room>,
    /// In a cluster: shares a pin, unpin, purge or warm-up with the other nodes.
    pub control: Option<crate::ops::cluster::control::Control>,
}

/// The admin listener's router: its own handlers, and the admin routes of the cache,
/// the dead letters, the reports and the live feed, each taking its state from `S`.
pub fn router<S>(state: S) -> Router
where
    S: Clone + Send + Sync + 'static,
    AdminState: FromRef<S>,
    crate::insight::analytics::Reports: FromRef<S>,
    crate::insight::live::LiveFeed: FromRef<S>,
    crate::edge::Edge: FromRef<S>,
    crate::ops::outbound::Outbound: FromRef<S>,
{
    let admin = AdminState::from_ref(&state);
    let admin_api = Router::new()
        .route(
            "/admin/factor",
            get(get_factor).post(pin_factor).delete(unpin_factor),
        )
        .route("/admin/events", get(list_events))
        .route("/api/analytics", get(crate::insight::analytics::analytics))
        .route(
            "/api/launches",
            get(crate::insight::analytics::list_launches),
        )
        .route("/api/live", get(crate::insight::live::stream))
        .merge(crate::edge::admin_routes())
        .merge(crate::ops::outbound::admin_routes(
            admin.config.backpressure.retry_after_secs,
        ));
    // Innermost, so only a request past the token and the host checks is shared.
    let admin_api = match &admin.control {
        Some(control) => admin_api.route_layer(middleware::from_fn_with_state(
            control.clone(),
            crate::ops::cluster::control::share,
        )),
        None => admin_api,
    };
    let admin_api = admin_api
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token))
        .route_layer(middleware::from_fn_with_state(
            AdminHosts::new(&admin.config.server),
            refuse_cross_site,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(crate::insight::live::dashboard))
        .merge(admin_api)
        .with_state(state)
}

/// The names the admin listener answers to besides loopback addresses and `localhost`.
#[derive(Clone)]
pub struct AdminHosts {
    own: Option<std::net::IpAddr>,
    names: std::sync::Arc<[String]>,
}

impl AdminHosts {
    pub fn new(server: &crate::config::ServerConfig) -> AdminHosts {
        let ip = server.admin_listen.ip();
        AdminHosts {
            own: (!ip.is_unspecified()).then_some(ip),
            names: server
                .admin_hosts
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a `Host` value names this admin listener.
    pub fn allows(&self, host: &[u8]) -> bool {
        let Ok(h) = crate::syntax::host::parse_host(host, 0) else {
            return false;
        };
        let bare = h.name.trim_start_matches('[').trim_end_matches(']');
        if h.name == "localhost" || self.names.contains(&h.name) {
            return true;
        }
        match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback() || Some(ip) == self.own,
            Err(_) => false,
        }
    }
}

/// Refuses what a browser on another site could send: see the module docs.
async fn refuse_cross_site(State(hosts): State<AdminHosts>, req: Request, next: Next) -> Response {
    let forbidden = |why: String| {
        tracing::warn!(path = %req.uri().path(), "admin request refused: {why}");
        ApiError::new(StatusCode::FORBIDDEN, Code::Forbidden, why).into_response()
    };
    let host = req.headers().get(header::HOST);
    let Some(host) = host.filter(|h| hosts.allows(h.as_bytes())) else {
        return forbidden(format!(
            "the admin listener answers to loopback addresses, localhost, its own address and server.admin_hosts, not Host {:?}",
            host.map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default()
        ));
    };
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let own = [b"http://", host.as_bytes()].concat();
        if !origin.as_bytes().eq_ignore_ascii_case(&own) {
            return forbidden(format!(
                "a request from a page of {:?} is not the admin listener's own origin",
                String::from_utf8_lossy(origin.as_bytes())
            ));
        }
    }
    if matches!(
        *req.method(),
        axum::http::Method::POST | axum::http::Method::PUT | axum::http::Method::PATCH
    ) {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::UnsupportedMediaType,
                "send the request with Content-Type: application/json (curl -H 'content-type: application/json')",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.admin_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let ok = presented.is_some_and(|p| token.matches(p));
        if !ok {
            tracing::warn!(path = %req.uri().path(), "admin request refused: missing or wrong bearer token");
            let mut res = ApiError::new(
                StatusCode::UNAUTHORIZED,
                Code::Unauthorized,
                "send Authorization: Bearer <admin token> (the token in server.admin_token_file)",
            )
            .into_response();
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
    }
    next.run(req).await
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.shutting_down.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    Json(json!({
        "status": "ready",
        "scale_factor": state.factor.current(),
        "next_seq": state.store.next_seq(),
    }))
    .into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.connections.record_metrics();
    if let Some(certs) = &state.certs {
        certs.record_metrics(state.clock.now_ms());
    }
    if let Some(room) = &state.waiting_room {
        room.snapshot();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn factor_view(state: &AdminState) -> serde_json::Value {
    let now = state.clock.now_ms();
    let pin = state.factor.pinned(now).map(|p| {
        json!({
            "factor": p.factor,
            "until": rfc3339(p.until_ms),
            "remaining_secs": (p.until_ms - now).div_ceil(1000),
        })
    });
    json!({
        "factor": state.factor.current(),
        "computed": state.factor.computed(),
        "velocity": state.factor.velocity(),
        "cap": state.config.velocity.cap(),
        "pinned": pin,
    })
}

async fn get_factor(State(state): State<AdminState>) -> Response {
    Json(factor_view(&state)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    pin: f64,
    #[serde(default = "default_pin_secs")]
    for_secs: u64,
}

fn default_pin_secs() -> u64 {
    3600
}

async fn pin_factor(
    State(state): State<AdminState>,
    body: Result<Json<PinRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(
            Code::InvalidRequest,
            format!(
                "{}; expected {{\"pin\": 1.0, \"for_secs\": 3600}}",
                e.body_text()
            ),
        )
    })?;
    let cap = state.config.velocity.cap();
    if !(req.pin.is_finite() && (1.0..=cap).contains(&req.pin)) {
        return Err(ApiError::bad_request(
            Code::InvalidRequest,
            format!("pin must be between 1.0 and the cap {cap}, got {}", req.pin),
        )
        .field("pin"));
    }
    if !(1..=MAX_PIN_SECS).contains(&req.for_secs) {
        return Err(ApiError::bad_request(
            Code::InvalidRequest,
            format!(
                "for_secs must be between 1 and {MAX_PIN_SECS}, got {}",
                req.for_secs
            ),
        )
        .field("for_secs"));
    }
    let now = state.clock.now_ms();
    let pin = Pin {
        factor: req.pin,
        until_ms: now + req.for_secs * 1000,
    };
    persist_pin(&state, Some(pin)).await?;
    state.factor.pin(pin, now);
    tracing::info!(
        factor = req.pin,
        for_secs = req.for_secs,
        "scale factor pinned by operator"
    );
    Ok(Json(factor_view(&state)).into_response())
}

async fn unpin_factor(State(state): State<AdminState>) -> Result<Response, ApiError> {
    persist_pin(&state, None).await?;
    let old = state.factor.unpin(state.clock.now_ms());
    if let Some(p) = old {
        tracing::info!(
            was = p.factor,
            "scale factor unpinned by operator; computed factor in force"
        );
    }
    Ok(Json(factor_view(&state)).into_response())
}

async fn persist_pin(state: &AdminState, pin: Option<Pin>) -> Result<(), ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.save_pin(pin))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| {
            ApiError::unavailable(
                Code::StorageUnavailable,
                format!("the pin could not be saved ({e}); nothing changed, retry"),
                state.config.backpressure.retry_after_secs,
            )
        })
}

/// 503 for a store that failed a read, `e` as the message.
fn storage_unavailable(e: impl std::fmt::Display, state: &AdminState) -> ApiError {
    ApiError::unavailable(
        Code::StorageUnavailable,
        e.to_string(),
        state.config.backpressure.retry_after_secs,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list_events(
    State(state): State<AdminState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(
            Code::InvalidRequest,
            format!("{}; expected ?after=<seq>&limit=<1..1000>", e.body_text()),
        )
    })?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            Code::InvalidRequest,
            format!("limit must be between 1 and 1000, got {limit}"),
        )
        .field("limit"));
    }
    let store = state.store.clone();
    let events = tokio::task::spawn_blocking(move || match q.after {
        Some(after) => store.events_after(after, limit),
        None => store.recent_events(limit),
    })
    .await
    .map_err(|e| storage_unavailable(e, &state))?
    .map_err(|e| storage_unavailable(e, &state))?;
    let events: Vec<_> = events.iter().map(|(seq, r)| event_view(*seq, r)).collect();
    Ok(Json(json!({"events": events, "next_seq": state.store.next_seq()})).into_response())
}

fn event_view(seq: u64, r: &EventRecord) -> serde_json::Value {
    let payload: serde_json::Value = serde_json::from_slice(&r.payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&r.payload).into()));
    json!({
        "seq": seq,
        "id": r.id,
        "event_type": r.event_type,
        "weight": r.weight_milli as f64 / crate::ingest::velocity::MILLI,
        "received_at": rfc3339(r.received_ms),
        "scheme": r.scheme.as_str(),
        // In a cluster, the node that accepted it; null: this node.
        "node": r.origin.as_ref().map(|o| o.node.as_str()),
        "payload": payload,
    })
}

fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_listener_answers_to_its_own_names_only() {
        let server = crate::config::ServerConfig {
            admin_listen: "10.0.0.5:9090".parse().unwrap(),
            admin_hosts: vec!["ops.internal".into()],
            ..crate::config::ServerConfig::default()
        };
        let h = AdminHosts::new(&server);
        for ok in [
            "127.0.0.1:9090",
            "localhost:9090",
            "[::1]:9090",
            "10.0.0.5:9090",
            "ops.internal",
            "OPS.internal.:9090",
        ] {
            assert!(h.allows(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "evil.example",
            "10.0.0.6:9090",
            "localhost.evil.example",
            "",
            "a b",
        ] {
            assert!(!h.allows(bad.as_bytes()), "{bad}");
        }
    }
}
