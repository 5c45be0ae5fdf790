//! The durable outbound queue: every call launchguard makes to the outside (alert
//! messages today) is a job in the sled tree `outbound` until it is delivered, and a
//! job that keeps failing ends in the tree `deadletter` with its last error, where an
//! operator can list, retry or drop it (`/admin/outbound/deadletters`).
//!
//! Life of a job:
//! 1. `Outbound::enqueue` writes it (u64 BE id → versioned bincode record) and flushes,
//!    then wakes the worker. Its idempotency id is fixed here and sent as
//!    `X-Request-Id` on every attempt, so a receiver can drop a repeat.
//! 2. The worker (`Outbound::run`) sends every due job, at most
//!    `outbound.host_budget_per_minute` a minute to one host (a token bucket per host);
//!    a job whose host has no budget left stays due and goes at the next refill.
//! 3. 2xx: the job is removed. 429: the job waits and tries again without spending an
//!    attempt. Anything else (other status, refused connection, timeout): one attempt
//!    spent; after `outbound.max_retries` of them the job moves to dead letters.
//! 4. The wait before the next attempt is `backoff_ms`: `base_delay_ms × 2^(n-1)`
//!    (capped at `max_delay_ms`), times a jitter drawn from [0.6, 1.4], and never
//!    shorter than the server's `Retry-After` (seconds or HTTP date) or
//!    `X-Rate-Limit-Reset`.
//!
//! **Invariant:** a job leaves `outbound` only when delivered or when it is in
//! `deadletter` (one sled transaction moves it). A job is written back after every
//! attempt, so a job in flight when the process dies is still due at the next start
//! and is sent again, with the same `X-Request-Id`.
//!
//! Files: `policy` (pure: the backoff, the host budget, the host of a target),
//! `queue` (the job record and the sled trees: enqueue, list, move), `worker` (the
//! loop that sends due jobs and records each attempt), `http` (the dead letters'
//! admin API).

mod http;
mod policy;
mod queue;
mod worker;

pub use http::admin_routes;
pub use policy::{backoff_ms, host_of, JITTER_MAX, JITTER_MIN};
pub use queue::{decode_job, encode_job, Job, Outbound, OutboundError};
