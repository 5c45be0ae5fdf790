//! The cluster's two benchmarks (issue 16), on loopback, as a plain `main` (the bench
//! target has `harness = false`). It starts everything it uses itself (a
//! `nats-server -js` with its store in a temp dir, release launchguard nodes with
//! their configs and stores in temp dirs), on 127.0.0.1 only, and stops all of it
//! (by its own children's handles) when a run ends, fails or times out.
//!
//! ```text
//! cargo build --release
//! cargo bench --bench cluster -- latency [--runs 5] [--rate 20] [--duration 30s]
//! cargo bench --bench loadgen --no-run        # prints the loadgen executable's path
//! cargo bench --bench cluster -- ingest --loadgen PATH [--rounds 5] [--duration 10s] \
//!     [--connections 50] [--peers 2] [--server-cpu 0] [--load-cpu 1]
//! ```
//!
//! `latency`: three nodes A, B and C and one NATS server. Signed upvotes are sent to
//! A one at a time, `--rate` a second for `--duration`; while each is in flight, C's
//! `GET /admin/factor` is polled back to back on one keep-alive connection until its
//! `velocity` is above the value read just before the send. The window is made longer
//! than the run (`velocity.window_secs = 300`), so every event raises C's velocity and
//! none leaves it. Per event it records: from the send to the end of the first poll
//! that shows C's window moved (**send→C**, an upper bound: the change happened
//! during that poll or before it, after the poll before it began), A's 202 (**send→202**),
//! and the difference (**202→C**, negative when C's window moved before A's 202 was
//! read). The velocity and the factor are published together by C's pump; the run
//! also counts the polls where the factor had not moved with the velocity (it is
//! under its cap: `velocity.gain = 0.01`). With `--controls`, each cluster run is
//! followed by two controls at the same pace: `alone` (one node, no `[cluster]`, its
//! 202s: the local fsync) and `jetstream` (the NATS server alone: a publish of a
//! record's size with a `Nats-Msg-Id` to a file-stored stream, timed to its ack).
//!
//! `ingest`: the HTTP ingest method of BENCHMARKS.md ("Reproducing the HTTP runs":
//! `loadgen`, c=50, P=1, fsync group commit, the node on `--server-cpu` and the load
//! generator on `--load-cpu`) against one node alone (no `[cluster]`) and against
//! node A of a cluster (a NATS server and `--peers` other nodes, all on the load
//! generator's core, so A's core is A's alone, as on its own box). The two cells
//! alternate in each round (off, on; then on, off), so both see the same noise.
//! After each cluster run it reads how many events A published and how many each peer
//! stored, so a run whose replication fell behind shows it.
//!
//! `--peers-dir DIR` (either mode) keeps the stores of the NATS server and of every
//! node but A under DIR (e.g. `/dev/shm`), so that only A writes to the disk, as if
//! the others were on boxes of their own.
//!
//! Without a mode (as under a plain `cargo bench`) it prints its usage and exits 0.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use launchguard::ingest::webhook::signature::{sign_producthunt, Key, PRODUCTHUNT_HEADER};

#[path = "support/args.rs"]
mod args;
use args::parse_duration;

const USAGE: &str = "usage: cargo bench --bench cluster -- latency [--runs 5] [--rate 20] \
[--duration 30s] [--controls] [--peers-dir DIR] [--durability fsync|buffered] [--bin PATH] | ingest --loadgen PATH [--rounds 5] [--duration 10s] \
[--connections 50] [--peers 2] [--server-cpu 0] [--load-cpu 1] [--peers-dir DIR] \
[--durability fsync|buffered] [--bin PATH]";

const SECRET: &str = "bench-secret";
const WEBHOOK_PATH: &str = "/webhooks/producthunt";

/// How long a node or the NATS server may take to listen.
const START_WITHIN: Duration = Duration::from_secs(20);
/// How long one event may take to reach C before the run fails.
const REACH_WITHIN: Duration = Duration::from_secs(5);
/// How long one request of this bench may take.
const REQUEST_WITHIN: Duration = Duration::from_secs(10);

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------- arguments

enum Mode {
    Latency,
    Ingest,
}

struct Args {
    mode: Mode,
    bin: PathBuf,
    runs: usize,
    rate: u32,
    duration: Duration,
    loadgen: Option<PathBuf>,
    /// `latency --controls`: after each cluster run, the two controls.
    controls: bool,
    /// Where the NATS server and the nodes but A keep their stores (`--peers-dir`).
    peers_dir: Option<PathBuf>,
    connections: usize,
    peers: usize,
    server_cpu: String,
    load_cpu: String,
    /// Every node's `webhook.durability` (`--durability`, default fsync).
    durability: String,
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Res<Option<Args>> {
    let mut mode = None;
    let mut bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/launchguard");
    let mut runs = None;
    let mut rate = 20u32;
    let mut duration = None;
    let mut loadgen = None;
    let mut controls = false;
    let mut peers_dir = None;
    let mut connections = 50usize;
    let mut peers = 2usize;
    let mut server_cpu = "0".to_string();
    let mut load_cpu = "1".to_string();
    let mut durability = "fsync".to_string();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: expected a whole number, got {v:?}"))
        };
        match name.as_str() {
            // cargo passes `--bench` to every bench target.
            "--bench" => {}
            "-h" | "--help" => return Ok(None),
            "latency" => mode = Some(Mode::Latency),
            "ingest" => mode = Some(Mode::Ingest),
            "--bin" => bin = PathBuf::from(value("--bin")?),
            "--runs" | "--rounds" => runs = Some(number(&name, value(&name)?)?),
            "--rate" => rate = number("--rate", value("--rate")?)? as u32,
            "--duration" => duration = Some(parse_duration(&value("--duration")?)?),
            "--controls" => controls = true,
            "--peers-dir" => peers_dir = Some(PathBuf::from(value("--peers-dir")?)),
            "--loadgen" => loadgen = Some(PathBuf::from(value("--loadgen")?)),
            "--connections" => connections = number("--connections", value("--connections")?)?,
            "--peers" => peers = number("--peers", value("--peers")?)?,
            "--server-cpu" => server_cpu = value("--server-cpu")?,
            "--load-cpu" => load_cpu = value("--load-cpu")?,
            "--durability" => {
                durability = value("--durability")?;
                if durability != "fsync" && durability != "buffered" {
                    return Err(format!(
                        "--durability: expected fsync or buffered, got {durability:?}"
                    ));
                }
            }
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            // A positional argument is a filter from `cargo bench X`.
            _ => {}
        }
    }
    let Some(mode) = mode else {
        return Ok(None);
    };
    let duration = duration.unwrap_or(match mode {
        Mode::Latency => Duration::from_secs(30),
        Mode::Ingest => Duration::from_secs(10),
    });
    if matches!(mode, Mode::Ingest) && loadgen.is_none() {
        return Err("ingest needs --loadgen PATH (cargo bench --bench loadgen --no-run)".into());
    }
    if rate == 0 || duration.is_zero() || connections == 0 {
        return Err("--rate, --duration and --connections must be above zero".into());
    }
    if !bin.is_file() {
        return Err(format!(
            "no launchguard binary at {}: run `cargo build --release` first, or pass --bin",
            bin.display()
        ));
    }
    Ok(Some(Args {
        durability,
        mode,
        bin,
        runs: runs.unwrap_or(5).max(1),
        rate,
        duration,
        loadgen,
        controls,
        peers_dir,
        connections,
        peers,
        server_cpu,
        load_cpu,
    }))
}

// ---------------------------------------------------------------- processes

/// A child process of this bench: killed and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn check_alive(&mut self, log: &Path) -> Res<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited ({status}): {}", self.name, tail(log))),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The warnings and errors the nodes logged: how many, and the first of each node.
fn warnings(setup: &Setup) -> String {
    setup
        .nodes
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let bad: Vec<&str> = text
                .lines()
                // The alerts' own log lines (the launch's first engagement) are not
                // trouble.
                .filter(|l| {
                    (l.contains("WARN") || l.contains("ERROR")) && !l.contains("ops::alerts")
                })
                .collect();
            match bad.first() {
                None => format!("{}: no warnings", n.name),
                Some(first) => format!(
                    "{}: {} warnings, the first: {}",
                    n.name,
                    bad.len(),
                    first.chars().take(240).collect::<String>()
                ),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// `cmd`, under `taskset -c cpus` when `cpus` is given.
fn command(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn wait_listening(proc: &mut Proc, addr: SocketAddr, log: &Path) -> Res<()> {
    let deadline = Instant::now() + START_WITHIN;
    loop {
        if StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        proc.check_alive(log)?;
        if Instant::now() > deadline {
            return Err(format!("{} did not listen on {addr}", proc.name));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Debian's `nats-server` (in /usr/sbin, often not on a user's PATH).
fn find_nats() -> Res<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "nats-server is not installed (Debian: apt-get install nats-server); \
             the cluster benchmarks need it"
                .to_string()
        })
}

fn start_nats(dir: &Path, cpus: Option<&str>) -> Res<(Proc, String)> {
    let binary = find_nats()?;
    let port = free_port()?;
    let store = dir.join("nats");
    std::fs::create_dir_all(&store).map_err(|e| e.to_string())?;
    let log = dir.join("nats.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = command(&binary, cpus)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let mut proc = Proc {
        name: "nats-server".into(),
        child,
    };
    wait_listening(&mut proc, SocketAddr::from(([127, 0, 0, 1], port)), &log)?;
    Ok((proc, format!("nats://127.0.0.1:{port}")))
}

struct Node {
    name: String,
    public: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    /// Its process id (`taskset` execs the node: the same process).
    pid: u32,
    /// Held for its `Drop`: the node stops with its `Node`.
    _proc: Proc,
}

fn start_node(
    bin: &Path,
    dir: &Path,
    name: &str,
    nats_url: Option<&str>,
    cpus: Option<&str>,
    durability: &str,
) -> Res<Node> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let public = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut toml = format!(
        "[server]\nlisten = \"{public}\"\nadmin_listen = \"{admin}\"\ndata_dir = {:?}\n\n\
         [webhook]\nsecrets = [\"{SECRET}\"]\ndurability = \"{durability}\"\n\n\
         [velocity]\nwindow_secs = 300\ngain = 0.01\n",
        dir.join("state").display().to_string()
    );
    if let Some(url) = nats_url {
        let _ = write!(
            toml,
            "\n[cluster]\nnats_url = \"{url}\"\nnode_id = \"{name}\"\n"
        );
    }
    let config = dir.join("launchguard.toml");
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let log = dir.join("server.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = command(bin, cpus)
        .arg("--config")
        .arg(&config)
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut proc = Proc {
        name: format!("node {name}"),
        child,
    };
    wait_listening(&mut proc, public, &log)?;
    wait_listening(&mut proc, admin, &log)?;
    Ok(Node {
        name: name.into(),
        public,
        admin,
        log,
        pid: proc.child.id(),
        _proc: proc,
    })
}

/// A NATS server and nodes "a", "b", ... (none when `nodes` is 1 and `nats` false).
struct Setup {
    // Dropped in order: the nodes first, then the NATS server, then the temp dir.
    nodes: Vec<Node>,
    _nats: Option<Proc>,
    _dir: tempfile::TempDir,
    _peers_dir: Option<tempfile::TempDir>,
}

/// Starts the NATS server (when `nats`) and one node per entry of `node_cpus`. The
/// first node's store is in a temp dir of the system's; the NATS server's and the
/// other nodes' too, or under `peers_dir` when given (e.g. a tmpfs, so that only
/// the first node writes to the disk).
fn start_setup(
    bin: &Path,
    nats: bool,
    node_cpus: &[Option<&str>],
    nats_cpus: Option<&str>,
    peers_dir: Option<&Path>,
    durability: &str,
) -> Res<Setup> {
    let temp = |within: Option<&Path>| {
        let mut b = tempfile::Builder::new();
        b.prefix("launchguard-cluster-bench");
        match within {
            Some(d) => b.tempdir_in(d),
            None => b.tempdir(),
        }
        .map_err(|e| format!("no temp dir: {e}"))
    };
    let dir = temp(None)?;
    let peers = match peers_dir {
        Some(d) => Some(temp(Some(d))?),
        None => None,
    };
    let peers_path = peers.as_ref().map_or(dir.path(), |p| p.path());
    let (nats, url) = if nats {
        let (p, url) = start_nats(peers_path, nats_cpus)?;
        (Some(p), Some(url))
    } else {
        (None, None)
    };
    let mut nodes = Vec::new();
    for (i, cpus) in node_cpus.iter().enumerate() {
        let name = ((b'a' + i as u8) as char).to_string();
        let within = if i == 0 { dir.path() } else { peers_path };
        nodes.push(start_node(
            bin,
            within,
            &name,
            url.as_deref(),
            *cpus,
            durability,
        )?);
    }
    Ok(Setup {
        nodes,
        _nats: nats,
        _dir: dir,
        _peers_dir: peers,
    })
}

// ---------------------------------------------------------------- HTTP

type Sender = http1::SendRequest<Full<Bytes>>;

struct Conn {
    addr: SocketAddr,
    sender: Sender,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Res<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { addr, sender })
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Res<(u16, Bytes)> {
        let addr = self.addr;
        tokio::time::timeout(REQUEST_WITHIN, self.send_now(req))
            .await
            .map_err(|_| format!("{addr}: no answer within {REQUEST_WITHIN:?}"))?
    }

    async fn send_now(&mut self, req: Request<Full<Bytes>>) -> Res<(u16, Bytes)> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// Posts one signed upvote with `id`; the status.
    async fn webhook(&mut self, key: &Key, id: &str) -> Res<u16> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let created_at = launchguard::ingest::webhook::payload::created_at(now_ms);
        let body = Bytes::from(format!(
            r#"{{"id":"{id}","event_type":"upvote","created_at":"{created_at}","data":{{"post":{{"id":"tidepool"}}}}}}"#
        ));
        let sig = sign_producthunt(key, &body);
        let req = Request::builder()
            .method(Method::POST)
            .uri(WEBHOOK_PATH)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(PRODUCTHUNT_HEADER, sig)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.send(req).await?;
        if status != 202 {
            return Err(format!(
                "webhook {id}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(status)
    }

    async fn get(&mut self, path: &str) -> Res<Bytes> {
        let req = Request::builder()
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.send(req).await?;
        if status != 200 {
            return Err(format!("GET {path}: {status}"));
        }
        Ok(body)
    }

    /// The node's (velocity, factor) from `GET /admin/factor`.
    async fn factor(&mut self) -> Res<(f64, f64)> {
        let body = self.get("/admin/factor").await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("/admin/factor: {e}"))?;
        match (v["velocity"].as_f64(), v["factor"].as_f64()) {
            (Some(vel), Some(f)) => Ok((vel, f)),
            _ => Err(format!(
                "/admin/factor: no velocity or factor in {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// Of the histogram `name` on the node's `/metrics` (summed over its labels):
    /// how many observations in all, and how many above each of `les` (seconds, each
    /// one of its bucket bounds).
    async fn histogram_over(&mut self, name: &str, les: &[&str]) -> Res<(u64, Vec<u64>)> {
        let body = self.get("/metrics").await?;
        let text = String::from_utf8_lossy(&body);
        let value = |l: &str| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        };
        let count: u64 = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with("_count"))
            })
            .map(value)
            .sum();
        let over = les
            .iter()
            .map(|le| {
                let label = format!("le=\"{le}\"");
                let under: u64 = text
                    .lines()
                    .filter(|l| {
                        l.strip_prefix(name)
                            .is_some_and(|r| r.starts_with("_bucket") && r.contains(&label))
                    })
                    .map(value)
                    .sum();
                count.saturating_sub(under)
            })
            .collect();
        Ok((count, over))
    }

    /// A counter of the node's `/metrics` with a `result` label, 0 when absent.
    async fn counter(&mut self, name: &str, result: &str) -> Res<u64> {
        let body = self.get("/metrics").await?;
        let text = String::from_utf8_lossy(&body);
        let label = format!("result=\"{result}\"");
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum())
    }
}

// ---------------------------------------------------------------- statistics

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

struct Pcts {
    p50: f64,
    p99: f64,
    max: f64,
}

fn pcts(mut ns: Vec<i64>) -> Pcts {
    ns.sort_unstable();
    Pcts {
        p50: ms(percentile(&ns, 50.0)),
        p99: ms(percentile(&ns, 99.0)),
        max: ms(ns.last().copied().unwrap_or(0)),
    }
}

// ---------------------------------------------------------------- latency

struct LatencyRun {
    n: usize,
    send_to_c: Pcts,
    send_to_202: Pcts,
    ack_to_c: Pcts,
    poll_rtt_p50_us: f64,
    factor_lagged: usize,
    /// Each CPU's busy share over the run (this bench's polling included).
    busy: String,
    /// The slowest 202s, ms.
    slowest: String,
}

/// Sends upvotes to A until every other node's window has moved: the consumers are
/// up and the stream exists.
async fn wait_replicating(key: &Key, a: &mut Conn, others: &mut [Conn], run: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        a.webhook(key, &format!("warm-{run}-{i}")).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut all = true;
        for c in others.iter_mut() {
            all &= c.factor().await?.0 > 0.0;
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the other nodes' windows never moved: is replication running?".into());
        }
    }
    Ok(())
}

/// What a latency run measures.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Three nodes: A's 202 and C's window.
    Cluster,
    /// One node, no `[cluster]`: its 202s only.
    Alone,
    /// The NATS server alone: a JetStream publish of the same size, to its ack.
    JetStream,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Alone => "alone",
            Kind::JetStream => "jetstream",
        }
    }
}

async fn latency_run(args: &Args, kind: Kind, run: usize) -> Res<LatencyRun> {
    if kind == Kind::JetStream {
        return jetstream_run(args).await;
    }
    let nodes: &[Option<&str>] = if kind == Kind::Alone {
        &[None]
    } else {
        &[None, None, None]
    };
    let setup = start_setup(
        &args.bin,
        kind == Kind::Cluster,
        nodes,
        None,
        args.peers_dir.as_deref(),
        &args.durability,
    )?;
    let key = Key::parse(SECRET).map_err(|e| e.to_string())?;
    let tag = format!(
        "{}-{run}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut a = Conn::open(setup.nodes[0].public).await?;
    let mut others = Vec::new();
    for n in &setup.nodes[1..] {
        others.push(Conn::open(n.admin).await?);
    }
    wait_replicating(&key, &mut a, &mut others, &tag).await?;
    let mut c_admin = others.pop();
    drop(others);
    // Let the warm-up's batches settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let n = (args.duration.as_secs_f64() * args.rate as f64).round() as usize;
    let (mut send_to_c, mut send_to_202, mut ack_to_c, mut rtts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut factor_lagged = 0;
    let before = cpu_snap();
    let start = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let id = format!("bench-{tag}-{i}");
        let Some(c_admin) = c_admin.as_mut() else {
            let sent = Instant::now();
            a.webhook(&key, &id).await?;
            send_to_202.push(sent.elapsed().as_nanos() as i64);
            continue;
        };
        let (v0, f0) = c_admin.factor().await?;
        let sent = Instant::now();
        let post = async {
            a.webhook(&key, &id).await?;
            Ok::<Instant, String>(Instant::now())
        };
        let watch = async {
            loop {
                let asked = Instant::now();
                let (v, f) = c_admin.factor().await?;
                let answered = Instant::now();
                if v > v0 {
                    return Ok::<_, String>((answered, answered - asked, f != f0));
                }
                if answered - sent > REACH_WITHIN {
                    return Err(format!(
                        "event {id} did not reach C within {REACH_WITHIN:?}"
                    ));
                }
            }
        };
        let (acked, seen) = tokio::join!(post, watch);
        let (acked, (seen, rtt, factor_moved)) = (acked?, seen?);
        send_to_c.push((seen - sent).as_nanos() as i64);
        send_to_202.push((acked - sent).as_nanos() as i64);
        ack_to_c.push(if seen >= acked {
            (seen - acked).as_nanos() as i64
        } else {
            -((acked - seen).as_nanos() as i64)
        });
        rtts.push(rtt.as_nanos() as i64);
        if !factor_moved {
            factor_lagged += 1;
        }
    }
    let mut busy = cpu_busy(&before, &cpu_snap());
    // What A's own histograms saw: its group commits (write + fsync) and its
    // webhook handler, each over 10 and 25 ms.
    let mut a_admin = Conn::open(setup.nodes[0].admin).await?;
    for (what, name) in [
        ("flushes", "launchguard_commit_duration_seconds"),
        ("webhooks", "launchguard_webhook_duration_seconds"),
    ] {
        let (n, over) = a_admin.histogram_over(name, &["0.01", "0.025"]).await?;
        let _ = write!(
            busy,
            "; A's {what} {n}, over 10 ms {}, over 25 ms {}",
            over[0], over[1]
        );
    }
    let _ = write!(busy, "; {}", warnings(&setup));
    drop(setup);
    Ok(latency_result(
        n,
        send_to_c,
        send_to_202,
        ack_to_c,
        rtts,
        factor_lagged,
        busy,
    ))
}

fn latency_result(
    n: usize,
    send_to_c: Vec<i64>,
    send_to_202: Vec<i64>,
    ack_to_c: Vec<i64>,
    rtts: Vec<i64>,
    factor_lagged: usize,
    busy: String,
) -> LatencyRun {
    let slowest = {
        let mut s = send_to_202.clone();
        s.sort_unstable();
        s.iter()
            .rev()
            .take(8)
            .map(|ns| format!("{:.1}", ms(*ns)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rtt = pcts(rtts);
    LatencyRun {
        n,
        send_to_c: pcts(send_to_c),
        send_to_202: pcts(send_to_202),
        ack_to_c: pcts(ack_to_c),
        poll_rtt_p50_us: rtt.p50 * 1000.0,
        factor_lagged,
        busy,
        slowest,
    }
}

/// The control for JetStream's share of A's 202: a publish of a record's size with
/// a `Nats-Msg-Id`, to a file-stored stream with the events stream's duplicate
/// window, paced as the webhooks are, timed to its ack (in `send_to_202`).
async fn jetstream_run(args: &Args) -> Res<LatencyRun> {
    let dir = tempfile::Builder::new()
        .prefix("launchguard-cluster-bench")
        .tempdir()
        .map_err(|e| format!("no temp dir: {e}"))?;
    let (nats, url) = start_nats(dir.path(), None)?;
    let client = async_nats::connect(url.as_str())
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(86_400),
        max_age: Duration::from_secs(2 * 86_400),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create the stream: {e}"))?;
    let payload = Bytes::from(vec![b'x'; 200]);
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let n = (args.duration.as_secs_f64() * args.rate as f64).round() as usize;
    let mut acks = Vec::with_capacity(n);
    let before = cpu_snap();
    let start = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("bench-{i}").as_str(),
        );
        let sent = Instant::now();
        let ack = tokio::time::timeout(REQUEST_WITHIN, async {
            js.publish_with_headers("bench.a", headers, payload.clone())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| format!("no ack within {REQUEST_WITHIN:?}"))?;
        ack?;
        acks.push(sent.elapsed().as_nanos() as i64);
    }
    let busy = cpu_busy(&before, &cpu_snap());
    drop(js);
    drop(nats);
    Ok(latency_result(
        n,
        Vec::new(),
        acks,
        Vec::new(),
        Vec::new(),
        0,
        busy,
    ))
}

async fn latency(args: &Args) -> Res<()> {
    let kinds: &[Kind] = if args.controls {
        &[Kind::Cluster, Kind::Alone, Kind::JetStream]
    } else {
        &[Kind::Cluster]
    };
    println!(
        "cluster latency on 127.0.0.1: {} upvotes/s to A for {:?}, durability {}, {} runs of: {}",
        args.rate,
        args.duration,
        args.durability,
        args.runs,
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut runs: Vec<(Kind, LatencyRun)> = Vec::new();
    for run in 1..=args.runs {
        for &kind in kinds {
            let r = latency_run(args, kind, run).await?;
            println!(
                "run {run} {}: n={} send->C p50 {:.3} ms p99 {:.3} ms max {:.3} ms | send->202 p50 {:.3} p99 {:.3} max {:.3} | 202->C p50 {:.3} p99 {:.3} max {:.3} | poll rtt p50 {:.0} us | factor behind velocity {} | {} | slowest 202s (ms) {}",
                kind.name(), r.n, r.send_to_c.p50, r.send_to_c.p99, r.send_to_c.max,
                r.send_to_202.p50, r.send_to_202.p99, r.send_to_202.max,
                r.ack_to_c.p50, r.ack_to_c.p99, r.ack_to_c.max,
                r.poll_rtt_p50_us, r.factor_lagged, r.busy, r.slowest
            );
            runs.push((kind, r));
        }
    }
    for &kind in kinds {
        let med = |f: &dyn Fn(&LatencyRun) -> f64| {
            median_f(
                &runs
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, r)| f(r))
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "MEDIAN {}: send->C p50 {:.3} ms p99 {:.3} ms max {:.3} ms | send->202 p50 {:.3} p99 {:.3} max {:.3} | 202->C p50 {:.3} p99 {:.3} max {:.3} | poll rtt p50 {:.0} us",
            kind.name(),
            med(&|r| r.send_to_c.p50),
            med(&|r| r.send_to_c.p99),
            med(&|r| r.send_to_c.max),
            med(&|r| r.send_to_202.p50),
            med(&|r| r.send_to_202.p99),
            med(&|r| r.send_to_202.max),
            med(&|r| r.ack_to_c.p50),
            med(&|r| r.ack_to_c.p99),
            med(&|r| r.ack_to_c.max),
            med(&|r| r.poll_rtt_p50_us),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- ingest

/// Busy and total jiffies per CPU, from /proc/stat.
fn cpu_snap() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// The CPU time (user and system) process `pid` has used, from /proc/<pid>/stat
/// (in clock ticks of 10 ms, Linux's USER_HZ): what node A spends, whatever else
/// shares its core.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, maybe with spaces): the
    // state is field 3, utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let tick = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Duration::from_millis(10 * (tick(14).unwrap_or(0) + tick(15).unwrap_or(0)))
}

fn cpu_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, (b, a))| {
            let total = (a.1 - b.1).max(1);
            format!("cpu{i} {:.0}%", 100.0 * (a.0 - b.0) as f64 / total as f64)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct IngestRun {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Node A's CPU time per answered event.
    a_cpu_us: f64,
    detail: String,
}

async fn ingest_run(args: &Args, cluster: bool, round: usize) -> Res<IngestRun> {
    let load = Some(args.load_cpu.as_str());
    let server = Some(args.server_cpu.as_str());
    let mut cpus = vec![server];
    if cluster {
        cpus.extend(std::iter::repeat_n(load, args.peers));
    }
    let setup = start_setup(
        &args.bin,
        cluster,
        &cpus,
        load,
        args.peers_dir.as_deref(),
        &args.durability,
    )?;
    let key = Key::parse(SECRET).map_err(|e| e.to_string())?;
    let tag = format!(
        "{}{}r{round}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        if cluster { "on" } else { "off" }
    );
    let a = &setup.nodes[0];
    let mut a_conn = Conn::open(a.public).await?;
    let mut a_admin = Conn::open(a.admin).await?;
    let mut peers = Vec::new();
    for n in &setup.nodes[1..] {
        peers.push(Conn::open(n.admin).await?);
    }
    if cluster {
        wait_replicating(&key, &mut a_conn, &mut peers, &tag).await?;
        // With no peers: wait until A's outbox has had JetStream's ack.
        let deadline = Instant::now() + Duration::from_secs(30);
        while a_admin
            .counter("launchguard_cluster_published_total", "stored")
            .await?
            == 0
        {
            if Instant::now() > deadline {
                return Err("node a never published to JetStream".into());
            }
            a_conn.webhook(&key, &format!("warm-{tag}-p")).await.ok();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        a_conn.webhook(&key, &format!("warm-{tag}")).await?;
    }
    drop(a_conn);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let loadgen = args.loadgen.as_deref().expect("checked");
    let before = cpu_snap();
    let a_before = process_cpu(a.pid);
    let out = command(loadgen, Some(&args.load_cpu))
        .arg("--url")
        .arg(format!("http://{}{WEBHOOK_PATH}", a.public))
        .args(["--secret", SECRET, "--connections"])
        .arg(args.connections.to_string())
        .arg("--duration")
        .arg(format!("{}ms", args.duration.as_millis()))
        .args(["--threads", "1", "--run", &tag])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", loadgen.display()))?;
    let busy = cpu_busy(&before, &cpu_snap());
    let a_cpu = process_cpu(a.pid).saturating_sub(a_before);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .ok_or_else(|| {
            format!(
                "loadgen printed no RESULT: {} {}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let field = |name: &str| -> f64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0.0)
    };
    let (rps, n, other, errors) = (field("rps"), field("n"), field("other"), field("errors"));
    if other > 0.0 || errors > 0.0 {
        return Err(format!("not every answer was a 202: {result}"));
    }
    let a_cpu_us = a_cpu.as_secs_f64() * 1e6 / n.max(1.0);
    let mut detail = format!(
        "{busy}; {n:.0} answered; a's cpu {:.2} s, {a_cpu_us:.1} us an event",
        a_cpu.as_secs_f64()
    );
    if cluster {
        let published = a_admin
            .counter("launchguard_cluster_published_total", "stored")
            .await?;
        let _ = write!(detail, "; a published {published}");
        // How far behind each peer is when the load stops, and how long it takes to
        // catch up (at most 60 s).
        for (node, conn) in setup.nodes[1..].iter().zip(peers.iter_mut()) {
            let stopped = Instant::now();
            let behind = published.saturating_sub(
                conn.counter("launchguard_cluster_replicated_total", "stored")
                    .await?,
            );
            let mut stored = 0;
            while stopped.elapsed() < Duration::from_secs(60) {
                stored = conn
                    .counter("launchguard_cluster_replicated_total", "stored")
                    .await?;
                if stored >= published {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = write!(
                detail,
                "; {} behind by {behind} at the end, holds {stored} after {:.1} s",
                node.name,
                stopped.elapsed().as_secs_f64()
            );
        }
    }
    let _ = write!(detail, "; {}", warnings(&setup));
    drop(setup);
    Ok(IngestRun {
        rps,
        p50_us: field("p50_us"),
        p99_us: field("p99_us"),
        a_cpu_us,
        detail,
    })
}

async fn ingest(args: &Args) -> Res<()> {
    println!(
        "cluster ingest: loadgen c={} for {:?}, {}, node on cpu {}, loadgen{} on cpu {}, {} rounds",
        args.connections,
        args.duration,
        args.durability,
        args.server_cpu,
        if args.peers > 0 {
            format!(", nats-server and {} peers", args.peers)
        } else {
            ", nats-server".into()
        },
        args.load_cpu,
        args.runs
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=args.runs {
        let order = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for cluster in order {
            let r = ingest_run(args, cluster, round).await?;
            println!(
                "round {round} cluster {}: {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({})",
                if cluster { "on " } else { "off" },
                r.rps,
                r.p50_us / 1000.0,
                r.p99_us / 1000.0,
                r.detail
            );
            if cluster { &mut on } else { &mut off }.push(r);
        }
    }
    let med = |v: &[IngestRun], f: &dyn Fn(&IngestRun) -> f64| {
        median_f(&v.iter().map(f).collect::<Vec<_>>())
    };
    let (off_rps, on_rps) = (med(&off, &|r| r.rps), med(&on, &|r| r.rps));
    let ratios: Vec<String> = off
        .iter()
        .zip(&on)
        .map(|(a, b)| format!("{:.2}", b.rps / a.rps))
        .collect();
    println!(
        "MEDIAN off {:.0} req/s p99 {:.2} ms | on {:.0} req/s p99 {:.2} ms | on/off {:.2} (per round: {}) | a's cpu an event: off {:.1} us, on {:.1} us",
        off_rps,
        med(&off, &|r| r.p99_us) / 1000.0,
        on_rps,
        med(&on, &|r| r.p99_us) / 1000.0,
        on_rps / off_rps,
        ratios.join(" "),
        med(&off, &|r| r.a_cpu_us),
        med(&on, &|r| r.a_cpu_us)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = find_nats() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.mode {
            Mode::Latency => latency(&args).await,
            Mode::Ingest => ingest(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
