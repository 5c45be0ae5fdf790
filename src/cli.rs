//! The command line: `serve` (the default), `sign`, `preflight`, `report`, `warm`,
//! `simulate`, `lab`.
//!
//! Exit codes: 0 on success, 2 for a configuration or usage error (the message names
//! the key), 1 for anything else.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{self, Options, StartError};
use crate::config::Config;
use crate::ingest::webhook::signature::{self, Key};
use crate::ops::preflight;
use crate::ops::systemd;
use crate::secrets::Env;
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "launchguard",
    version,
    about = "Launch-day edge: signed webhooks in, a scale factor out, one binary"
)]
pub struct Cli {
    /// Config file (TOML). Without one, every key takes its default: the demo.
    #[arg(long, global = true, env = "LAUNCHGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the appliance (the default).
    Serve,
    /// Print the signature header(s) for a webhook body read from --file or stdin.
    Sign(SignArgs),
    /// Print a launch day from the store (run it while the server is stopped).
    Report(crate::insight::analytics::ReportArgs),
    /// The night-before checklist: config, secret, disk, file limits, origin,
    /// listeners, launch day. Exits 1 if any check fails.
    Preflight(PreflightArgs),
    /// Fill the running edge cache: POST /admin/warm on the admin listener.
    Warm(WarmArgs),
    /// Replay a launch curve (webhooks per minute) against a running launchguard.
    Simulate(SimulateArgs),
    /// Rehearse a launch: replay a curve's webhooks and visitors against launchguard
    /// (started here, on 127.0.0.1) in front of a local origin of a stated capacity,
    /// each feature off and on; print a table and write a chart.
    Lab(LabArgs),
}

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// CSV of minute,upvotes,comments,maker_comments (and `# lab.burst` lines).
    #[arg(long, default_value = "data/curves/seed-spike.csv")]
    pub curve: PathBuf,
    /// Launch seconds played in one real second.
    #[arg(long, default_value_t = 30.0)]
    pub speed: f64,
    /// Offered requests a second (real, on this machine) at the curve's busiest second.
    #[arg(long, default_value_t = 400.0)]
    pub peak_rps: f64,
    /// Requests the origin takes at once; above that it answers 503.
    #[arg(long, default_value_t = 10)]
    pub origin_concurrency: usize,
    /// How long the origin takes to answer, milliseconds.
    #[arg(long, default_value_t = 40)]
    pub origin_latency_ms: u64,
    /// Features to turn off one at a time, comma-separated: waiting-room,
    /// funnel-grace, refresh-ahead (a feature this build lacks is noted and left out).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "waiting-room,funnel-grace,refresh-ahead"
    )]
    pub features: Vec<String>,
    /// How long a visitor keeps a waiting page open before leaving, launch seconds.
    #[arg(long, default_value_t = 600.0)]
    pub patience_secs: f64,
    /// Seed of the visitors' draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the chart (SVG).
    #[arg(long, default_value = "lab.svg")]
    pub chart: PathBuf,
    /// Also write every waiting-room wait (shown against had, one visitor a row) to
    /// this CSV file.
    #[arg(long)]
    pub waits: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// CSV of minute,upvotes,comments,maker_comments.
    #[arg(long, default_value = "data/curves/launch-hour.csv")]
    pub curve: PathBuf,
    /// How many curve minutes per minute: 1 replays the curve's rates, 10 plays an
    /// hour in six minutes at ten times the rates.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Webhook URL (default: http://<server.listen><webhook.path> from the config).
    #[arg(long)]
    pub url: Option<String>,
    /// Signing secret (default: the first one the config resolves, the demo's included).
    #[arg(long)]
    pub secret: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct PreflightArgs {
    /// Visitor connections the box must hold open at once.
    #[arg(long, default_value_t = 15_000)]
    pub connections: u64,
    /// Events (webhooks, poller) expected over the launch, for the disk check.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
}

#[derive(clap::Args, Debug)]
pub struct WarmArgs {
    /// Paths to fetch into the cache (default: cache.warm_urls from the config).
    pub paths: Vec<String>,
    /// Admin base URL (default: http://<server.admin_listen>).
    #[arg(long)]
    pub admin_url: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The signing secret (`whsec_<base64>` or any string).
    #[arg(
        long,
        required_unless_present = "secret_file",
        conflicts_with = "secret_file"
    )]
    pub secret: Option<String>,
    /// A file whose first line is the secret (e.g. data/state/demo-webhook-secret).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The body to sign; stdin when absent.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Set the body's `created_at` to now, write the body to this file and sign
    /// that: send this file. launchguard refuses an X-ProductHunt-Signature webhook
    /// whose `created_at` is missing or more than `webhook.tolerance_secs` from now.
    #[arg(long, value_name = "FILE")]
    pub stamp_to: Option<PathBuf>,
    /// Which headers to print.
    #[arg(long, value_enum, default_value_t = SignScheme::Producthunt)]
    pub scheme: SignScheme,
    /// Standard Webhooks message id (default: random).
    #[arg(long)]
    pub id: Option<String>,
    /// Standard Webhooks Unix timestamp (default: now).
    #[arg(long)]
    pub timestamp: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SignScheme {
    /// `X-ProductHunt-Signature: sha256=<hex>`
    Producthunt,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`
    Standard,
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Sign(args)) => match sign(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::Preflight(args)) => preflight(cli.config.as_deref(), &args),
        Some(Command::Report(args)) => match crate::insight::analytics::report(cli.config, &args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(if e.is_usage() { 2 } else { 1 })
            }
        },
        Some(Command::Simulate(args)) => {
            telemetry::init_logs(cli.log_format);
            match simulate(cli.config, &args) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        // No log subscriber: each shed request would be a line. Progress goes to
        // stderr, the table to stdout.
        Some(Command::Lab(args)) => match lab(cli.config, &args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Some(Command::Warm(args)) => match warm(cli.config, &args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        None | Some(Command::Serve) => {
            telemetry::init_logs(cli.log_format);
            serve(cli.config)
        }
    }
}

fn preflight(config: Option<&std::path::Path>, args: &PreflightArgs) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let budget = preflight::Budget {
        connections: args.connections,
        events: args.events,
    };
    let checks = runtime.block_on(preflight::run(config, &Env::from_process(), &budget));
    println!(
        "launchguard preflight: {}\n",
        config.map_or("no config file (the demo)".to_string(), |p| p
            .display()
            .to_string())
    );
    print!("{}", preflight::render(&checks));
    if checks.iter().any(|c| c.verdict == preflight::Verdict::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Builds a tokio runtime, or says why not.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Raises the soft open-files limit to the hard one: every visitor connection is a
/// file descriptor, and the soft default (often 1024) would refuse a launch crowd.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let from = limit.current;
    limit.current = limit.maximum;
    match setrlimit(Resource::Nofile, limit) {
        Ok(()) => tracing::info!(
            from = from.unwrap_or(u64::MAX),
            to = limit.maximum.unwrap_or(u64::MAX),
            "raised the open-files limit"
        ),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    raise_nofile();
    let config = match config_path {
        Some(path) => Config::load(&path),
        None => Config::parse(""),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: config: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let running = match app::start(config, Options::default()).await {
            Ok(r) => r,
            Err(e @ StartError::Config(_)) => {
                eprintln!("error: config: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        // READY before the first ping: the pinger's first tick is immediate, and on
        // another worker it could otherwise reach systemd first.
        systemd::ready(&format!(
            "serving on {}, admin on {}",
            running.public_addr, running.admin_addr
        ));
        let watchdog_stop = tokio_util::sync::CancellationToken::new();
        if let Some(every) = systemd::spawn_watchdog(watchdog_stop.clone()) {
            tracing::info!(
                every_ms = every.as_millis() as u64,
                "pinging the systemd watchdog"
            );
        }
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutting down: finishing in-flight requests");
        // The watchdog keeps pinging while in-flight requests drain and the store flushes.
        systemd::stopping();
        let stopped = running.shutdown().await;
        watchdog_stop.cancel();
        match stopped {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: final flush failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Asks the running appliance to warm its cache; returns one line per path.
/// Replays the curve, printing a line per curve minute as it goes; returns the summary.
pub fn simulate(config_path: Option<PathBuf>, args: &SimulateArgs) -> anyhow::Result<String> {
    let config = match config_path {
        Some(path) => Config::load(&path),
        None => Config::parse(""),
    }
    .context("config")?;
    if !(args.speed.is_finite() && args.speed > 0.0 && args.speed <= 3600.0) {
        anyhow::bail!(
            "--speed: expected a number above 0 and at most 3600, got {}",
            args.speed
        );
    }
    let curve = crate::ops::simulate::load_curve(&args.curve).map_err(anyhow::Error::msg)?;
    let key = match &args.secret {
        Some(s) => Key::parse(s).map_err(|p| anyhow::anyhow!("--secret: {p}"))?,
        None => crate::secrets::webhook_secrets(&config, &Env::from_process())
            .context("config")?
            .keys
            .first()
            .cloned()
            .context("no webhook secret configured; give --secret")?,
    };
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}{}", config.server.listen, config.webhook.path));
    let run_id = crate::clock::Clock::system().now_ms().to_string();
    let events: u32 = curve.iter().map(crate::ops::simulate::Minute::total).sum();
    println!(
        "replaying {} ({} minutes, {events} webhooks) at speed {} against {url}",
        args.curve.display(),
        curve.len(),
        args.speed
    );
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        anyhow::bail!("cannot start the async runtime");
    };
    let summary = runtime
        .block_on(crate::ops::simulate::play(
            &url,
            &key,
            &curve,
            args.speed,
            &run_id,
            |line| println!("{line}"),
        ))
        .map_err(anyhow::Error::msg)?;
    Ok(format!(
        "sent {}: {} accepted, {} refused; peak factor {:.2}, last {}\n",
        summary.sent,
        summary.accepted,
        summary.other,
        summary.peak_factor,
        summary.last_factor.as_deref().unwrap_or("-")
    ))
}

/// Runs the lab; returns the table (progress lines go to stderr as it runs).
pub fn lab(config_path: Option<PathBuf>, args: &LabArgs) -> anyhow::Result<String> {
    use crate::ops::lab;
    let base_config = match &config_path {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("config: cannot read {}", path.display()))?,
        None => String::new(),
    };
    Config::parse(&base_config).context("config")?;
    if !(args.speed.is_finite() && (1.0..=3600.0).contains(&args.speed)) {
        anyhow::bail!(
            "--speed: expected a number from 1 to 3600, got {}",
            args.speed
        );
    }
    if !(args.peak_rps.is_finite() && (1.0..=20_000.0).contains(&args.peak_rps)) {
        anyhow::bail!(
            "--peak-rps: expected 1 to 20000 requests a second, got {}",
            args.peak_rps
        );
    }
    if !(1..=10_000).contains(&args.origin_concurrency) {
        anyhow::bail!(
            "--origin-concurrency: expected 1 to 10000, got {}",
            args.origin_concurrency
        );
    }
    if !(1..=60_000).contains(&args.origin_latency_ms) {
        anyhow::bail!(
            "--origin-latency-ms: expected 1 to 60000, got {}",
            args.origin_latency_ms
        );
    }
    if !(args.patience_secs.is_finite() && args.patience_secs >= 0.0) {
        anyhow::bail!(
            "--patience-secs: expected 0 or more seconds, got {}",
            args.patience_secs
        );
    }
    let mut features = Vec::new();
    for name in args
        .features
        .iter()
        .map(|f| f.trim())
        .filter(|f| !f.is_empty())
    {
        let f = lab::Feature::parse(name).with_context(|| {
            format!(
                "--features: unknown feature {name:?} (waiting-room, funnel-grace, refresh-ahead)"
            )
        })?;
        if !features.contains(&f) {
            features.push(f);
        }
    }
    let text = std::fs::read_to_string(&args.curve)
        .with_context(|| format!("--curve: cannot read {}", args.curve.display()))?;
    let curve = crate::ops::simulate::parse_curve(&text)
        .map_err(|e| anyhow::anyhow!("--curve {}: {e}", args.curve.display()))?;
    let bursts = lab::model::parse_bursts(&text)
        .map_err(|e| anyhow::anyhow!("--curve {}: {e}", args.curve.display()))?;
    let scratch = std::env::temp_dir().join(format!(
        "launchguard-lab-{}-{}",
        std::process::id(),
        crate::clock::Clock::system().now_ms()
    ));
    let plan = lab::Plan {
        curve_name: args
            .curve
            .file_name()
            .map_or("curve".into(), |n| n.to_string_lossy().into_owned()),
        curve,
        bursts,
        base_config,
        speed: args.speed,
        peak_rps: args.peak_rps,
        capacity: lab::Capacity {
            concurrency: args.origin_concurrency,
            latency: std::time::Duration::from_millis(args.origin_latency_ms),
        },
        features,
        seed: args.seed,
        patience_secs: args.patience_secs,
        scratch: scratch.clone(),
    };
    let start: lab::Start = std::sync::Arc::new(|config, tick| {
        Box::pin(async move {
            let opts = Options {
                // The lab's config alone: no LAUNCHGUARD_* from the environment.
                env: Env::default(),
                pump_tick: tick.min(std::time::Duration::from_millis(250)),
                refresh_ahead_every: tick,
                ..Options::default()
            };
            let running = app::start(config, opts).await.map_err(|e| e.to_string())?;
            Ok(lab::Appliance {
                public: running.public_addr,
                admin: running.admin_addr,
                stop: Box::pin(async move {
                    let _ = running.shutdown().await;
                }),
            })
        })
    });
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        anyhow::bail!("cannot start the async runtime");
    };
    let report = runtime.block_on(lab::run(&plan, start, |line| eprintln!("{line}")));
    let _ = std::fs::remove_dir_all(&scratch);
    let report = report.map_err(anyhow::Error::msg)?;
    let svg = lab::chart::svg(&report).map_err(anyhow::Error::msg)?;
    std::fs::write(&args.chart, svg)
        .with_context(|| format!("--chart: cannot write {}", args.chart.display()))?;
    eprintln!("chart: {}", args.chart.display());
    if let Some(path) = &args.waits {
        std::fs::write(path, report.waits_csv())
            .with_context(|| format!("--waits: cannot write {}", path.display()))?;
        eprintln!("waits: {}", path.display());
    }
    Ok(report.table())
}

pub fn warm(config_path: Option<PathBuf>, args: &WarmArgs) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Full};
    let config = match config_path {
        Some(path) => Config::load(&path),
        None => Config::parse(""),
    }
    .context("config")?;
    let token = crate::secrets::admin_token(&config, &crate::secrets::Env::from_process())
        .context("config")?;
    let base = args
        .admin_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.server.admin_listen));
    let url = format!("{}/admin/warm", base.trim_end_matches('/'));
    let body = if args.paths.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&serde_json::json!({"urls": args.paths}))?
    };
    let mut req = hyper::Request::post(url.as_str()).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body)))
        .with_context(|| format!("bad admin URL {url:?}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, bytes) = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<bytes::Bytes>>();
        let res = client
            .request(req)
            .await
            .with_context(|| format!("cannot reach {url}; is launchguard running?"))?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    })?;
    if !status.is_success() {
        anyhow::bail!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    let mut out = String::new();
    for r in v["warmed"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{} {} {}\n",
            r["status"],
            r["cache"].as_str().unwrap_or(""),
            r["path"].as_str().unwrap_or("")
        ));
    }
    if out.is_empty() {
        out.push_str("nothing to warm: give paths or set cache.warm_urls\n");
    }
    Ok(out)
}

/// `body` (a JSON object) with `created_at` set to `now_ms`, as compact JSON.
fn stamp_created_at(body: &[u8], now_ms: u64) -> anyhow::Result<Vec<u8>> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).context("--stamp-to: the body is not JSON")?;
    let object = value
        .as_object_mut()
        .context("--stamp-to: the body is not a JSON object")?;
    object.insert(
        "created_at".into(),
        crate::ingest::webhook::payload::created_at(now_ms).into(),
    );
    Ok(serde_json::to_vec(&value)?)
}

/// Why a JSON event body would be refused for its `created_at` under the default
/// tolerance, if it would. Bodies that are not JSON objects are signed without a word.
fn created_at_problem(body: &[u8], now_ms: u64) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let created_at = value.as_object()?.get("created_at");
    let Some(text) = created_at.and_then(|v| v.as_str()) else {
        return Some("the body has no created_at".into());
    };
    let at: jiff::Timestamp = text.parse().ok()?;
    let tolerance = crate::config::WebhookConfig::default().tolerance_secs;
    let skew_secs = (i128::from(at.as_millisecond()) - i128::from(now_ms)) / 1000;
    (skew_secs.unsigned_abs() > u128::from(tolerance)).then(|| {
        format!(
            "created_at {text} is {} s {} now",
            skew_secs.unsigned_abs(),
            if skew_secs < 0 { "before" } else { "after" }
        )
    })
}

/// The header lines `sign` prints, each ending in a newline.
pub fn sign(args: &SignArgs) -> anyhow::Result<String> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --secret-file {}", path.display()))?
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .with_context(|| format!("--secret-file {} holds no secret", path.display()))?
            .to_string(),
        (None, None) => anyhow::bail!("give --secret or --secret-file"),
    };
    let key = Key::parse(&secret).map_err(|p| anyhow::anyhow!("--secret: {p}"))?;
    let body = match &args.file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read --file {}", path.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the body from stdin")?;
            buf
        }
    };
    let now_ms = crate::clock::Clock::system().now_ms();
    let body = match &args.stamp_to {
        Some(out) => {
            let stamped = stamp_created_at(&body, now_ms)?;
            std::fs::write(out, &stamped)
                .with_context(|| format!("cannot write --stamp-to {}", out.display()))?;
            stamped
        }
        None => body,
    };
    Ok(match args.scheme {
        SignScheme::Producthunt => {
            if let Some(problem) = created_at_problem(&body, now_ms) {
                eprintln!(
                    "note: {problem}; launchguard will refuse this body (created_at must be within \
                     webhook.tolerance_secs, 300 s by default, of its clock): sign with \
                     --stamp-to FILE and send FILE"
                );
            }
            format!(
                "X-ProductHunt-Signature: {}\n",
                signature::sign_producthunt(&key, &body)
            )
        }
        SignScheme::Standard => {
            let id = match &args.id {
                Some(id) => id.clone(),
                None => {
                    let mut b = [0u8; 12];
                    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                    format!("msg_{}", hex::encode(b))
                }
            };
            let ts = args.timestamp.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
            format!(
                "webhook-id: {id}\nwebhook-timestamp: {ts}\nwebhook-signature: {}\n",
                signature::sign_standard(&key, &id, ts, &body)
            )
        }
    })
}
