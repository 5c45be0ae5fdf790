//! `launchguard preflight`: the night-before checklist. Each check prints PASS, WARN or
//! FAIL with what it found and, for a failure, the fix; any FAIL makes the exit code
//! non-zero. The checks only read, except for a probe file written to (and removed
//! from) the data dir and the demo secret a loopback demo generates, as `serve` would.
//!
//! The checks: the config parses and validates; a webhook secret is configured; the data
//! dir is writable and its disk has room for the expected events; `RLIMIT_NOFILE` covers
//! the connection budget; the origin (static dir, or upstream over http or https with
//! `origin.ca_file` loaded as `serve` would) answers `/`, and how fast;
//! every `cache.warm_urls` page answers 200 and may be cached; the Product Hunt poller
//! is off or fully configured; alerts have somewhere to go (and `outbound.ca_file`, when
//! set, is a readable PEM file of certificates); both listeners can bind; with
//! `tls.listen`, the TLS listeners can bind and the certificate loads, names every
//! host of `server.hosts` and is valid for 14 more days;
//! the launch-day time zone is known, with today's boundaries in UTC.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Instant;

use axum::http::header;

use crate::config::{Config, ConfigError};
use crate::edge::origin::{Forwarded, Origin};
use crate::secrets::{self, Env};

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub found: String,
    /// What to do about a WARN or FAIL.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, found: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Pass,
            found: found.into(),
            fix: None,
        }
    }

    fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What the checks are measured against.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Visitor connections the box must hold open at once.
    pub connections: u64,
    /// Webhook and poller events expected over the launch.
    pub events: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            connections: 15_000,
            events: 1_000_000,
        }
    }
}

/// Disk per stored event: a ~1 KiB record, sled's log and its 2× space amplification.
const BYTES_PER_EVENT: u64 = 4 * 1024;
/// Room kept free besides the events: the metrics history, compaction, the logs.
const DISK_MARGIN: u64 = 512 * 1024 * 1024;
/// File descriptors besides visitor connections: origin pool, store, listeners, logs.
const FD_MARGIN: u64 = 1024;

/// Runs every check for the config at `path` (the defaults when `None`).
pub async fn run(path: Option<&Path>, env: &Env, budget: &Budget) -> Vec<Check> {
    let mut checks = Vec::new();
    let config = match path {
        Some(p) => Config::load(p),
        None => Config::parse(""),
    }
    .and_then(|c| c.validate().map(|()| c));
    let config = match config {
        Ok(c) => {
            checks.push(Check::pass(
                "config",
                match path {
                    Some(p) => format!("{} is valid", p.display()),
                    None => "no file: every key at its default (the demo)".into(),
                },
            ));
            c
        }
        Err(e) => {
            checks.push(Check::fail(
                "config",
                e.to_string(),
                "correct the key named above; data/launchguard.toml lists every key with its default",
            ));
            return checks;
        }
    };
    checks.push(secret(&config, env));
    checks.push(data_dir(&config.server.data_dir, budget.events));
    checks.push(nofile(budget.connections));
    match Origin::new(&config.origin) {
        Ok(o) => {
            checks.push(origin(&config, &o).await);
            checks.push(warm_urls(&config, &o).await);
        }
        Err(e) => {
            let fix = match &e {
                ConfigError::Invalid { key, .. } if key == "origin.ca_file" => {
                    "point origin.ca_file at a readable PEM file of CA certificates, or remove the key"
                }
                _ => "use http://host:port or https://host:port",
            };
            checks.push(Check::fail("origin", e.to_string(), fix))
        }
    }
    checks.push(producthunt(&config, env));
    checks.push(alerts(&config));
    checks.push(bindable("server.listen", config.server.listen));
    checks.push(bindable("server.admin_listen", config.server.admin_listen));
    if let Some(addr) = config.tls.listen {
        checks.push(bindable("tls.listen", addr));
        let now = crate::clock::Clock::system().now_ms();
        checks.push(if config.tls.acme() {
            acme(&config, now).await
        } else {
            certificate(&config, now)
        });
        if !config.tls.domains.is_empty() {
            checks.push(domains_resolve(&config.tls.domains).await);
        }
    }
    if !config.server.admin_listen.ip().is_loopback() && config.tls.listen.is_none() {
        checks.push(Check::warn(
            "admin over the network",
            format!(
                "server.admin_listen = {} is reachable off the box over plain HTTP: the admin token travels in clear",
                config.server.admin_listen
            ),
            "set [tls] (the admin listener then speaks TLS with the same certificates), or keep admin_listen on 127.0.0.1 and reach it through ssh",
        ));
    }
    if let Some(addr) = config.tls.http_listen {
        checks.push(bindable("tls.http_listen", addr));
    }
    if config.cluster.enabled() {
        for (name, result) in
            crate::ops::cluster::preflight(&config.cluster, config.webhook.dedup_ttl_secs).await
        {
            checks.push(match result {
                Ok(found) => Check::pass(name, found),
                Err((found, fix)) => Check::fail(name, found, fix),
            });
        }
    }
    checks.push(launch_day(&config.conversions.timezone));
    checks
}

/// The checklist as an operator reads it.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "  {tag}  {:<20} {}", c.name, c.found);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "        {:<20} fix: {fix}", "");
        }
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    let _ = writeln!(
        out,
        "\n{} passed, {warned} warned, {failed} failed{}",
        checks.len() - failed - warned,
        if failed == 0 {
            ": ready for launch"
        } else {
            ": fix the failures before launch"
        }
    );
    out
}

fn secret(config: &Config, env: &Env) -> Check {
    match secrets::webhook_secrets(config, env) {
        Ok(s) if s.demo_file.is_some() => Check::warn(
            "webhook secret",
            format!("only the demo secret ({})", s.sources.join(", ")),
            "fine for the loopback demo; for the launch set webhook.secret_file or the webhook_secret credential and give the sender the same secret",
        ),
        Ok(s) => Check::pass("webhook secret", s.sources.join(", ")),
        Err(e) => Check::fail(
            "webhook secret",
            e.to_string(),
            "configure a secret (webhook.secrets, webhook.secret_file or LAUNCHGUARD_WEBHOOK_SECRET)",
        ),
    }
}

fn data_dir(dir: &Path, events: u64) -> Check {
    const NAME: &str = "data dir";
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::fail(
            NAME,
            format!("cannot create {}: {e}", dir.display()),
            "create it and give the service user write access (systemd: StateDirectory=launchguard)",
        );
    }
    let probe: PathBuf = dir.join(".preflight-probe");
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(b"launchguard preflight\n")
            .and_then(|()| f.sync_all())
    });
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = written {
        return Check::fail(
            NAME,
            format!("{} is not writable: {e}", dir.display()),
            "give the service user write access to server.data_dir, or point server.data_dir elsewhere",
        );
    }
    let free = match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot read the free space of {}: {e}", dir.display()),
                "check the mount of server.data_dir",
            )
        }
    };
    let need = events.saturating_mul(BYTES_PER_EVENT) + DISK_MARGIN;
    let found = format!(
        "{} is writable; {} free, {} needed for {events} events",
        dir.display(),
        human_bytes(free),
        human_bytes(need)
    );
    if free < need {
        Check::fail(
            NAME,
            found,
            "free disk space or move server.data_dir to a larger disk (an event takes about 4 KiB with sled's overhead)",
        )
    } else {
        Check::pass(NAME, found)
    }
}

fn nofile(connections: u64) -> Check {
    const NAME: &str = "open files";
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    // `serve` raises the soft limit to the hard one at startup, so the hard one counts.
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let need = connections + FD_MARGIN;
    let found = format!(
        "RLIMIT_NOFILE hard limit {}, needed {need} for {connections} connections",
        if hard == u64::MAX {
            "unlimited".to_string()
        } else {
            hard.to_string()
        }
    );
    if hard < need {
        Check::fail(
            NAME,
            found,
            "raise it: LimitNOFILE=65536 in the unit (systemd/launchguard.service has it), or `ulimit -Hn 65536` before starting",
        )
    } else {
        Check::pass(NAME, found)
    }
}

/// GETs `path` from the origin as the edge would, with `origin.timeout_ms`.
async fn origin_get(
    origin: &Origin,
    config: &Config,
    path: &str,
) -> Result<(axum::http::Response<axum::body::Body>, u128), String> {
    let host = config
        .server
        .hosts
        .first()
        .map(|h| h.trim_start_matches("*.").to_string())
        .unwrap_or_else(|| "localhost".to_string());
    let req = axum::http::Request::get(path)
        .header(header::HOST, "localhost")
        .body(axum::body::Body::empty())
        .map_err(|e| format!("{path} is not a valid path: {e}"))?;
    let started = Instant::now();
    let res = origin
        .fetch(
            req,
            &Forwarded {
                client: None,
                host: axum::http::HeaderValue::from_str(&host)
                    .unwrap_or(axum::http::HeaderValue::from_static("localhost")),
                proto: "http",
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok((res, started.elapsed().as_micros()))
}

fn origin_name(config: &Config) -> String {
    match &config.origin.upstream {
        Some(up) => format!("upstream {up}"),
        None => format!("static site {}", config.origin.static_dir.display()),
    }
}

async fn origin(config: &Config, origin: &Origin) -> Check {
    const NAME: &str = "origin";
    let what = origin_name(config);
    match origin_get(origin, config, "/").await {
        Ok((res, us)) if res.status().is_success() || res.status().is_redirection() => {
            Check::pass(
                NAME,
                format!("{what} answered GET / with {} in {} ms", res.status(), ms(us)),
            )
        }
        Ok((res, us)) => Check::fail(
            NAME,
            format!("{what} answered GET / with {} in {} ms", res.status(), ms(us)),
            match config.origin.upstream {
                Some(_) => "make the site answer / (or check origin.upstream)",
                None => "point origin.static_dir at the built site (it must hold index.html)",
            },
        ),
        Err(e) if e.contains("certificate") => Check::fail(
            NAME,
            format!("{what}: {e}"),
            "the upstream's certificate does not verify for its host name: put the CA that issued it in origin.ca_file (PEM), or serve a certificate for the name in origin.upstream",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{what}: {e}"),
            "start the site, or fix origin.upstream / origin.static_dir; origin.timeout_ms bounds the wait",
        ),
    }
}

/// Every `cache.warm_urls` entry answers 200 and may be cached: no `Set-Cookie`, no
/// `Cache-Control: private` or `no-store`.
async fn warm_urls(config: &Config, origin: &Origin) -> Check {
    const NAME: &str = "warm urls";
    let urls = &config.cache.warm_urls;
    if urls.is_empty() {
        return Check::warn(
            NAME,
            "none configured: after a restart the first visitors all miss the cache",
            "list the launch pages in cache.warm_urls, e.g. [\"/\", \"/launch/\"]",
        );
    }
    let mut problems = Vec::new();
    for url in urls {
        match origin_get(origin, config, url).await {
            Ok((res, _)) => {
                let h = res.headers();
                let cc = h
                    .get(header::CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if res.status() != axum::http::StatusCode::OK {
                    problems.push(format!("{url} answers {}", res.status()));
                } else if h.contains_key(header::SET_COOKIE) {
                    problems.push(format!("{url} sets a cookie (Set-Cookie is never cached)"));
                } else if cc.contains("private") || cc.contains("no-store") {
                    problems.push(format!("{url} says Cache-Control: {cc}"));
                }
            }
            Err(e) => problems.push(format!("{url}: {e}")),
        }
    }
    if problems.is_empty() {
        Check::pass(
            NAME,
            format!("{} cacheable: {}", urls.len(), urls.join(", ")),
        )
    } else {
        Check::fail(
            NAME,
            problems.join("; "),
            "serve these pages without cookies and as public (or drop them from cache.warm_urls): they cannot be cached",
        )
    }
}

fn ms(us: u128) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// The Product Hunt poller is either off, or has both its token and its post.
fn producthunt(config: &Config, env: &Env) -> Check {
    const NAME: &str = "product hunt";
    let token = match secrets::producthunt_token(config, env) {
        Ok(t) => t,
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "fix the token source named above (producthunt.token, token_file, the producthunt_token credential or LAUNCHGUARD_PRODUCTHUNT_TOKEN)",
            )
        }
    };
    match (token.is_some(), &config.producthunt.post_slug) {
        (true, Some(slug)) => Check::pass(
            NAME,
            format!(
                "polling post {slug:?} at {} with a token",
                config.producthunt.api_url
            ),
        ),
        (false, None) => Check::pass(
            NAME,
            "poller off (no producthunt.token or post_slug): the factor follows signed webhooks only",
        ),
        (true, None) => Check::fail(
            NAME,
            "a token is set but producthunt.post_slug is not, so nothing is polled",
            "set producthunt.post_slug to the launch's slug (the last part of its producthunt.com/posts/ URL)",
        ),
        (false, Some(slug)) => Check::fail(
            NAME,
            format!("producthunt.post_slug is {slug:?} but no token is set, so nothing is polled"),
            "set producthunt.token_file (or the producthunt_token credential, or LAUNCHGUARD_PRODUCTHUNT_TOKEN) to a Product Hunt API token",
        ),
    }
}

/// Someone is told when shedding starts and the factor climbs.
fn alerts(config: &Config) -> Check {
    const NAME: &str = "alerts";
    let urls = &config.alerts.slack_webhook_urls;
    if let Err(e) = crate::client::tls_config(&config.outbound) {
        return Check::fail(
            NAME,
            e.to_string(),
            "point outbound.ca_file at a readable PEM file of CA certificates, or remove the key",
        );
    }
    if urls.is_empty() {
        Check::warn(
            NAME,
            "no alerts.slack_webhook_urls: shedding, factor thresholds and dead letters are only logged",
            "add a Slack (or compatible) incoming-webhook URL to alerts.slack_webhook_urls",
        )
    } else {
        Check::pass(
            NAME,
            format!(
                "{} webhook URL(s); factor thresholds {:?}",
                urls.len(),
                config.alerts.factor_thresholds
            ),
        )
    }
}

fn bindable(key: &'static str, addr: SocketAddr) -> Check {
    match TcpListener::bind(addr) {
        Ok(_) => Check::pass(key, format!("{addr} is free to bind")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::fail(
            key,
            format!("{addr} is already in use"),
            "stop what listens there (`ss -ltnp` shows it; a running launchguard counts) or pick another address",
        ),
        Err(e) => Check::fail(
            key,
            format!("cannot bind {addr}: {e}"),
            "use an address of this host; ports under 1024 need CAP_NET_BIND_SERVICE",
        ),
    }
}

/// A certificate that expires sooner than this fails the check.
pub const CERT_MIN_DAYS: i64 = 14;

/// Under ACME, per domain: the certificate the data dir holds and the days it has
/// left (None: none that loads). True when every one has more than
/// [`CERT_MIN_DAYS`] left.
fn acme_stored(config: &Config, now_ms: u64) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut all_fine = true;
    for domain in &config.tls.domains {
        let (cert, key) = crate::edge::tls::store::Store::cert_paths_in(
            &config.server.data_dir,
            std::slice::from_ref(domain),
        );
        match crate::edge::tls::load_pair(&cert, &key) {
            Ok(l) => {
                let days = (l.not_after - (now_ms / 1000) as i64) / 86_400;
                all_fine &= days >= CERT_MIN_DAYS;
                lines.push(format!("{domain}: valid {days} more days"));
            }
            Err(_) => {
                all_fine = false;
                lines.push(format!("{domain}: none yet"));
            }
        }
    }
    (lines, all_fine)
}

/// Under ACME: every domain's stored certificate valid for more than
/// [`CERT_MIN_DAYS`], or else the ACME account registered (loaded or created at
/// `tls.acme_directory`, which proves the CA reachable and trusted, and external
/// account binding accepted), so the missing ones can be ordered at start.
async fn acme(config: &Config, now_ms: u64) -> Check {
    const NAME: &str = "tls certificate (ACME)";
    let (lines, all_fine) = acme_stored(config, now_ms);
    if all_fine {
        return Check::pass(
            NAME,
            format!(
                "{}; each renewed when a third of its lifetime is left",
                lines.join("; ")
            ),
        );
    }
    let acme = match crate::edge::tls::acme::Acme::new(
        &config.tls,
        &config.server.data_dir,
        crate::edge::tls::Certs::empty(&config.tls.domains),
        crate::clock::Clock::system(),
    ) {
        Ok(a) => a,
        Err(e) => return Check::fail(NAME, e.to_string(), "correct the key named above"),
    };
    match tokio::time::timeout(std::time::Duration::from_secs(60), acme.ensure_account()).await {
        Ok(Ok(account)) => Check::pass(
            NAME,
            format!("{}; {account}; the rest is ordered at start", lines.join("; ")),
        ),
        Ok(Err(e)) => Check::fail(
            NAME,
            format!("{}; and no ACME account: {e}", lines.join("; ")),
            "check that tls.acme_directory is reachable from this box, tls.acme_ca_file (a private CA), and tls.acme_eab_kid / tls.acme_eab_hmac_key if the CA wants them",
        ),
        Err(_) => Check::fail(
            NAME,
            format!("{}; the ACME directory did not answer within 60 s", lines.join("; ")),
            "check that tls.acme_directory is reachable from this box",
        ),
    }
}

/// Every domain of `tls.domains` resolves (the CA validates each one at the
/// addresses its DNS gives, so they must point at this box before the first order).
async fn domains_resolve(domains: &[String]) -> Check {
    const NAME: &str = "tls.domains resolve";
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for d in domains {
        let lookup = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::lookup_host((d.as_str(), 443)),
        )
        .await;
        match lookup {
            Ok(Ok(addrs)) => {
                let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                ips.sort();
                ips.dedup();
                found.push(format!("{d} → {}", ips.join(", ")));
            }
            Ok(Err(e)) => missing.push(format!("{d} ({e})")),
            Err(_) => missing.push(format!("{d} (no answer within 5 s)")),
        }
    }
    if missing.is_empty() {
        Check::pass(NAME, found.join("; "))
    } else {
        Check::fail(
            NAME,
            format!("does not resolve: {}", missing.join("; ")),
            "create an A (and AAAA) record for each name pointing at this box; the CA checks it before it issues a certificate",
        )
    }
}

/// `tls.cert_file` and `tls.key_file` load and belong together, the certificate is
/// valid for more than [`CERT_MIN_DAYS`] at `now_ms`, and it names every exact host
/// of `server.hosts`.
fn certificate(config: &Config, now_ms: u64) -> Check {
    const NAME: &str = "tls certificate";
    let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) else {
        return Check::fail(
            NAME,
            "tls.listen is set without tls.cert_file and tls.key_file",
            "set both (PEM)",
        );
    };
    let loaded = match crate::edge::tls::load_pair(cert, key) {
        Ok(l) => l,
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "point tls.cert_file at the PEM chain (leaf first) and tls.key_file at its key, both readable by the service",
            )
        }
    };
    let left_days = (loaded.not_after - (now_ms / 1000) as i64) / 86_400;
    if left_days < CERT_MIN_DAYS {
        return Check::fail(
            NAME,
            format!("{} expires in {left_days} days", cert.display()),
            format!("renew it: browsers refuse it once expired, and a launch should not need a renewal ({CERT_MIN_DAYS} days at least)"),
        );
    }
    let missing: Vec<&String> = config
        .server
        .hosts
        .iter()
        .filter(|h| !h.starts_with("*.") && !covers(&loaded.names, h))
        .collect();
    if !missing.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "{} is for {:?}, not for {:?} of server.hosts",
                cert.display(),
                loaded.names,
                missing
            ),
            "get a certificate that names every host in server.hosts",
        );
    }
    Check::pass(
        NAME,
        format!("{:?}, valid {left_days} more days", loaded.names),
    )
}

use crate::edge::tls::names_cover as covers;

/// The launch day is the calendar day in `conversions.timezone` (Product Hunt's day is
/// Los Angeles's, the default).
fn launch_day(tz: &str) -> Check {
    const NAME: &str = "launch day";
    // The same day boundaries the analytics use.
    let day = jiff::tz::TimeZone::get(tz).and_then(|zone| {
        let today =
            crate::insight::analytics::day_of(crate::clock::Clock::system().now_ms(), &zone);
        let (start, end) = crate::insight::analytics::day_bounds(today, &zone)?;
        let utc = |ms: u64| {
            jiff::Timestamp::from_millisecond(ms as i64)
                .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        };
        Ok(format!(
            "{tz}: today {today} runs {} → {} UTC ({} h)",
            utc(start)?,
            utc(end)?,
            (end - start) / 3_600_000
        ))
    });
    match day {
        Ok(found) => Check::pass(NAME, found),
        Err(e) => Check::fail(
            NAME,
            format!("conversions.timezone: cannot resolve {tz:?}: {e}"),
            "use an IANA zone name such as America/Los_Angeles",
        ),
    }
}

fn human_bytes(n: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    let n = n as f64;
    if n >= GIB {
        format!("{:.1} GiB", n / GIB)
    } else {
        format!("{:.0} MiB", n / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_render_names_failures_and_fixes() {
        let text = render(&[
            Check::pass("config", "valid"),
            Check::fail("data dir", "/x is not writable", "chmod it"),
        ]);
        assert!(text.contains("PASS  config"), "{text}");
        assert!(text.contains("FAIL  data dir"), "{text}");
        assert!(text.contains("fix: chmod it"), "{text}");
        assert!(text.contains("1 passed, 0 warned, 1 failed"), "{text}");
    }

    #[test]
    fn a_taken_port_fails_the_bind_check() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = bindable("server.listen", held.local_addr().unwrap());
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.found.contains("already in use"), "{}", c.found);
    }

    #[test]
    fn the_launch_day_spans_23_to_25_hours() {
        let c = launch_day("America/Los_Angeles");
        assert_eq!(c.verdict, Verdict::Pass, "{}", c.found);
        assert!(
            c.found.contains("(24 h)") || c.found.contains("(23 h)") || c.found.contains("(25 h)"),
            "{}",
            c.found
        );
    }

    #[test]
    fn an_unknown_zone_fails_naming_the_key() {
        let c = launch_day("Mars/Olympus_Mons");
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.found.contains("conversions.timezone"), "{}", c.found);
    }

    /// A self-signed certificate for `names`, valid until 2030-01-31, written with its
    /// key into `dir`; returns the config pointing at them.
    fn tls_config(dir: &Path, names: &[&str], hosts: &[&str]) -> Config {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
        let mut c = Config::parse("").unwrap();
        c.tls.listen = Some("127.0.0.1:0".parse().unwrap());
        c.tls.cert_file = Some(dir.join("c.pem"));
        c.tls.key_file = Some(dir.join("k.pem"));
        c.server.hosts = hosts.iter().map(|h| h.to_string()).collect();
        c
    }

    #[test]
    fn under_acme_each_domain_is_named_with_its_stored_certificate_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.server.data_dir = dir.path().to_path_buf();
        c.tls.listen = Some("127.0.0.1:8443".parse().unwrap());
        c.tls.domains = vec!["example.com".into(), "www.example.com".into()];
        let (lines, fine) = acme_stored(&c, 0);
        assert!(!fine);
        assert_eq!(
            lines,
            ["example.com: none yet", "www.example.com: none yet"]
        );
        // A stored certificate for one of them, valid 30 days.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["example.com".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 1, 31);
        let cert = params.self_signed(&key).unwrap();
        let store = crate::edge::tls::store::Store::open(dir.path()).unwrap();
        store
            .save_cert(
                &["example.com".into()],
                cert.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
            )
            .unwrap();
        let jan_1 = "2026-01-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond() as u64;
        let (lines, fine) = acme_stored(&c, jan_1);
        assert_eq!(
            lines,
            [
                "example.com: valid 30 more days",
                "www.example.com: none yet"
            ]
        );
        assert!(!fine);
        c.tls.domains.pop();
        assert!(acme_stored(&c, jan_1).1);
    }

    #[tokio::test]
    async fn a_domain_that_does_not_resolve_fails_the_check_and_names_it() {
        let ok = domains_resolve(&["localhost".into()]).await;
        assert_eq!(ok.verdict, Verdict::Pass, "{ok:?}");
        assert!(ok.found.contains("127.0.0.1"), "{ok:?}");
        let bad = domains_resolve(&["localhost".into(), "nowhere.invalid".into()]).await;
        assert_eq!(bad.verdict, Verdict::Fail, "{bad:?}");
        assert!(bad.found.contains("nowhere.invalid"), "{bad:?}");
        assert!(!bad.found.contains("localhost"), "{bad:?}");
    }

    #[test]
    fn the_certificate_check_wants_14_days_and_every_host() {
        let dir = tempfile::tempdir().unwrap();
        let ms = |d: &str| d.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64;
        let c = tls_config(
            dir.path(),
            &["example.com", "*.example.com"],
            &["example.com", "www.example.com"],
        );
        let ok = certificate(&c, ms("2029-12-01T00:00:00Z"));
        assert_eq!(ok.verdict, Verdict::Pass, "{ok:?}");
        assert!(ok.found.contains("valid 61 more days"), "{ok:?}");
        let soon = certificate(&c, ms("2030-01-20T00:00:00Z"));
        assert_eq!(soon.verdict, Verdict::Fail);
        assert!(soon.found.contains("expires in 11 days"), "{soon:?}");

        let c = tls_config(
            dir.path(),
            &["example.com"],
            &["example.com", "shop.example.com"],
        );
        let other = certificate(&c, ms("2029-12-01T00:00:00Z"));
        assert_eq!(other.verdict, Verdict::Fail);
        assert!(other.found.contains("shop.example.com"), "{other:?}");

        std::fs::write(dir.path().join("k.pem"), "not a key").unwrap();
        let bad = certificate(&c, ms("2029-12-01T00:00:00Z"));
        assert_eq!(bad.verdict, Verdict::Fail);
        assert!(bad.found.starts_with("tls.key_file:"), "{bad:?}");
    }

    #[test]
    fn a_wildcard_certificate_covers_one_label() {
        let names = vec!["*.example.com".to_string(), "example.com".to_string()];
        assert!(covers(&names, "www.example.com"));
        assert!(covers(&names, "Example.com"));
        assert!(!covers(&names, "a.b.example.com"));
        assert!(!covers(&names, "example.org"));
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(human_bytes(512 * 1024 * 1024), "512 MiB");
    }
}
