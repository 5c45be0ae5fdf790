//! A small HTTP load generator for the webhook endpoint, on hyper (a plain `main`:
//! the bench target has `harness = false`).
//!
//! ```text
//! cargo bench --bench loadgen -- --url http://127.0.0.1:8080/webhooks/producthunt \
//!     --secret S --connections 50 --duration 10s
//! ```
//!
//! Each connection is its own keep-alive HTTP/1.1 connection with one request in
//! flight at a time (like `redis-benchmark -c 50 -P 1`). Every request is a signed
//! (`X-ProductHunt-Signature`) upvote of about 300 bytes with a unique id
//! `lg-<run>-<conn>-<n>`, so none is a duplicate. Bodies are built and signed before
//! the request's clock starts. At the end it prints requests/s, counts per status and
//! the p50/p99/max latency (every latency is kept and sorted; no HdrHistogram).
//!
//! Without `--url` (as when `cargo bench` runs every bench target with `--bench`) it
//! prints its usage and exits 0 at once.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use launchguard::ingest::webhook::signature::{sign_producthunt, Key, PRODUCTHUNT_HEADER};

#[path = "support/args.rs"]
mod args;
use args::parse_duration;

const USAGE: &str =
    "usage: cargo bench --bench loadgen -- --url http://HOST:PORT/PATH --secret SECRET \
[--connections 50] [--duration 10s] [--warmup 0s] [--threads 1] [--run ID] [--event-type upvote] \
[--timeout 30s]";

struct Args {
    url: Uri,
    secret: String,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    threads: usize,
    run: String,
    event_type: String,
    timeout: Duration,
}

enum Parsed {
    Run(Box<Args>),
    Usage,
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut url = None;
    let mut secret = None;
    let mut connections = 50usize;
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::ZERO;
    let mut threads = 1usize;
    let mut run = None;
    let mut event_type = "upvote".to_string();
    let mut timeout = Duration::from_secs(30);
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        // `--name=value` or `--name value`.
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
        match name.as_str() {
            // cargo passes `--bench` to every bench target; libtest's filters too.
            "--bench" => {}
            "-h" | "--help" => return Ok(Parsed::Usage),
            "--url" => {
                let v = value("--url")?;
                url = Some(v.parse::<Uri>().map_err(|e| format!("--url {v:?}: {e}"))?);
            }
            "--secret" => secret = Some(value("--secret")?),
            "-c" | "--connections" => {
                connections = value("--connections")?
                    .parse()
                    .map_err(|_| "--connections: expected a whole number".to_string())?
            }
            "-d" | "--duration" => duration = parse_duration(&value("--duration")?)?,
            "--warmup" => warmup = parse_duration(&value("--warmup")?)?,
            "--timeout" => timeout = parse_duration(&value("--timeout")?)?,
            "--threads" => {
                threads = value("--threads")?
                    .parse()
                    .map_err(|_| "--threads: expected a whole number".to_string())?
            }
            "--run" => run = Some(value("--run")?),
            "--event-type" => event_type = value("--event-type")?,
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            // A positional argument is a libtest/criterion filter from `cargo bench X`.
            _ => {}
        }
    }
    let Some(url) = url else {
        return Ok(Parsed::Usage);
    };
    if url.scheme_str() != Some("http") {
        return Err("--url: only http:// URLs are supported".into());
    }
    if url.host().is_none() {
        return Err("--url: no host".into());
    }
    let secret = secret.ok_or("--secret is required with --url")?;
    if connections == 0 || threads == 0 {
        return Err("--connections and --threads must be at least 1".into());
    }
    if duration.is_zero() {
        return Err("--duration must be above zero".into());
    }
    let run = run.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}{:03}", t.as_secs(), t.subsec_millis())
    });
    Ok(Parsed::Run(Box::new(Args {
        url,
        secret,
        connections,
        duration,
        warmup,
        threads,
        run,
        event_type,
        timeout,
    })))
}

/// A Product Hunt style event of about 300 bytes.
fn body(id: &str, event_type: &str) -> Bytes {
    // Stamped as it is sent: launchguard refuses a Product Hunt-signed body whose
    // created_at is not within webhook.tolerance_secs of its clock.
    let created_at = launchguard::ingest::webhook::payload::created_at(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    );
    Bytes::from(format!(
        concat!(
            r#"{{"id":"{}","event_type":"{}","created_at":"{}","#,
            r#""data":{{"post":{{"id":"tidepool","name":"Tidepool","#,
            r#""tagline":"Tide tables for people who surf before work"}},"#,
            r#""user":{{"id":"u-81723","username":"early-riser","#,
            r#""headline":"Maker of small tools"}},"vote":{{"weight":1,"source":"web"}}}}}}"#
        ),
        id, event_type, created_at
    ))
}

#[derive(Default)]
struct Stats {
    /// Latencies of the requests sent after the warmup, nanoseconds.
    latencies: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    reconnects: u64,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.latencies.extend(other.latencies);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        self.reconnects += other.reconnects;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> Result<Sender, String> {
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
    Ok(sender)
}

struct Target {
    addr: String,
    authority: String,
    path: String,
}

async fn one_request(
    sender: &mut Sender,
    target: &Target,
    sig: &str,
    body: Bytes,
) -> Result<u16, String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(PRODUCTHUNT_HEADER, sig)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    res.into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok(status)
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    conn: usize,
    mut sender: Sender,
    target: std::sync::Arc<Target>,
    key: Key,
    run: std::sync::Arc<str>,
    event_type: std::sync::Arc<str>,
    measure_from: Instant,
    deadline: Instant,
    timeout: Duration,
) -> Stats {
    let mut stats = Stats {
        latencies: Vec::with_capacity(64 * 1024),
        ..Stats::default()
    };
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let b = body(&format!("lg-{run}-{conn}-{n}"), &event_type);
        let sig = sign_producthunt(&key, &b);
        let started = Instant::now();
        let result =
            match tokio::time::timeout(timeout, one_request(&mut sender, &target, &sig, b)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
        let elapsed = started.elapsed();
        let counted = started >= measure_from;
        match result {
            Ok(status) => {
                if counted {
                    stats.latencies.push(elapsed.as_nanos() as u64);
                    *stats.statuses.entry(status).or_default() += 1;
                }
            }
            Err(e) => {
                if counted {
                    stats.errors += 1;
                }
                if stats.first_error.is_none() {
                    stats.first_error = Some(e);
                }
                // The connection may be gone: open a new one (pause if that fails too).
                match connect(&target.addr).await {
                    Ok(s) => {
                        sender = s;
                        stats.reconnects += 1;
                    }
                    Err(e) => {
                        stats.first_error.get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    stats
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(ns: u64) -> String {
    let us = ns as f64 / 1000.0;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

async fn run(args: Args) -> Result<(), String> {
    let host = args.url.host().expect("checked").to_string();
    let port = args.url.port_u16().unwrap_or(80);
    let target = std::sync::Arc::new(Target {
        addr: format!("{host}:{port}"),
        authority: args
            .url
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone()),
        path: args
            .url
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
    });
    let key = Key::parse(&args.secret).map_err(|e| format!("--secret: {e}"))?;
    let sample = body(&format!("lg-{}-0-1", args.run), &args.event_type);
    println!(
        "loadgen: POST {} connections={} duration={:?} warmup={:?} threads={} run={} body={} bytes",
        args.url,
        args.connections,
        args.duration,
        args.warmup,
        args.threads,
        args.run,
        sample.len()
    );

    // Open every connection before the clock starts.
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(connect(&target.addr).await?);
    }
    let run_id: std::sync::Arc<str> = args.run.as_str().into();
    let event_type: std::sync::Arc<str> = args.event_type.as_str().into();
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let deadline = measure_from + args.duration;
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(connection(
                i,
                s,
                target.clone(),
                key.clone(),
                run_id.clone(),
                event_type.clone(),
                measure_from,
                deadline,
                args.timeout,
            ))
        })
        .collect();
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(
            t.await
                .map_err(|e| format!("a connection task failed: {e}"))?,
        );
    }
    let elapsed = measure_from.elapsed().as_secs_f64();

    let mut lat = std::mem::take(&mut stats.latencies);
    lat.sort_unstable();
    let answered = lat.len() as u64;
    let rps = answered as f64 / elapsed;
    let accepted = stats.statuses.get(&202).copied().unwrap_or(0);
    let other: u64 = stats
        .statuses
        .iter()
        .filter(|(s, _)| **s != 202)
        .map(|(_, n)| n)
        .sum();
    let (p50, p99, max) = (
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
    );
    println!("requests: {answered} answered in {elapsed:.2} s = {rps:.0} req/s");
    let per_status: Vec<String> = stats
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect();
    println!(
        "status: 202={accepted} other={other} ({}) transport errors={} reconnects={}",
        if per_status.is_empty() {
            "none".to_string()
        } else {
            per_status.join(" ")
        },
        stats.errors,
        stats.reconnects
    );
    println!("latency: p50 {} p99 {} max {}", us(p50), us(p99), us(max));
    if let Some(e) = &stats.first_error {
        println!("first error: {e}");
    }
    println!(
        "RESULT rps={rps:.0} n={answered} s202={accepted} other={other} errors={} p50_us={} p99_us={} max_us={}",
        stats.errors,
        p50 / 1000,
        p99 / 1000,
        max / 1000
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(a)) => *a,
        Ok(Parsed::Usage) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
