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
