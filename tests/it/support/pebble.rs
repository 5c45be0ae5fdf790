//! A real ACME server for the tests: Debian's `pebble` with `pebble-challtestsrv` as
//! its DNS (every name resolves to 127.0.0.1), on free loopback ports, with a
//! listener certificate from a [`TestCa`] (the Debian package ships none). Both
//! processes are killed when the [`Pebble`] is dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::TestCa;
use super::tools::require_tool;

/// A loopback port free at the time of asking (for a child process to bind).
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 up on Linux), which every `bind(0)`
    // and every outgoing connection of the parallel tests draws from: a port picked
    // there could be taken by one of them before the server that is told it binds.
    // Here only another `free_port` could take it, and the pick is random.
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::UNIX_EPOCH
                .elapsed()
                .unwrap()
                .as_nanos(),
        );
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

pub struct Pebble {
    children: Vec<Child>,
    /// `tls.acme_directory`.
    pub directory: String,
    /// The CA that signed pebble's listener certificate: `tls.acme_ca_file`.
    pub ca_file: PathBuf,
    pub ca: TestCa,
    /// Pebble's management interface (`/roots/0`: the root of what it issues).
    pub management: std::net::SocketAddr,
    log: PathBuf,
    /// Where it validates: launchguard's `tls.http_listen` and `tls.listen` ports.
    pub ports: Ports,
    /// How pebble itself was started, for [`Pebble::restart`].
    command: (PathBuf, PathBuf, u16, u16),
}

/// Where pebble validates: HTTP-01 on `http_port`, TLS-ALPN-01 on `tls_port`, both on
/// 127.0.0.1; certificates valid `validity_secs`.
#[derive(Clone)]
pub struct Ports {
    pub http_port: u16,
    pub tls_port: u16,
    pub validity_secs: u64,
    /// External account binding required, with this key id and base64url HMAC key.
    pub eab: Option<(String, String)>,
}

impl Ports {
    /// Free ports, certificates valid an hour, no account binding.
    pub fn free() -> Ports {
        Ports {
            http_port: free_port(),
            tls_port: free_port(),
            validity_secs: 3_600,
            eab: None,
        }
    }
}

impl Pebble {
    /// Starts both, or `None` (skipped with a note) when pebble is not installed
    /// outside CI; under CI a missing pebble fails (`tools::require_tool`).
    pub fn start(dir: &Path, ports: Ports) -> Option<Pebble> {
        let pebble = require_tool(&["pebble"], "pebble")?;
        let challtestsrv = require_tool(&["pebble-challtestsrv"], "pebble")?;
        let ca = TestCa::new("pebble listener test CA");
        let files = ca.issue_files(&["localhost", "127.0.0.1"], dir, "pebble-listener");
        let ca_file = ca.write_pem(dir, "pebble-listener-ca.pem");
        let (acme, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": files.cert_file,
                "privateKey": files.key_file,
                "httpPort": ports.http_port,
                "tlsPort": ports.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": ports.eab.is_some(),
                "externalAccountMACKeys": ports.eab.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
                "certificateValidityPeriod": ports.validity_secs,
            }
        });
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut children = Vec::new();
        children.push(
            Command::new(challtestsrv)
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv starts"),
        );
        drop(out);
        let mut p = Pebble {
            children,
            directory: format!("https://127.0.0.1:{acme}/dir"),
            ca_file,
            ca,
            management: format!("127.0.0.1:{mgmt}").parse().unwrap(),
            log,
            ports,
            command: (pebble, config_file, dns, acme),
        };
        wait_listening(dns_mgmt, "pebble-challtestsrv");
        p.spawn_pebble();
        Some(p)
    }

    fn spawn_pebble(&mut self) {
        let (pebble, config_file, dns, acme) = &self.command;
        let out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .unwrap();
        self.children.push(
            Command::new(pebble)
                .arg("-config")
                .arg(config_file)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("pebble starts"),
        );
        wait_listening(*acme, "pebble");
        wait_listening(self.management.port(), "pebble's management interface");
    }

    /// Kills pebble and starts it again on the same ports: it comes back with a new
    /// root and no memory of accounts, orders or certificates (pebble keeps nothing).
    pub fn restart(&mut self) {
        let mut old = self.children.pop().expect("pebble runs");
        let _ = old.kill();
        let _ = old.wait();
        self.spawn_pebble();
    }

    /// Pebble's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The PEM root that pebble's certificates chain to (`GET /roots/0`).
    pub async fn root_pem(&self) -> String {
        let (_, r) = super::tls::get(
            self.ca.client_config(&[b"http/1.1"]),
            self.management,
            "127.0.0.1",
            "/roots/0",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
