//! A fake receiver of outbound calls (a Slack incoming webhook, any HTTP endpoint): an
//! axum server on `127.0.0.1:0` that records every request (path, `X-Request-Id`,
//! body) and answers from a script: the next scripted answer, else `fallback`.
//! `Answer::Hold` never answers. `seen` is a watch of the request count, so tests wait
//! for requests, not for time. `Receiver::start_tls` serves the same over TLS
//! (tokio-rustls + hyper) and counts the handshakes that succeeded and failed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16, Vec<(&'static str, String)>),
    Hold,
}

impl Answer {
    pub fn status(code: u16) -> Answer {
        Answer::Status(code, Vec::new())
    }
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub request_id: Option<String>,
    pub body: Bytes,
}

pub struct ReceiverState {
    pub script: Mutex<VecDeque<Answer>>,
    pub fallback: Mutex<Answer>,
    pub requests: Mutex<Vec<Seen>>,
    pub seen: watch::Sender<usize>,
    /// TLS only: handshakes completed and failed (with the server's error for each).
    pub handshakes: watch::Sender<Handshakes>,
}

#[derive(Debug, Clone, Default)]
pub struct Handshakes {
    pub ok: usize,
    pub failed: Vec<String>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<ReceiverState>,
    stop: CancellationToken,
    scheme: &'static str,
}

fn new_state() -> Arc<ReceiverState> {
    Arc::new(ReceiverState {
        script: Mutex::new(VecDeque::new()),
        fallback: Mutex::new(Answer::status(200)),
        requests: Mutex::new(Vec::new()),
        seen: watch::channel(0).0,
        handshakes: watch::channel(Handshakes::default()).0,
    })
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener)
    }

    /// Serves on a given listener (to come back on the same port).
    pub fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let state = new_state();
        let app = Router::new().fallback(answer).with_state(state.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Receiver {
            addr,
            state,
            stop,
            scheme: "http",
        }
    }

    /// The same receiver behind TLS with `tls` (a certificate from a test CA): every
    /// connection is a rustls handshake, then HTTP/1.1 on hyper.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = new_state();
        let app = Router::new().fallback(answer).with_state(state.clone());
        let stop = CancellationToken::new();
        let st = state.clone();
        super::tls::serve(listener, tls, app, stop.clone(), move |handshake| {
            st.handshakes.send_modify(|h| match handshake {
                Ok(_) => h.ok += 1,
                Err(e) => h.failed.push(e),
            })
        });
        Receiver {
            addr,
            state,
            stop,
            scheme: "https",
        }
    }

    /// `http://127.0.0.1:port/path`, or `https://` for a TLS receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// TLS handshakes so far.
    pub fn handshakes(&self) -> Handshakes {
        self.state.handshakes.borrow().clone()
    }

    /// Waits until at least `n` TLS handshakes have failed (bounded).
    pub async fn wait_for_failed_handshakes(&self, n: usize) -> Handshakes {
        let mut rx = self.state.handshakes.subscribe();
        let seen = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            rx.wait_for(|h| h.failed.len() >= n),
        )
        .await
        .unwrap_or_else(|_| panic!("only {:?} handshakes", self.handshakes()))
        .unwrap()
        .clone();
        seen
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.script.lock().extend(answers);
    }

    pub fn set_fallback(&self, answer: Answer) {
        *self.state.fallback.lock() = answer;
    }

    pub fn count(&self) -> usize {
        *self.state.seen.borrow()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().clone()
    }

    /// Waits until at least `n` requests have arrived (bounded, so a bug fails the
    /// test instead of hanging it).
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.state.seen.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(30), rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} requests arrived", self.count()))
            .unwrap();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(State(state): State<Arc<ReceiverState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let next = state.script.lock().pop_front();
    let answer = next.unwrap_or_else(|| state.fallback.lock().clone());
    state.requests.lock().push(Seen {
        path,
        request_id,
        body,
    });
    state.seen.send_modify(|n| *n += 1);
    match answer {
        Answer::Hold => std::future::pending().await,
        Answer::Status(code, headers) => {
            let mut res = (StatusCode::from_u16(code).unwrap(), "answer").into_response();
            for (k, v) in headers {
                res.headers_mut().insert(k, v.parse().unwrap());
            }
            res
        }
    }
}
