//! HTTP/1 connections for both listeners: accept, serve with hyper, and park
//! keep-alive connections that wait for their next request.
//!
//! hyper's HTTP/1 server keeps an 8 KiB read buffer and an 8 KiB write buffer for the
//! whole life of a connection. On launch day most of the 15,000 connections a crowd
//! holds open are idle between page views, so a connection here lives in two states:
//!
//! - **active**: a hyper session (`serve_connection`) with its buffers, serving one
//!   or more requests;
//! - **parked**: only the socket and a small task, waiting for the socket to become
//!   readable. No hyper state, no buffers.
//!
//! A session ends and the connection parks when hyper has been idle for
//! [`PARK_AFTER`] and the socket has nothing to read: every response it started has
//! been written and flushed, every request body was read to its end, and no byte has
//! arrived since the last response completed. (Parking on the first empty read cost
//! 14% of throughput at 8 busy connections: a session per request.) [`ParkingIo`] tells hyper "end of stream" at that moment,
//! which hyper treats as the client closing an idle keep-alive connection: it ends the
//! session cleanly (flushing first, then a shutdown that `ParkingIo` skips for a
//! parking session), and the socket goes back to waiting. When bytes arrive, a fresh
//! session reads them.
//!
//! Whatever is uncertain keeps the session open instead (a request body the handler
//! did not read to the end, bytes that arrived after the last response): the
//! connection then behaves exactly as hyper's own keep-alive, buffers included.
//!
//! One case is lost on purpose: a client that pipelines a *partial* second request
//! behind a complete first one, and then stalls, has the connection closed under it
//! once the first response is out. RFC 9112 §9.3.2 asks pipelining clients to retry
//! unanswered requests when a connection closes; browsers do not pipeline.
//!
//! Slow and silent clients: a request's head must arrive within `server.header_timeout_ms`
//! of its first byte (hyper's header timer), a new connection must send within that
//! time too, and a parked connection is closed after `server.keepalive_timeout_secs`,
//! so neither a slowloris nor a client that vanished without a FIN holds a socket for
//! ever.
//!
//! Slow readers: `server.send_timeout_ms` (nginx's `send_timeout`) bounds how long an
//! answer may wait on a client that does not read, at two levels.
//! - In the kernel: every accepted socket gets it as `TCP_USER_TIMEOUT`, so answers
//!   already handed to the kernel that stay unacknowledged (or wait on a closed
//!   window) that long make the kernel abort the connection and free them, parked or
//!   not. The kernel checks at its zero-window probes, which back off, so the abort
//!   comes between one and about two timeouts after the last progress.
//! - In the session: a write that hyper cannot hand to the kernel makes no progress
//!   for the timeout ends the session with an error, and the socket is closed with
//!   a zero linger (a reset), so the kernel drops what it still holds at once.
//!
//! A client that pipelines requests without reading is bounded on the way: hyper
//! reads the next request only once the answer before it is in its write buffer,
//! which holds at most `server.max_header_bytes`; past that and the kernel's socket
//! buffers, the session waits on the write, and the timeout ends it.

//! Shutdown: the listener stops accepting, parked connections close at once, active
//! sessions finish their in-flight request (hyper's graceful shutdown) and close.
//!
//! HTTPS (`tls.listen`, `tls.rs`): the handshake must finish within
//! `server.header_timeout_ms`. HTTP/1.1 over TLS is served and parked exactly as
//! above: a parked TLS connection keeps the socket and the rustls session (its
//! buffers empty) but no hyper state; it parks only once rustls has handed over
//! every byte it decrypted, so the socket is the one place a next request can come
//! from. HTTP/2 (by ALPN) is one hyper session for the connection's life, bounded
//! by [`H2_MAX_STREAMS`] concurrent streams, `server.max_header_bytes` of header
//! list (CONTINUATION floods end at that bound), and hyper's limits on streams the
//! client resets before they are served (CVE-2023-44487) and on streams reset for
//! protocol errors: a client past them gets GOAWAY. An HTTP/2 connection with no
//! request for `server.keepalive_timeout_secs` (`server.header_timeout_ms` before
//! its first) is sent GOAWAY and closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;

use crate::edge::front::Front;
use crate::edge::Scale;
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a session waits, idle between requests, before it parks. A connection in
/// use (a page and its assets, a load generator) keeps its session; one that has gone
/// quiet gives its buffers back a moment later.
pub const PARK_AFTER: Duration = Duration::from_millis(20);

/// Concurrent streams one HTTP/2 connection may have open (a page and its assets).
pub const H2_MAX_STREAMS: u32 = 128;

/// Streams an HTTP/2 client may reset before they are served, pending at once
/// (hyper's bound against rapid reset, CVE-2023-44487); past it, GOAWAY.
pub const H2_MAX_PENDING_RESETS: usize = 20;

/// Streams one HTTP/2 connection may have reset for its protocol errors; past it,
/// GOAWAY.
pub const H2_MAX_ERROR_RESETS: usize = 256;

/// A connection's byte stream: a plain socket, or TLS over one.
pub(crate) trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket underneath: peeked while parked, set to reset on a send timeout.
    fn tcp(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Conn for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Live counts of one listener's connections. A clone is a handle on the same counts.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    parked: AtomicUsize,
    sessions: AtomicUsize,
    /// Accepting is paused at `server.max_connections`.
    paused: AtomicBool,
    /// Times accepting paused since the listener opened.
    pauses: AtomicUsize,
    /// Connections reset because a write made no progress for the send timeout.
    send_timeouts: AtomicUsize,
    /// TLS handshakes that failed or did not finish within the header timeout.
    handshake_failures: AtomicUsize,
    /// Woken when a connection closes, for a paused accept loop.
    closed: tokio::sync::Notify,
}

/// One accepted connection's place in `open`, taken in the accept loop (so the count
/// never runs ahead of the limit) and given back, with a wake-up, when it closes.
struct OpenSlot(Arc<Counts>);

impl OpenSlot {
    fn new(counts: &Arc<Counts>) -> OpenSlot {
        counts.open.fetch_add(1, Relaxed);
        OpenSlot(counts.clone())
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.closed.notify_one();
    }
}

impl Connections {
    pub fn new() -> Connections {
        Connections::default()
    }

    /// Connections accepted and not yet closed.
    pub fn open(&self) -> usize {
        self.inner.open.load(Relaxed)
    }

    /// Open connections waiting for a request with no hyper session (no buffers).
    pub fn parked(&self) -> usize {
        self.inner.parked.load(Relaxed)
    }

    /// hyper sessions started since the listener opened (one per connection, plus one
    /// each time a parked connection wakes up).
    pub fn sessions(&self) -> usize {
        self.inner.sessions.load(Relaxed)
    }

    /// Whether accepting is paused at `server.max_connections` now.
    pub fn paused(&self) -> bool {
        self.inner.paused.load(Relaxed)
    }

    /// Times accepting has paused at `server.max_connections`.
    pub fn pauses(&self) -> usize {
        self.inner.pauses.load(Relaxed)
    }

    /// Connections reset because a write made no progress for `server.send_timeout_ms`.
    pub fn send_timeouts(&self) -> usize {
        self.inner.send_timeouts.load(Relaxed)
    }

    /// TLS handshakes that failed or timed out.
    pub fn handshake_failures(&self) -> usize {
        self.inner.handshake_failures.load(Relaxed)
    }

    /// Sets `launchguard_http_connections{state}` and the accept and send-timeout
    /// metrics from the live counts; called when /metrics is rendered, so connections
    /// cost nothing to count.
    pub fn record_metrics(&self) {
        use crate::telemetry::{
            HTTP_ACCEPT_PAUSED, HTTP_ACCEPT_PAUSES_TOTAL, HTTP_CONNECTIONS,
            HTTP_SEND_TIMEOUTS_TOTAL,
        };
        let open = self.open();
        let parked = self.parked().min(open);
        metrics::gauge!(HTTP_CONNECTIONS, "state" => "active").set((open - parked) as f64);
        metrics::gauge!(HTTP_CONNECTIONS, "state" => "parked").set(parked as f64);
        metrics::gauge!(HTTP_ACCEPT_PAUSED).set(if self.paused() { 1.0 } else { 0.0 });
        metrics::counter!(HTTP_ACCEPT_PAUSES_TOTAL).absolute(self.pauses() as u64);
        metrics::counter!(HTTP_SEND_TIMEOUTS_TOTAL).absolute(self.send_timeouts() as u64);
        metrics::counter!(crate::telemetry::TLS_HANDSHAKE_FAILURES_TOTAL)
            .absolute(self.handshake_failures() as u64);
    }
}

/// Decrements a counter when dropped.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(counter: &'a AtomicUsize) -> Held<'a> {
        counter.fetch_add(1, Relaxed);
        Held(counter)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// How long clients may take, per connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a request's first byte to the end of its head (`server.header_timeout_ms`);
    /// also how long a new connection may stay silent before its first request.
    pub header: Duration,
    /// How long a parked connection waits for its next request
    /// (`server.keepalive_timeout_secs`).
    pub keepalive: Duration,
    /// How long a write may make no progress before the connection is reset
    /// (`server.send_timeout_ms`).
    pub send: Duration,
    /// The largest request head, in bytes (`server.max_header_bytes`); past it hyper
    /// answers 431 and closes.
    pub max_header_bytes: usize,
    /// Open connections at most (`server.max_connections`); at the limit the
    /// listener stops accepting until one closes (the kernel's backlog holds the rest).
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(server: &crate::config::ServerConfig) -> Limits {
        Limits {
            header: Duration::from_millis(server.header_timeout_ms),
            keepalive: Duration::from_secs(server.keepalive_timeout_secs),
            send: Duration::from_millis(server.send_timeout_ms),
            max_header_bytes: server.max_header_bytes,
            max_connections: server.max_connections,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then waits for every
/// connection to end (in-flight requests finish; parked connections close).
///
/// `cut` drops every connection at once, in-flight requests included: what shutdown
/// does when they outlast `server.shutdown_grace_ms`.
pub fn spawn(
    listener: TcpListener,
    site: Site,
    limits: Limits,
    connections: Connections,
    shutdown: CancellationToken,
    cut: CancellationToken,
) -> JoinHandle<()> {
    let Site { router, front, tls } = site;
    tokio::spawn(async move {
        let tracker = TaskTracker::new();
        let counts = connections.inner.clone();
        loop {
            // At the limit, wait for a connection to close before accepting another.
            loop {
                let closed = counts.closed.notified();
                tokio::pin!(closed);
                closed.as_mut().enable();
                if counts.open.load(Relaxed) < limits.max_connections {
                    counts.paused.store(false, Relaxed);
                    break;
                }
                if !counts.paused.swap(true, Relaxed) {
                    counts.pauses.fetch_add(1, Relaxed);
                    tracing::warn!(
                        limit = limits.max_connections,
                        "server.max_connections reached: accepting paused until a connection closes"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = closed => {}
                }
            }
            let accepted = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: the listener is fine, the
                    // box is not. Back off instead of spinning on the same error.
                    tracing::warn!(
                        "accept failed: {e}; retrying in 100 ms (check LimitNOFILE and memory)"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            // Answers already handed to the kernel count too: unacknowledged (or
            // waiting on a closed window) for the send timeout, the kernel aborts the
            // connection and frees them, even while the connection is parked.
            let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(limits.send));
            let routes = Routes {
                router: router.clone(),
                front: front.clone(),
                max_head: limits.max_header_bytes,
                hsts: tls.as_ref().and_then(|t| t.hsts.clone()),
            };
            let open = OpenSlot::new(&counts);
            match &tls {
                None => tracker.spawn(connection(
                    open,
                    stream,
                    peer,
                    routes,
                    limits,
                    shutdown.clone(),
                    cut.clone(),
                    false,
                )),
                Some(tls) => tracker.spawn(tls_connection(
                    open,
                    stream,
                    peer,
                    tls.acceptor.clone(),
                    routes,
                    limits,
                    shutdown.clone(),
                    cut.clone(),
                )),
            };
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
    })
}

/// What a listener serves: its router, behind its front door when it has one (the
/// public listeners), over TLS when it is `tls.listen`.
pub struct Site {
    pub router: Router,
    pub front: Option<Front>,
    pub tls: Option<Tls>,
}

/// What a TLS listener adds to a plain one.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// `Strict-Transport-Security` for every answer (`tls.hsts_max_age_secs`), if any.
    pub hsts: Option<axum::http::HeaderValue>,
}

impl Tls {
    pub fn new(config: Arc<rustls::ServerConfig>, hsts_max_age_secs: u64) -> Tls {
        Tls {
            acceptor: TlsAcceptor::from(config),
            hsts: (hsts_max_age_secs > 0).then(|| {
                axum::http::HeaderValue::from_str(&format!("max-age={hsts_max_age_secs}"))
                    .expect("digits are a header value")
            }),
        }
    }
}

/// One TLS connection: the handshake within `limits.header`, then HTTP/2 or HTTP/1.1
/// by ALPN.
#[allow(clippy::too_many_arguments)]
async fn tls_connection(
    open: OpenSlot,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    routes: Routes,
    limits: Limits,
    shutdown: CancellationToken,
    cut: CancellationToken,
) {
    let handshake = tokio::select! {
        r = tokio::time::timeout(limits.header, acceptor.accept(stream)) => r,
        _ = shutdown.cancelled() => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            open.0.handshake_failures.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            open.0.handshake_failures.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "TLS handshake not finished within server.header_timeout_ms");
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(crate::edge::tls::ALPN_ACME_TLS) {
        // A TLS-ALPN-01 validation: the handshake was the whole exchange (RFC 8737).
        return;
    }
    if tls.get_ref().1.alpn_protocol() == Some(crate::edge::tls::ALPN_H2) {
        open.0.sessions.fetch_add(1, Relaxed);
        Box::pin(h2_session(tls, peer, &routes, limits, &shutdown, &cut)).await;
    } else {
        // The client may have sent its first request with its last handshake flight:
        // rustls may hold it already, so serve before peeking at the socket.
        connection(open, tls, peer, routes, limits, shutdown, cut, true).await;
    }
}

/// One HTTP/2 connection, for its whole life (module docs).
async fn h2_session(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    routes: &Routes,
    limits: Limits,
    shutdown: &CancellationToken,
    cut: &CancellationToken,
) {
    let state = Arc::new(SessionState::default());
    let service = Service {
        router: routes.clone(),
        peer,
        state: state.clone(),
    };
    let mut conn = Box::new(
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
            .serve_connection(TokioIo::new(tls), service),
    );
    let mut draining = false;
    let mut idle_for = limits.header;
    let mut seen = state.calls.load(Relaxed);
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    let result = loop {
        tokio::select! {
            r = &mut *conn => break r,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
            _ = cut.cancelled() => return,
            _ = &mut idle, if !draining => {
                let calls = state.calls.load(Relaxed);
                if calls == seen && state.in_flight.load(Relaxed) == 0 {
                    tracing::debug!(%peer, "closing an idle HTTP/2 connection");
                    draining = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                } else {
                    seen = calls;
                    idle_for = limits.keepalive;
                    idle.as_mut().reset(Instant::now() + idle_for);
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "HTTP/2 connection ended: {e}");
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One TCP connection: park until readable, serve a session, park again. A new
/// connection waits at most `limits.header` for its first byte, a parked one
/// `limits.keepalive`; then it is closed. Parked connections close on `shutdown`; an
/// active session finishes its request, unless `cut` drops it first. (`cut` is
/// watched by the boxed session only: a select around the whole connection made every
/// parked connection's task about 700 bytes bigger.)
///
/// `ready`: serve at once, before peeking (a TLS connection whose first request may
/// already sit decrypted in rustls).
#[allow(clippy::too_many_arguments)]
async fn connection<S: Conn>(
    open: OpenSlot,
    mut stream: S,
    peer: SocketAddr,
    router: Routes,
    limits: Limits,
    shutdown: CancellationToken,
    cut: CancellationToken,
    mut ready: bool,
) {
    let counts = &open.0;
    let mut idle_limit = limits.header;
    loop {
        if !std::mem::take(&mut ready) {
            let _parked = Held::new(&counts.parked);
            // `peek`, not `readable`: a fresh socket reports readable before any
            // byte has come. One byte seen (or the end of the stream) starts a session.
            let mut first = [0u8; 1];
            tokio::select! {
                r = tokio::time::timeout(idle_limit, stream.tcp().peek(&mut first)) => match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        if e.kind() == io::ErrorKind::TimedOut {
                            // The kernel gave up on answers the client never read.
                            counts.send_timeouts.fetch_add(1, Relaxed);
                        }
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "closing an idle connection");
                        return;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
        counts.sessions.fetch_add(1, Relaxed);
        // Boxed, so that a parked connection's task does not carry the size of an
        // active session.
        match Box::pin(session(
            stream, peer, &router, limits, counts, &shutdown, &cut,
        ))
        .await
        {
            Some(s) if !shutdown.is_cancelled() => stream = s,
            _ => return,
        }
        idle_limit = limits.keepalive;
    }
}

/// Serves requests on `stream` until hyper is idle with nothing to read (the stream
/// comes back, to park) or the connection ends (`None`).
async fn session<S: Conn>(
    stream: S,
    peer: SocketAddr,
    router: &Routes,
    limits: Limits,
    counts: &Counts,
    shutdown: &CancellationToken,
    cut: &CancellationToken,
) -> Option<S> {
    let state = Arc::new(SessionState::default());
    let io = ParkingIo {
        io: TokioIo::new(stream),
        state: state.clone(),
        parked: false,
        idle: None,
        send_timeout: limits.send,
        stall: None,
        stall_armed: false,
    };
    let service = Service {
        router: router.clone(),
        peer,
        state: state.clone(),
    };
    let mut conn = Box::new(
        http1::Builder::new()
            .max_buf_size(limits.max_header_bytes)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header)
            .serve_connection(io, service),
    );
    let mut draining = false;
    let result = loop {
        tokio::select! {
            // Polled as a future, not with `poll_without_shutdown`: when hyper is done
            // it then flushes what it still holds before `poll_shutdown`, which
            // `ParkingIo` turns into a no-op for a parking session.
            r = &mut *conn => break r,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
            _ = cut.cancelled() => return None,
        }
    };
    match result {
        Ok(()) => {
            let parts = (*conn).into_parts();
            (parts.io.parked && parts.read_buf.is_empty()).then(|| parts.io.io.into_inner())
        }
        Err(e) => {
            if state.stalled.load(Relaxed) || timed_out(&e) {
                counts.send_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "resetting a connection that read nothing for server.send_timeout_ms");
            } else {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            None
        }
    }
}

/// Whether a session ended on a send timeout the kernel enforced (`TCP_USER_TIMEOUT`).
fn timed_out(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}

/// What one session has seen, shared by its IO and its service. Everything runs on
/// the connection's own task, so relaxed atomics suffice; they are atomics only
/// because hyper asks for `Send` parts.
#[derive(Default)]
struct SessionState {
    /// Requests handed to the router whose response body has not been dropped.
    in_flight: AtomicU32,
    /// Requests handed to the router, ever (an HTTP/2 connection's idle check).
    calls: AtomicU32,
    /// Request bodies that were not read to their end (yet, or ever).
    bodies_open: AtomicU32,
    /// A response has completed in this session.
    served: AtomicBool,
    /// Bytes given to hyper's write path that hyper has not yet flushed: set when a
    /// response completes and on every write, cleared when hyper flushes the socket
    /// (which it does only once its own buffer is empty).
    unflushed: AtomicBool,
    /// Bytes (or end of stream) read since the last response completed.
    read_since_served: AtomicBool,
    /// A write made no progress for the send timeout: the session ended on it.
    stalled: AtomicBool,
}

impl SessionState {
    fn may_park(&self) -> bool {
        self.served.load(Relaxed)
            && self.in_flight.load(Relaxed) == 0
            && self.bodies_open.load(Relaxed) == 0
            && !self.unflushed.load(Relaxed)
            && !self.read_since_served.load(Relaxed)
    }
}

/// The socket as hyper sees it. It reports end of stream, instead of "nothing yet",
/// when the session may park (see the module docs).
struct ParkingIo<S> {
    io: TokioIo<S>,
    state: Arc<SessionState>,
    parked: bool,
    /// Fires `PARK_AFTER` after the last response was flushed; made on first use.
    idle: Option<Pin<Box<Sleep>>>,
    /// `server.send_timeout_ms`.
    send_timeout: Duration,
    /// While a write waits on the client: fires `send_timeout` after the write
    /// first found the socket full. Made on the first stall, kept for the next.
    stall: Option<Pin<Box<Sleep>>>,
    /// `stall` is running: the last write attempt waits on the client.
    stall_armed: bool,
}

impl<S: Conn> ParkingIo<S> {
    /// Starts (or restarts) the idle period: the task is woken at its end, and a read
    /// that finds the socket still empty then parks the connection.
    fn start_idle(&mut self, cx: &mut Context<'_>) {
        let deadline = Instant::now() + PARK_AFTER;
        let idle = match &mut self.idle {
            Some(idle) => {
                idle.as_mut().reset(deadline);
                idle
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        // Registers the waker; the deadline is ahead, so this is Pending.
        let _ = idle.as_mut().poll(cx);
    }

    /// Watches a write: progress (or an error) disarms the stall timer; a write
    /// waiting on the client arms it, and once it fires the write fails with
    /// `TimedOut` and the socket is set to reset on close.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall_armed = false;
            return polled;
        }
        if !self.stall_armed {
            self.stall_armed = true;
            let deadline = Instant::now() + self.send_timeout;
            match &mut self.stall {
                Some(stall) => stall.as_mut().reset(deadline),
                none => *none = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let stall = self.stall.as_mut().expect("armed above");
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.state.stalled.store(true, Relaxed);
        // A reset on close: the kernel drops the unsent answers at once.
        let _ = self.io.inner().tcp().set_zero_linger();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for server.send_timeout_ms",
        )))
    }

    fn idle_over(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle
            .as_mut()
            .is_some_and(|idle| idle.as_mut().poll(cx).is_ready())
    }
}

impl<S: Conn> Read for ParkingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            // Nothing to read, hyper idle for PARK_AFTER: an empty read ends the session.
            Poll::Pending if this.state.may_park() && this.idle_over(cx) => {
                this.parked = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                this.state.read_since_served.store(true, Relaxed);
                ready
            }
        }
    }
}

impl<S: Conn> Write for ParkingIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.state.unflushed.store(true, Relaxed);
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.state.unflushed.store(true, Relaxed);
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if flushed.is_ready() && self.state.unflushed.swap(false, Relaxed) && self.state.may_park()
        {
            // hyper went idle with this flush. It reads again only when woken, and
            // the socket wakes it only when the client sends: the idle timer wakes it
            // at the end of the idle period, and that read parks the connection.
            self.start_idle(cx);
        }
        flushed
    }

    /// hyper calls this when a session ends, after flushing. A parking session keeps
    /// its socket open for the next request; any other end closes our side (FIN).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What a connection serves: the router, behind the listener's front door (the
/// public listener's host and path checks, `front.rs`) when it has one.
#[derive(Clone)]
struct Routes {
    router: Router,
    front: Option<Front>,
    /// `server.max_header_bytes`.
    max_head: usize,
    /// `Strict-Transport-Security` on a TLS listener with `tls.hsts_max_age_secs`.
    hsts: Option<axum::http::HeaderValue>,
}

impl Routes {
    fn with_hsts<B>(&self, mut res: Response<B>) -> Response<B> {
        if let Some(v) = &self.hsts {
            res.headers_mut()
                .insert(axum::http::header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
        res
    }
}

/// The router as a hyper service: adds the peer address (`ConnectInfo`), runs the
/// front door before routing, and tracks request and response bodies for
/// [`SessionState`].
struct Service {
    router: Routes,
    peer: SocketAddr,
    state: Arc<SessionState>,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> ServiceFuture {
        let state = self.state.clone();
        state.in_flight.fetch_add(1, Relaxed);
        state.calls.fetch_add(1, Relaxed);
        let done = Completion(state.clone());
        let mut req = if req.body().is_end_stream() {
            req.map(Body::new)
        } else {
            state.bodies_open.fetch_add(1, Relaxed);
            req.map(|body| {
                Body::new(TrackedIncoming {
                    body,
                    state: Some(state),
                })
            })
        };
        req.extensions_mut().insert(ConnectInfo(self.peer));
        // hyper's buffer bound stops a head that arrives in pieces, but one that comes
        // in a single read can pass it: weigh the parsed head as well.
        if head_size(&req) > self.router.max_head {
            let refusal = crate::error::ApiError::new(
                axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                crate::error::Code::HeadTooLarge,
                format!(
                    "the request line and headers are over server.max_header_bytes ({} bytes)",
                    self.router.max_head
                ),
            )
            .into_response();
            let refusal = self.router.with_hsts(refusal);
            return Box::pin(
                async move { Ok(refusal.map(|body| TrackedBody { body, _done: done })) },
            );
        }
        if let Some(front) = &self.router.front {
            if let Err(refusal) = front.check(&mut req) {
                let refusal = self.router.with_hsts(*refusal);
                return Box::pin(async move {
                    Ok(refusal.map(|body| TrackedBody { body, _done: done }))
                });
            }
        }
        // Every public answer carries the factor its request was served under.
        let scale = req.extensions().get::<Scale>().copied();
        let hsts = self.router.hsts.clone();
        let answer = self.router.router.clone().oneshot(req);
        Box::pin(async move {
            let mut res = match answer.await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            if let Some(v) = scale.and_then(|s| crate::ingest::factor::header_value(s.0)) {
                res.headers_mut()
                    .insert(crate::ingest::factor::SCALE_FACTOR_HEADER, v);
            }
            if let Some(v) = hsts {
                res.headers_mut()
                    .insert(axum::http::header::STRICT_TRANSPORT_SECURITY, v);
            }
            Ok(res.map(|body| TrackedBody { body, _done: done }))
        })
    }
}

/// The bytes of a request's head as sent: request line and header lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len() + 8)
        + 12;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// Marks a response complete when dropped: hyper drops the body once it has put the
/// last byte in its write buffer (or when the request is abandoned).
struct Completion(Arc<SessionState>);

impl Drop for Completion {
    fn drop(&mut self) {
        let s = &self.0;
        s.read_since_served.store(false, Relaxed);
        s.unflushed.store(true, Relaxed);
        s.served.store(true, Relaxed);
        s.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A response body that reports its completion when hyper drops it.
pub struct TrackedBody {
    body: Body,
    _done: Completion,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that reports when it has been read to its end. One dropped before
/// that leaves the session unable to park: hyper still has to drain or refuse the
/// rest, and only hyper knows where it ends.
struct TrackedIncoming {
    body: Incoming,
    state: Option<Arc<SessionState>>,
}

impl TrackedIncoming {
    fn finish(&mut self) {
        if let Some(state) = self.state.take() {
            state.bodies_open.fetch_sub(1, Relaxed);
        }
    }
}

impl HttpBody for TrackedIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
