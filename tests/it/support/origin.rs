//! A real origin for edge tests: an axum server on `127.0.0.1:0` that counts the
//! requests it gets per path and answers by path prefix:
//!
//! - `/cookie*`: sets a cookie; `/private*`: `Cache-Control: private`;
//! - `/hang*`: never answers; `/maxage*`: `Cache-Control: max-age=10`;
//! - `/nocache*`: `no-cache` with `ETag: "v<version>"`, 304 when it matches;
//! - `/vary*`: `Vary: Accept-Language`, body names the language;
//! - `/error*`: 500; anything else: a small HTML page naming the path, the version
//!   and the request count.
//! - `/reflect*`: behaves like a real app that trusts its request: the page shows the
//!   path and query it got, the host it believes it is (`X-Forwarded-Host`, else
//!   `Host`), the client (`X-Forwarded-For`), the scheme (`X-Forwarded-Proto`), every
//!   other forwarding or override header, the `session` cookie's user ("hello
//!   alice", with no `Set-Cookie`, as apps do once logged in) and `Authorization`.
//!   An override (`X-HTTP-Method-Override`, `X-Original-URL`, `X-Rewrite-URL`) routes
//!   it elsewhere: 404, as an app would.
//! - `/withheld*`: `Cache-Control: max-age=60, private="set-cookie"` with a
//!   `Set-Cookie`, and a `Connection`-named `X-Hop` header.
//!
//! `hold()` makes every GET and HEAD wait until `release()` (`hold_only(prefix)`: those
//! under a prefix); other methods pass. `arrived` is notified when a request comes
//! in, so tests wait for events, not for time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct OriginState {
    counts: Mutex<HashMap<String, u64>>,
    not_modified: AtomicU64,
    pub version: AtomicU64,
    pub last_headers: Mutex<HeaderMap>,
    headers_by_path: Mutex<HashMap<String, HeaderMap>>,
    held: AtomicBool,
    held_prefix: Mutex<String>,
    /// Every answer is a 500 while set.
    pub failing: AtomicBool,
    gate: Mutex<Option<watch::Sender<bool>>>,
    pub arrived: Notify,
}

pub struct TestOrigin {
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestOrigin {
    pub async fn start() -> TestOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        state.version.store(1, Ordering::SeqCst);
        let app = Router::new().fallback(answer).with_state(state.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
                .unwrap();
        });
        TestOrigin {
            addr,
            state,
            stop,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen for `path` (path and query as sent).
    pub fn count(&self, path: &str) -> u64 {
        self.state.counts.lock().get(path).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.state.counts.lock().values().sum()
    }

    pub fn not_modified(&self) -> u64 {
        self.state.not_modified.load(Ordering::SeqCst)
    }

    /// GET and HEAD answers wait until `release`.
    pub fn hold(&self) {
        self.hold_only("/");
    }

    /// GET and HEAD answers for paths under `prefix` wait until `release`.
    pub fn hold_only(&self, prefix: &str) {
        *self.state.held_prefix.lock() = prefix.to_string();
        let (tx, _) = watch::channel(false);
        *self.state.gate.lock() = Some(tx);
        self.state.held.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.state.held.store(false, Ordering::SeqCst);
        if let Some(tx) = self.state.gate.lock().take() {
            let _ = tx.send(true);
        }
    }

    /// Waits until `path` has been asked for `n` times.
    pub async fn wait_for(&self, path: &str, n: u64) {
        loop {
            let notified = self.state.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count(path) >= n {
                return;
            }
            notified.await;
        }
    }

    /// Waits until `n` requests in all have arrived.
    pub async fn wait_total(&self, n: u64) {
        loop {
            let notified = self.state.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.total() >= n {
                return;
            }
            notified.await;
        }
    }

    /// The headers of the last request for exactly `path` (path and query).
    pub fn headers_of(&self, path: &str) -> Option<HeaderMap> {
        self.state.headers_by_path.lock().get(path).cloned()
    }

    /// Stops accepting and closes its connections.
    pub async fn stop(&mut self) {
        self.release();
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

async fn answer(State(s): State<Arc<OriginState>>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let n = {
        let mut counts = s.counts.lock();
        let c = counts.entry(path.clone()).or_insert(0);
        *c += 1;
        *c
    };
    *s.last_headers.lock() = req.headers().clone();
    s.headers_by_path
        .lock()
        .insert(path.clone(), req.headers().clone());
    let gate = s.gate.lock().as_ref().map(|tx| tx.subscribe());
    s.arrived.notify_waiters();
    let holds = matches!(*req.method(), Method::GET | Method::HEAD)
        && req.uri().path().starts_with(s.held_prefix.lock().as_str());
    if let (Some(mut rx), true) = (gate, holds) {
        if s.held.load(Ordering::SeqCst) {
            let _ = rx.wait_for(|open| *open).await;
        }
    }
    let version = s.version.load(Ordering::SeqCst);
    let p = req.uri().path();
    let mut b = Response::builder().header(header::CONTENT_TYPE, "text/html; charset=utf-8");
    if p.starts_with("/hang") {
        std::future::pending::<()>().await;
    }
    if p.starts_with("/cookie") {
        b = b.header(header::SET_COOKIE, format!("session={n}"));
    }
    if p.starts_with("/private") {
        b = b.header(header::CACHE_CONTROL, "private, max-age=60");
    }
    if p.starts_with("/maxage") {
        b = b.header(header::CACHE_CONTROL, "public, max-age=10");
    }
    if p.starts_with("/reflect") {
        return reflect(&req, &path);
    }
    if p.starts_with("/withheld") {
        return b
            .header(header::CACHE_CONTROL, "max-age=60, private=\"set-cookie\"")
            .header(header::SET_COOKIE, format!("visitor={n}"))
            .header(header::CONNECTION, "x-hop")
            .header("x-hop", "secret")
            .body(Body::from(format!("<p>withheld n={n}</p>")))
            .unwrap();
    }
    if p.starts_with("/nocache") {
        let tag = format!("\"v{version}\"");
        b = b
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::ETAG, tag.as_str())
            .header("x-origin-n", n.to_string());
        if req.headers().get(header::IF_NONE_MATCH) == Some(&HeaderValue::from_str(&tag).unwrap()) {
            s.not_modified.fetch_add(1, Ordering::SeqCst);
            return b
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .unwrap();
        }
    }
    if p.starts_with("/vary") {
        let lang = req
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        return b
            .header(header::VARY, "Accept-Language")
            .body(Body::from(format!("<p>lang={lang} n={n}</p>")))
            .unwrap();
    }
    if p.starts_with("/error") || s.failing.load(Ordering::SeqCst) {
        b = b.status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    if req.method() == Method::POST {
        return b.body(Body::from("posted")).unwrap();
    }
    let filler = if p.starts_with("/big") {
        "launch day ".repeat(300)
    } else {
        String::new()
    };
    b.body(Body::from(format!(
        "<html><body><p>path={path} version={version} n={n}</p>{filler}</body></html>"
    )))
    .unwrap()
}

/// The `/reflect` page: what a trusting app renders from its request.
fn reflect(req: &Request, path_and_query: &str) -> Response {
    let h = req.headers();
    let get = |name: &str| {
        h.get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    if ["x-http-method-override", "x-original-url", "x-rewrite-url"]
        .iter()
        .any(|n| h.contains_key(*n))
    {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/html")
            .body(Body::from("<p>routed elsewhere: not found</p>"))
            .unwrap();
    }
    let host = match get("x-forwarded-host") {
        x if x.is_empty() => get("host"),
        x => x,
    };
    let user = get("cookie")
        .split(';')
        .find_map(|c| c.trim().strip_prefix("session=").map(str::to_string))
        .unwrap_or_else(|| "guest".into());
    let mut page = format!(
        "<html><body><p>hello {user}</p><p>url={path_and_query}</p>\
         <a href=\"{proto}://{host}/launch/\">launch</a>\n",
        proto = match get("x-forwarded-proto") {
            p if p.is_empty() => "http".to_string(),
            p => p,
        },
    );
    for name in [
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "cookie",
        "authorization",
    ] {
        page.push_str(&format!("<p>{name}={}</p>\n", get(name)));
    }
    page.push_str("</body></html>");
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from(page))
        .unwrap()
}
