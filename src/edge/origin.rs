//! The origin: the static directory (`origin.static_dir`) or an HTTP(S) upstream
//! (`origin.upstream`, such as a Next.js app on `http://127.0.0.1:3000`, or
//! `https://app.internal` across a network).
//!
//! The static directory is tower-http's `ServeDir`: ETag, Last-Modified, ranges,
//! conditional requests, and `404.html` with status 404 for what is not there. Two
//! things it would serve are answered with that same 404 first: a path with a
//! dot-segment (`/.env`, `/.git/config`; `/.well-known/` excepted), and a path whose
//! file, followed through every symlink, lies outside the directory. A site pointed
//! at a checkout does not leak its secrets.
//!
//! The upstream is reached through one pooled keep-alive client, hyper-util's
//! `client::legacy::Client`, HTTP/1.1 over TCP or, for an `https://` upstream, over
//! rustls (`client::https_connector`: ALPN `http/1.1`, the server name and the
//! certificate check by the upstream's host, trust in the webpki roots plus
//! `origin.ca_file`, built once by `client::trust`). It is used rather than reqwest
//! because a reverse proxy wants none of a user agent's habits: no redirect
//! following, no transparent decompression, no cookie store; and because request and
//! response bodies stay `http_body` streams end to end (hyper already sits under
//! axum), so large or uncacheable bodies pass through without being buffered.
//!
//! Proxy hygiene: hop-by-hop headers (`Connection` and what it names, `Keep-Alive`,
//! `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are removed both ways.
//! Every header a client could use to tell the origin where the request came from or
//! where to route it (`Forwarded`, every `X-Forwarded-*`, `X-Real-IP` and its kin,
//! `X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override` and its kin) is removed
//! from every request; then `X-Forwarded-For` (the client address),
//! `X-Forwarded-Proto` and `X-Forwarded-Host` (the host the front door verified) are
//! set from what launchguard itself saw, and `Host` names the upstream.
//!
//! **Invariant:** every fetch ends within `origin.timeout_ms` (response headers; the
//! connect and any TLS handshake included), as a response or an [`OriginError`]; nothing
//! waits on the origin forever. An upstream certificate that does not verify is an
//! [`OriginError::Unreachable`] (502), at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower_http::services::fs::ServeFileSystemResponseBody;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_status::SetStatus;

use crate::config::{ConfigError, OriginConfig};
use crate::error::{ApiError, Code};
use crate::telemetry;

/// Why the origin gave no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    #[error("the origin did not answer within {0} ms (origin.timeout_ms)")]
    Timeout(u64),
    #[error("the origin could not be reached: {0}")]
    Unreachable(String),
    #[error("the origin's response body failed: {0}")]
    Body(String),
}

impl OriginError {
    pub fn status(&self) -> StatusCode {
        match self {
            OriginError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            OriginError::Timeout(_) => "timeout",
            OriginError::Unreachable(_) => "unreachable",
            OriginError::Body(_) => "body",
        }
    }

    /// The answer when no cached copy can stand in: 502/504, to be retried after
    /// `retry_after_secs` (`backpressure.retry_after_secs`).
    pub fn answer(self, retry_after_secs: u64) -> Response<Body> {
        let code = match self {
            OriginError::Timeout(_) => Code::OriginTimeout,
            _ => Code::OriginUnreachable,
        };
        ApiError::new(
            self.status(),
            code,
            format!("{self}; no cached copy could stand in, retry shortly"),
        )
        .retry_after(retry_after_secs)
        .into_response()
    }
}

type StaticSite = ServeDir<SetStatus<ServeFile>>;

enum Kind {
    Static {
        site: StaticSite,
        /// The directory, every symlink resolved, to check where a file really lies.
        root: PathBuf,
        not_found: SetStatus<ServeFile>,
    },
    Upstream {
        client: Client<HttpsConnector<HttpConnector>, Body>,
        scheme: Scheme,
        authority: Authority,
    },
}

/// Handle to the origin; a clone is cheap (the client's pool is shared).
#[derive(Clone)]
pub struct Origin {
    kind: Arc<Kind>,
    timeout: Duration,
}

/// Who asked, as launchguard saw it: the `X-Forwarded-*` headers and the cache key's
/// host come from here, never from the client's own headers.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The client's address (`front::Verified::client`).
    pub client: Option<std::net::IpAddr>,
    /// The verified, normalized host (`front::Verified`).
    pub host: HeaderValue,
    /// `http` or `https`.
    pub proto: &'static str,
}

impl Origin {
    /// The error names `origin.upstream` (not a URL launchguard can fetch) or
    /// `origin.ca_file` (unreadable, or no good PEM certificates in it).
    pub fn new(config: &OriginConfig) -> Result<Origin, ConfigError> {
        let kind = match &config.upstream {
            Some(up) => {
                let (scheme, authority) = crate::syntax::url::upstream(up)
                    .map_err(|p| ConfigError::invalid("origin.upstream", p))?;
                let tls = crate::client::trust("origin.ca_file", config.ca_file.as_deref())?;
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms)));
                connector.set_keepalive(Some(Duration::from_secs(60)));
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(512)
                    .build(crate::client::https_connector(connector, tls));
                Kind::Upstream {
                    client,
                    scheme,
                    authority,
                }
            }
            None => {
                let dir = &config.static_dir;
                Kind::Static {
                    site: ServeDir::new(dir)
                        .not_found_service(ServeFile::new(dir.join("404.html"))),
                    root: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()),
                    not_found: SetStatus::new(
                        ServeFile::new(dir.join("404.html")),
                        StatusCode::NOT_FOUND,
                    ),
                }
            }
        };
        Ok(Origin {
            kind: Arc::new(kind),
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// `origin.timeout_ms`.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }

    pub fn is_upstream(&self) -> bool {
        matches!(*self.kind, Kind::Upstream { .. })
    }

    /// Sends `req` to the origin and returns its response, body still streaming.
    pub async fn fetch(
        &self,
        mut req: Request<Body>,
        fwd: &Forwarded,
    ) -> Result<Response<Body>, OriginError> {
        let started = Instant::now();
        let timeout_ms = self.timeout.as_millis() as u64;
        let result = match &*self.kind {
            Kind::Static {
                site,
                root,
                not_found,
            } => {
                let hidden = hidden_static(req.uri().path(), root).await;
                let fut = async {
                    if hidden {
                        let mut res = not_found.clone().oneshot(req).await?;
                        *res.status_mut() = StatusCode::NOT_FOUND;
                        Ok(res)
                    } else {
                        site.clone().oneshot(req).await
                    }
                };
                match tokio::time::timeout(self.timeout, fut).await {
                    Ok(Ok(res)) => Ok(res.map(static_body)),
                    Ok(Err(never)) => match never {},
                    Err(_) => Err(OriginError::Timeout(timeout_ms)),
                }
            }
            Kind::Upstream {
                client,
                scheme,
                authority,
            } => {
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                let uri = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query(pq)
                    .build()
                    .map_err(|e| OriginError::Unreachable(e.to_string()))?;
                *req.uri_mut() = uri;
                *req.version_mut() = axum::http::Version::HTTP_11;
                prepare_request_headers(req.headers_mut(), fwd, authority);
                match tokio::time::timeout(self.timeout, client.request(req)).await {
                    Ok(Ok(res)) => {
                        let (mut parts, body) = res.into_parts();
                        strip_hop_by_hop(&mut parts.headers);
                        Ok(Response::from_parts(parts, Body::new(body)))
                    }
                    Ok(Err(e)) => Err(OriginError::Unreachable(error_chain(&e))),
                    Err(_) => Err(OriginError::Timeout(timeout_ms)),
                }
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::histogram!(telemetry::ORIGIN_REQUEST_DURATION_SECONDS, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

/// Whether the static site must answer `path` as not found: a dot-segment other than
/// a leading `.well-known`, or a file (or a directory's `index.html`) that resolves
/// outside `root`.
async fn hidden_static(path: &str, root: &Path) -> bool {
    let mut rel = PathBuf::new();
    for (i, seg) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        let seg = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
        if seg.starts_with('.') && !(i == 0 && seg == ".well-known") {
            return true;
        }
        if seg.contains(['/', '\\', '\0']) {
            return true;
        }
        rel.push(seg.as_ref());
    }
    let candidate = root.join(rel);
    let root = root.to_path_buf();
    // Off the async workers: canonicalize walks the path with a syscall per part.
    tokio::task::spawn_blocking(move || {
        let outside = |p: &Path| match std::fs::canonicalize(p) {
            Ok(real) => !real.starts_with(&root),
            // Not there: ServeDir answers 404 itself.
            Err(_) => false,
        };
        outside(&candidate) || (candidate.is_dir() && outside(&candidate.join("index.html")))
    })
    .await
    .unwrap_or(true)
}

fn static_body(b: ServeFileSystemResponseBody) -> Body {
    Body::new(b)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers: the fixed list, `Upgrade`, and whatever `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP.iter() {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Request headers that say where a request came from or where it should go, which
/// apps and frameworks believe (Rails, Django, Express, Symfony, IIS, Spring): only
/// launchguard may set such things, from what it saw itself.
const ROUTING: [&str; 19] = [
    // Next.js internals a client must never set (CVE-2025-29927 and kin).
    "x-middleware-subrequest",
    "x-middleware-prefetch",
    "x-now-route-matches",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-proxyuser-ip",
];

/// Removes every routing and override header and every `X-Forwarded-*`.
pub fn strip_routing(headers: &mut HeaderMap) {
    for name in ROUTING {
        headers.remove(name);
    }
    let forwarded: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-forwarded-"))
        .cloned()
        .collect();
    for name in forwarded {
        headers.remove(name);
    }
}

fn prepare_request_headers(headers: &mut HeaderMap, fwd: &Forwarded, authority: &Authority) {
    strip_hop_by_hop(headers);
    strip_routing(headers);
    if let Some(client) = fwd.client {
        if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
            headers.insert("x-forwarded-for", v);
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(fwd.proto));
    headers.insert("x-forwarded-host", fwd.host.clone());
    if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
        headers.insert(header::HOST, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("evil.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert("x-forwarded-port", HeaderValue::from_static("8443"));
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/admin"));
        h.insert("forwarded", HeaderValue::from_static("host=evil.example"));
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        h.insert("x-rewrite-url", HeaderValue::from_static("/admin"));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        let fwd = Forwarded {
            client: Some("198.51.100.7".parse().unwrap()),
            host: HeaderValue::from_static("launch.example"),
            proto: "http",
        };
        prepare_request_headers(&mut h, &fwd, &"127.0.0.1:3000".parse().unwrap());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::TE).is_none());
        for gone in [
            "x-forwarded-port",
            "x-forwarded-prefix",
            "forwarded",
            "x-http-method-override",
            "x-original-url",
            "x-rewrite-url",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "launch.example");
        assert_eq!(h[header::HOST], "127.0.0.1:3000");
        assert_eq!(h[header::ACCEPT], "text/html");
    }
}
