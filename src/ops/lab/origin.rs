//! The lab's origin: a small site on `127.0.0.1:0` with a stated capacity. It takes
//! `concurrency` requests at once, answers each after `latency` (a slow app), and
//! answers `503` at once to any request beyond that (an app that fails above its
//! capacity). It counts what it served and refused, so the lab can put the origin's
//! load beside its capacity.
//!
//! Pages are HTML without caching headers (launchguard's dynamic lifetime applies),
//! assets carry their content type, `POST /api/signup` answers a thank-you page.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use tokio_util::sync::CancellationToken;

/// What the origin can take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub concurrency: usize,
    pub latency: Duration,
}

impl Capacity {
    /// Requests a second it can serve: `concurrency / latency`.
    pub fn rps(&self) -> f64 {
        self.concurrency as f64 / self.latency.as_secs_f64().max(1e-3)
    }
}

#[derive(Default)]
struct Counts {
    inflight: AtomicUsize,
    served: AtomicU64,
    refused: AtomicU64,
}

struct Shared {
    capacity: Capacity,
    counts: Counts,
}

/// The running origin; `stop` ends it.
pub struct Origin {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Requests served and refused so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub served: u64,
    pub refused: u64,
}

impl Origin {
    /// Binds `127.0.0.1:0` and serves.
    pub async fn start(capacity: Capacity) -> std::io::Result<Origin> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            capacity,
            counts: Counts::default(),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Ok(Origin {
            addr,
            shared,
            stop,
            task,
        })
    }

    /// Reads what it served and refused so far.
    pub fn counter(&self) -> impl Fn() -> Served + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || Served {
            served: shared.counts.served.load(Ordering::Relaxed),
            refused: shared.counts.refused.load(Ordering::Relaxed),
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Gives the in-flight slot back however the answer ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn answer(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let counts = &shared.counts;
    let before = counts.inflight.fetch_add(1, Ordering::Relaxed);
    let _slot = Slot(&counts.inflight);
    if before >= shared.capacity.concurrency {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "origin over capacity\n".into(),
        );
    }
    tokio::time::sleep(shared.capacity.latency).await;
    counts.served.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    if req.method() == axum::http::Method::POST {
        return plain(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<p>Thanks for signing up.</p>".into(),
        );
    }
    let content_type = match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("svg") => "image/svg+xml",
        _ => "text/html; charset=utf-8",
    };
    // About 4 KB, as a small page or asset.
    let body = format!("<!-- {path} -->\n{}\n", "launch ".repeat(580));
    plain(StatusCode::OK, content_type, body)
}

fn plain(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    res
}
