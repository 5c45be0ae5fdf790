//! The integration tests: one binary (`cargo test --test it`), a module per surface,
//! the shared harness in `support`. One module's tests: `cargo test --test it
//! webhook::`; one test: `cargo test --test it -- --exact webhook::<name>`.
//!
//! The tests run in parallel threads of one process, so what is the process's is
//! shared: the metrics recorder above all. A test that reads a metric's value exactly
//! runs alone (`support::recorder`). The one test that measures the whole machine
//! (the kernel's TCP memory) is not here but in its own binary, `tests/slow_readers.rs`.

mod support;

mod acme;
mod alerts;
mod architecture;
mod beacon_abuse;
mod browser;
mod cache_correctness;
mod cluster;
mod connections;
mod conversions;
mod dashboard;
mod edge;
mod framing;
mod fuzz;
mod grace;
mod https_upstream;
mod lab;
mod metrics;
mod outbound;
mod packaging;
mod preflight;
mod process;
mod producthunt;
mod replay;
mod report;
mod simulate;
mod static_site;
mod tls;
mod webhook;
