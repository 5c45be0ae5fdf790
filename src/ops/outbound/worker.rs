//! The worker: sends every due job its host's budget allows, and records how each
//! attempt went (delivered, throttled, failed, dead letter) with the wait `policy`
//! gives it.

use std::time::Duration;

use axum::http::{header, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;

use super::policy::{backoff_ms, host_of, unit_draw, Bucket};
use super::queue::{encode_job, Job, Outbound, OutboundError};
use crate::telemetry;

/// How much of an error answer's body is kept as `last_error`.
const ERROR_BODY_BYTES: usize = 200;

/// How one attempt went.
enum Attempt {
    Delivered,
    Throttled { error: String, wait_ms: u64 },
    Failed { error: String, wait_ms: u64 },
}

impl Outbound {
    /// The worker: sends due jobs, then sleeps until the next is due (at most `tick`)
    /// or until woken. Attempts in flight at shutdown are abandoned; their jobs are
    /// still stored and go again at the next start.
    pub async fn run(self, tick: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.run_due() => {}
                _ = shutdown.cancelled() => return,
            }
            let wait = self
                .next_due_ms()
                .map(|at| Duration::from_millis(at.saturating_sub(self.inner.clock.now_ms())))
                .unwrap_or(tick)
                .min(tick);
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn next_due_ms(&self) -> Option<u64> {
        let jobs = self.pending().ok()?;
        jobs.iter().map(|j| j.next_at_ms).min()
    }

    /// Sends every due job that its host's budget allows, concurrently, and records
    /// each outcome. Returns how many were sent.
    pub async fn run_due(&self) -> usize {
        let now = self.inner.clock.now_ms();
        let jobs = match self.pending() {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!("cannot read the outbound queue: {e}");
                return 0;
            }
        };
        let mut set = tokio::task::JoinSet::new();
        for job in jobs.into_iter().filter(|j| j.next_at_ms <= now) {
            let host = host_of(&job.target);
            if !self.take_budget(&host, now) {
                tracing::debug!(id = job.id, %host, "outbound budget spent for this host; the job waits");
                continue;
            }
            let this = self.clone();
            set.spawn(async move {
                let outcome = this.send(&job).await;
                this.record(job, outcome).await;
            });
        }
        let sent = set.len();
        while set.join_next().await.is_some() {}
        sent
    }

    fn take_budget(&self, host: &str, now_ms: u64) -> bool {
        let per_minute = self.inner.config.host_budget_per_minute;
        let mut buckets = self.inner.buckets.lock();
        let bucket = buckets.entry(host.to_string()).or_insert(Bucket {
            tokens: f64::from(per_minute),
            at_ms: now_ms,
        });
        let ok = bucket.take(per_minute, now_ms);
        metrics::gauge!(telemetry::OUTBOUND_BUDGET_REMAINING, "host" => host.to_string())
            .set(bucket.tokens.floor());
        ok
    }

    async fn send(&self, job: &Job) -> Attempt {
        let timeout = Duration::from_millis(self.inner.config.timeout_ms);
        let req = Request::builder()
            .method(Method::POST)
            .uri(&job.target)
            .header(header::CONTENT_TYPE, &job.content_type)
            .header("x-request-id", &job.idempotency_id)
            .header(
                header::USER_AGENT,
                concat!("launchguard/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(job.body.clone())));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Failed {
                    error: format!("cannot build the request: {e}"),
                    wait_ms: 0,
                }
            }
        };
        let answer = tokio::time::timeout(timeout, async {
            let res = self.inner.client.request(req).await?;
            let (parts, body) = res.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((parts, body))
        })
        .await;
        let now = self.inner.clock.now_ms();
        match answer {
            Err(_) => Attempt::Failed {
                error: format!(
                    "no answer within outbound.timeout_ms ({} ms)",
                    timeout.as_millis()
                ),
                wait_ms: 0,
            },
            Ok(Err(e)) => Attempt::Failed {
                error: format!("cannot reach {}: {}", host_of(&job.target), error_chain(&e)),
                wait_ms: 0,
            },
            Ok(Ok((parts, body))) => {
                let wait_ms = crate::client::server_delay_ms(&parts.headers, now);
                let status = parts.status;
                if status.is_success() {
                    return Attempt::Delivered;
                }
                let snippet = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES)])
                    .trim()
                    .to_string();
                let error = format!("HTTP {status}: {snippet}");
                if status == StatusCode::TOO_MANY_REQUESTS {
                    Attempt::Throttled { error, wait_ms }
                } else {
                    Attempt::Failed { error, wait_ms }
                }
            }
        }
    }

    async fn record(&self, mut job: Job, outcome: Attempt) {
        let c = &self.inner.config;
        let now = self.inner.clock.now_ms();
        let key = job.id.to_be_bytes();
        let result: Result<&'static str, OutboundError> = (|| match outcome {
            Attempt::Delivered => {
                self.inner.jobs.remove(key)?;
                tracing::debug!(id = job.id, kind = %job.kind, "outbound job delivered");
                Ok("delivered")
            }
            Attempt::Throttled { error, wait_ms } => {
                let delay = backoff_ms(
                    c.base_delay_ms,
                    c.max_delay_ms,
                    job.throttled,
                    wait_ms,
                    unit_draw(),
                );
                job.throttled += 1;
                job.next_at_ms = now + delay;
                job.last_error = Some(error);
                self.inner.jobs.insert(key, encode_job(&job)?)?;
                tracing::info!(
                    id = job.id,
                    delay_ms = delay,
                    "outbound job throttled (429); waiting without spending an attempt"
                );
                Ok("throttled")
            }
            Attempt::Failed { error, wait_ms } => {
                job.attempts += 1;
                job.last_error = Some(error.clone());
                if job.attempts >= c.max_retries {
                    let bytes = encode_job(&job)?;
                    self.move_between(&self.inner.jobs, &self.inner.dead, key, bytes)?;
                    tracing::warn!(id = job.id, kind = %job.kind, target = %host_of(&job.target), attempts = job.attempts, error = %error, "outbound job moved to dead letters");
                    Ok("dead_letter")
                } else {
                    let delay = backoff_ms(
                        c.base_delay_ms,
                        c.max_delay_ms,
                        job.attempts - 1,
                        wait_ms,
                        unit_draw(),
                    );
                    job.next_at_ms = now + delay;
                    self.inner.jobs.insert(key, encode_job(&job)?)?;
                    tracing::info!(id = job.id, attempts = job.attempts, delay_ms = delay, error = %error, "outbound attempt failed; retrying");
                    Ok("retry")
                }
            }
        })();
        match result {
            Ok(label) => {
                metrics::counter!(telemetry::OUTBOUND_JOBS_TOTAL, "result" => label).increment(1);
                if let Err(e) = self.flush().await {
                    tracing::error!("cannot flush the outbound queue: {e}");
                }
                if label == "dead_letter" {
                    self.publish_deadletters();
                }
            }
            Err(e) => tracing::error!(id = job.id, "cannot record an outbound attempt: {e}"),
        }
        self.inner.progress.send_modify(|n| *n += 1);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
