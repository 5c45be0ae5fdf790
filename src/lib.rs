//! launchguard: one binary in front of a website for launch day.
//!
//! A tour in reading order:
//! - [`config`]: the TOML file, defaults, errors that name the key.
//! - [`webhook`]: signed webhooks in (`signature`, `payload`), dedup and commit.
//! - [`store`]: sled trees and versioned records; [`commit`]: group commit.
//! - [`ring`]: the lock-free ring and the pump; [`velocity`]: the window (pure);
//!   [`factor`]: the published scale factor and the operator's pin.
//! - [`edge`]: the visitor path: [`admission`] (classes, shedding, origin permits) →
//!   [`cache`] (keys, freshness, store, single-flight) → [`origin`] (static dir or upstream).
//! - [`app`]: `AppState`, both routers, startup and shutdown; [`admin`]: the admin API.
//! - [`conversions`]: sharded counters, the beacon, the flusher; [`history`]: the
//!   `metrics` and `launches` trees; [`analytics`]: launch-day reports.
//! - [`live`]: the dashboard and its live feed; [`preflight`]: the night-before
//!   checklist; [`systemd`]: READY and the watchdog.
//! - [`outbound`]: the durable queue of outbound calls, backoff and dead letters;
//!   [`alerts`]: launch-day messages to Slack-compatible webhooks through it;
//!   [`producthunt`]: the rate-budgeted poller of Product Hunt's GraphQL API.
//! - [`secrets`], [`clock`], [`error`], [`telemetry`], [`cli`]: the edges.

pub mod admin;
pub mod admission;
pub mod alerts;
pub mod analytics;
pub mod app;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod commit;
pub mod config;
pub mod conversions;
pub mod edge;
pub mod error;
pub mod factor;
pub mod front;
pub mod history;
pub mod live;
pub mod origin;
pub mod outbound;
pub mod preflight;
pub mod producthunt;
pub mod ring;
pub mod secrets;
pub mod server;
pub mod simulate;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod velocity;
pub mod visitor;
pub mod webhook;
