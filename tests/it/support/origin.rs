//! A real origin for edge tests: an axum server on `127.0.0.1:0` that counts the
//! requests it gets per path. A test says what it answers where:
//!
//! ```ignore
//! let origin = FakeOrigin::builder()
//!     .route("/cookie", Respond::page().set_cookie())
//!     .route("/hang", Respond::hang())
//!     .start()
//!     .await;
//! ```
//!
//! A route answers for its path and the paths under it (`/reflect` for `/reflect`,
//! `/reflect?x` and `/reflect/1`, not `/reflected`); the first route that matches
//! answers. Anything else gets `Respond::page()`: a small HTML page naming the path
//! and query, the version and the request count, or `posted` to a POST.
//!
//! While the test runs: `set_version` changes the version pages (and ETags) name;
//! `set_failing` turns every page into a 500; `hold()` makes every GET and HEAD wait
//! until `release()` (`hold_only(prefix)`: those under a prefix), other methods pass.
//! `arrived` is notified when a request comes in, so tests wait for events, not for
//! time.
//!
//! `Builder::start_tls` serves the same behind TLS (`support::tls::serve`, a
//! certificate from a test CA) and keeps each handshake's outcome (`handshakes`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the origin answers on a route.
#[derive(Clone, Debug)]
pub enum Respond {
    /// The page, as configured.
    Page(Page),
    /// Never answers.
    Hang,
    /// `Vary: Accept-Language`, and a body naming the language asked for.
    VaryLanguage,
    /// What a real app that trusts its request renders: the path and query it got,
    /// the host it believes it is (`X-Forwarded-Host`, else `Host`), the client
    /// (`X-Forwarded-For`), the scheme (`X-Forwarded-Proto`), every other forwarding
    /// or override header, the `session` cookie's user ("hello alice", with no
    /// `Set-Cookie`, as apps do once logged in) and `Authorization`. An override
    /// (`X-HTTP-Method-Override`, `X-Original-URL`, `X-Rewrite-URL`) routes it
    /// elsewhere: 404, as an app would.
    Reflect,
    /// `Cache-Control: max-age=60, private="set-cookie"` with a `Set-Cookie`
    /// (`visitor=<n>`), and a `Connection`-named `X-Hop` header.
    Withheld,
}

/// The origin's page: `<p>path=… version=… n=…</p>` in HTML (`posted` to a POST),
/// 200 unless the origin is failing.
#[derive(Clone, Debug, Default)]
pub struct Page {
    status: Option<StatusCode>,
    headers: Vec<(HeaderName, HeaderValue)>,
    set_cookie: bool,
    etag: bool,
    padding: usize,
}

impl Respond {
    /// The page, 200, with no caching headers: see the `Page` methods for more.
    pub fn page() -> Page {
        Page::default()
    }

    pub fn hang() -> Respond {
        Respond::Hang
    }

    pub fn vary_language() -> Respond {
        Respond::VaryLanguage
    }

    pub fn reflect() -> Respond {
        Respond::Reflect
    }

    pub fn withheld() -> Respond {
        Respond::Withheld
    }
}

impl Page {
    pub fn status(mut self, status: StatusCode) -> Page {
        self.status = Some(status);
        self
    }

    pub fn header(mut self, name: HeaderName, value: &'static str) -> Page {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// `Set-Cookie: session=<n>`, `n` the request count for the path.
    pub fn set_cookie(mut self) -> Page {
        self.set_cookie = true;
        self
    }

    /// `ETag: "v<version>"`, and a bodiless 304 when `If-None-Match` names it; both
    /// answers carry `X-Origin-N: <n>`, so a test sees whose headers were kept.
    pub fn etag(mut self) -> Page {
        self.etag = true;
        self
    }

    /// `"launch day "` `times` times after the paragraph (11 bytes each).
    pub fn padded(mut self, times: usize) -> Page {
        self.padding = times;
        self
    }
}

impl From<Page> for Respond {
    fn from(page: Page) -> Respond {
        Respond::Page(page)
    }
}

pub struct Builder {
    routes: Vec<(String, Respond)>,
}

impl Builder {
    /// Answers `path`, and the paths under it, with `respond`.
    pub fn route(mut self, path: &str, respond: impl Into<Respond>) -> Builder {
        assert!(path.starts_with('/'), "{path}: a route is a path");
        self.routes.push((path.to_string(), respond.into()));
        self
    }

    pub async fn start(self) -> FakeOrigin {
        self.serve(None)
    }

    /// The origin behind TLS with `tls`: its `url` is `https://127.0.0.1:port`.
    pub async fn start_tls(self, tls: Arc<rustls::ServerConfig>) -> FakeOrigin {
        self.serve(Some(tls))
    }

    fn serve(self, tls: Option<Arc<rustls::ServerConfig>>) -> FakeOrigin {
        // SO_REUSEPORT, so that `stop` can keep the port (see there).
        let socket = port_socket();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(1024).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState {
            routes: self.routes,
            version: AtomicU64::new(1),
            ..OriginState::default()
        });
        let app = Router::new().fallback(answer).with_state(state.clone());
        let stop = CancellationToken::new();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = match tls {
            Some(tls) => {
                let st = state.clone();
                super::tls::serve(listener, tls, app, stop.clone(), move |h| {
                    st.handshakes.lock().push(h);
                    st.arrived.notify_waiters();
                })
            }
            None => {
                let s = stop.clone();
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(s.cancelled_owned())
                        .await
                        .unwrap();
                })
            }
        };
        FakeOrigin {
            addr,
            scheme,
            state,
            stop,
            task: Some(task),
            tombstone: None,
        }
    }
}

/// A TCP socket with SO_REUSEPORT, not yet bound.
fn port_socket() -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket
}

#[derive(Default)]
struct OriginState {
    routes: Vec<(String, Respond)>,
    counts: Mutex<HashMap<String, u64>>,
    not_modified: AtomicU64,
    version: AtomicU64,
    last_headers: Mutex<HeaderMap>,
    headers_by_path: Mutex<HashMap<String, HeaderMap>>,
    held: AtomicBool,
    held_prefix: Mutex<String>,
    failing: AtomicBool,
    gate: Mutex<Option<watch::Sender<bool>>>,
    arrived: Notify,
    /// TLS only: every handshake's outcome, in order.
    handshakes: Mutex<Vec<super::tls::Handshake>>,
}

impl OriginState {
    fn respond(&self, path: &str) -> Respond {
        self.routes
            .iter()
            .find(|(route, _)| {
                path.strip_prefix(route.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|(_, respond)| respond.clone())
            .unwrap_or_else(|| Respond::page().into())
    }
}

pub struct FakeOrigin {
    pub addr: SocketAddr,
    /// `http`, or `https` behind TLS.
    scheme: &'static str,
    state: Arc<OriginState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// After `stop`: the port, bound and not listening.
    tombstone: Option<socket2::Socket>,
}

impl FakeOrigin {
    pub fn builder() -> Builder {
        Builder { routes: Vec::new() }
    }

    /// An origin that answers every path with the page.
    pub async fn start() -> FakeOrigin {
        FakeOrigin::builder().start().await
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// TLS only: the handshakes so far, each the server name the client sent or the
    /// server's error.
    pub fn handshakes(&self) -> Vec<super::tls::Handshake> {
        self.state.handshakes.lock().clone()
    }

    /// TLS only: waits until `n` handshakes in all have been tried.
    pub async fn wait_handshakes(&self, n: usize) -> Vec<super::tls::Handshake> {
        loop {
            let notified = self.state.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let seen = self.handshakes();
            if seen.len() >= n {
                return seen;
            }
            notified.await;
        }
    }

    /// Requests seen for `path` (path and query as sent).
    pub fn count(&self, path: &str) -> u64 {
        self.state.counts.lock().get(path).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.state.counts.lock().values().sum()
    }

    /// 304s answered (`Page::etag`).
    pub fn not_modified(&self) -> u64 {
        self.state.not_modified.load(Ordering::SeqCst)
    }

    /// The version pages and ETags name from now on (1 at the start).
    pub fn set_version(&self, version: u64) {
        self.state.version.store(version, Ordering::SeqCst);
    }

    /// While set, every page is a 500.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
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

    /// The headers of the last request, whatever its path.
    pub fn last_headers(&self) -> HeaderMap {
        self.state.last_headers.lock().clone()
    }

    /// The headers of the last request for exactly `path` (path and query).
    pub fn headers_of(&self, path: &str) -> Option<HeaderMap> {
        self.state.headers_by_path.lock().get(path).cloned()
    }

    /// Stops accepting and closes its connections. The port stays bound (not
    /// listening) while this lives, so connections to it are refused: the tests run
    /// in one process, and a freed port could be the next one a test's server binds.
    pub async fn stop(&mut self) {
        let tombstone = port_socket();
        tombstone.bind(&self.addr.into()).unwrap();
        self.tombstone = Some(tombstone);
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
    let b = Response::builder().header(header::CONTENT_TYPE, "text/html; charset=utf-8");
    let page = match s.respond(req.uri().path()) {
        Respond::Page(page) => page,
        Respond::Hang => std::future::pending().await,
        Respond::Reflect => return reflect(&req, &path),
        Respond::Withheld => {
            return b
                .header(header::CACHE_CONTROL, "max-age=60, private=\"set-cookie\"")
                .header(header::SET_COOKIE, format!("visitor={n}"))
                .header(header::CONNECTION, "x-hop")
                .header("x-hop", "secret")
                .body(Body::from(format!("<p>withheld n={n}</p>")))
                .unwrap();
        }
        Respond::VaryLanguage => {
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
    };
    let mut b = b;
    if page.set_cookie {
        b = b.header(header::SET_COOKIE, format!("session={n}"));
    }
    for (name, value) in &page.headers {
        b = b.header(name, value);
    }
    if page.etag {
        let tag = format!("\"v{version}\"");
        b = b
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
    if s.failing.load(Ordering::SeqCst) {
        b = b.status(StatusCode::INTERNAL_SERVER_ERROR);
    } else if let Some(status) = page.status {
        b = b.status(status);
    }
    if req.method() == Method::POST {
        return b.body(Body::from("posted")).unwrap();
    }
    let padding = "launch day ".repeat(page.padding);
    b.body(Body::from(format!(
        "<html><body><p>path={path} version={version} n={n}</p>{padding}</body></html>"
    )))
    .unwrap()
}

/// The `Respond::reflect` page: what a trusting app renders from its request.
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
