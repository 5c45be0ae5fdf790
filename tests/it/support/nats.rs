//! A real NATS server with JetStream for the cluster tests: Debian's `nats-server -js`
//! on a free loopback port with its store in a temp dir. Killed when dropped;
//! `restart` stops it and starts it again on the same port and store.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pebble::free_port;
use super::tools::require_tool;

pub struct Nats {
    child: Option<Child>,
    binary: PathBuf,
    store: PathBuf,
    pub port: u16,
}

impl Nats {
    /// Starts `nats-server -js` with its store under `dir`; `None` (a skip) outside CI
    /// when the package is not installed.
    pub fn start(dir: &Path) -> Option<Nats> {
        let binary = require_tool(&["nats-server"], "nats-server")?;
        let mut nats = Nats {
            child: None,
            binary,
            store: dir.join("nats"),
            port: free_port(),
        };
        nats.spawn();
        Some(nats)
    }

    /// `cluster.nats_url`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.store).unwrap();
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL) and leaves it down.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with the same store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message of stream `stream` on the server at `url`, as (stream seq,
/// `Nats-Msg-Id`, `Launchguard-Node`): what a failing cluster test prints to tell a
/// message that never reached the stream from one a consumer did not store.
pub async fn census(url: &str, stream: &str) -> Result<Vec<(u64, String, String)>, String> {
    use futures_util::StreamExt;
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let last = s
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let consumer = s
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(3), messages.next()).await
    {
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        out.push((seq, header("Nats-Msg-Id"), header("Launchguard-Node")));
        if seq >= last {
            break;
        }
    }
    Ok(out)
}
