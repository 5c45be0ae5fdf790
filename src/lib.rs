//! launchguard: one binary in front of a website for launch day.
//!
//! The folders are the two data paths and what watches them (ARCHITECTURE.md draws
//! them); a tour in reading order:
//! - [`config`]: the TOML file, defaults, errors that name the key.
//! - [`ingest`]: where a webhook goes. [`ingest::webhook`] (signed webhooks in:
//!   `signature`, `payload`, dedup and commit) → [`ingest::store`] (sled trees,
//!   versioned records) and [`ingest::commit`] (group commit) → [`ingest::ring`] (the
//!   lock-free ring) → [`ingest::pump`] (its one consumer) → [`ingest::velocity`] (the
//!   window, pure) → [`ingest::factor`] (the published scale factor and the
//!   operator's pin);
//!   [`ingest::producthunt`] polls Product Hunt into the same path.
//! - [`edge`]: where a visitor goes. [`edge::server`] (connections, parking, limits;
//!   HTTPS and HTTP/2 with [`edge::tls`], its certificate and its reload) →
//!   [`edge::front`] (host and path) → [`edge::admission`] (classes, shedding, origin
//!   permits) → [`edge::cache`] (keys, freshness, store, single-flight) →
//!   [`edge::origin`] (static dir or upstream); [`edge::waiting`] lines up shed page
//!   views, [`edge::warming`] refreshes the funnel pages ahead of the wave.
//! - [`insight`]: what the launch did. [`insight::counters`] (sharded counters, the
//!   beacon, the flusher), [`insight::visitor`] (the visitor cookie, once-a-day marks),
//!   [`insight::grace`] (the funnel grace: no shedding for a visitor mid-signup),
//!   [`insight::history`] (the `metrics` and `launches` trees), [`insight::analytics`]
//!   (launch-day reports), [`insight::live`] (the dashboard and its feed).
//! - [`ops`]: running it. [`ops::admin`] (the admin API), [`ops::outbound`] (the durable
//!   queue of outbound calls), [`ops::alerts`] (launch-day messages through it),
//!   [`ops::preflight`] (the night-before checklist), [`ops::systemd`] (READY and the
//!   watchdog), [`ops::simulate`] (replaying a launch curve), [`ops::lab`] (a launch
//!   rehearsed with visitors and an origin, each feature off and on).
//! - [`app`]: `AppState`, both routers, startup and shutdown; [`cli`]: the commands.
//! - [`secrets`], [`clock`], [`error`], [`telemetry`]: shared by every wing;
//!   [`syntax`] parses what an operator writes (hosts, path and cookie globs, URLs) for
//!   config validation and the wings alike; [`client`] is the one outbound HTTP client.
//!
//! `pub` means used from outside the library: by the binary (`main.rs` calls
//! [`cli::run`]), the integration tests or the benches. Everything else is
//! `pub(crate)`, so a module's `pub` items are its interface to the other wings, and a
//! function that only a unit test calls is `#[cfg(test)]`.

pub mod app;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod edge;
pub(crate) mod error;
pub mod ingest;
pub mod insight;
pub mod ops;
pub mod secrets;
pub(crate) mod syntax;
pub mod telemetry;
