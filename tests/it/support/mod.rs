//! Test support: the real appliance on `127.0.0.1:0` with a temp data dir, and a
//! small HTTP client on hyper. No fixed ports, no sleeps for timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

pub mod binary;
pub mod browser;
pub mod edge;
pub mod nats;
pub mod origin;
pub mod pebble;
pub mod receiver;
pub mod recorder;
pub mod tls;
pub mod tools;

use launchguard::app::{self, Options, Running};
use launchguard::clock::Clock;
use launchguard::config::Config;
use launchguard::ingest::webhook::signature::{sign_producthunt, sign_standard, Key};
use launchguard::secrets::Env;

pub const SECRET: &str = "test-secret-current";
pub const OLD_SECRET: &str = "test-secret-previous";

/// The test config: loopback port 0 listeners, the data dir given, the demo site.
pub fn config(data_dir: &Path) -> Config {
    let mut c = Config::parse("").expect("defaults are valid");
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    c.server.data_dir = data_dir.to_path_buf();
    c.origin.static_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/site");
    c.webhook.secrets = vec![SECRET.into(), OLD_SECRET.into()];
    // The disk alert reads the machine's real disk: a test box that is 90% full
    // would add "Disk filling" to every test that counts alert messages. (The alert
    // itself is tested pure, in ops::alerts.)
    c.alerts.disk_free_percent = 0.0;
    c
}

pub struct TestServer {
    pub running: Option<Running>,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub clock: Clock,
    pub client: Client,
    /// Its share of the process's metrics recorder (`recorder`), given back last.
    _recorder: recorder::Share,
}

impl TestServer {
    /// Starts with the test config, after `tweak` has had its say.
    pub async fn start(
        data_dir: &Path,
        clock: Clock,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        TestServer::start_with(data_dir, clock, |_| {}, tweak).await
    }

    /// As [`TestServer::start`], after `options` has had its say about the app's
    /// options too (the background loops' periods).
    pub async fn start_with(
        data_dir: &Path,
        clock: Clock,
        options: impl FnOnce(&mut Options),
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let share = recorder::share().await;
        let mut c = config(data_dir);
        tweak(&mut c);
        let mut opts = Options {
            clock: clock.clone(),
            env: Env::default(),
            ..Options::default()
        };
        options(&mut opts);
        let running = app::start(c, opts).await.expect("the test server starts");
        TestServer {
            public: running.public_addr,
            admin: running.admin_addr,
            running: Some(running),
            clock,
            client: Client::new(),
            _recorder: share,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn state(&self) -> &launchguard::app::AppState {
        &self.running.as_ref().expect("running").state
    }

    /// An event body stamped with this server's clock, as a sender would send it now.
    pub fn event(&self, id: &str, kind: &str) -> Vec<u8> {
        event_at(id, kind, self.clock.now_ms())
    }

    /// Posts `body` to the webhook path signed with `secret` (Product Hunt scheme).
    pub async fn webhook(&self, body: &[u8], secret: &str) -> Resp {
        let sig = sign_producthunt(&Key::parse(secret).unwrap(), body);
        self.client
            .send(
                Method::POST,
                &self.url("/webhooks/producthunt"),
                &[
                    ("x-producthunt-signature", &sig),
                    ("content-type", "application/json"),
                ],
                body.to_vec(),
            )
            .await
    }

    /// Posts `body` signed with the Standard Webhooks scheme.
    pub async fn std_webhook(&self, id: &str, ts: u64, body: &[u8], secret: &str) -> Resp {
        let sig = sign_standard(&Key::parse(secret).unwrap(), id, ts, body);
        let ts = ts.to_string();
        self.client
            .send(
                Method::POST,
                &self.url("/webhooks/producthunt"),
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &sig),
                ],
                body.to_vec(),
            )
            .await
    }

    /// Waits until the pump has applied everything pushed so far.
    pub async fn pumped(&self) {
        // Bounded by time, not by a count of yields: on a busy machine the pump's
        // task may not run for a while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if self.state().ring.depth() == 0 {
                // One more round trip through the pump: it drains, then publishes.
                tokio::task::yield_now().await;
                if self.state().ring.depth() == 0 {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pump did not drain the ring in 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Pins the scale factor through the admin API for `for_secs`.
    pub async fn pin(&self, factor: f64, for_secs: u64) {
        let r = self
            .client
            .send(
                Method::POST,
                &self.admin_url("/admin/factor"),
                &[("content-type", "application/json")],
                format!(r#"{{"pin": {factor}, "for_secs": {for_secs}}}"#).into_bytes(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }

    pub async fn stop(mut self) {
        self.running
            .take()
            .expect("running")
            .shutdown()
            .await
            .expect("clean shutdown");
    }
}

/// A Product Hunt-style event body sent at `now_ms`: its `created_at` (the signed time
/// launchguard checks against `webhook.tolerance_secs`) is that moment.
pub fn event_at(id: &str, kind: &str, now_ms: u64) -> Vec<u8> {
    let created_at = launchguard::ingest::webhook::payload::created_at(now_ms);
    format!(
        r#"{{"id":"{id}","event_type":"{kind}","created_at":"{created_at}","data":{{"post":"tidepool"}}}}"#
    )
    .into_bytes()
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let res = self
            .inner
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, url: &str) -> Resp {
        self.send(Method::GET, url, &[], Vec::new()).await
    }
}
