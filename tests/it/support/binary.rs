//! The real binary as a child process: a config on loopback port 0 with a temp data
//! dir, and the bound addresses read from its startup log.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_launchguard");

/// Writes `dir/launchguard.toml`: loopback port 0 listeners, `dir/state`, the demo site,
/// the webhook `secret`. `webhook_extra` is appended inside `[webhook]` (and may open
/// further sections).
pub fn write_config(dir: &Path, secret: &str, webhook_extra: &str) -> PathBuf {
    let config = dir.join("launchguard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             [origin]\nstatic_dir = {:?}\n[webhook]\nsecrets = [\"{secret}\"]\n{webhook_extra}",
            dir.join("state"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/site"),
        ),
    )
    .unwrap();
    config
}

/// A running binary and the addresses it bound.
pub struct Proc {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// `tls.listen`'s address, when HTTPS is on.
    pub https: Option<SocketAddr>,
}

/// Starts `launchguard serve --config config` with `envs` set (and the process's own
/// secrets and any inherited watchdog pid removed), waits for its "listening" log line and reads both addresses.
pub fn spawn(config: &Path, envs: &[(&str, &OsStr)]) -> Proc {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("LAUNCHGUARD_WEBHOOK_SECRET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("WATCHDOG_PID")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addrs = None;
    for line in lines.by_ref() {
        let line = line.expect("stderr is readable");
        if line.contains("launchguard listening") {
            let field = |name: &str| -> SocketAddr {
                let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
                line[start..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let https = line
                .find("https=")
                .map(|i| line[i + 6..].split_whitespace().next().unwrap())
                .and_then(|v| v.parse().ok());
            addrs = Some((field("public"), field("admin"), https));
            break;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe, into
    // `stderr.log` beside the config, for a failing test to show.
    let log = config.with_file_name("stderr.log");
    std::thread::spawn(move || {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ok();
        for line in lines.map_while(Result::ok) {
            if let Some(f) = out.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let (public, admin, https) = addrs.expect("the binary logged its listeners");
    Proc {
        child,
        public,
        admin,
        https,
    }
}

impl Proc {
    /// Sends `signal` (libc's `SIGHUP`, `SIGTERM`, ...) to the child; false if kill(2)
    /// failed.
    #[allow(unsafe_code)]
    pub fn signal(&self, signal: i32) -> bool {
        // SAFETY: kill(2) takes plain integers; the pid is our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) == 0 }
    }
}
