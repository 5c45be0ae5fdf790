//! The Product Hunt poller: Product Hunt's API v2 is GraphQL behind an OAuth bearer
//! token and sends no webhooks, so a real launch is seen by asking, within its rate
//! limit (6,250 complexity points per 15 minutes for GraphQL), for
//! `post(slug:) { votesCount commentsCount }` and turning the count deltas into
//! synthetic `upvote` / `comment` events.
//!
//! - Off until a token (`producthunt.token`, `producthunt.token_file`, the credential
//!   `producthunt_token` or `LAUNCHGUARD_PRODUCTHUNT_TOKEN`) and `producthunt.post_slug`
//!   are set.
//! - Pace (`next_poll_in_ms`, pure): `poll_interval_ms / factor`, not under
//!   `min_poll_interval_ms`, and never faster than the budget the last answer's
//!   `X-Rate-Limit-Limit/Remaining/Reset` leaves: the remaining points (less a 10%
//!   reserve of the limit) spread evenly until the reset, at the cost the last poll
//!   took. With fewer points left than one poll costs, or after a 429, the next poll
//!   waits for the reset (and `Retry-After`).
//! - Events: the `n`-th vote is the event `producthunt:<slug>:upvote:<n>`, the `n`-th
//!   comment `producthunt:<slug>:comment:<n>`: deterministic ids that go through
//!   `Ingestor::ingest_synthetic` (the webhook's dedup, seq, ring and durability), so
//!   a replay after a restart, or a relay sending the same id as a webhook, is a
//!   duplicate. The last counts are kept in the sled tree `producthunt`, written after
//!   the events are durable; the very first poll of a post only records the counts.
//!   A count that goes down (an unvote) lowers the baseline and is not an event.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, HeaderMap, Method, Request, StatusCode};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::client::server_delay_ms;
use crate::config::{Durability, ProducthuntConfig};
use crate::ingest::store::{codec, trees, Commit, Store, StoreError};

/// The GraphQL query; its complexity is what the budget is spent on.
pub const QUERY: &str =
    "query LaunchguardPost($slug: String!) { post(slug: $slug) { votesCount commentsCount } }";
/// Share of the limit never spent, so a human with the same token still has room.
pub const RESERVE: f64 = 0.10;
const COUNTS_RECORD_VERSION: u8 = 1;
/// Most events one poll creates per kind; a larger jump (after a long outage) is
/// recorded in the baseline without flooding the window.
pub const MAX_EVENTS_PER_POLL: u64 = 5_000;

/// What the last answer said about the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub limit: u64,
    pub remaining: u64,
    /// Time from the answer to the reset, ms.
    pub reset_in_ms: u64,
}

impl Budget {
    pub fn from_headers(headers: &HeaderMap, now_ms: u64) -> Option<Budget> {
        let num =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        Some(Budget {
            limit: num("x-rate-limit-limit")?,
            remaining: num("x-rate-limit-remaining")?,
            reset_in_ms: crate::client::reset_delay_ms(num("x-rate-limit-reset")?, now_ms),
        })
    }
}

/// How long to wait before the next poll, ms. Pure.
///
/// `cost` is what one poll spends (points), `factor` the scale factor in force.
pub fn next_poll_in_ms(
    config: &ProducthuntConfig,
    budget: Option<Budget>,
    cost: u64,
    factor: f64,
) -> u64 {
    let wanted = ((config.poll_interval_ms as f64) / factor.max(1.0)) as u64;
    let wanted = wanted.max(config.min_poll_interval_ms);
    let Some(b) = budget else {
        return wanted;
    };
    let cost = cost.max(1);
    let reserve = (b.limit as f64 * RESERVE).ceil() as u64;
    let spendable = b.remaining.saturating_sub(reserve);
    let polls_left = spendable / cost;
    if polls_left == 0 {
        // Nothing to spend before the reset: wait for it (plus a second of slack).
        return b.reset_in_ms + 1000;
    }
    let even = b.reset_in_ms.div_ceil(polls_left);
    wanted.max(even)
}

/// Counts of a post at one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub votes: u64,
    pub comments: u64,
}

/// The deterministic id of the `n`-th event of `kind` on `slug`.
pub fn event_id(slug: &str, kind: &str, n: u64) -> String {
    format!("producthunt:{slug}:{kind}:{n}")
}

/// What the poller uses: the webhook path's ingest (ingestor, committer, config and
/// the accepted-event counter), the outbound HTTP client, the factor and the clock.
/// `app` builds it.
#[derive(Clone)]
pub struct Sources {
    pub webhook: crate::ingest::webhook::WebhookState,
    pub client: crate::client::HttpsClient,
    pub factor: crate::ingest::factor::Factor,
    pub clock: crate::clock::Clock,
}

/// What one poll found.
#[derive(Debug)]
pub enum PollError {
    /// 429: wait this long at least.
    Throttled {
        wait_ms: u64,
    },
    Failed(String),
}

/// Handle to the poller's observable progress (tests and logs).
#[derive(Clone)]
pub struct Poller {
    inner: Arc<PollerInner>,
}

struct PollerInner {
    config: ProducthuntConfig,
    slug: String,
    token: String,
    tree: sled::Tree,
    wake: Notify,
    /// Bumped after every look at the clock, polled or not.
    turns: watch::Sender<u64>,
    polls: watch::Sender<u64>,
}

impl Poller {
    /// `None` when the poller is off (no token or no slug).
    pub fn new(
        config: &ProducthuntConfig,
        token: Option<String>,
        store: &Store,
    ) -> Result<Option<Poller>, StoreError> {
        let (Some(token), Some(slug)) = (token, config.post_slug.clone()) else {
            return Ok(None);
        };
        Ok(Some(Poller {
            inner: Arc::new(PollerInner {
                config: config.clone(),
                slug,
                token,
                tree: store.open_tree(trees::PRODUCTHUNT)?,
                wake: Notify::new(),
                turns: watch::channel(0).0,
                polls: watch::channel(0).0,
            }),
        }))
    }

    pub fn slug(&self) -> &str {
        &self.inner.slug
    }

    /// Looks at the clock now instead of at the next tick.
    pub fn kick(&self) {
        self.inner.wake.notify_one();
    }

    /// Turns of the loop so far (one per look at the clock).
    pub fn turns(&self) -> watch::Receiver<u64> {
        self.inner.turns.subscribe()
    }

    /// Polls sent so far.
    pub fn polls(&self) -> watch::Receiver<u64> {
        self.inner.polls.subscribe()
    }

    /// The counts last recorded for the post.
    pub fn baseline(&self) -> Result<Option<Counts>, StoreError> {
        let Some(v) = self.inner.tree.get(self.inner.slug.as_bytes())? else {
            return Ok(None);
        };
        let [votes, comments] =
            codec::decode_words("producthunt counts", COUNTS_RECORD_VERSION, &v)?;
        Ok(Some(Counts { votes, comments }))
    }

    fn save_baseline(&self, c: Counts) -> Result<(), StoreError> {
        let v = codec::encode_words(COUNTS_RECORD_VERSION, [c.votes, c.comments]);
        self.inner.tree.insert(self.inner.slug.as_bytes(), v)?;
        Ok(())
    }

    /// One poll: the counts and the budget the answer reports.
    async fn poll(&self, state: &Sources) -> (Result<Counts, PollError>, Option<Budget>) {
        let c = &self.inner.config;
        let body = json!({"query": QUERY, "variables": {"slug": self.inner.slug}}).to_string();
        let req = Request::builder()
            .method(Method::POST)
            .uri(&c.api_url)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.inner.token),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("launchguard/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)));
        let req = match req {
            Ok(r) => r,
            Err(e) => return (Err(PollError::Failed(format!("bad request: {e}"))), None),
        };
        let timeout = Duration::from_millis(state.webhook.config.outbound.timeout_ms);
        let client = state.client.clone();
        let answer = tokio::time::timeout(timeout, async move {
            let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let (parts, body) = res.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((parts, body))
        })
        .await;
        self.inner.polls.send_modify(|n| *n += 1);
        let now = state.clock.now_ms();
        let (parts, body) = match answer {
            Err(_) => {
                return (
                    Err(PollError::Failed(format!(
                        "no answer from {} within outbound.timeout_ms",
                        c.api_url
                    ))),
                    None,
                )
            }
            Ok(Err(e)) => return (Err(PollError::Failed(format!("{}: {e}", c.api_url))), None),
            Ok(Ok(x)) => x,
        };
        let budget = Budget::from_headers(&parts.headers, now);
        if parts.status == StatusCode::TOO_MANY_REQUESTS {
            let wait_ms = server_delay_ms(&parts.headers, now);
            return (Err(PollError::Throttled { wait_ms }), budget);
        }
        if parts.status == StatusCode::UNAUTHORIZED {
            return (
                Err(PollError::Failed(
                    "401: the API refused the token; check producthunt.token (a developer token from the Product Hunt API dashboard)".into(),
                )),
                budget,
            );
        }
        if !parts.status.is_success() {
            let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return (
                Err(PollError::Failed(format!(
                    "HTTP {}: {snippet}",
                    parts.status
                ))),
                budget,
            );
        }
        (parse_counts(&body, &self.inner.slug), budget)
    }

    /// Turns new counts into events through the ingest path; returns how many were new.
    pub async fn record(&self, state: &Sources, counts: Counts) -> Result<usize, String> {
        let Some(prev) = self.baseline().map_err(|e| e.to_string())? else {
            self.save_baseline(counts).map_err(|e| e.to_string())?;
            tracing::info!(slug = %self.inner.slug, votes = counts.votes, comments = counts.comments, "Product Hunt baseline recorded");
            return Ok(0);
        };
        let slug = &self.inner.slug;
        let mut accepted = 0;
        for (kind, from, to) in [
            ("upvote", prev.votes, counts.votes),
            ("comment", prev.comments, counts.comments),
        ] {
            let first = (from + 1).max(to.saturating_sub(MAX_EVENTS_PER_POLL) + 1);
            for n in first..=to {
                let id = event_id(slug, kind, n);
                let payload = json!({
                    "id": id,
                    "event_type": kind,
                    "data": {"post": slug, "count": n, "source": "producthunt-api"},
                })
                .to_string()
                .into_bytes();
                match state.webhook.ingestor.ingest_synthetic(&id, kind, payload) {
                    Ok(Commit::Accepted { .. }) => {
                        accepted += 1;
                        (state.webhook.on_accepted)();
                    }
                    Ok(Commit::Duplicate { .. }) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        if accepted > 0 {
            if state.webhook.config.webhook.durability == Durability::Fsync {
                state
                    .webhook
                    .committer
                    .wait_durable()
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                state.webhook.committer.kick();
            }
        }
        self.save_baseline(counts).map_err(|e| e.to_string())?;
        Ok(accepted)
    }

    /// The loop: poll when due, record, pace by the budget and the factor.
    pub async fn run(self, state: Sources, tick: Duration, shutdown: CancellationToken) {
        let mut next_at = state.clock.now_ms();
        let mut budget: Option<Budget> = None;
        let mut cost: u64 = 1;
        loop {
            let now = state.clock.now_ms();
            if now >= next_at {
                let (result, new_budget) = tokio::select! {
                    r = self.poll(&state) => r,
                    _ = shutdown.cancelled() => return,
                };
                let now = state.clock.now_ms();
                if let (Some(old), Some(new)) = (budget, new_budget) {
                    // Same window (remaining went down): that is what a poll costs.
                    if new.remaining < old.remaining {
                        cost = (old.remaining - new.remaining).max(1);
                    }
                }
                budget = new_budget.or(budget);
                let wait = match result {
                    Ok(counts) => {
                        match self.record(&state, counts).await {
                            Ok(n) if n > 0 => {
                                tracing::info!(slug = %self.inner.slug, new_events = n, votes = counts.votes, comments = counts.comments, "Product Hunt engagement")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!("Product Hunt counts not recorded: {e}"),
                        }
                        next_poll_in_ms(&self.inner.config, budget, cost, state.factor.current())
                    }
                    Err(PollError::Throttled { wait_ms }) => {
                        let wait = wait_ms.max(budget.map_or(0, |b| b.reset_in_ms)).max(1000);
                        tracing::warn!(
                            wait_ms = wait,
                            "Product Hunt API answered 429; waiting for the reset"
                        );
                        // Spent: the next poll is after the reset.
                        budget = None;
                        wait
                    }
                    Err(PollError::Failed(e)) => {
                        let wait = next_poll_in_ms(&self.inner.config, budget, cost, 1.0);
                        tracing::warn!(wait_ms = wait, "Product Hunt poll failed: {e}");
                        wait
                    }
                };
                next_at = now + wait;
            }
            self.inner.turns.send_modify(|n| *n += 1);
            let sleep =
                Duration::from_millis(next_at.saturating_sub(state.clock.now_ms())).min(tick);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Reads `{"data": {"post": {"votesCount": N, "commentsCount": M}}}`.
pub fn parse_counts(body: &[u8], slug: &str) -> Result<Counts, PollError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| PollError::Failed(format!("the answer is not JSON: {e}")))?;
    if let Some(errors) = v.get("errors").filter(|e| !e.is_null()) {
        return Err(PollError::Failed(format!("GraphQL errors: {errors}")));
    }
    let post = &v["data"]["post"];
    if post.is_null() {
        return Err(PollError::Failed(format!(
            "no post with slug {slug:?}; check producthunt.post_slug (the last part of the post's URL)"
        )));
    }
    let num = |k: &str| {
        post[k]
            .as_u64()
            .ok_or_else(|| PollError::Failed(format!("the answer has no {k}: {post}")))
    };
    Ok(Counts {
        votes: num("votesCount")?,
        comments: num("commentsCount")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProducthuntConfig {
        ProducthuntConfig {
            poll_interval_ms: 60_000,
            min_poll_interval_ms: 5_000,
            ..ProducthuntConfig::default()
        }
    }

    #[test]
    fn denser_as_the_factor_rises_but_never_past_the_budget() {
        let c = config();
        assert_eq!(next_poll_in_ms(&c, None, 1, 1.0), 60_000);
        assert_eq!(next_poll_in_ms(&c, None, 1, 4.0), 15_000);
        assert_eq!(next_poll_in_ms(&c, None, 1, 100.0), 5_000);
        // 6250 points, 15 min: plenty; the factor decides.
        let b = Budget {
            limit: 6250,
            remaining: 6000,
            reset_in_ms: 900_000,
        };
        assert_eq!(next_poll_in_ms(&c, Some(b), 1, 4.0), 15_000);
        // Few points left: spread evenly until the reset, minus the reserve.
        let b = Budget {
            limit: 100,
            remaining: 30,
            reset_in_ms: 600_000,
        };
        // (30 - 10) / 2 = 10 polls over 600 s.
        assert_eq!(next_poll_in_ms(&c, Some(b), 2, 5.0), 60_000);
        // Nothing spendable: wait for the reset.
        let b = Budget {
            limit: 100,
            remaining: 10,
            reset_in_ms: 200_000,
        };
        assert_eq!(next_poll_in_ms(&c, Some(b), 2, 5.0), 201_000);
    }

    #[test]
    fn polls_over_a_window_never_exceed_the_limit() {
        // Simulate a window: each poll costs `cost`; the pacing must keep the total
        // within the limit whatever the factor.
        let c = config();
        for (limit, cost, factor) in [
            (6250u64, 3u64, 5.0),
            (40, 2, 5.0),
            (20, 7, 1.0),
            (10, 1, 3.0),
        ] {
            let window = 900_000u64;
            let (mut t, mut remaining, mut spent) = (0u64, limit, 0u64);
            let mut budget = None;
            while t < window {
                if remaining < cost {
                    break;
                }
                remaining -= cost;
                spent += cost;
                budget = Some(Budget {
                    limit,
                    remaining,
                    reset_in_ms: window - t,
                });
                t += next_poll_in_ms(&c, budget, cost, factor);
            }
            assert!(spent <= limit, "{limit}/{cost}: spent {spent}");
            let _ = budget;
        }
    }

    #[test]
    fn answers_are_read_and_errors_name_the_fix() {
        let ok = br#"{"data":{"post":{"votesCount":12,"commentsCount":3}}}"#;
        assert_eq!(
            parse_counts(ok, "x").unwrap(),
            Counts {
                votes: 12,
                comments: 3
            }
        );
        let missing = br#"{"data":{"post":null}}"#;
        match parse_counts(missing, "nope") {
            Err(PollError::Failed(m)) => assert!(m.contains("producthunt.post_slug"), "{m}"),
            other => panic!("{other:?}"),
        }
        let errors = br#"{"errors":[{"message":"bad"}],"data":null}"#;
        assert!(matches!(
            parse_counts(errors, "x"),
            Err(PollError::Failed(_))
        ));
    }

    #[test]
    fn rate_limit_headers_are_read() {
        let mut h = HeaderMap::new();
        h.insert("x-rate-limit-limit", "6250".parse().unwrap());
        h.insert("x-rate-limit-remaining", "6249".parse().unwrap());
        h.insert("x-rate-limit-reset", "899".parse().unwrap());
        assert_eq!(
            Budget::from_headers(&h, 0),
            Some(Budget {
                limit: 6250,
                remaining: 6249,
                reset_in_ms: 899_000
            })
        );
        h.remove("x-rate-limit-limit");
        assert_eq!(Budget::from_headers(&h, 0), None);
        assert_eq!(
            event_id("tidepool", "upvote", 7),
            "producthunt:tidepool:upvote:7"
        );
    }
}
