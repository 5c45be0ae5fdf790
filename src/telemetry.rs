//! Metrics and logs. Metric names live here as constants (DESIGN.md, Metrics); the
//! Prometheus recorder is process-wide, so it is installed once behind a `OnceLock`
//! and every app built in the same process (tests build several) shares it.

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const WEBHOOKS_TOTAL: &str = "launchguard_webhooks_total";
pub const ENGAGEMENT_VELOCITY: &str = "launchguard_engagement_velocity";
pub const SCALE_FACTOR: &str = "launchguard_scale_factor";
pub const SCALE_FACTOR_PINNED: &str = "launchguard_scale_factor_pinned";
pub const RING_DEPTH: &str = "launchguard_ring_depth";
pub const RING_OVERFLOW_TOTAL: &str = "launchguard_ring_overflow_total";
pub const EVENTS_PUMPED_TOTAL: &str = "launchguard_events_pumped_total";
pub const COMMIT_BATCH_SIZE: &str = "launchguard_commit_batch_size";
pub const COMMIT_DURATION_SECONDS: &str = "launchguard_commit_duration_seconds";
pub const COMMIT_FAILURES_TOTAL: &str = "launchguard_commit_failures_total";
pub const WEBHOOK_DURATION_SECONDS: &str = "launchguard_webhook_duration_seconds";
pub const DEDUP_SWEPT_TOTAL: &str = "launchguard_dedup_swept_total";
pub const STORE_BYTES: &str = "launchguard_store_bytes";
pub const DISK_FREE_BYTES: &str = "launchguard_disk_free_bytes";
pub const DISK_TOTAL_BYTES: &str = "launchguard_disk_total_bytes";
pub const VISITS_TOTAL: &str = "launchguard_visits_total";
pub const CONVERSIONS_TOTAL: &str = "launchguard_conversions_total";
pub const CONVERSIONS_REJECTED_TOTAL: &str = "launchguard_conversions_rejected_total";
pub const UNIQUE_VISITORS_TOTAL: &str = "launchguard_unique_visitors_total";
pub const CACHE_REQUESTS_TOTAL: &str = "launchguard_cache_requests_total";
pub const CACHE_BYTES: &str = "launchguard_cache_bytes";
pub const CACHE_PURGED_TOTAL: &str = "launchguard_cache_purged_total";
pub const CACHE_COMPRESSIONS_TOTAL: &str = "launchguard_cache_compressions_total";
pub const CACHE_REFRESH_AHEAD_TOTAL: &str = "launchguard_cache_refresh_ahead_total";
pub const WAITING_ROOM_LENGTH: &str = "launchguard_waiting_room_length";
pub const WAITING_ROOM_ADMITTED_TOTAL: &str = "launchguard_waiting_room_admitted_total";
pub const WAITING_ROOM_LONGEST_WAIT_SECONDS: &str = "launchguard_waiting_room_longest_wait_seconds";
pub const BACKPRESSURE_REJECTIONS_TOTAL: &str = "launchguard_backpressure_rejections_total";
pub const FUNNEL_GRACE_ADMITTED_TOTAL: &str = "launchguard_funnel_grace_admitted_total";
pub const FUNNEL_GRACE_CONVERSIONS_TOTAL: &str = "launchguard_funnel_grace_conversions_total";
pub const ORIGIN_INFLIGHT: &str = "launchguard_origin_inflight";
pub const ORIGIN_REQUEST_DURATION_SECONDS: &str = "launchguard_origin_request_duration_seconds";
pub const OUTBOUND_JOBS_TOTAL: &str = "launchguard_outbound_jobs_total";
pub const OUTBOUND_DEADLETTER: &str = "launchguard_outbound_deadletter";
pub const OUTBOUND_BUDGET_REMAINING: &str = "launchguard_outbound_budget_remaining";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "launchguard_http_request_duration_seconds";
pub const HTTP_CONNECTIONS: &str = "launchguard_http_connections";
pub const HTTP_ACCEPT_PAUSED: &str = "launchguard_http_accept_paused";
pub const HTTP_ACCEPT_PAUSES_TOTAL: &str = "launchguard_http_accept_pauses_total";
pub const HTTP_SEND_TIMEOUTS_TOTAL: &str = "launchguard_http_send_timeouts_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "launchguard_tls_handshake_failures_total";
pub const TLS_CERTIFICATE_EXPIRY_SECONDS: &str = "launchguard_tls_certificate_expiry_seconds";
pub const TLS_ACME_ORDERS_TOTAL: &str = "launchguard_tls_acme_orders_total";
pub const CLUSTER_CONNECTED: &str = "launchguard_cluster_connected";
pub const CLUSTER_OUTBOX_PENDING: &str = "launchguard_cluster_outbox_pending";
pub const CLUSTER_PUBLISHED_TOTAL: &str = "launchguard_cluster_published_total";
pub const CLUSTER_REPLICATED_TOTAL: &str = "launchguard_cluster_replicated_total";
pub const CLUSTER_METRICS_ROWS_TOTAL: &str = "launchguard_cluster_metrics_rows_total";
pub const CLUSTER_CLAIMS_PENDING: &str = "launchguard_cluster_claims_pending";
pub const CLUSTER_CLAIMS_TOTAL: &str = "launchguard_cluster_claims_total";
pub const CLUSTER_LEASE_HELD: &str = "launchguard_cluster_lease_held";
pub const CLUSTER_REPLICATION_LAG_SECONDS: &str = "launchguard_cluster_replication_lag_seconds";
pub const PRODUCTHUNT_POLLS_TOTAL: &str = "launchguard_producthunt_polls_total";
pub const PRODUCTHUNT_POINTS_SPENT_TOTAL: &str = "launchguard_producthunt_points_spent_total";
pub const PRODUCTHUNT_BUDGET_LIMIT_POINTS: &str = "launchguard_producthunt_budget_limit_points";
pub const PRODUCTHUNT_BUDGET_REMAINING_POINTS: &str =
    "launchguard_producthunt_budget_remaining_points";
pub const PRODUCTHUNT_BUDGET_RESET_SECONDS: &str = "launchguard_producthunt_budget_reset_seconds";
pub const PRODUCTHUNT_NEXT_POLL_SECONDS: &str = "launchguard_producthunt_next_poll_seconds";
pub const PRODUCTHUNT_POST_VOTES: &str = "launchguard_producthunt_post_votes";
pub const PRODUCTHUNT_POST_COMMENTS: &str = "launchguard_producthunt_post_comments";
pub const PRODUCTHUNT_VOTES_SEEN_TOTAL: &str = "launchguard_producthunt_votes_seen_total";
pub const PRODUCTHUNT_COMMENTS_SEEN_TOTAL: &str = "launchguard_producthunt_comments_seen_total";
pub const PRODUCTHUNT_VOTES_DATED_TOTAL: &str = "launchguard_producthunt_votes_dated_total";
pub const PRODUCTHUNT_VOTES_CLAMPED_TOTAL: &str = "launchguard_producthunt_votes_clamped_total";
pub const PRODUCTHUNT_MALFORMED_TOTAL: &str = "launchguard_producthunt_malformed_total";
pub const PRODUCTHUNT_LAST_VOTE_LAG_SECONDS: &str = "launchguard_producthunt_last_vote_lag_seconds";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder on first call and returns its handle.
/// Times every public request to its response headers into
/// `launchguard_http_request_duration_seconds{status="2xx"|...}`: the status class
/// is what the error-rate alert divides by. The five histogram handles are made once,
/// so a request costs a clock read and one record. A clone is cheap.
#[derive(Clone)]
pub struct HttpTimer {
    by_class: Arc<[metrics::Histogram; 5]>,
}

impl Default for HttpTimer {
    fn default() -> Self {
        HttpTimer::new()
    }
}

impl HttpTimer {
    pub fn new() -> HttpTimer {
        HttpTimer {
            by_class: Arc::new(["1xx", "2xx", "3xx", "4xx", "5xx"].map(
                |class| metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "status" => class),
            )),
        }
    }

    pub(crate) fn record(&self, status: axum::http::StatusCode, secs: f64) {
        let i = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[i].record(secs);
    }

    /// The middleware (`axum::middleware::from_fn_with_state`).
    pub async fn layer(
        axum::extract::State(timer): axum::extract::State<HttpTimer>,
        req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let started = std::time::Instant::now();
        let res = next.run(req).await;
        timer.record(res.status(), started.elapsed().as_secs_f64());
        res
    }
}

pub fn recorder() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(COMMIT_BATCH_SIZE.into()), BATCH_BUCKETS)
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once, here");
            describe();
            zero_series();
            handle
        })
        .clone()
}

/// Registers at zero the series that alert rules compute `rate` or `increase` on, so a
/// first event is an increase Prometheus sees rather than a series that appears.
fn zero_series() {
    for result in [
        "accepted",
        "duplicate",
        "unauthorized",
        "invalid",
        "too_large",
        "timeout",
        "error",
    ] {
        metrics::counter!(WEBHOOKS_TOTAL, "result" => result).increment(0);
    }
    for class in ["normal", "low", "queue"] {
        metrics::counter!(BACKPRESSURE_REJECTIONS_TOTAL, "class" => class).increment(0);
    }
    for class in ["normal", "low"] {
        metrics::counter!(FUNNEL_GRACE_ADMITTED_TOTAL, "class" => class).increment(0);
    }
    metrics::counter!(COMMIT_FAILURES_TOTAL).increment(0);
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(WEBHOOKS_TOTAL, "Webhook requests by result (accepted, duplicate, unauthorized, invalid, too_large, timeout, error)");
    describe_gauge!(
        ENGAGEMENT_VELOCITY,
        "Weighted engagement events per second over the velocity window"
    );
    describe_gauge!(SCALE_FACTOR, "Scale factor in force (pinned or computed)");
    describe_gauge!(
        SCALE_FACTOR_PINNED,
        "1 while an operator pin overrides the computed factor"
    );
    describe_gauge!(RING_DEPTH, "Events waiting between ingestion and the pump");
    describe_counter!(
        RING_OVERFLOW_TOTAL,
        "Events that found the ring full and took the spill queue (still counted)"
    );
    describe_counter!(EVENTS_PUMPED_TOTAL, "Events applied to the velocity window");
    describe_histogram!(
        COMMIT_BATCH_SIZE,
        "Webhook acknowledgements released by one group commit"
    );
    describe_histogram!(
        COMMIT_DURATION_SECONDS,
        Unit::Seconds,
        "Time of one group commit (flush, plus fsync when durable)"
    );
    describe_counter!(
        COMMIT_FAILURES_TOTAL,
        "Group commits that failed (disk full, I/O error)"
    );
    describe_histogram!(
        WEBHOOK_DURATION_SECONDS,
        Unit::Seconds,
        "Webhook request handling time, body read to answer"
    );
    describe_counter!(DEDUP_SWEPT_TOTAL, "Expired dedup entries removed");
    describe_gauge!(STORE_BYTES, Unit::Bytes, "Space the store uses on disk");
    describe_gauge!(
        DISK_FREE_BYTES,
        Unit::Bytes,
        "Free space on the disk of server.data_dir"
    );
    describe_gauge!(
        DISK_TOTAL_BYTES,
        Unit::Bytes,
        "Size of the disk of server.data_dir"
    );
    describe_counter!(
        VISITS_TOTAL,
        "HTML page views under conversions.funnel_paths (added at each counter flush)"
    );
    describe_counter!(
        CONVERSIONS_TOTAL,
        "Conversions by goal, once per visitor, goal and launch day (added at each counter flush)"
    );
    describe_counter!(
        CONVERSIONS_REJECTED_TOTAL,
        "Conversion beacons that did not count, by reason (rate_limited, invalid, cross_site, no_visitor, forged_visitor, repeat, unavailable)"
    );
    describe_counter!(
        UNIQUE_VISITORS_TOTAL,
        "Visitors (lg_v cookie) seen for the first time in their launch day (added at each counter flush)"
    );
    describe_counter!(
        FUNNEL_GRACE_ADMITTED_TOTAL,
        "Requests shedding would have refused, admitted because the visitor viewed a funnel page within backpressure.funnel_grace_secs, by the class shed (normal, low)"
    );
    describe_counter!(
        FUNNEL_GRACE_CONVERSIONS_TOTAL,
        "Conversions (first of a goal that day) by visitors the funnel grace admitted within backpressure.funnel_grace_secs before"
    );
    describe_counter!(
        CACHE_REQUESTS_TOTAL,
        "Edge cache answers by result (hit, stale, miss, bypass)"
    );
    describe_gauge!(
        CACHE_BYTES,
        Unit::Bytes,
        "Bytes held by the edge cache, as weighed against cache.max_bytes"
    );
    describe_counter!(CACHE_PURGED_TOTAL, "Cache entries dropped by purges");
    describe_counter!(
        CACHE_COMPRESSIONS_TOTAL,
        "Cached objects compressed (result=done), or not yet because one was already running (result=busy)"
    );
    describe_counter!(
        BACKPRESSURE_REJECTIONS_TOTAL,
        "Requests refused with 503 by class (normal, low: shed; queue: no origin permit in time)"
    );
    describe_gauge!(ORIGIN_INFLIGHT, "Origin fetches holding a permit");
    describe_counter!(
        OUTBOUND_JOBS_TOTAL,
        "Outbound attempts by result (delivered, retry, throttled, dead_letter)"
    );
    describe_gauge!(OUTBOUND_DEADLETTER, "Outbound jobs held in dead letters");
    describe_gauge!(
        OUTBOUND_BUDGET_REMAINING,
        "Requests left in the current minute's budget, per target host"
    );
    describe_histogram!(
        ORIGIN_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to the origin's response headers, by outcome"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Public request handling time, to the response headers, by status class"
    );
    describe_gauge!(
        HTTP_CONNECTIONS,
        "Open public connections by state: active (in a request) or parked (idle keep-alive, no buffers)"
    );
    describe_gauge!(
        HTTP_ACCEPT_PAUSED,
        "1 while the public listener is at server.max_connections and not accepting"
    );
    describe_counter!(
        HTTP_ACCEPT_PAUSES_TOTAL,
        "Times the public listener paused accepting at server.max_connections"
    );
    describe_counter!(
        HTTP_SEND_TIMEOUTS_TOTAL,
        "Public connections reset because a write made no progress for server.send_timeout_ms"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes on tls.listen that failed or did not finish within server.header_timeout_ms"
    );
    describe_gauge!(
        TLS_CERTIFICATE_EXPIRY_SECONDS,
        Unit::Seconds,
        "Seconds until the certificate in force expires, per name it is for"
    );
    describe_gauge!(
        WAITING_ROOM_LENGTH,
        "Visitors waiting in the waiting room (their page asked within three refresh periods)"
    );
    describe_counter!(
        WAITING_ROOM_ADMITTED_TOTAL,
        "Visitors let in from the waiting room"
    );
    describe_gauge!(
        WAITING_ROOM_LONGEST_WAIT_SECONDS,
        Unit::Seconds,
        "How long the visitor at the head of the waiting room has waited"
    );
    describe_counter!(
        CACHE_REFRESH_AHEAD_TOTAL,
        "Funnel pages and warm_urls fetched again before their lifetime ran out, by result (refreshed, skipped)"
    );
    describe_counter!(
        TLS_ACME_ORDERS_TOTAL,
        "ACME orders by domain and result (obtained, failed)"
    );
    describe_counter!(
        PRODUCTHUNT_POLLS_TOTAL,
        "Product Hunt GraphQL queries by query (counts, votes) and result (ok, throttled: a 429, failed: no answer, an HTTP error or an answer that is not what was asked)"
    );
    describe_counter!(
        PRODUCTHUNT_POINTS_SPENT_TOTAL,
        "Product Hunt complexity points spent, by query (counts, votes): the drop in X-Rate-Limit-Remaining from the previous answer of the same rate-limit window (the first answer after a start or a reset is not measured)"
    );
    describe_gauge!(
        PRODUCTHUNT_BUDGET_LIMIT_POINTS,
        "Product Hunt complexity points per rate-limit window (X-Rate-Limit-Limit of the last answer)"
    );
    describe_gauge!(
        PRODUCTHUNT_BUDGET_REMAINING_POINTS,
        "Product Hunt complexity points left until the reset (X-Rate-Limit-Remaining of the last answer)"
    );
    describe_gauge!(
        PRODUCTHUNT_BUDGET_RESET_SECONDS,
        Unit::Seconds,
        "Seconds from the last Product Hunt answer to the budget's reset (X-Rate-Limit-Reset)"
    );
    describe_gauge!(
        PRODUCTHUNT_NEXT_POLL_SECONDS,
        Unit::Seconds,
        "Wait the poller chose after its last poll until the next one"
    );
    describe_gauge!(
        PRODUCTHUNT_POST_VOTES,
        "votesCount of the watched post at the last poll"
    );
    describe_gauge!(
        PRODUCTHUNT_POST_COMMENTS,
        "commentsCount of the watched post at the last poll"
    );
    describe_counter!(
        PRODUCTHUNT_VOTES_SEEN_TOTAL,
        "New Product Hunt votes the poller turned into upvote events (duplicates of known ids not counted)"
    );
    describe_counter!(
        PRODUCTHUNT_COMMENTS_SEEN_TOTAL,
        "New Product Hunt comments the poller turned into comment events (duplicates of known ids not counted)"
    );
    describe_counter!(
        PRODUCTHUNT_VOTES_DATED_TOTAL,
        "Product Hunt votes that entered the velocity window at their createdAt (clamped or not)"
    );
    describe_counter!(
        PRODUCTHUNT_VOTES_CLAMPED_TOTAL,
        "Product Hunt votes whose createdAt was outside [previous poll, now] (or a window ago) and was moved in"
    );
    describe_counter!(
        PRODUCTHUNT_MALFORMED_TOTAL,
        "Product Hunt votes that could not be read (no or bad createdAt) and votes answers that were not what was asked"
    );
    describe_gauge!(
        PRODUCTHUNT_LAST_VOTE_LAG_SECONDS,
        Unit::Seconds,
        "For the last vote read with its createdAt: seconds from that createdAt to its event entering the velocity window (0 for a createdAt in the future)"
    );
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Starts tracing to stderr. `RUST_LOG` overrides the default `info` level.
pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sled=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
