//! TOML configuration: every key has a default, unknown keys are errors, and every
//! error names the key (`webhook.durability: expected "fsync" or "buffered", got "sometimes"`).
//!
//! Parsing goes through `serde_path_to_error`, so a type error deep in the file is
//! reported with its dotted path; `Config::validate` then checks the values that
//! types alone cannot (ranges, addresses, relations between keys). Secrets are not
//! resolved here: `webhook::secrets` does that at startup, so this module does no
//! I/O beyond reading the file it is given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration problem, always tied to the key that caused it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub origin: OriginConfig,
    pub webhook: WebhookConfig,
    pub velocity: VelocityConfig,
    pub backpressure: BackpressureConfig,
    pub cache: CacheConfig,
    pub conversions: ConversionsConfig,
    pub outbound: OutboundConfig,
    pub alerts: AlertsConfig,
    pub producthunt: ProducthuntConfig,
    pub tls: TlsConfig,
    pub waiting_room: WaitingRoomConfig,
    pub cluster: ClusterConfig,
}

/// `[cluster]`: several nodes sharing one launch through NATS JetStream
/// (`ops/cluster/`). Off unless `nats_url` is set: one box needs nothing else.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server (`nats://host:4222`, or `tls://` for TLS); several, comma
    /// separated, for a NATS cluster. Default none: no cluster.
    pub nats_url: Option<String>,
    /// This node's name, unique in the cluster: letters, digits, `-` and `_`, at most
    /// 64. Default: the host name.
    pub node_id: Option<String>,
    /// A NATS credentials file (`.creds`: JWT and nkey seed). Default none.
    pub credentials_file: Option<PathBuf>,
}

impl ClusterConfig {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some()
    }

    /// The node id: `node_id`, or the host name made to fit (`validate` has checked
    /// the configured one).
    pub fn node(&self) -> String {
        match &self.node_id {
            Some(id) => id.clone(),
            None => {
                let host = rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned();
                let id: String = host
                    .chars()
                    .map(|c| if is_node_char(c) { c } else { '-' })
                    .take(64)
                    .collect();
                if id.is_empty() {
                    "node".into()
                } else {
                    id
                }
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(urls) = &self.nats_url {
            for url in urls.split(',').map(str::trim) {
                let rest = ["nats://", "tls://"]
                    .iter()
                    .find_map(|scheme| url.strip_prefix(scheme));
                let ok = rest.is_some_and(|hostport| {
                    !hostport.is_empty()
                        && !hostport.contains('/')
                        && !hostport
                            .chars()
                            .any(|c| c.is_whitespace() || c.is_control())
                });
                if !ok {
                    return Err(ConfigError::invalid(
                        "cluster.nats_url",
                        format!(
                            "expected nats://host:port or tls://host:port (several comma separated), got {url:?}"
                        ),
                    ));
                }
            }
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > 64 || !id.chars().all(is_node_char) {
                return Err(ConfigError::invalid(
                    "cluster.node_id",
                    format!(
                        "expected 1 to 64 letters, digits, '-' or '_' (it names this node's JetStream consumer), got {id:?}"
                    ),
                ));
            }
        }
        if let Some(path) = &self.credentials_file {
            if self.nats_url.is_none() {
                return Err(ConfigError::invalid(
                    "cluster.credentials_file",
                    "is set but cluster.nats_url is not; set both, or neither",
                ));
            }
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    "cluster.credentials_file",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        if self.node_id.is_some() && self.nats_url.is_none() {
            return Err(ConfigError::invalid(
                "cluster.node_id",
                "is set but cluster.nats_url is not; a node id means nothing without the NATS server",
            ));
        }
        Ok(())
    }
}

fn is_node_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `[waiting_room]`: what a shed page view gets instead of a bare 503
/// (`edge/waiting.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaitingRoomConfig {
    /// A shed page view gets the waiting page (its place in line, the estimated wait,
    /// a refresh) and is let in first come first served as the origin frees up; off,
    /// it gets the plain 503. Default true.
    pub enabled: bool,
    /// How long a visitor let in keeps access (not shed), seconds. Default 600.
    pub session_secs: u64,
    /// How often the waiting page refreshes itself, seconds. Default 10.
    pub refresh_secs: u64,
    /// An HTML file to show instead of the built-in page; `{{position}}`,
    /// `{{wait_secs}}`, `{{wait}}` and `{{refresh_secs}}` are replaced. Default none.
    pub template_file: Option<PathBuf>,
}

impl Default for WaitingRoomConfig {
    fn default() -> Self {
        WaitingRoomConfig {
            enabled: true,
            session_secs: 600,
            refresh_secs: 10,
            template_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listener: visitor traffic and the webhook path. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener: metrics, health, admin API. Default `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Where sled keeps its files. Default `data/state`.
    pub data_dir: PathBuf,
    /// File holding the admin bearer token. Required when `admin_listen` is not loopback.
    pub admin_token_file: Option<PathBuf>,
    /// How long in-flight requests may run after SIGTERM before they are cut, in ms. Default 10000.
    pub shutdown_grace_ms: u64,
    /// How long a client may take to send a request body, in ms. Default 10000.
    pub body_timeout_ms: u64,
    /// How long a client may take to send a request's head (request line and headers),
    /// from its first byte, in ms; then the connection is closed. Default 10000.
    pub header_timeout_ms: u64,
    /// How long an idle keep-alive connection is kept open, in s. Default 75.
    pub keepalive_timeout_secs: u64,
    /// How long a write to a client may make no progress, in ms; then the connection
    /// is reset and its buffers given back (nginx's `send_timeout`). Default 30000.
    pub send_timeout_ms: u64,
    /// The largest request head (request line and headers), bytes; a larger one gets
    /// 431. Between 8192 and 1048576. Default 65536.
    pub max_header_bytes: usize,
    /// Open connections a listener holds at most; at the limit it stops accepting
    /// until one closes. Default 50000.
    pub max_connections: usize,
    /// The host names this site answers to (`example.com`, `*.example.com`); any other
    /// `Host` gets 421. The first is the primary name, used for warm-ups. Default none:
    /// any host is served (and keyed apart in the cache).
    pub hosts: Vec<String>,
    /// Addresses or networks of the proxies in front (a load balancer): from these
    /// peers only, `X-Forwarded-For` names the client and `X-Forwarded-Proto` the
    /// scheme. Default none: every peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Host names (or addresses) the admin listener answers to besides loopback
    /// addresses, `localhost` and its own address; any other `Host` gets 403 there
    /// (DNS rebinding). Default none.
    pub admin_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            data_dir: PathBuf::from("data/state"),
            admin_token_file: None,
            shutdown_grace_ms: 10_000,
            body_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            keepalive_timeout_secs: 75,
            send_timeout_ms: 30_000,
            max_header_bytes: 64 * 1024,
            max_connections: 50_000,
            hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            admin_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Directory served to visitors. Default `data/site` (the demo launch site).
    /// Used when `upstream` is not set.
    pub static_dir: PathBuf,
    /// An HTTP origin such as `http://127.0.0.1:3000`, or an HTTPS one such as
    /// `https://app.internal` (verified against the webpki roots plus `ca_file`, by
    /// the URL's host name); when set, `static_dir` is unused.
    pub upstream: Option<String>,
    /// PEM file of extra trust anchors for an `https://` upstream, added to the webpki
    /// roots (a private CA). Read at startup; an unreadable or bad file stops the
    /// start. Default none.
    pub ca_file: Option<PathBuf>,
    /// Longest wait for the origin's response headers, then 504 (or the stale copy), ms. Default 2000.
    pub timeout_ms: u64,
    /// Longest wait for an origin permit under load, then 503 + Retry-After, ms. Default 1000.
    pub queue_timeout_ms: u64,
    /// Share of the origin permits for requests that bypass the cache (Authorization,
    /// personal cookies, unsafe methods); cache fills get the rest. Neither share
    /// takes the other's. Between 0 and 1 (exclusive). Default 0.5.
    pub bypass_share: f64,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            static_dir: PathBuf::from("data/site"),
            upstream: None,
            ca_file: None,
            timeout_ms: 2000,
            queue_timeout_ms: 1000,
            bypass_share: 0.5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackpressureConfig {
    /// Above this factor, requests that are not critical get 503. Default 2.0.
    pub shed_factor: f64,
    /// `Retry-After` on every 503 (shed, queued out, storage) and on an origin's
    /// 502/504 that no cached copy stands in for, seconds. Default 5.
    pub retry_after_secs: u64,
    /// Glob patterns of critical paths, never shed. The webhook path and `/api/convert`
    /// are always critical. `*` matches across `/`; `/launch/*` also matches `/launch`.
    /// Default `["/", "/launch/*", "/api/leaderboard"]`.
    pub critical_paths: Vec<String>,
    /// Glob patterns of low-priority paths (assets, feeds). Default none.
    pub low_paths: Vec<String>,
    /// A visitor whose cookies show a page view under `conversions.funnel_paths`
    /// within this many seconds is never shed, whatever the path. 0 = off. Default 900.
    pub funnel_grace_secs: u64,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        BackpressureConfig {
            shed_factor: 2.0,
            retry_after_secs: 5,
            critical_paths: vec!["/".into(), "/launch/*".into(), "/api/leaderboard".into()],
            low_paths: Vec::new(),
            funnel_grace_secs: 900,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Lifetime at factor 1.0, seconds; at factor F it is `max(min_ttl_secs, base_ttl_secs / F)`. Default 60.
    pub base_ttl_secs: u64,
    /// Shortest lifetime, seconds. Default 5.
    pub min_ttl_secs: u64,
    /// How long past its lifetime a copy is served while one refresh runs, seconds. Default 30.
    pub stale_while_revalidate_secs: u64,
    /// How long past its lifetime a copy is served when the origin fails, seconds. Default 600.
    pub stale_if_error_secs: u64,
    /// Memory bound for stored objects (bodies, variants, headers, keys), bytes. Default 67108864.
    pub max_bytes: u64,
    /// Largest body stored; larger ones stream through uncached, bytes. Default 8388608.
    pub max_object_bytes: u64,
    /// Longest normalized URL cached; longer ones bypass the cache, bytes. Default 2048.
    pub max_key_bytes: usize,
    /// Paths fetched into the cache at startup and by `launchguard warm`. Default none.
    pub warm_urls: Vec<String>,
    /// From this factor on, the funnel pages and `warm_urls` are fetched again before
    /// their lifetime runs out (refresh-ahead), all of them at the crossing, so the
    /// wave meets full-lifetime entries. 0 = off. Default 1.5.
    pub refresh_ahead_factor: f64,
    /// Event type → path prefixes purged when such an event arrives.
    /// Default `{ maker_comment = ["/launch/"] }`.
    pub purge_on: BTreeMap<String, Vec<String>>,
    /// Cookie names (globs) the pages do not depend on: they do not make a request
    /// bypass the cache, and are removed from shared fetches. Default the common
    /// analytics cookies (`_ga*`, `_gid`, `_gcl_*`, `_fbp`, `_hj*`, `ajs_*`, `ph_*`,
    /// `_pk_*`, `plausible_*`).
    pub ignore_cookies: Vec<String>,
    /// What the query string does to the key: `"sorted"` (tracking parameters dropped,
    /// the rest sorted), `"ignore"` (one entry per path), or a list of the parameter
    /// names kept. What is not keyed is not sent to the origin on a shared fetch.
    /// Default `"sorted"`.
    pub query: QueryMode,
}

/// The default `cache.ignore_cookies`: analytics cookies of Google Analytics and Ads,
/// Meta, Hotjar, Segment, PostHog, Matomo and Plausible.
pub const DEFAULT_IGNORED_COOKIES: &[&str] = &[
    "_ga*",
    "_gid",
    "_gcl_*",
    "_fbp",
    "_hj*",
    "ajs_*",
    "ph_*",
    "_pk_*",
    "plausible_*",
];

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            base_ttl_secs: 60,
            min_ttl_secs: 5,
            stale_while_revalidate_secs: 30,
            stale_if_error_secs: 600,
            max_bytes: 64 * 1024 * 1024,
            max_object_bytes: 8 * 1024 * 1024,
            max_key_bytes: 2048,
            warm_urls: Vec::new(),
            refresh_ahead_factor: 1.5,
            purge_on: BTreeMap::from([("maker_comment".to_string(), vec!["/launch/".to_string()])]),
            ignore_cookies: DEFAULT_IGNORED_COOKIES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            query: QueryMode::Sorted,
        }
    }
}

/// What the query string does to the key (`cache.query`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueryMode {
    /// Tracking parameters dropped, the rest sorted. The default.
    #[default]
    Sorted,
    /// One entry per path: the query is dropped.
    Ignore,
    /// Only these parameters (by name, as sent) are kept, sorted.
    Keep(Vec<String>),
}

impl<'de> Deserialize<'de> for QueryMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Names(Vec<String>),
        }
        let expected =
            "expected \"sorted\", \"ignore\" or a list of parameter names such as [\"page\"]";
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom(expected))? {
            Raw::Word(w) if w == "sorted" => Ok(QueryMode::Sorted),
            Raw::Word(w) if w == "ignore" => Ok(QueryMode::Ignore),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("{expected}, got {w:?}"))),
            Raw::Names(names) => {
                if let Some(bad) = names
                    .iter()
                    .find(|n| n.is_empty() || n.contains(['&', '=', '#', ' ']))
                {
                    return Err(serde::de::Error::custom(format!(
                        "{expected}; {bad:?} is not a parameter name"
                    )));
                }
                Ok(QueryMode::Keep(names))
            }
        }
    }
}

/// When the webhook's answer is sent, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// 202 only after the event is flushed and `fsync`ed (group commit). Default.
    Fsync,
    /// 202 after the in-memory insert; sled flushes within `flush_every_ms`.
    Buffered,
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "fsync" => Ok(Durability::Fsync),
            "buffered" => Ok(Durability::Buffered),
            other => Err(serde::de::Error::custom(format!(
                "expected \"fsync\" or \"buffered\", got {other:?}"
            ))),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Path of the webhook endpoint on the public listener. Default `/webhooks/producthunt`.
    pub path: String,
    /// Signing secrets, all accepted (rotation). `whsec_<base64>` is base64-decoded.
    pub secrets: Vec<String>,
    /// File with one secret per line; a relative name is looked up in `$CREDENTIALS_DIRECTORY`.
    pub secret_file: Option<PathBuf>,
    /// `"fsync"` (default) or `"buffered"`.
    pub durability: Durability,
    /// Largest accepted body in bytes; more gets 413. Default 65536.
    pub max_body_bytes: usize,
    /// How far a signed time (Standard Webhooks `webhook-timestamp`, the body's
    /// `created_at` under `X-ProductHunt-Signature`) may be from the clock, seconds
    /// either way. Default 300.
    pub tolerance_secs: u64,
    /// How long an event id is remembered for replay detection, seconds; more than
    /// twice `tolerance_secs`. Default 86400.
    pub dedup_ttl_secs: u64,
    /// Slots in the lock-free ring between ingestion and the pump. Default 65536.
    pub ring_capacity: usize,
    /// Days a stored event keeps its raw payload; older payloads are swept (the
    /// event's id, type, weight and time stay). Default 30.
    pub retention_days: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            path: "/webhooks/producthunt".into(),
            secrets: Vec::new(),
            secret_file: None,
            durability: Durability::Fsync,
            max_body_bytes: 64 * 1024,
            tolerance_secs: 300,
            dedup_ttl_secs: 86_400,
            ring_capacity: 65_536,
            retention_days: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VelocityConfig {
    /// Sliding window length in one-second buckets. Default 60.
    pub window_secs: u32,
    /// Factor gained per weighted event per second. Default 0.4.
    pub gain: f64,
    /// Origin concurrency at factor 1.0. Default 50.
    pub base_concurrency: u32,
    /// Origin concurrency ceiling; caps the factor at max/base. Default 250.
    pub max_concurrency: u32,
    /// Weight per event type; types not listed weigh `default_weight`.
    pub weights: BTreeMap<String, f64>,
    /// Weight of an event type not in `weights`. Default 1.0.
    pub default_weight: f64,
}

impl Default for VelocityConfig {
    fn default() -> Self {
        VelocityConfig {
            window_secs: 60,
            gain: 0.4,
            base_concurrency: 50,
            max_concurrency: 250,
            weights: BTreeMap::from([
                ("upvote".to_string(), 1.2),
                ("comment".to_string(), 1.0),
                ("maker_comment".to_string(), 1.5),
            ]),
            default_weight: 1.0,
        }
    }
}

impl VelocityConfig {
    /// The highest factor the window can publish: `max_concurrency / base_concurrency`.
    pub fn cap(&self) -> f64 {
        f64::from(self.max_concurrency) / f64::from(self.base_concurrency)
    }

    pub fn weight_of(&self, event_type: &str) -> f64 {
        self.weights
            .get(event_type)
            .copied()
            .unwrap_or(self.default_weight)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(text, &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::invalid(
                if key == "." { "config".into() } else { key },
                clean_message(inner.message()),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen == s.admin_listen && s.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "server.admin_listen",
                format!(
                    "must differ from server.listen, both are {}",
                    s.admin_listen
                ),
            ));
        }
        if s.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("server.data_dir", "must not be empty"));
        }
        positive("server.shutdown_grace_ms", s.shutdown_grace_ms)?;
        positive("server.body_timeout_ms", s.body_timeout_ms)?;
        positive("server.header_timeout_ms", s.header_timeout_ms)?;
        positive("server.keepalive_timeout_secs", s.keepalive_timeout_secs)?;
        positive("server.send_timeout_ms", s.send_timeout_ms)?;
        if !(8192..=1024 * 1024).contains(&s.max_header_bytes) {
            return Err(ConfigError::invalid(
                "server.max_header_bytes",
                format!(
                    "expected between 8192 and 1048576 bytes, got {}",
                    s.max_header_bytes
                ),
            ));
        }
        positive("server.max_connections", s.max_connections as u64)?;
        for (i, host) in s.admin_hosts.iter().enumerate() {
            crate::syntax::host::parse_host(host.as_bytes(), 0)
                .ok()
                .filter(|h| h.key == h.name)
                .ok_or_else(|| {
                    ConfigError::invalid(
                        format!("server.admin_hosts[{i}]"),
                        format!("expected a host name or address without a port, such as \"ops.internal\", got {host:?}"),
                    )
                })?;
        }
        for (i, net) in s.trusted_proxies.iter().enumerate() {
            crate::syntax::host::Net::parse(net).map_err(|problem| {
                ConfigError::invalid(format!("server.trusted_proxies[{i}]"), problem)
            })?;
        }
        for (i, host) in s.hosts.iter().enumerate() {
            crate::syntax::host::HostPattern::parse(host)
                .map_err(|problem| ConfigError::invalid(format!("server.hosts[{i}]"), problem))?;
        }

        let w = &self.webhook;
        if !w.path.starts_with('/') || w.path.len() < 2 || w.path.contains(['{', '}', '*']) {
            return Err(ConfigError::invalid(
                "webhook.path",
                format!(
                    "expected an absolute path such as \"/webhooks/producthunt\", got {:?}",
                    w.path
                ),
            ));
        }
        for (i, secret) in w.secrets.iter().enumerate() {
            if secret.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("webhook.secrets[{i}]"),
                    "is empty; remove it or give it a value",
                ));
            }
        }
        if !(1024..=16 * 1024 * 1024).contains(&w.max_body_bytes) {
            return Err(ConfigError::invalid(
                "webhook.max_body_bytes",
                format!(
                    "expected between 1024 and 16777216 bytes, got {}",
                    w.max_body_bytes
                ),
            ));
        }
        positive("webhook.tolerance_secs", w.tolerance_secs)?;
        positive("webhook.retention_days", u64::from(w.retention_days))?;
        positive("webhook.dedup_ttl_secs", w.dedup_ttl_secs)?;
        // A signed time is accepted up to tolerance_secs either side of the clock, so
        // one signed request can arrive twice up to 2 × tolerance apart: its id must be
        // remembered longer than that for the replay to be a duplicate, not a new event.
        if w.dedup_ttl_secs <= w.tolerance_secs.saturating_mul(2) {
            return Err(ConfigError::invalid(
                "webhook.dedup_ttl_secs",
                format!(
                    "must be more than twice webhook.tolerance_secs ({} s), got {}: a signed \
                     timestamp is accepted up to that far either side of the clock, and a \
                     replay inside that span is refused only while its id is remembered",
                    w.tolerance_secs, w.dedup_ttl_secs
                ),
            ));
        }
        if !(16..=1 << 24).contains(&w.ring_capacity) {
            return Err(ConfigError::invalid(
                "webhook.ring_capacity",
                format!("expected between 16 and 16777216, got {}", w.ring_capacity),
            ));
        }

        let v = &self.velocity;
        if !(1..=3600).contains(&v.window_secs) {
            return Err(ConfigError::invalid(
                "velocity.window_secs",
                format!("expected between 1 and 3600 seconds, got {}", v.window_secs),
            ));
        }
        if !(v.gain.is_finite() && v.gain >= 0.0) {
            return Err(ConfigError::invalid(
                "velocity.gain",
                format!("expected a finite number >= 0, got {}", v.gain),
            ));
        }
        positive("velocity.base_concurrency", u64::from(v.base_concurrency))?;
        if v.max_concurrency < v.base_concurrency {
            return Err(ConfigError::invalid(
                "velocity.max_concurrency",
                format!(
                    "must be at least velocity.base_concurrency ({}), got {}",
                    v.base_concurrency, v.max_concurrency
                ),
            ));
        }
        for (name, weight) in v
            .weights
            .iter()
            .map(|(k, w)| (format!("velocity.weights.{k}"), *w))
            .chain([("velocity.default_weight".to_string(), v.default_weight)])
        {
            if !(weight.is_finite() && (0.0..=1000.0).contains(&weight)) {
                return Err(ConfigError::invalid(
                    name,
                    format!("expected a weight between 0 and 1000, got {weight}"),
                ));
            }
        }
        self.conversions.validate()?;
        self.outbound.validate()?;
        self.alerts.validate()?;
        self.producthunt.validate()?;
        self.tls.validate(&self.server)?;
        self.cluster.validate()?;
        let w = &self.waiting_room;
        positive("waiting_room.session_secs", w.session_secs)?;
        if !(1..=300).contains(&w.refresh_secs) {
            return Err(ConfigError::invalid(
                "waiting_room.refresh_secs",
                format!("expected 1 to 300 seconds, got {}", w.refresh_secs),
            ));
        }
        self.validate_edge()
    }

    /// The `[origin]`, `[backpressure]` and `[cache]` sections.
    fn validate_edge(&self) -> Result<(), ConfigError> {
        let o = &self.origin;
        if let Some(up) = &o.upstream {
            crate::syntax::url::upstream(up)
                .map_err(|problem| ConfigError::invalid("origin.upstream", problem))?;
        }
        positive("origin.timeout_ms", o.timeout_ms)?;
        positive("origin.queue_timeout_ms", o.queue_timeout_ms)?;
        if !(o.bypass_share > 0.0 && o.bypass_share < 1.0) {
            return Err(ConfigError::invalid(
                "origin.bypass_share",
                format!(
                    "expected a number between 0 and 1 (exclusive): the share of origin permits requests that bypass the cache may hold, got {}",
                    o.bypass_share
                ),
            ));
        }

        let b = &self.backpressure;
        if !(b.shed_factor.is_finite() && b.shed_factor >= 1.0) {
            return Err(ConfigError::invalid(
                "backpressure.shed_factor",
                format!(
                    "expected a number >= 1.0 (the factor above which non-critical paths are shed), got {}",
                    b.shed_factor
                ),
            ));
        }
        positive("backpressure.retry_after_secs", b.retry_after_secs)?;
        if b.funnel_grace_secs > MAX_FUNNEL_GRACE_SECS {
            return Err(ConfigError::invalid(
                "backpressure.funnel_grace_secs",
                format!(
                    "expected at most {MAX_FUNNEL_GRACE_SECS} (a day): how long after a funnel page view a visitor is never shed, 0 for off; got {}",
                    b.funnel_grace_secs
                ),
            ));
        }
        for (key, list) in [
            ("backpressure.critical_paths", &b.critical_paths),
            ("backpressure.low_paths", &b.low_paths),
        ] {
            for (i, pattern) in list.iter().enumerate() {
                crate::syntax::globs::path_glob(pattern)
                    .map_err(|problem| ConfigError::invalid(format!("{key}[{i}]"), problem))?;
            }
        }

        let c = &self.cache;
        positive("cache.base_ttl_secs", c.base_ttl_secs)?;
        positive("cache.min_ttl_secs", c.min_ttl_secs)?;
        if c.min_ttl_secs > c.base_ttl_secs {
            return Err(ConfigError::invalid(
                "cache.min_ttl_secs",
                format!(
                    "must not exceed cache.base_ttl_secs ({}), got {}",
                    c.base_ttl_secs, c.min_ttl_secs
                ),
            ));
        }
        if c.max_bytes < 64 * 1024 {
            return Err(ConfigError::invalid(
                "cache.max_bytes",
                format!("expected at least 65536 bytes, got {}", c.max_bytes),
            ));
        }
        positive("cache.max_object_bytes", c.max_object_bytes)?;
        if !(64..=65_536).contains(&c.max_key_bytes) {
            return Err(ConfigError::invalid(
                "cache.max_key_bytes",
                format!(
                    "expected between 64 and 65536 bytes, got {}",
                    c.max_key_bytes
                ),
            ));
        }
        if !(c.refresh_ahead_factor == 0.0
            || (c.refresh_ahead_factor.is_finite() && c.refresh_ahead_factor >= 1.0))
        {
            return Err(ConfigError::invalid(
                "cache.refresh_ahead_factor",
                format!(
                    "expected 0 (off) or a factor of at least 1, got {}",
                    c.refresh_ahead_factor
                ),
            ));
        }
        for (i, url) in c.warm_urls.iter().enumerate() {
            if !url.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("cache.warm_urls[{i}]"),
                    format!(
                        "expected a path starting with \"/\", such as \"/launch/\", got {url:?}"
                    ),
                ));
            }
        }
        crate::syntax::globs::cookie_names(&c.ignore_cookies).map_err(|(i, problem)| {
            ConfigError::invalid(format!("cache.ignore_cookies[{i}]"), problem)
        })?;
        for (event, prefixes) in &c.purge_on {
            for (i, prefix) in prefixes.iter().enumerate() {
                if !prefix.starts_with('/') {
                    return Err(ConfigError::invalid(
                        format!("cache.purge_on.{event}[{i}]"),
                        format!("expected a path prefix starting with \"/\", got {prefix:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[outbound]`: the durable queue every outbound call goes through (`outbound.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Failed attempts (other than 429) before a job moves to dead letters. Default 3.
    pub max_retries: u32,
    /// First retry delay, ms; doubles per attempt, +-40% jitter, never under
    /// `Retry-After` / `X-Rate-Limit-Reset`. Default 1200.
    pub base_delay_ms: u64,
    /// Longest backoff the doubling reaches, ms (a server's `Retry-After` may ask for more). Default 300000.
    pub max_delay_ms: u64,
    /// Requests per minute the queue sends to any one host. Default 60.
    pub host_budget_per_minute: u32,
    /// Longest wait for one attempt's answer, ms. Default 10000.
    pub timeout_ms: u64,
    /// PEM file of extra trust anchors for https targets, added to the webpki roots
    /// (a private CA). Read at startup; an unreadable or bad file stops the start.
    /// Default none.
    pub ca_file: Option<PathBuf>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            max_retries: 3,
            base_delay_ms: 1200,
            max_delay_ms: 300_000,
            host_budget_per_minute: 60,
            timeout_ms: 10_000,
            ca_file: None,
        }
    }
}

impl OutboundConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100).contains(&self.max_retries) {
            return Err(ConfigError::invalid(
                "outbound.max_retries",
                format!("expected between 1 and 100, got {}", self.max_retries),
            ));
        }
        positive("outbound.base_delay_ms", self.base_delay_ms)?;
        if self.max_delay_ms < self.base_delay_ms {
            return Err(ConfigError::invalid(
                "outbound.max_delay_ms",
                format!(
                    "must be at least outbound.base_delay_ms ({}), got {}",
                    self.base_delay_ms, self.max_delay_ms
                ),
            ));
        }
        positive(
            "outbound.host_budget_per_minute",
            u64::from(self.host_budget_per_minute),
        )?;
        positive("outbound.timeout_ms", self.timeout_ms)
    }
}

/// Let's Encrypt's production ACME directory, `tls.acme_directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[tls]`: HTTPS on the public side (`edge/tls/`). Off unless `listen` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// HTTPS listener (`0.0.0.0:443`): HTTP/2 and HTTP/1.1 by ALPN, the same admission,
    /// cache and counting as `server.listen`, which stays plain HTTP. Default none.
    pub listen: Option<SocketAddr>,
    /// Plain HTTP listener (`0.0.0.0:80`) that answers every request with a 308 to the
    /// same host and path over https. Needs `listen`. Default none.
    pub http_listen: Option<SocketAddr>,
    /// PEM certificate chain, leaf first. Reloaded on SIGHUP and when the file changes;
    /// a pair that does not load keeps the old one. Required with `listen`. Default none.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, SEC1 or PKCS#1). Default none.
    pub key_file: Option<PathBuf>,
    /// Host names to get a certificate for by ACME (`edge/tls/acme.rs`), when
    /// `cert_file` is not set. Default none.
    pub domains: Vec<String>,
    /// The ACME directory URL. Default Let's Encrypt's production directory.
    pub acme_directory: String,
    /// Contact address given to the CA with the account. Default none.
    pub acme_email: Option<String>,
    /// PEM file of CA certificates trusted for the ACME server, besides the webpki
    /// roots (a private CA; pebble's in tests). Default none.
    pub acme_ca_file: Option<PathBuf>,
    /// External account binding: the key id the CA gave. Default none.
    pub acme_eab_kid: Option<String>,
    /// External account binding: its HMAC key, base64url. Default none.
    pub acme_eab_hmac_key: Option<String>,
    /// Further ACME directories, tried in turn when the one before keeps failing.
    /// Default none.
    pub fallback_directories: Vec<String>,
    /// `Strict-Transport-Security: max-age=N` on every https answer; 0 = no header.
    /// Default 0.
    pub hsts_max_age_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: None,
            http_listen: None,
            cert_file: None,
            key_file: None,
            domains: Vec::new(),
            acme_directory: LETS_ENCRYPT.into(),
            acme_email: None,
            acme_ca_file: None,
            acme_eab_kid: None,
            acme_eab_hmac_key: None,
            fallback_directories: Vec::new(),
            hsts_max_age_secs: 0,
        }
    }
}

impl TlsConfig {
    /// True when certificates come by ACME: `listen` and `domains` set, no `cert_file`.
    pub fn acme(&self) -> bool {
        self.listen.is_some() && self.cert_file.is_none() && !self.domains.is_empty()
    }

    fn validate_acme(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        for d in &self.domains {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.parse::<std::net::IpAddr>().is_err()
                && d.split('.').count() >= 2
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(ConfigError::invalid(
                    "tls.domains",
                    format!("{d:?} is not a DNS name (no wildcards, no IP addresses, no port)"),
                ));
            }
            if !server.hosts.is_empty() && !server.hosts.iter().any(|h| h.eq_ignore_ascii_case(d)) {
                return Err(ConfigError::invalid(
                    "tls.domains",
                    format!(
                        "{d} is not in server.hosts, so its requests would get 421; add it there"
                    ),
                ));
            }
        }
        for (key, url) in std::iter::once(("tls.acme_directory", &self.acme_directory)).chain(
            self.fallback_directories
                .iter()
                .map(|u| ("tls.fallback_directories", u)),
        ) {
            if !url.starts_with("https://") {
                return Err(ConfigError::invalid(
                    key,
                    format!("expected an https:// ACME directory URL, got {url:?}"),
                ));
            }
        }
        if let Some(email) = &self.acme_email {
            if !email.contains('@') || email.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    "tls.acme_email",
                    format!("expected an email address, got {email:?}"),
                ));
            }
        }
        match (&self.acme_eab_kid, &self.acme_eab_hmac_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls.acme_eab_hmac_key",
                    "tls.acme_eab_kid needs its HMAC key (base64url) here",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls.acme_eab_kid",
                    "tls.acme_eab_hmac_key needs the key id the CA gave with it",
                ))
            }
            (Some(_), Some(key)) => {
                use base64::Engine;
                if base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(key.trim_end_matches('='))
                    .is_err()
                {
                    return Err(ConfigError::invalid(
                        "tls.acme_eab_hmac_key",
                        "not base64url (the CA's EAB HMAC key, as it gave it)",
                    ));
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    fn validate(&self, server: &ServerConfig) -> Result<(), ConfigError> {
        let Some(listen) = self.listen else {
            for (key, set) in [
                ("tls.http_listen", self.http_listen.is_some()),
                ("tls.cert_file", self.cert_file.is_some()),
                ("tls.key_file", self.key_file.is_some()),
                ("tls.domains", !self.domains.is_empty()),
                ("tls.acme_email", self.acme_email.is_some()),
                ("tls.acme_ca_file", self.acme_ca_file.is_some()),
                ("tls.acme_eab_kid", self.acme_eab_kid.is_some()),
                ("tls.acme_eab_hmac_key", self.acme_eab_hmac_key.is_some()),
                (
                    "tls.fallback_directories",
                    !self.fallback_directories.is_empty(),
                ),
                ("tls.hsts_max_age_secs", self.hsts_max_age_secs > 0),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        key,
                        "has no effect without tls.listen; set tls.listen (e.g. \"0.0.0.0:443\")",
                    ));
                }
            }
            return Ok(());
        };
        match (&self.cert_file, &self.key_file) {
            (Some(_), Some(_)) if !self.domains.is_empty() => {
                return Err(ConfigError::invalid(
                    "tls.domains",
                    "orders certificates by ACME, but tls.cert_file is set too: keep one of the two",
                ))
            }
            (Some(_), Some(_)) => {}
            (None, None) if !self.domains.is_empty() => self.validate_acme(server)?,
            (None, _) => {
                return Err(ConfigError::invalid(
                    "tls.cert_file",
                    "tls.listen needs a certificate: set tls.cert_file and tls.key_file (PEM), or tls.domains to get one by ACME",
                ))
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls.key_file",
                    "tls.cert_file needs its private key in tls.key_file (PEM)",
                ))
            }
        }
        let taken = [
            ("server.listen", server.listen),
            ("server.admin_listen", server.admin_listen),
        ];
        for (key, addr) in taken {
            if addr == listen && listen.port() != 0 {
                return Err(ConfigError::invalid(
                    "tls.listen",
                    format!("must differ from {key}, both are {listen}"),
                ));
            }
        }
        if let Some(http) = self.http_listen {
            if http.port() != 0 {
                for (key, addr) in taken.iter().chain([("tls.listen", listen)].iter()) {
                    if *addr == http {
                        return Err(ConfigError::invalid(
                            "tls.http_listen",
                            format!("must differ from {key}, both are {http}"),
                        ));
                    }
                }
            }
        }
        if self.hsts_max_age_secs > 2 * 365 * 86_400 {
            return Err(ConfigError::invalid(
                "tls.hsts_max_age_secs",
                format!(
                    "expected at most two years (63072000), got {}",
                    self.hsts_max_age_secs
                ),
            ));
        }
        Ok(())
    }
}

/// `[alerts]`: Slack-compatible incoming webhooks told about launch-day events (`alerts.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Incoming-webhook URLs (`http://` or `https://`); each gets every message. Default none (off).
    pub slack_webhook_urls: Vec<String>,
    /// Factors whose crossing, either way, sends a message. Default `[2.0, 10.0]`.
    pub factor_thresholds: Vec<f64>,
    /// Shortest time between two messages about the same signal, seconds. Default 300.
    pub min_interval_secs: u64,
    /// Free space on the data dir's disk below which a message is sent, percent. Default 10.
    pub disk_free_percent: f64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            slack_webhook_urls: Vec::new(),
            factor_thresholds: vec![2.0, 10.0],
            min_interval_secs: 300,
            disk_free_percent: 10.0,
        }
    }
}

impl AlertsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, url) in self.slack_webhook_urls.iter().enumerate() {
            crate::syntax::url::target(url).map_err(|problem| {
                ConfigError::invalid(format!("alerts.slack_webhook_urls[{i}]"), problem)
            })?;
        }
        for (i, t) in self.factor_thresholds.iter().enumerate() {
            if !(t.is_finite() && *t > 1.0) {
                return Err(ConfigError::invalid(
                    format!("alerts.factor_thresholds[{i}]"),
                    format!("expected a factor above 1.0, got {t}"),
                ));
            }
        }
        if !(self.disk_free_percent.is_finite() && (0.0..100.0).contains(&self.disk_free_percent)) {
            return Err(ConfigError::invalid(
                "alerts.disk_free_percent",
                format!(
                    "expected a percentage from 0 to below 100, got {}",
                    self.disk_free_percent
                ),
            ));
        }
        Ok(())
    }
}

/// `[producthunt]`: the poller of Product Hunt's GraphQL API (`producthunt.rs`); off
/// until a token and `post_slug` are set.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducthuntConfig {
    /// API token (OAuth bearer). Prefer `token_file`, the `producthunt_token`
    /// credential or `LAUNCHGUARD_PRODUCTHUNT_TOKEN`. Default none.
    pub token: Option<String>,
    /// File whose first line is the token; a relative name is looked up in `$CREDENTIALS_DIRECTORY`.
    pub token_file: Option<PathBuf>,
    /// The post to watch: the last part of its URL (`producthunt.com/posts/<slug>`). Default none.
    pub post_slug: Option<String>,
    /// GraphQL endpoint. Default `https://api.producthunt.com/v2/api/graphql`.
    pub api_url: String,
    /// Time between polls while the API reports no budget (no `X-Rate-Limit-*`
    /// headers), ms; with one, the budget sets the pace. Default 60000.
    pub poll_interval_ms: u64,
    /// Shortest time between polls, ms; the budget is spent at most this often. Default 2000.
    pub min_poll_interval_ms: u64,
}

impl Default for ProducthuntConfig {
    fn default() -> Self {
        ProducthuntConfig {
            token: None,
            token_file: None,
            post_slug: None,
            api_url: "https://api.producthunt.com/v2/api/graphql".into(),
            poll_interval_ms: 60_000,
            min_poll_interval_ms: 2_000,
        }
    }
}

impl ProducthuntConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        crate::syntax::url::target(&self.api_url)
            .map_err(|problem| ConfigError::invalid("producthunt.api_url", problem))?;
        if let Some(slug) = &self.post_slug {
            if slug.is_empty()
                || !slug
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::invalid(
                    "producthunt.post_slug",
                    format!("expected the last part of the post's URL, such as \"my-product\", got {slug:?}"),
                ));
            }
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "producthunt.token",
                "is empty; remove it or give it a value",
            ));
        }
        positive(
            "producthunt.min_poll_interval_ms",
            self.min_poll_interval_ms,
        )?;
        if self.poll_interval_ms < self.min_poll_interval_ms {
            return Err(ConfigError::invalid(
                "producthunt.poll_interval_ms",
                format!(
                    "must be at least producthunt.min_poll_interval_ms ({}), got {}",
                    self.min_poll_interval_ms, self.poll_interval_ms
                ),
            ));
        }
        Ok(())
    }
}

/// `[conversions]`: what counts as a visit and a conversion, and how a launch day is
/// priced and bucketed (DESIGN.md, Conversions and analytics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversionsConfig {
    /// Goals `POST /api/convert` accepts; any other is a 400. At most 8. Default `["signup"]`.
    pub goals: Vec<String>,
    /// Paths whose HTML page views count as visits: path globs, the language of
    /// `backpressure.critical_paths` (`/` exact, `/launch/*` also covers `/launch`).
    /// Default `["/launch/*"]`.
    pub funnel_paths: Vec<String>,
    /// How often the counters are written to the store as one batch, ms. Default 5000.
    pub flush_interval_ms: u64,
    /// What one visit costs (ads, sponsorship), USD; `spend = visits * this`. Default 12.50.
    pub cost_per_visit_usd: f64,
    /// Lifetime value of one conversion, USD; `revenue = conversions * this`. Default 48.0.
    pub ltv_usd: f64,
    /// IANA time zone whose midnights delimit a launch day. Default `America/Los_Angeles`.
    pub timezone: String,
    /// Days the per-batch metrics rows (and the per-visitor marks that make unique
    /// visitors and conversions count once) are kept; daily totals are kept forever.
    /// Default 400.
    pub retention_days: u32,
    /// Conversion beacons one client (an address; IPv6 by its /64) may send a minute,
    /// as many at once; past it, 429. Default 30.
    pub beacons_per_minute: u32,
}

impl Default for ConversionsConfig {
    fn default() -> Self {
        ConversionsConfig {
            goals: vec!["signup".into()],
            funnel_paths: vec!["/launch/*".into()],
            flush_interval_ms: 5000,
            cost_per_visit_usd: 12.50,
            ltv_usd: 48.0,
            timezone: "America/Los_Angeles".into(),
            retention_days: 400,
            beacons_per_minute: 30,
        }
    }
}

/// The most goals `conversions.goals` may list: the counters' shard is 16 cells of 8 bytes,
/// exactly one 128-byte padded line.
pub const MAX_GOALS: usize = 8;
/// Longest `backpressure.funnel_grace_secs`: a day. A signup takes minutes; a longer
/// grace would only let more of the crowd past shedding.
pub const MAX_FUNNEL_GRACE_SECS: u64 = 86_400;

impl ConversionsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let max = MAX_GOALS;
        if self.goals.is_empty() || self.goals.len() > max {
            return Err(ConfigError::invalid(
                "conversions.goals",
                format!(
                    "expected between 1 and {max} goals, got {}",
                    self.goals.len()
                ),
            ));
        }
        for (i, goal) in self.goals.iter().enumerate() {
            let ok = (1..=64).contains(&goal.len())
                && goal
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ConfigError::invalid(
                    format!("conversions.goals[{i}]"),
                    format!("expected 1-64 letters, digits, '_' or '-', got {goal:?}"),
                ));
            }
            if self.goals[..i].contains(goal) {
                return Err(ConfigError::invalid(
                    format!("conversions.goals[{i}]"),
                    format!("{goal:?} is listed twice"),
                ));
            }
        }
        for (i, path) in self.funnel_paths.iter().enumerate() {
            crate::syntax::globs::path_glob(path).map_err(|problem| {
                ConfigError::invalid(format!("conversions.funnel_paths[{i}]"), problem)
            })?;
        }
        if !(100..=3_600_000).contains(&self.flush_interval_ms) {
            return Err(ConfigError::invalid(
                "conversions.flush_interval_ms",
                format!(
                    "expected between 100 and 3600000 ms, got {}",
                    self.flush_interval_ms
                ),
            ));
        }
        for (key, v) in [
            ("conversions.cost_per_visit_usd", self.cost_per_visit_usd),
            ("conversions.ltv_usd", self.ltv_usd),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::invalid(
                    key,
                    format!("expected a finite amount >= 0, got {v}"),
                ));
            }
        }
        if let Err(e) = jiff::tz::TimeZone::get(&self.timezone) {
            return Err(ConfigError::invalid(
                "conversions.timezone",
                format!(
                    "unknown time zone {:?} ({e}); use an IANA name such as \"America/Los_Angeles\" or \"UTC\"",
                    self.timezone
                ),
            ));
        }
        positive("conversions.retention_days", u64::from(self.retention_days))?;
        positive(
            "conversions.beacons_per_minute",
            u64::from(self.beacons_per_minute),
        )?;
        Ok(())
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be greater than 0"));
    }
    Ok(())
}

/// A TOML syntax error, with the line it was found on.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let problem = clean_message(e.message());
    match line {
        Some(line) => ConfigError::invalid(format!("config line {line}"), problem),
        None => ConfigError::invalid("config", problem),
    }
}

/// serde's messages are fine, but they end in newlines and sometimes a period.
fn clean_message(message: &str) -> String {
    message.trim().trim_end_matches('.').replace('\n', " ")
}

/// Shows that secrets are set, and how many, never their values.
struct Redacted(usize);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} redacted>", self.0)
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("path", &self.path)
            .field("secrets", &Redacted(self.secrets.len()))
            .field("secret_file", &self.secret_file)
            .field("durability", &self.durability)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("tolerance_secs", &self.tolerance_secs)
            .field("dedup_ttl_secs", &self.dedup_ttl_secs)
            .field("ring_capacity", &self.ring_capacity)
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

impl std::fmt::Debug for ProducthuntConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducthuntConfig")
            .field("token", &self.token.as_ref().map(|_| Redacted(1)))
            .field("token_file", &self.token_file)
            .field("post_slug", &self.post_slug)
            .field("api_url", &self.api_url)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("min_poll_interval_ms", &self.min_poll_interval_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn acme_keys_are_checked_and_named() {
        let base = "[tls]\nlisten = \"127.0.0.1:8443\"\n";
        let ok = Config::parse(&format!("{base}domains = [\"example.com\"]\n")).unwrap();
        assert!(ok.tls.acme());
        assert_eq!(ok.tls.acme_directory, LETS_ENCRYPT);
        for (extra, key) in [
            ("domains = [\"*.example.com\"]", "tls.domains"),
            ("domains = [\"127.0.0.1\"]", "tls.domains"),
            (
                "domains = [\"example.com\"]\ncert_file = \"a\"\nkey_file = \"b\"",
                "tls.domains",
            ),
            (
                "domains = [\"example.com\"]\nacme_directory = \"http://ca/dir\"",
                "tls.acme_directory",
            ),
            (
                "domains = [\"example.com\"]\nfallback_directories = [\"ca\"]",
                "tls.fallback_directories",
            ),
            (
                "domains = [\"example.com\"]\nacme_email = \"nobody\"",
                "tls.acme_email",
            ),
            (
                "domains = [\"example.com\"]\nacme_eab_kid = \"kid\"",
                "tls.acme_eab_hmac_key",
            ),
            (
                "domains = [\"example.com\"]\nacme_eab_kid = \"k\"\nacme_eab_hmac_key = \"*!\"",
                "tls.acme_eab_hmac_key",
            ),
        ] {
            let e = err(&format!("{base}{extra}\n"));
            assert!(e.starts_with(&format!("{key}:")), "{extra}: {e}");
        }
        let e = err("[tls]\ndomains = [\"example.com\"]\n");
        assert!(e.starts_with("tls.domains:"), "{e}");
        let e = err("[server]\nhosts = [\"a.example.com\"]\n[tls]\nlisten = \"127.0.0.1:8443\"\ndomains = [\"b.example.com\"]\n");
        assert!(
            e.starts_with("tls.domains:") && e.contains("server.hosts"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_is_the_demo() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.webhook.durability, Durability::Fsync);
        assert_eq!(c.velocity.cap(), 5.0);
        assert_eq!(c.velocity.weight_of("upvote"), 1.2);
        assert_eq!(c.velocity.weight_of("something_else"), 1.0);
    }

    #[test]
    fn unknown_keys_are_named_with_their_section() {
        let e = err("[webhook]\nsecretz = [\"x\"]\n");
        assert!(e.starts_with("webhook"), "{e}");
        assert!(e.contains("unknown field `secretz`"), "{e}");
        let e = err("[nonsense]\na = 1\n");
        assert!(e.contains("unknown field `nonsense`"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let e = err("[webhook]\ndurability = \"sometimes\"\n");
        assert!(e.starts_with("webhook.durability:"), "{e}");
        assert!(e.contains("\"sometimes\""), "{e}");

        let e = err("[server]\nlisten = \"localhost-ish\"\n");
        assert!(e.starts_with("server.listen:"), "{e}");

        let e = err("[velocity]\ngain = -1.0\n");
        assert_eq!(e, "velocity.gain: expected a finite number >= 0, got -1");

        let e = err("[velocity]\nbase_concurrency = 100\nmax_concurrency = 50\n");
        assert!(e.starts_with("velocity.max_concurrency:"), "{e}");

        let e = err("[velocity.weights]\nupvote = \"lots\"\n");
        assert!(e.starts_with("velocity.weights.upvote:"), "{e}");

        let e = err("[webhook]\ntolerance_secs = \"5m\"\n");
        assert!(e.starts_with("webhook.tolerance_secs:"), "{e}");
        assert!(e.contains("5m"), "{e}");
    }

    #[test]
    fn the_dedup_ttl_must_be_more_than_twice_the_tolerance() {
        let e = err("[webhook]\ndedup_ttl_secs = 600\n");
        assert!(e.starts_with("webhook.dedup_ttl_secs:"), "{e}");
        assert!(
            e.contains("twice webhook.tolerance_secs (300 s), got 600"),
            "{e}"
        );
        let e = err("[webhook]\ntolerance_secs = 50000\n");
        assert!(e.starts_with("webhook.dedup_ttl_secs:"), "{e}");
        assert!(Config::parse("[webhook]\ndedup_ttl_secs = 601\n").is_ok());
    }

    #[test]
    fn the_shipped_config_file_is_valid_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/launchguard.toml");
        let shipped = Config::load(&path).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn conversions_errors_name_the_key() {
        let e = err("[conversions]\ntimezone = \"Mars/Olympus_Mons\"\n");
        assert!(e.starts_with("conversions.timezone:"), "{e}");
        assert!(e.contains("Mars/Olympus_Mons"), "{e}");
        let e = err("[conversions]\ngoals = []\n");
        assert!(e.starts_with("conversions.goals:"), "{e}");
        let e = err("[conversions]\ngoals = [\"signup\", \"sign up\"]\n");
        assert!(e.starts_with("conversions.goals[1]:"), "{e}");
        let e = err("[conversions]\nfunnel_paths = [\"launch/*\"]\n");
        assert!(e.starts_with("conversions.funnel_paths[0]:"), "{e}");
        let e = err("[conversions]\nflush_interval_ms = 5\n");
        assert!(e.starts_with("conversions.flush_interval_ms:"), "{e}");
        let e = err("[conversions]\nltv_usd = -1.0\n");
        assert!(e.starts_with("conversions.ltv_usd:"), "{e}");
        let e = err("[conversions]\nretention_days = 0\n");
        assert!(e.starts_with("conversions.retention_days:"), "{e}");
        let e = err("[webhook]\nretention_days = 0\n");
        assert!(e.starts_with("webhook.retention_days:"), "{e}");
        let c = Config::parse("[conversions]\ntimezone = \"Europe/Paris\"\n").unwrap();
        assert_eq!(c.conversions.timezone, "Europe/Paris");
    }

    #[test]
    fn the_shipped_config_file_names_every_key() {
        // Every field of every section appears in the shipped file, so operators see them all.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/launchguard.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let debug = format!("{:#?}", Config::default());
        let mut section = String::new();
        for line in debug.lines() {
            let t = line.trim();
            if let Some(name) = t
                .strip_suffix(": ServerConfig {")
                .or(t.strip_suffix(": OriginConfig {"))
                .or(t.strip_suffix(": WebhookConfig {"))
                .or(t.strip_suffix(": VelocityConfig {"))
                .or(t.strip_suffix(": BackpressureConfig {"))
                .or(t.strip_suffix(": CacheConfig {"))
                .or(t.strip_suffix(": ConversionsConfig {"))
                .or(t.strip_suffix(": OutboundConfig {"))
                .or(t.strip_suffix(": AlertsConfig {"))
                .or(t.strip_suffix(": ProducthuntConfig {"))
                .or(t.strip_suffix(": TlsConfig {"))
                .or(t.strip_suffix(": WaitingRoomConfig {"))
                .or(t.strip_suffix(": ClusterConfig {"))
            {
                section = name.to_string();
                assert!(
                    text.contains(&format!("[{section}]")),
                    "[{section}] missing"
                );
                continue;
            }
            if line.starts_with("        ") && !line.starts_with("         ") {
                if let Some((field, _)) = t.split_once(": ") {
                    let shown = text.lines().any(|l| {
                        let l = l.trim_start_matches('#').trim_start();
                        l.starts_with(&format!("{field} "))
                            || l.starts_with(&format!("[{section}.{field}]"))
                    });
                    assert!(shown, "{section}.{field} is not in data/launchguard.toml");
                }
            }
        }
    }

    #[test]
    fn cluster_errors_name_the_key() {
        assert!(!Config::default().cluster.enabled());
        let e = err("[cluster]\nnats_url = \"http://127.0.0.1:4222\"\n");
        assert!(e.starts_with("cluster.nats_url:"), "{e}");
        let e = err("[cluster]\nnats_url = \"nats://a:4222, nats://\"\n");
        assert!(e.starts_with("cluster.nats_url:"), "{e}");
        let e = err("[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nnode_id = \"box 1\"\n");
        assert!(e.starts_with("cluster.node_id:"), "{e}");
        let e = err("[cluster]\nnode_id = \"box-1\"\n");
        assert!(e.starts_with("cluster.node_id:"), "{e}");
        let e = err("[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\ncredentials_file = \"/nonexistent/x.creds\"\n");
        assert!(e.starts_with("cluster.credentials_file:"), "{e}");
        let c = Config::parse(
            "[cluster]\nnats_url = \"nats://127.0.0.1:4222,tls://10.0.0.2:4222\"\nnode_id = \"box_1\"\n",
        )
        .unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.node(), "box_1");
        let unnamed = Config::parse("[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n").unwrap();
        let node = unnamed.cluster.node();
        assert!(
            !node.is_empty() && node.len() <= 64 && node.chars().all(is_node_char),
            "{node}"
        );
    }

    #[test]
    fn edge_sections_name_their_keys() {
        let e = err("[origin]\nupstream = \"ftp://example.com\"\n");
        assert!(
            e.starts_with("origin.upstream:") && e.contains("https://"),
            "{e}"
        );
        let e = err("[origin]\nupstream = \"https://example.com/app\"\n");
        assert!(e.starts_with("origin.upstream:"), "{e}");
        let c = Config::parse(
            "[origin]\nupstream = \"https://example.com\"\nca_file = \"/etc/ssl/private-ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.origin.upstream.as_deref(), Some("https://example.com"));
        assert_eq!(
            c.origin.ca_file.as_deref(),
            Some(Path::new("/etc/ssl/private-ca.pem"))
        );
        let e = err("[origin]\ntimeout_ms = 0\n");
        assert_eq!(e, "origin.timeout_ms: must be greater than 0");
        let e = err("[backpressure]\nshed_factor = 0.5\n");
        assert!(e.starts_with("backpressure.shed_factor:"), "{e}");
        let e = err("[backpressure]\nlow_paths = [\"/ok/*\", \"assets\"]\n");
        assert!(e.starts_with("backpressure.low_paths[1]:"), "{e}");
        let e = err("[backpressure]\nfunnel_grace_secs = 86401\n");
        assert!(e.starts_with("backpressure.funnel_grace_secs:"), "{e}");
        let e = err("[backpressure]\nfunnel_grace_secs = -1\n");
        assert!(e.starts_with("backpressure.funnel_grace_secs"), "{e}");
        let c = Config::parse("[backpressure]\nfunnel_grace_secs = 0\n").unwrap();
        assert_eq!(c.backpressure.funnel_grace_secs, 0, "0 is off, and valid");
        let e = err("[cache]\nmin_ttl_secs = 90\n");
        assert!(e.starts_with("cache.min_ttl_secs:"), "{e}");
        let e = err("[cache]\nmax_bytes = 10\n");
        assert!(e.starts_with("cache.max_bytes:"), "{e}");
        let e = err("[cache]\nwarm_urls = [\"launch\"]\n");
        assert!(e.starts_with("cache.warm_urls[0]:"), "{e}");
        let e = err("[cache]\nrefresh_ahead_factor = 0.5\n");
        assert!(e.starts_with("cache.refresh_ahead_factor:"), "{e}");
        let e = err("[cache.purge_on]\nupvote = [\"launch\"]\n");
        assert!(e.starts_with("cache.purge_on.upvote[0]:"), "{e}");
        let e = err("[cache]\nttl = 5\n");
        assert!(e.contains("unknown field `ttl`"), "{e}");
    }

    #[test]
    fn the_cache_safety_keys_name_themselves() {
        let e = err("[server]\nhosts = [\"example.com\", \"example.com:443\"]\n");
        assert!(
            e.starts_with("server.hosts[1]:") && e.contains("port"),
            "{e}"
        );
        let e = err("[server]\nhosts = [\"https://example.com\"]\n");
        assert!(e.starts_with("server.hosts[0]:"), "{e}");
        let e = err("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb\"]\n");
        assert!(e.starts_with("server.trusted_proxies[1]:"), "{e}");
        let e = err("[origin]\nbypass_share = 1.0\n");
        assert!(e.starts_with("origin.bypass_share:"), "{e}");
        let e = err("[cache]\nquery = \"random\"\n");
        assert!(
            e.starts_with("cache.query:") && e.contains("\"ignore\""),
            "{e}"
        );
        let e = err("[cache]\nquery = [\"a=b\"]\n");
        assert!(e.starts_with("cache.query:"), "{e}");
        let e = err("[cache]\nignore_cookies = [\"_ga*\", \"a;b\"]\n");
        assert!(e.starts_with("cache.ignore_cookies[1]:"), "{e}");
        let c = Config::parse(
            "[server]\nhosts = [\"Example.com\", \"*.example.com\"]\n[cache]\nquery = [\"page\"]\nignore_cookies = []\n",
        )
        .unwrap();
        assert_eq!(c.cache.query, QueryMode::Keep(vec!["page".into()]));
        assert!(c.cache.ignore_cookies.is_empty());
        assert_eq!(
            Config::parse("[cache]\nquery = \"ignore\"\n")
                .unwrap()
                .cache
                .query,
            QueryMode::Ignore
        );
        assert_eq!(Config::default().cache.query, QueryMode::Sorted);
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let c = Config::parse(
            "[webhook]\nsecrets = [\"whsec-one-ABCDEF\", \"two-GHIJKL\"]\n\
             [producthunt]\ntoken = \"ph-token-MNOPQR\"\npost_slug = \"my-product\"\n",
        )
        .unwrap();
        let shown = format!("{c:?} {c:#?}");
        for secret in ["ABCDEF", "GHIJKL", "MNOPQR"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("<2 redacted>"), "{shown}");
        assert!(shown.contains("my-product"), "{shown}");
    }

    #[test]
    fn syntax_errors_give_a_line() {
        let e = err("[server]\nlisten = \n");
        assert!(e.starts_with("config line 2:"), "{e}");
    }
}
