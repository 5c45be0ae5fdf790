//! `AppState` and the running appliance: build the state once, bind both listeners,
//! start the background tasks, and shut all of it down in order.
//!
//! Startup: resolve secrets → open the store → rebuild the velocity window from the
//! events of the last window → restore a persisted pin → start the committer and the
//! pump → bind the listeners → serve.
//! Shutdown (SIGTERM/SIGINT or `Running::shutdown`): readiness goes 503 → listeners
//! stop accepting and in-flight requests finish within `server.shutdown_grace_ms`
//! (then they are cut) → the pump drains and the counters are flushed → a final
//! fsync → exit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, ConfigError, Durability};
use crate::edge::cache::purges::EventPurges;
use crate::edge::front::Front;
use crate::edge::server::{self, Connections};
use crate::edge::{self, Edge};
use crate::ingest::commit::Committer;
use crate::ingest::factor::Factor;
use crate::ingest::producthunt::Poller;
use crate::ingest::pump::{Pump, Purges};
use crate::ingest::ring::Ring;
use crate::ingest::store::{Store, StoreError};
use crate::ingest::velocity::Window;
use crate::ingest::webhook::signature::Keys;
use crate::ingest::webhook::{self, Ingestor};
use crate::insight::counters::{self, Conversions};
use crate::insight::grace::FunnelGrace;
use crate::insight::history::History;
use crate::insight::live::{self, LiveFeed};
use crate::insight::visitor::Visitors;
use crate::ops::admin::{self, AdminToken};
use crate::ops::alerts::{Alerter, Alerts};
use crate::ops::outbound::Outbound;
use crate::secrets::{self, Env};
use crate::telemetry;

pub use crate::ingest::factor::{format_factor, SCALE_FACTOR_HEADER};

/// Everything a handler may need, built once. A clone is one reference count: axum's
/// `State` extractor clones it for every request that asks for it.
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

// What the handlers below `app` read, each built from the whole state here, so no
// wing imports `app` (axum's `FromRef`).
impl axum::extract::FromRef<AppState> for webhook::WebhookState {
    fn from_ref(state: &AppState) -> Self {
        state.webhook.clone()
    }
}

impl axum::extract::FromRef<AppState> for admin::AdminState {
    fn from_ref(state: &AppState) -> Self {
        admin::AdminState {
            config: state.config.clone(),
            store: state.store.clone(),
            factor: state.factor.clone(),
            clock: state.clock.clone(),
            admin_token: state.admin_token.clone(),
            metrics: state.metrics.clone(),
            shutting_down: state.shutting_down.clone(),
            connections: state.connections.clone(),
            certs: state.certs.clone(),
            waiting_room: state.edge.waiting_room().cloned(),
            control: state.control.clone(),
        }
    }
}

impl axum::extract::FromRef<AppState> for LiveFeed {
    fn from_ref(state: &AppState) -> LiveFeed {
        state.live.clone()
    }
}

impl axum::extract::FromRef<AppState> for Edge {
    fn from_ref(state: &AppState) -> Edge {
        state.edge.clone()
    }
}

impl axum::extract::FromRef<AppState> for Outbound {
    fn from_ref(state: &AppState) -> Outbound {
        state.outbound.clone()
    }
}

impl axum::extract::FromRef<AppState> for crate::insight::analytics::Reports {
    fn from_ref(state: &AppState) -> Self {
        crate::insight::analytics::Reports {
            conversions: state.conversions.clone(),
            config: state.config.clone(),
            clock: state.clock.clone(),
        }
    }
}

impl axum::extract::FromRef<AppState> for counters::BeaconState {
    fn from_ref(state: &AppState) -> Self {
        counters::BeaconState {
            conversions: state.conversions.clone(),
            visitors: state.visitors.clone(),
            config: state.config.clone(),
            clock: state.clock.clone(),
            grace: state.grace.clone(),
        }
    }
}

/// The handles behind [`AppState`]; each is itself a handle over shared state.
pub struct Handles {
    pub config: Arc<Config>,
    pub store: Store,
    pub ring: Ring,
    pub factor: Factor,
    pub ingestor: Arc<Ingestor>,
    /// The webhook handler's state, built once (it is cloned per request).
    pub webhook: webhook::WebhookState,
    pub committer: Committer,
    pub clock: Clock,
    pub admin_token: Option<AdminToken>,
    pub metrics: PrometheusHandle,
    pub shutting_down: Arc<AtomicBool>,
    /// Sharded counters (visits, conversions, requests, ...) and their history.
    pub conversions: Conversions,
    /// The visitor cookie, the once-a-day marks and the beacon budget (`visitor.rs`).
    pub visitors: Visitors,
    /// Admission, edge cache and origin for every public request but the webhook.
    pub edge: Edge,
    /// The funnel grace (`grace.rs`), when `backpressure.funnel_grace_secs` is on.
    pub grace: Option<FunnelGrace>,
    /// The dashboard's live feed (`/api/live`).
    pub live: LiveFeed,
    /// The durable queue of outbound calls (`outbound.rs`).
    pub outbound: Outbound,
    /// Launch-day messages (`alerts.rs`).
    pub alerts: Alerts,
    /// The Product Hunt poller, when a token and a post slug are set.
    pub producthunt: Option<Poller>,
    /// Live counts of the public listener's connections (open, parked).
    pub connections: Connections,
    /// The certificate of `tls.listen`, when HTTPS is on.
    pub certs: Option<crate::edge::tls::Certs>,
    /// The ACME side of `tls.listen`, when its certificates come by ACME.
    pub acme: Option<crate::edge::tls::acme::Acme>,
    /// This node's handle on the cluster, when `[cluster]` is on.
    pub(crate) cluster: Option<crate::ops::cluster::Cluster>,
    /// What applies and shares the operator's pin, purges and warm-ups, in a cluster.
    pub(crate) control: Option<crate::ops::cluster::control::Control>,
}

/// Why the appliance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] crate::ops::cluster::ClusterError),
    #[error("{key}: cannot listen on {addr}: {source}; pick a free address or stop what holds it")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How to build the app beyond the config: the clock and the environment.
#[derive(Debug, Clone)]
pub struct Options {
    pub clock: Clock,
    pub env: Env,
    /// How often the pump wakes without events, to slide the window.
    pub pump_tick: Duration,
    /// How often expired dedup entries are swept.
    pub sweep_every: Duration,
    /// How often the dashboard's live feed takes a sample.
    pub live_every: Duration,
    /// Longest sleep of the outbound worker between looks at the queue.
    pub outbound_tick: Duration,
    /// How often the alert signals are looked at.
    pub alerts_every: Duration,
    /// Longest sleep of the Product Hunt poller between looks at the clock.
    pub producthunt_tick: Duration,
    /// How often refresh-ahead looks at the factor and the cached funnel pages.
    pub refresh_ahead_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Clock::system(),
            env: Env::from_process(),
            pump_tick: Duration::from_millis(250),
            sweep_every: Duration::from_secs(60),
            live_every: Duration::from_secs(1),
            outbound_tick: Duration::from_secs(1),
            alerts_every: Duration::from_secs(1),
            producthunt_tick: Duration::from_secs(1),
            refresh_ahead_every: Duration::from_secs(1),
        }
    }
}

/// A started appliance.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// `tls.listen`'s bound address, when HTTPS is on.
    pub tls_addr: Option<SocketAddr>,
    /// `tls.http_listen`'s bound address (the redirect to https), when set.
    pub http_addr: Option<SocketAddr>,
    pub state: AppState,
    http_shutdown: CancellationToken,
    /// Drops every connection, in-flight requests included, after the grace period.
    http_cut: CancellationToken,
    background_shutdown: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    /// Ends once every `AppState` clone (and so every committer handle) is gone.
    committer: JoinHandle<()>,
}

/// Builds the state, binds both listeners and starts serving.
pub async fn start(config: Config, opts: Options) -> Result<Running, StartError> {
    config.validate()?;
    let metrics = telemetry::recorder();
    let secrets = secrets::webhook_secrets(&config, &opts.env)?;
    let admin_token = secrets::admin_token(&config, &opts.env)?.map(|t| AdminToken::new(&t));
    let producthunt_token = secrets::producthunt_token(&config, &opts.env)?;
    if config.origin.upstream.is_none() && !config.origin.static_dir.is_dir() {
        return Err(ConfigError::invalid(
            "origin.static_dir",
            format!(
                "{} is not a directory; point it at the site to serve",
                config.origin.static_dir.display()
            ),
        )
        .into());
    }
    let outbound_tls = crate::client::tls_config(&config.outbound)?;

    let store = Store::open(&config.server.data_dir)?;
    let clock = opts.clock.clone();
    let now = clock.now_ms();

    // Rebuild the window from what the log holds, so a restart mid-launch keeps its factor.
    // The poller stores a vote at its createdAt, up to one window before it was
    // ingested, so the log is in time order only to within a window: walk back two,
    // and let the window drop what is older than one.
    let mut window = Window::new(&config.velocity, now);
    let window_ms = u64::from(config.velocity.window_secs) * 1000;
    let in_window = store
        .events_since(now.saturating_sub(2 * window_ms))?
        .iter()
        .filter(|ev| window.record(ev.received_ms, ev.weight_milli, now))
        .count();
    let factor = Factor::new();
    let public_listener = bind("server.listen", config.server.listen).await?;
    let admin_listener = bind("server.admin_listen", config.server.admin_listen).await?;
    let public_addr = public_listener
        .local_addr()
        .expect("bound socket has an address");
    let admin_addr = admin_listener
        .local_addr()
        .expect("bound socket has an address");
    let tls = crate::edge::tls::from_config(&config.tls)
        .map_err(|e| ConfigError::invalid(e.key(), e.to_string()))?;
    let acme = match &tls {
        Some((certs, _)) if config.tls.acme() => Some(crate::edge::tls::acme::Acme::new(
            &config.tls,
            &config.server.data_dir,
            certs.clone(),
            clock.clone(),
        )?),
        _ => None,
    };
    let tls_listener = match config.tls.listen {
        Some(addr) if tls.is_some() => Some(bind("tls.listen", addr).await?),
        _ => None,
    };
    let http_listener = match config.tls.http_listen {
        Some(addr) if tls.is_some() => Some(bind("tls.http_listen", addr).await?),
        _ => None,
    };
    let tls_addr = tls_listener
        .as_ref()
        .map(|l| l.local_addr().expect("bound socket has an address"));
    let http_addr = http_listener
        .as_ref()
        .map(|l| l.local_addr().expect("bound socket has an address"));
    let front = Front::new(
        &config.server.hosts,
        &config.server.trusted_proxies,
        &own_host(public_addr),
        "http",
        Some(factor.clone()),
    )
    .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
    let front_primary = front.primary_host().clone();
    let mut edge = Edge::new(
        &config,
        factor.clone(),
        clock.clone(),
        front_primary.clone(),
    )?;
    let cluster = match config.cluster.enabled() {
        true => Some(
            crate::ops::cluster::Cluster::connect(&config.cluster, config.webhook.dedup_ttl_secs)
                .await?,
        ),
        false => None,
    };
    // Before anything signs a cookie: the cluster's cookie keys, so a cookie made on
    // one node is honoured on every other.
    let mut keys_pending = false;
    if let Some(cluster) = &cluster {
        let shared = match cluster.connected() {
            false => Err("NATS is unreachable at startup".to_string()),
            true => tokio::time::timeout(
                Duration::from_secs(3),
                crate::ops::cluster::keys::share(cluster, &store),
            )
            .await
            .unwrap_or_else(|_| Err("JetStream did not answer".into())),
        };
        match shared {
            Ok(adopted) if adopted.is_empty() => {}
            Ok(adopted) => {
                tracing::info!(keys = ?adopted, "cluster: signing cookies with the cluster's keys")
            }
            Err(e) => {
                keys_pending = true;
                tracing::warn!(
                    "cluster: cannot take the cluster's cookie keys ({e}); this node signs with its own, honoured only here, until NATS answers"
                )
            }
        }
    }
    if config.waiting_room.enabled {
        let name = crate::ingest::store::trees::META_WAITING_ROOM_KEY;
        let room = crate::edge::waiting::Room::new(
            &config.waiting_room,
            &store.secret_key(name)?,
            &store.retired_keys(name)?,
            clock.clone(),
            edge.cache().origin_limit().clone(),
        )?;
        edge = edge.with_waiting_room(room);
    }
    if let Some(pin) = store.load_pin()? {
        if pin.until_ms > now {
            tracing::info!(factor = pin.factor, "restored the operator's factor pin");
        }
        factor.pin(pin, now);
    }
    factor.set_computed(window.factor(), window.velocity(), now);

    let counters = Conversions::new(
        &config.conversions,
        History::open(&store)?,
        factor.clone(),
        now,
    )?;
    // In a cluster, the counts every node may make of one visitor are claimed, so
    // one node keeps each (`ops::cluster::claims`).
    let counters = match &cluster {
        Some(_) => counters.with_claims(crate::insight::claims::Claims::new()),
        None => counters,
    };

    let visitors = Visitors::open(
        &store,
        config.conversions.beacons_per_minute,
        counters.timezone().clone(),
    )?;
    // Admission asks the grace about a request it would shed; the edge is not
    // shared yet.
    let grace = FunnelGrace::new(
        visitors.clone(),
        counters.counters().clone(),
        config.backpressure.funnel_grace_secs,
    );
    let edge = match &grace {
        Some(g) => edge.with_grace(Arc::new(g.clone())),
        None => edge,
    };
    let outbound = Outbound::open(&store, &config.outbound, clock.clone(), outbound_tls)?;
    // The day of the newest stored event was announced already (or is past).
    let engaged_day = store.recent_events(1)?.first().map(|(_, ev)| {
        crate::insight::analytics::day_of(ev.received_ms, counters.timezone()).to_string()
    });
    let alerts = Alerts::new(
        Alerter::new(
            &config,
            store.next_seq(),
            engaged_day,
            outbound.deadletter_count(),
        ),
        counters.timezone().clone(),
    );
    let producthunt = Poller::new(&config.producthunt, producthunt_token, &store)?;
    let ring = Ring::new(config.webhook.ring_capacity);
    let (committer, committer_task) = Committer::start(
        store.clone(),
        config.webhook.durability == Durability::Fsync,
    )
    .map_err(StoreError::Io)?;
    // One numbering of the purge rules for the ingestor and the pump.
    let purges: Arc<dyn Purges> = Arc::new(EventPurges::new(&config, edge.cache().clone()));
    let ingestor = Arc::new(
        Ingestor::new(
            &config,
            Keys::new(secrets.keys.clone()),
            store.clone(),
            ring.clone(),
            clock.clone(),
        )
        .with_purges(purges.clone()),
    );

    let outbox = cluster
        .as_ref()
        .map(|c| crate::ops::cluster::events::Outbox::new(c.clone()));
    let config = Arc::new(config);
    let accepted = counters.counters().clone();
    let webhook_state = webhook::WebhookState::new(webhook::WebhookHandles {
        ingestor: ingestor.clone(),
        committer: committer.clone(),
        config: config.clone(),
        on_accepted: Box::new(move || accepted.record_webhook_accepted()),
        replication: outbox
            .clone()
            .map(|o| Arc::new(o) as Arc<dyn webhook::Replication>),
    });
    let state = AppState(Arc::new(Handles {
        config,
        webhook: webhook_state,
        store: store.clone(),
        ring: ring.clone(),
        factor: factor.clone(),
        ingestor,
        committer,
        clock: clock.clone(),
        admin_token,
        metrics: metrics.clone(),
        shutting_down: Arc::new(AtomicBool::new(false)),
        conversions: counters.clone(),
        visitors: visitors.clone(),
        edge: edge.clone(),
        grace: grace.clone(),
        live: LiveFeed::new(),
        outbound: outbound.clone(),
        alerts: alerts.clone(),
        producthunt: producthunt.clone(),
        connections: Connections::new(),
        certs: tls.as_ref().map(|(certs, _)| certs.clone()),
        acme: acme.clone(),
        cluster: cluster.clone(),
        control: cluster
            .as_ref()
            .map(|c| crate::ops::cluster::control::Control {
                started: std::time::SystemTime::now(),
                consumed: Default::default(),
                cluster: c.clone(),
                edge: edge.clone(),
                factor: factor.clone(),
                store: store.clone(),
                clock: clock.clone(),
            }),
    }));

    let http_shutdown = CancellationToken::new();
    let http_cut = CancellationToken::new();
    let background_shutdown = CancellationToken::new();
    let limits = server::Limits::from_config(&state.config.server);
    let mut servers = Vec::new();
    // HTTPS: the same public router behind its own front door (scheme https, its
    // port), sharing the public connection counts and their limit.
    if let (Some(listener), Some((_, rustls))) = (tls_listener, &tls) {
        let addr = tls_addr.expect("bound above");
        let tls_front = Front::new(
            &state.config.server.hosts,
            &state.config.server.trusted_proxies,
            &own_host(addr),
            "https",
            Some(factor.clone()),
        )
        .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        servers.push(server::spawn(
            listener,
            server::Site {
                router: public_router(state.clone()),
                front: Some(tls_front),
                tls: Some(server::Tls::new(
                    rustls.clone(),
                    state.config.tls.hsts_max_age_secs,
                )),
            },
            limits,
            state.connections.clone(),
            http_shutdown.clone(),
            http_cut.clone(),
        ));
        if let Some(listener) = http_listener {
            let http_front = Front::new(
                &state.config.server.hosts,
                &state.config.server.trusted_proxies,
                &own_host(http_addr.expect("bound above")),
                "http",
                Some(factor.clone()),
            )
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
            servers.push(server::spawn(
                listener,
                server::Site {
                    router: crate::edge::tls::redirect_router(
                        addr.port(),
                        state.acme.as_ref().map(|a| a.http01()),
                    ),
                    front: Some(http_front),
                    tls: None,
                },
                limits,
                state.connections.clone(),
                http_shutdown.clone(),
                http_cut.clone(),
            ));
        }
    }
    servers.extend([
        server::spawn(
            public_listener,
            server::Site {
                router: public_router(state.clone()),
                front: Some(front),
                tls: None,
            },
            limits,
            state.connections.clone(),
            http_shutdown.clone(),
            http_cut.clone(),
        ),
        server::spawn(
            admin_listener,
            server::Site {
                router: admin::router(state.clone()),
                front: None,
                // Off the box, the admin side (its token, pins, purges) goes over
                // TLS with the public certificates; on loopback it stays plain.
                tls: match &tls {
                    Some((_, rustls)) if !admin_addr.ip().is_loopback() => {
                        Some(server::Tls::new(rustls.clone(), 0))
                    }
                    _ => None,
                },
            },
            limits,
            Connections::new(),
            http_shutdown.clone(),
            http_cut.clone(),
        ),
    ]);

    // In a cluster, the poller and the alerts run where their lease is.
    let lease = |name| {
        state
            .cluster
            .as_ref()
            .map(|_| crate::ops::cluster::lease::Lease::new(name))
    };
    let (poller_lease, alerts_lease) = (lease("poller"), lease("alerts"));
    let pump = Pump::new(ring, window, factor).with_purges(purges);
    let mut background = vec![
        tokio::spawn(pump.run(clock.clone(), opts.pump_tick, background_shutdown.clone())),
        tokio::spawn(sweep_loop(
            store,
            clock,
            state.config.webhook.dedup_ttl_secs * 1000,
            opts.sweep_every,
            background_shutdown.clone(),
        )),
        tokio::spawn(upkeep_loop(metrics, background_shutdown.clone())),
        tokio::spawn(outbound.run(opts.outbound_tick, background_shutdown.clone())),
        tokio::spawn(crate::edge::warming::run(
            state.edge.clone(),
            state.factor.clone(),
            state.clock.clone(),
            opts.refresh_ahead_every,
            background_shutdown.clone(),
        )),
        tokio::spawn(alerts.run(
            crate::ops::alerts::Watched {
                store: state.store.clone(),
                factor: state.factor.clone(),
                outbound: state.outbound.clone(),
                config: state.config.clone(),
                clock: state.clock.clone(),
                acme: state.acme.as_ref().map(|a| a.status()),
                certs: state.certs.clone(),
                leading: alerts_lease.as_ref().map(|l| l.flag()),
            },
            opts.alerts_every,
            background_shutdown.clone(),
        )),
        tokio::spawn(live::sample_loop(
            live::Sources {
                conversions: state.conversions.clone(),
                store: state.store.clone(),
                factor: state.factor.clone(),
                ring: state.ring.clone(),
                config: state.config.clone(),
                clock: state.clock.clone(),
                grace: state.grace.clone(),
                waiting_room: state.edge.waiting_room().cloned(),
            },
            state.live.clone(),
            opts.live_every,
            background_shutdown.clone(),
        )),
        tokio::spawn(counters::flush_loop(
            counters,
            state.visitors.clone(),
            state.clock.clone(),
            Duration::from_millis(state.config.conversions.flush_interval_ms),
            u64::from(state.config.conversions.retention_days) * 86_400_000,
            u64::from(state.config.webhook.retention_days) * 86_400_000,
            background_shutdown.clone(),
        )),
    ];
    if let (Some(cluster), Some(outbox)) = (&state.cluster, outbox) {
        use crate::ops::cluster::{control, events};
        let parts = Arc::new(events::Parts {
            store: state.store.clone(),
            ingestor: state.ingestor.clone(),
            committer: state.committer.clone(),
            clock: state.clock.clone(),
            dedup_ttl_secs: state.config.webhook.dedup_ttl_secs,
        });
        tracing::info!(node = cluster.node(), nats = ?state.config.cluster.nats_url, "cluster: sharing this launch through NATS JetStream");
        background.push(tokio::spawn(events::run_outbox(
            outbox,
            parts.clone(),
            background_shutdown.clone(),
        )));
        background.push(tokio::spawn(events::run_consumer(
            cluster.clone(),
            parts,
            background_shutdown.clone(),
        )));
        let control = state.control.clone().expect("built with the cluster");
        background.push(tokio::spawn(control::run_pin_watch(
            control.clone(),
            background_shutdown.clone(),
        )));
        background.push(tokio::spawn(control::run_commands(
            control,
            background_shutdown.clone(),
        )));
        let numbers = crate::ops::cluster::numbers::Numbers {
            cluster: cluster.clone(),
            conversions: state.conversions.clone(),
            store: state.store.clone(),
            retention: Duration::from_secs(
                u64::from(state.config.conversions.retention_days) * 86_400,
            ),
        };
        background.push(tokio::spawn(crate::ops::cluster::numbers::run_outbox(
            numbers.clone(),
            background_shutdown.clone(),
        )));
        background.push(tokio::spawn(crate::ops::cluster::numbers::run_consumer(
            numbers,
            background_shutdown.clone(),
        )));
        if keys_pending {
            background.push(tokio::spawn(crate::ops::cluster::keys::adopt_when_back(
                cluster.clone(),
                state.store.clone(),
                state.visitors.clone(),
                state.edge.waiting_room().cloned(),
                background_shutdown.clone(),
            )));
        }
        background.push(tokio::spawn(crate::ops::cluster::claims::run(
            cluster.clone(),
            state.conversions.clone(),
            state.clock.clone(),
            background_shutdown.clone(),
        )));
        // Certificates: one node orders (the lease `acme`), every node serves them.
        let acme_lease = state
            .acme
            .as_ref()
            .map(|_| crate::ops::cluster::lease::Lease::new("acme"));
        if let (Some(acme), Some(lease)) = (&state.acme, &acme_lease) {
            acme.share(Arc::new(crate::ops::cluster::certs::ClusterAcme::new(
                cluster.clone(),
                lease.flag(),
            )));
            background.push(tokio::spawn(crate::ops::cluster::certs::run_watch(
                cluster.clone(),
                acme.clone(),
                background_shutdown.clone(),
            )));
        }
        // This node's presence, so a second node with the same id is told.
        let presence = Some(crate::ops::cluster::lease::Lease::new(
            crate::ops::cluster::lease::presence_key(cluster.node()),
        ));
        for lease in [&alerts_lease, &poller_lease, &acme_lease, &presence]
            .into_iter()
            .flatten()
        {
            background.push(tokio::spawn(crate::ops::cluster::lease::run(
                cluster.clone(),
                lease.clone(),
                background_shutdown.clone(),
            )));
        }
    }
    if let Some(acme) = &state.acme {
        background.push(tokio::spawn(acme.clone().run(background_shutdown.clone())));
    }
    // Under ACME too: the watch owns the SIGHUP handler (`systemctl reload`), whose
    // default action would end the process; with no files a reload does nothing.
    if let Some(certs) = &state.certs {
        background.push(tokio::spawn(crate::edge::tls::watch(
            certs.clone(),
            crate::edge::tls::WATCH_EVERY,
            background_shutdown.clone(),
        )));
    }
    match producthunt {
        Some(poller) => {
            tracing::info!(slug = poller.slug(), api = %state.config.producthunt.api_url, "polling Product Hunt");
            background.push(tokio::spawn(poller.run(
                crate::ingest::producthunt::Sources {
                    webhook: state.webhook.clone(),
                    client: state.outbound.client().clone(),
                    factor: state.factor.clone(),
                    clock: state.clock.clone(),
                    leading: poller_lease.as_ref().map(|l| l.flag()),
                },
                opts.producthunt_tick,
                background_shutdown.clone(),
            )));
        }
        None if state.config.producthunt.post_slug.is_some() => tracing::warn!(
            "producthunt.post_slug is set but no token was found (producthunt.token, producthunt.token_file, the producthunt_token credential or LAUNCHGUARD_PRODUCTHUNT_TOKEN); not polling"
        ),
        None => {}
    }
    if !edge.warm_urls().is_empty() && state.config.server.hosts.is_empty() {
        tracing::warn!(
            host = ?front_primary,
            "cache.warm_urls are warmed under the listener's own address because server.hosts is empty; visitors who use your site's name will not hit them: list it in server.hosts"
        );
    }
    if !edge.warm_urls().is_empty() {
        let results = edge.warm(edge.warm_urls()).await;
        for r in &results {
            tracing::info!(path = %r.path, status = r.status, cache = %r.cache, "warmed");
        }
    }

    tracing::info!(
        public = %public_addr,
        admin = %admin_addr,
        https = %tls_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        http_redirect = %http_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        durability = ?state.config.webhook.durability,
        events_in_window = in_window,
        scale_factor = state.factor.current(),
        secrets = %secrets.sources.join(", "),
        "launchguard listening"
    );
    if let Some(path) = &secrets.demo_file {
        tracing::info!(
            "demo mode: sign a test webhook with `launchguard sign --secret-file {} --file data/samples/upvote.json --stamp-to upvote.json` and send upvote.json, or see README.md",
            path.display()
        );
    }
    Ok(Running {
        public_addr,
        admin_addr,
        tls_addr,
        http_addr,
        state,
        http_shutdown,
        http_cut,
        background_shutdown,
        servers,
        background,
        committer: committer_task,
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (bounded), drains the pump,
    /// and leaves everything flushed and fsynced.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let Running {
            state,
            http_shutdown,
            http_cut,
            background_shutdown,
            servers,
            background,
            committer,
            ..
        } = self;
        state.shutting_down.store(true, Ordering::Release);
        http_shutdown.cancel();
        let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
        let aborts: Vec<_> = servers.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(grace, futures_join(servers))
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "in-flight requests did not finish within server.shutdown_grace_ms; cutting them"
            );
            http_cut.cancel();
            aborts.iter().for_each(|a| a.abort());
        }
        background_shutdown.cancel();
        let store = state.store.clone();
        drop(state);
        futures_join(background).await;
        // The committer ends when the last handle to it is gone. A connection cut after
        // the grace period may still hold one for a moment; the final flush below
        // covers whatever the committer had not written.
        if tokio::time::timeout(Duration::from_secs(2), committer)
            .await
            .is_err()
        {
            tracing::warn!("the committer was still held after shutdown; flushing without it");
        }
        tokio::task::spawn_blocking(move || store.flush_durable(true))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        tracing::info!("launchguard stopped; store flushed");
        Ok(())
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

/// The host a site with no `server.hosts` is warmed under: the listener's address as
/// a local client names it (`127.0.0.1:8080`; an unspecified address as loopback).
fn own_host(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// The public listener's router: the webhook path, the conversion beacon, and the edge
/// (admission → cache → origin, `edge.rs`) for everything else. The front door
/// (`front.rs`: host and canonical path) runs before it, in the connection's service
/// (`server.rs`), so routing already sees the canonical path. Requests and visits
/// are counted by `counters::count_requests`, which wraps everything that serves the
/// site and judges only the final answer. Every answer, including 404s, 405s and 503s,
/// carries the scale factor its request was served under: the front door reads it once
/// (`edge::Scale`) and the connection's service sets the header from that value. The
/// fallback captures only the edge, so a cache hit does not clone the whole `AppState`.
pub fn public_router(state: AppState) -> Router {
    let counting = counters::Counting::new(
        state.conversions.clone(),
        state.visitors.clone(),
        state.clock.clone(),
    )
    .with_funnel_grace(state.config.backpressure.funnel_grace_secs);
    let edge = state.edge.clone();
    Router::new()
        .route(&state.config.webhook.path, post(webhook::handle))
        .route(counters::BEACON_PATH, post(counters::beacon))
        .fallback(move |req: axum::extract::Request| {
            let edge = edge.clone();
            async move { edge::handle(edge, req).await }
        })
        .with_state(state)
        // `counters::count_requests` inside `telemetry::HttpTimer::layer`, as one layer.
        .layer(counters::PublicLayer::new(
            counting,
            telemetry::HttpTimer::new(),
        ))
}

async fn sweep_loop(
    store: Store,
    clock: Clock,
    ttl_ms: u64,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let s = store.clone();
        let s_dir = store.dir().to_path_buf();
        let now = clock.now_ms();
        match tokio::task::spawn_blocking(move || (s.sweep_dedup(now, ttl_ms), s.size_on_disk()))
            .await
        {
            Ok((Ok(n), size)) => {
                if n > 0 {
                    metrics::counter!(telemetry::DEDUP_SWEPT_TOTAL).increment(n as u64);
                    tracing::debug!(removed = n, "swept expired dedup entries");
                }
                if let Ok(size) = size {
                    metrics::gauge!(telemetry::STORE_BYTES).set(size as f64);
                }
                if let Ok(fs) = rustix::fs::statvfs(s_dir.as_path()) {
                    let block = fs.f_frsize as f64;
                    metrics::gauge!(telemetry::DISK_FREE_BYTES).set(fs.f_bavail as f64 * block);
                    metrics::gauge!(telemetry::DISK_TOTAL_BYTES).set(fs.f_blocks as f64 * block);
                }
            }
            Ok((Err(e), _)) => tracing::warn!("dedup sweep failed: {e}"),
            Err(e) => tracing::warn!("dedup sweep task failed: {e}"),
        }
    }
}

async fn upkeep_loop(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = ticker.tick() => handle.run_upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}
