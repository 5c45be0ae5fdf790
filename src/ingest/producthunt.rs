//! The Product Hunt poller: Product Hunt's API v2 is GraphQL behind an OAuth bearer
//! token and sends no webhooks, so a real launch is seen by asking, within its rate
//! limit (6,250 complexity points per 15 minutes for GraphQL), for
//! `post(slug:) { votesCount commentsCount }` and turning the count deltas into
//! synthetic `upvote` / `comment` events; and, with the points left over, for
//! `votes(first:, createdAfter:) { edges { node { id createdAt } } }`, so each new
//! vote enters the velocity window at the time it was cast.
//!
//! - Off until a token (`producthunt.token`, `producthunt.token_file`, the credential
//!   `producthunt_token` or `LAUNCHGUARD_PRODUCTHUNT_TOKEN`) and `producthunt.post_slug`
//!   are set.
//! - Pace (`next_poll_in_ms`, pure): the budget is spent, from the first poll on, as
//!   often as it allows: after each answer, the points its `X-Rate-Limit-Remaining`
//!   leaves (less a reserve of 10% of `X-Rate-Limit-Limit`) are spread evenly until
//!   `X-Rate-Limit-Reset`, at the cost one counts poll took (the drop in
//!   `X-Rate-Limit-Remaining` it caused), never more often than
//!   `min_poll_interval_ms`. The factor no longer sets the pace. With fewer points
//!   left than one poll costs, or after a 429, the next poll waits for the reset (and
//!   `Retry-After`). An API that sends no rate-limit headers is polled every
//!   `poll_interval_ms`.
//! - When reading votes pays for itself (`votes_to_ask`, pure): only when the counts
//!   show new votes (or, at the first poll, votes at all), and only with the points
//!   that counts polls at their fastest pace (`min_poll_interval_ms`) until the reset
//!   would leave unspent: `estimate(k) + polls_at_the_floor × counts_cost ≤ spendable`.
//!   A votes query's complexity grows with `first` (`k`), so `k` is the number of new
//!   votes plus 2 (at most 50), halved until it fits; 0 means counts only. Its cost is
//!   estimated from the last votes answer (`cost × k / asked`, never under that cost,
//!   which over-estimates an affine cost), before any from twice the counts cost per
//!   vote asked. So reading votes never slows the counts poll below its floor nor
//!   spends the reserve: a quiet budget reads every vote's time, a tight one falls back
//!   to counts, and the vote is then stamped at the poll.
//! - Time of a vote (`stamp`): its `createdAt`, clamped to `[lo, now]`, where `lo` is
//!   the later of the previous poll's answer (the high-water mark: what was before it
//!   was counted by that poll) and one window ago; a vote outside is counted in
//!   `Stats::clamped`, an unreadable one in `Stats::malformed` (and stamped at the
//!   poll). The new votes of a poll are the oldest that came back created after the
//!   mark (the API is asked for `createdAfter: <mark - 1 s>`, and votes dated by recent
//!   polls are known by their API ids and skipped), at most as many as the count rose;
//!   any that no answer dated enter at the poll.
//! - Events: the `n`-th vote is the event `producthunt:<slug>:upvote:<n>`, the `n`-th
//!   comment `producthunt:<slug>:comment:<n>`, whether a vote was dated or not (its own
//!   API id and `createdAt` go in the payload): deterministic ids in one space, so
//!   switching between reading votes and counts only, a replay after a restart, or a
//!   relay sending the same id as a webhook, is a duplicate, never a second count. They
//!   go through `Ingestor::ingest_synthetic_at` (the webhook's dedup, seq, ring and
//!   durability). The last counts are kept in the sled tree `producthunt`, written
//!   after the events are durable. The first poll of a post records the counts, and
//!   when the budget lets it read votes, the votes cast within the velocity window
//!   before it become events (the newest indices, at their times), once: the next
//!   start finds the counts. A count that goes down (an unvote) lowers the baseline
//!   and is not an event.
//! - Metrics (`/metrics`, names in `telemetry.rs`): every query in
//!   `launchguard_producthunt_polls_total{query="counts"|"votes", result="ok"|"throttled"|"failed"}`;
//!   the budget of the last answer (`_budget_limit_points`, `_budget_remaining_points`,
//!   `_budget_reset_seconds`), the points each query took (`_points_spent_total{query}`,
//!   the drop in `X-Rate-Limit-Remaining` within one window), the wait chosen
//!   (`_next_poll_seconds`), the post's counts (`_post_votes`, `_post_comments`), the
//!   events made (`_votes_seen_total`, `_comments_seen_total`), what [`Stats`] counts
//!   of vote times (`_votes_dated_total`, `_votes_clamped_total`, `_malformed_total`)
//!   and, for the last dated vote, `_last_vote_lag_seconds` (its time to its event).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, HeaderMap, Method, Request, StatusCode};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::client::server_delay_ms;
use crate::config::{Durability, ProducthuntConfig};
use crate::ingest::store::{codec, trees, Commit, Store, StoreError};
use crate::telemetry;

/// The counts query: what every poll asks.
pub const QUERY: &str =
    "query LaunchguardPost($slug: String!) { post(slug: $slug) { votesCount commentsCount } }";
/// The votes query: the newest votes with their times, asked only when it pays.
pub const VOTES_QUERY: &str = "query LaunchguardVotes($slug: String!, $first: Int!, $createdAfter: DateTime!) { post(slug: $slug) { votes(first: $first, createdAfter: $createdAfter) { edges { node { id createdAt } } pageInfo { hasNextPage } } } }";
/// Share of the limit never spent, so a human with the same token still has room.
pub const RESERVE: f64 = 0.10;
const COUNTS_RECORD_VERSION: u8 = 1;
/// Most events one poll creates per kind; a larger jump (after a long outage) is
/// recorded in the baseline without flooding the window.
pub const MAX_EVENTS_PER_POLL: u64 = 5_000;
/// Most votes one votes query asks for (`first`).
pub const MAX_VOTES_PER_QUERY: u64 = 50;
/// Votes asked beyond the rise of the count, for an API that lists newest first.
pub const VOTES_SLACK: u64 = 2;
/// Largest answer body read; a longer one is a failed poll.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Longest vote id kept in an event's payload.
const MAX_VOTE_ID_CHARS: usize = 64;
/// The votes query asks for votes created this long before the mark, for an API whose
/// `createdAt` is rounded or whose writes show late; the votes already dated by
/// recent polls are recognized by their ids and skipped.
pub const VOTES_OVERLAP_MS: u64 = 1_000;
/// API ids of recently dated votes remembered for that overlap.
const SEEN_VOTE_IDS: usize = 512;

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

    /// Points that may be spent before the reset: the remaining less the reserve.
    pub fn spendable(&self) -> u64 {
        let reserve = (self.limit as f64 * RESERVE).ceil() as u64;
        self.remaining.saturating_sub(reserve)
    }
}

/// How long to wait before the next poll, ms. Pure.
///
/// `cost` is what one counts poll spends (points, as measured from the answers).
/// Known budget: `max(min_poll_interval_ms, reset_in / ((remaining - reserve) / cost))`,
/// or the reset (plus a second) when not one poll is left. Unknown budget (the API
/// sent no rate-limit headers): `poll_interval_ms`.
pub fn next_poll_in_ms(config: &ProducthuntConfig, budget: Option<Budget>, cost: u64) -> u64 {
    let Some(b) = budget else {
        return config.poll_interval_ms;
    };
    let polls_left = b.spendable() / cost.max(1);
    if polls_left == 0 {
        // Nothing to spend before the reset: wait for it (plus a second of slack).
        return b.reset_in_ms + 1000;
    }
    b.reset_in_ms
        .div_ceil(polls_left)
        .max(config.min_poll_interval_ms)
}

/// The cost the last votes query reported: `cost` points for `first: asked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VotesCost {
    pub asked: u64,
    pub cost: u64,
}

/// What a votes query of `first: k` is expected to cost. Pure. From the last one
/// measured, scaled up with `k` (never under it); before any, twice the counts cost
/// per vote asked and one more.
pub fn estimate_votes_cost(measured: Option<VotesCost>, counts_cost: u64, k: u64) -> u64 {
    match measured {
        Some(m) => m
            .cost
            .saturating_mul(k)
            .div_ceil(m.asked.max(1))
            .max(m.cost),
        None => counts_cost
            .max(1)
            .saturating_mul(2)
            .saturating_mul(k.saturating_add(1)),
    }
}

/// How many votes to ask for with their times (`first`), 0 for none. Pure.
///
/// `wanted` is how many new votes the counts show. Reading votes pays for itself only
/// with the points counts polls at `min_poll_interval_ms` until the reset would leave:
/// the largest `k ≤ min(wanted + VOTES_SLACK, MAX_VOTES_PER_QUERY)`, halving, with
/// `estimate(k) + ceil(reset_in / min_interval) × counts_cost ≤ spendable`. Unknown
/// budget: none.
pub fn votes_to_ask(
    config: &ProducthuntConfig,
    budget: Option<Budget>,
    counts_cost: u64,
    measured: Option<VotesCost>,
    wanted: u64,
) -> u64 {
    let Some(b) = budget else {
        return 0;
    };
    if wanted == 0 {
        return 0;
    }
    let floor_polls = b
        .reset_in_ms
        .div_ceil(config.min_poll_interval_ms.max(1))
        .max(1);
    let keep = floor_polls.saturating_mul(counts_cost.max(1));
    let spendable = b.spendable();
    let mut k = wanted.saturating_add(VOTES_SLACK).min(MAX_VOTES_PER_QUERY);
    while k > 0 {
        if estimate_votes_cost(measured, counts_cost, k).saturating_add(keep) <= spendable {
            return k;
        }
        k /= 2;
    }
    0
}

/// The time a vote enters the window: its `createdAt` clamped to `[lo, now]`. Pure.
/// Returns the time and whether it was clamped.
pub fn stamp(created_ms: u64, lo: u64, now: u64) -> (u64, bool) {
    let lo = lo.min(now);
    let at = created_ms.clamp(lo, now);
    (at, at != created_ms)
}

/// Events one poll makes of a kind: `(kind, first index, last index, the dated votes
/// of the first indices, ascending)`; the indices past them enter at the poll.
type Planned = (&'static str, u64, u64, Vec<Dated>);

/// A vote read with its time: when it enters the window (its `createdAt` clamped),
/// its `createdAt` as the API said, and its API id.
type Dated = (u64, u64, String);

/// Counts of a post at one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub votes: u64,
    pub comments: u64,
}

/// One vote as an answer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The API's id, when it is a short token (else empty).
    pub id: String,
    pub created_ms: u64,
}

/// The votes of an answer: those that could be read, and how many could not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VotesPage {
    pub votes: Vec<Vote>,
    pub malformed: u64,
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
    /// Read for the log line of new engagement (the pace does not depend on it).
    pub factor: crate::ingest::factor::Factor,
    pub clock: crate::clock::Clock,
    /// In a cluster, whether this node holds the poller's lease (`ops::cluster::lease`):
    /// only the holder polls, so the API budget is spent once. `None`: one box, always.
    pub leading: Option<Arc<std::sync::atomic::AtomicBool>>,
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

/// What the poller has done so far (tests, logs; `/metrics` has the same counts as
/// `launchguard_producthunt_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Counts queries sent.
    pub polls: u64,
    /// Votes queries sent.
    pub votes_queries: u64,
    /// Votes that entered the window at their `createdAt` (clamped or not).
    pub dated: u64,
    /// Of those, how many had a `createdAt` outside `[mark, now]` and were moved in.
    pub clamped: u64,
    /// Votes in an answer that could not be read (no `createdAt`, not RFC 3339, ...),
    /// and votes answers that were not what was asked.
    pub malformed: u64,
    /// Counts polls that failed: no answer, an HTTP error, or an answer that is not
    /// the counts (not JSON, GraphQL errors, a count that is not a number).
    pub failed: u64,
}

#[derive(Default)]
struct StatCells {
    votes_queries: AtomicU64,
    dated: AtomicU64,
    clamped: AtomicU64,
    malformed: AtomicU64,
    failed: AtomicU64,
}

/// The loop's view of the budget between polls.
#[derive(Debug, Clone)]
struct Pace {
    budget: Option<Budget>,
    /// Points one counts poll takes (measured; 1 until then).
    counts_cost: u64,
    votes_cost: Option<VotesCost>,
    /// The answer time of the last poll whose counts were recorded.
    mark: Option<u64>,
    /// A votes query was answered 429: nothing before this time.
    throttled_until: Option<u64>,
    /// API ids of the votes dated lately, newest last.
    seen: std::collections::VecDeque<String>,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            budget: None,
            counts_cost: 1,
            votes_cost: None,
            mark: None,
            throttled_until: None,
            seen: std::collections::VecDeque::new(),
        }
    }

    /// Takes a new answer's budget; returns the points spent since the last answer
    /// when both are from the same window (the remaining went down or stayed), and
    /// adds them to `launchguard_producthunt_points_spent_total{query}`.
    fn observe(&mut self, new: Option<Budget>, query: &'static str) -> Option<u64> {
        let spent = match (self.budget, new) {
            (Some(old), Some(new)) if new.limit == old.limit && new.remaining <= old.remaining => {
                Some(old.remaining - new.remaining)
            }
            _ => None,
        };
        if let Some(points) = spent {
            metrics::counter!(telemetry::PRODUCTHUNT_POINTS_SPENT_TOTAL, "query" => query)
                .increment(points);
        }
        if new.is_some() {
            self.budget = new;
        }
        spent
    }
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
    stats: StatCells,
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
                stats: StatCells::default(),
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

    /// Counts polls sent so far.
    pub fn polls(&self) -> watch::Receiver<u64> {
        self.inner.polls.subscribe()
    }

    /// What the poller has done so far.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.stats;
        Stats {
            polls: *self.inner.polls.borrow(),
            votes_queries: s.votes_queries.load(Ordering::Relaxed),
            dated: s.dated.load(Ordering::Relaxed),
            clamped: s.clamped.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
        }
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

    /// One GraphQL request: the answer's body (2xx) and the budget it reports.
    async fn ask(
        &self,
        state: &Sources,
        body: String,
    ) -> (Result<Bytes, PollError>, Option<Budget>) {
        let c = &self.inner.config;
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
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        })
        .await;
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
        if let Some(b) = budget {
            metrics::gauge!(telemetry::PRODUCTHUNT_BUDGET_LIMIT_POINTS).set(b.limit as f64);
            metrics::gauge!(telemetry::PRODUCTHUNT_BUDGET_REMAINING_POINTS).set(b.remaining as f64);
            metrics::gauge!(telemetry::PRODUCTHUNT_BUDGET_RESET_SECONDS)
                .set(b.reset_in_ms as f64 / 1000.0);
        }
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
        (Ok(body), budget)
    }

    /// At most `wanted` votes created after `since` (ascending), each with its time
    /// clamped, when the budget lets a votes query pay for itself; empty otherwise.
    async fn dated_votes(
        &self,
        state: &Sources,
        pace: &mut Pace,
        wanted: u64,
        since: u64,
        now: u64,
    ) -> Vec<Dated> {
        let k = votes_to_ask(
            &self.inner.config,
            pace.budget,
            pace.counts_cost,
            pace.votes_cost,
            wanted,
        );
        if k == 0 {
            return Vec::new();
        }
        let after =
            jiff::Timestamp::from_millisecond(since.saturating_sub(VOTES_OVERLAP_MS) as i64)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
        let body = json!({
            "query": VOTES_QUERY,
            "variables": {"slug": self.inner.slug, "first": k, "createdAfter": after},
        })
        .to_string();
        let stats = &self.inner.stats;
        stats.votes_queries.fetch_add(1, Ordering::Relaxed);
        let (answer, budget) = self.ask(state, body).await;
        if let Some(cost) = pace.observe(budget, "votes") {
            pace.votes_cost = Some(VotesCost {
                asked: k,
                cost: cost.max(1),
            });
        }
        let page = match answer {
            Ok(body) => parse_votes(&body, k),
            Err(PollError::Throttled { wait_ms }) => {
                polled("votes", "throttled");
                let wait = wait_ms
                    .max(pace.budget.map_or(0, |b| b.reset_in_ms))
                    .max(1000);
                tracing::warn!(
                    wait_ms = wait,
                    "Product Hunt API answered 429 to the votes query; waiting for the reset"
                );
                pace.throttled_until = Some(state.clock.now_ms() + wait);
                pace.budget = None;
                return Vec::new();
            }
            Err(PollError::Failed(e)) => Err(e),
        };
        let page = match page {
            Ok(p) => {
                polled("votes", "ok");
                p
            }
            Err(e) => {
                polled("votes", "failed");
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::PRODUCTHUNT_MALFORMED_TOTAL).increment(1);
                tracing::warn!("Product Hunt votes not read (the votes enter at the poll): {e}");
                return Vec::new();
            }
        };
        if page.malformed > 0 {
            stats.malformed.fetch_add(page.malformed, Ordering::Relaxed);
            metrics::counter!(telemetry::PRODUCTHUNT_MALFORMED_TOTAL).increment(page.malformed);
            tracing::warn!(
                malformed = page.malformed,
                "Product Hunt answer listed votes that could not be read"
            );
        }
        let mut times: Vec<(u64, String)> = Vec::with_capacity(page.votes.len());
        for v in page.votes {
            if !v.id.is_empty() && pace.seen.contains(&v.id) {
                continue; // dated by an earlier poll (the overlap)
            }
            times.push((v.created_ms, v.id));
        }
        // The new votes of this poll are the oldest after the mark; a vote newer than
        // the counts answer is the next poll's.
        times.sort();
        times.truncate(wanted as usize);
        for (_, id) in &times {
            if !id.is_empty() {
                if pace.seen.len() == SEEN_VOTE_IDS {
                    pace.seen.pop_front();
                }
                pace.seen.push_back(id.clone());
            }
        }
        times
            .into_iter()
            .map(|(created, id)| {
                let (at, moved) = stamp(created, since, now);
                if moved {
                    stats.clamped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(telemetry::PRODUCTHUNT_VOTES_CLAMPED_TOTAL).increment(1);
                }
                (at, created, id)
            })
            .collect()
    }

    /// Turns new counts (answered at `now`) into events through the ingest path;
    /// returns how many were new.
    async fn record(
        &self,
        state: &Sources,
        pace: &mut Pace,
        counts: Counts,
        now: u64,
    ) -> Result<usize, String> {
        let window_ms = u64::from(state.webhook.config.velocity.window_secs) * 1000;
        // No vote older than this enters the window (it would count for under a second).
        let window_lo = now.saturating_sub(window_ms.saturating_sub(1000));
        let prev = self.baseline().map_err(|e| e.to_string())?;
        let slug = &self.inner.slug;
        let mut plan: Vec<Planned> = Vec::new();
        match prev {
            None => {
                // First poll of the post: the votes cast within the window before it
                // count, once, as the newest indices; everything else is the baseline.
                let wanted = counts.votes.min(MAX_EVENTS_PER_POLL);
                let dated = if wanted > 0 {
                    self.dated_votes(state, pace, wanted, window_lo, now).await
                } else {
                    Vec::new()
                };
                let m = dated.len() as u64;
                if m > 0 {
                    plan.push(("upvote", counts.votes - m + 1, counts.votes, dated));
                }
                tracing::info!(slug = %slug, votes = counts.votes, comments = counts.comments, recent_votes = m, "Product Hunt baseline recorded");
            }
            Some(prev) => {
                let first_vote =
                    (prev.votes + 1).max(counts.votes.saturating_sub(MAX_EVENTS_PER_POLL) + 1);
                if counts.votes >= first_vote {
                    let wanted = counts.votes - first_vote + 1;
                    let since = pace.mark.unwrap_or(window_lo).max(window_lo);
                    let dated = self.dated_votes(state, pace, wanted, since, now).await;
                    plan.push(("upvote", first_vote, counts.votes, dated));
                }
                let first_comment = (prev.comments + 1)
                    .max(counts.comments.saturating_sub(MAX_EVENTS_PER_POLL) + 1);
                if counts.comments >= first_comment {
                    plan.push(("comment", first_comment, counts.comments, Vec::new()));
                }
            }
        }
        let stats = &self.inner.stats;
        let mut accepted = 0;
        for (kind, first, last, dated) in plan {
            for (i, n) in (first..=last).enumerate() {
                let id = event_id(slug, kind, n);
                let (at, created, vote) = match dated.get(i) {
                    Some((at, created, vote)) => (*at, *created, Some(vote.as_str())),
                    None => (now, now, None),
                };
                let mut data = json!({"post": slug, "count": n, "source": "producthunt-api"});
                if let Some(vote) = vote {
                    data["created_at"] = json!(jiff::Timestamp::from_millisecond(at as i64)
                        .map(|t| t.to_string())
                        .unwrap_or_default());
                    if !vote.is_empty() {
                        data["vote_id"] = json!(vote);
                    }
                }
                let payload = json!({"id": id, "event_type": kind, "data": data})
                    .to_string()
                    .into_bytes();
                match state
                    .webhook
                    .ingestor
                    .ingest_synthetic_at(&id, kind, payload, at)
                {
                    Ok(Commit::Accepted { .. }) => {
                        accepted += 1;
                        if vote.is_some() {
                            stats.dated.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!(telemetry::PRODUCTHUNT_VOTES_DATED_TOTAL)
                                .increment(1);
                            // In the window now (the push above): the time from its
                            // `createdAt` (0 for one in the future).
                            let lag_ms = state.clock.now_ms().saturating_sub(created);
                            metrics::gauge!(telemetry::PRODUCTHUNT_LAST_VOTE_LAG_SECONDS)
                                .set(lag_ms as f64 / 1000.0);
                        }
                        let seen = if kind == "upvote" {
                            telemetry::PRODUCTHUNT_VOTES_SEEN_TOTAL
                        } else {
                            telemetry::PRODUCTHUNT_COMMENTS_SEEN_TOTAL
                        };
                        metrics::counter!(seen).increment(1);
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

    /// One turn that polls: counts, then votes when they pay; returns the wait until
    /// the next poll, ms.
    async fn poll_once(&self, state: &Sources, pace: &mut Pace) -> u64 {
        let body = json!({"query": QUERY, "variables": {"slug": self.inner.slug}}).to_string();
        let (answer, budget) = self.ask(state, body).await;
        self.inner.polls.send_modify(|n| *n += 1);
        let now = state.clock.now_ms();
        if let Some(cost) = pace.observe(budget, "counts") {
            pace.counts_cost = cost.max(1);
        }
        let counts = answer.and_then(|body| parse_counts(&body, &self.inner.slug));
        let wait = match counts {
            Ok(counts) => {
                polled("counts", "ok");
                metrics::gauge!(telemetry::PRODUCTHUNT_POST_VOTES).set(counts.votes as f64);
                metrics::gauge!(telemetry::PRODUCTHUNT_POST_COMMENTS).set(counts.comments as f64);
                match self.record(state, pace, counts, now).await {
                    Ok(n) => {
                        pace.mark = Some(now);
                        if n > 0 {
                            tracing::info!(slug = %self.inner.slug, new_events = n, votes = counts.votes, comments = counts.comments, factor = state.factor.current(), "Product Hunt engagement");
                        }
                    }
                    Err(e) => tracing::warn!("Product Hunt counts not recorded: {e}"),
                }
                next_poll_in_ms(&self.inner.config, pace.budget, pace.counts_cost)
            }
            Err(PollError::Throttled { wait_ms }) => {
                polled("counts", "throttled");
                let wait = wait_ms
                    .max(pace.budget.map_or(0, |b| b.reset_in_ms))
                    .max(1000);
                tracing::warn!(
                    wait_ms = wait,
                    "Product Hunt API answered 429; waiting for the reset"
                );
                // Spent: the next poll is after the reset.
                pace.budget = None;
                wait
            }
            Err(PollError::Failed(e)) => {
                polled("counts", "failed");
                self.inner.stats.failed.fetch_add(1, Ordering::Relaxed);
                let wait = next_poll_in_ms(&self.inner.config, pace.budget, pace.counts_cost);
                tracing::warn!(wait_ms = wait, "Product Hunt poll failed: {e}");
                wait
            }
        };
        let after_now = state.clock.now_ms();
        let wait = match pace.throttled_until.take() {
            Some(until) => wait.max(until.saturating_sub(after_now)),
            None => wait,
        };
        metrics::gauge!(telemetry::PRODUCTHUNT_NEXT_POLL_SECONDS).set(wait as f64 / 1000.0);
        wait
    }

    /// The loop: poll when due, record, pace by the budget.
    pub async fn run(self, state: Sources, tick: Duration, shutdown: CancellationToken) {
        let mut next_at = state.clock.now_ms();
        let mut pace = Pace::new();
        loop {
            let now = state.clock.now_ms();
            let leading = state
                .leading
                .as_ref()
                .is_none_or(|l| l.load(Ordering::Acquire));
            if !leading {
                // Another node polls; take over at once when the lease comes here.
                next_at = now;
            } else if now >= next_at {
                let wait = tokio::select! {
                    w = self.poll_once(&state, &mut pace) => w,
                    _ = shutdown.cancelled() => return,
                };
                next_at = state.clock.now_ms() + wait;
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

/// Counts one GraphQL query in `launchguard_producthunt_polls_total{query, result}`.
fn polled(query: &'static str, result: &'static str) {
    metrics::counter!(telemetry::PRODUCTHUNT_POLLS_TOTAL, "query" => query, "result" => result)
        .increment(1);
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

/// Reads `{"data": {"post": {"votes": {"edges": [{"node": {"id", "createdAt"}}]}}}}`,
/// at most `asked` votes (more is malformed). A vote without a readable `createdAt`
/// (RFC 3339, after 1970) is counted as malformed and skipped; an answer that is not
/// that shape is an error.
pub fn parse_votes(body: &[u8], asked: u64) -> Result<VotesPage, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if let Some(errors) = v.get("errors").filter(|e| !e.is_null()) {
        let text: String = errors.to_string().chars().take(300).collect();
        return Err(format!("GraphQL errors: {text}"));
    }
    let edges = v["data"]["post"]["votes"]["edges"]
        .as_array()
        .ok_or("the answer has no data.post.votes.edges")?;
    let mut page = VotesPage::default();
    let mut ids = std::collections::HashSet::new();
    for (i, edge) in edges.iter().enumerate() {
        if i as u64 >= asked {
            page.malformed += (edges.len() - i) as u64;
            break;
        }
        let node = &edge["node"];
        let created = node["createdAt"]
            .as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .filter(|ms| *ms > 0);
        let Some(created_ms) = created else {
            page.malformed += 1;
            continue;
        };
        let id = match &node["id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        let id = if id.len() <= MAX_VOTE_ID_CHARS
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            id
        } else {
            String::new()
        };
        if !id.is_empty() && !ids.insert(id.clone()) {
            // The same vote twice in one answer: once.
            page.malformed += 1;
            continue;
        }
        page.votes.push(Vote {
            id,
            created_ms: created_ms as u64,
        });
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProducthuntConfig {
        ProducthuntConfig {
            poll_interval_ms: 60_000,
            min_poll_interval_ms: 2_000,
            ..ProducthuntConfig::default()
        }
    }

    /// Product Hunt's real budget, `secs` before its reset.
    fn real(remaining: u64, secs: u64) -> Budget {
        Budget {
            limit: 6250,
            remaining,
            reset_in_ms: secs * 1000,
        }
    }

    #[test]
    fn the_budget_is_spent_evenly_from_the_first_poll() {
        let c = config();
        // Unknown budget: the upper bound.
        assert_eq!(next_poll_in_ms(&c, None, 3), 60_000);
        // 6,250 points, 15 min, 3 per poll: (6247 - 625) / 3 = 1874 polls in 900 s,
        // under the 2 s floor, so the floor governs.
        assert_eq!(next_poll_in_ms(&c, Some(real(6247, 900)), 3), 2_000);
        // 40 points a poll: 140 polls in 900 s, one every 6.43 s.
        assert_eq!(
            next_poll_in_ms(&c, Some(real(6247, 900)), 40),
            900_000u64.div_ceil(140)
        );
        // Half the window gone, 1,000 points left, 25 a poll: (1000 - 625) / 25 = 15
        // polls in 450 s.
        assert_eq!(next_poll_in_ms(&c, Some(real(1000, 450)), 25), 30_000);
        // Fewer points than one poll above the reserve: wait for the reset.
        assert_eq!(next_poll_in_ms(&c, Some(real(640, 200)), 25), 201_000);
        assert_eq!(next_poll_in_ms(&c, Some(real(0, 10)), 3), 11_000);
        // A tiny budget: (30 - 10) / 2 = 10 polls over 600 s.
        let b = Budget {
            limit: 100,
            remaining: 30,
            reset_in_ms: 600_000,
        };
        assert_eq!(next_poll_in_ms(&c, Some(b), 2), 60_000);
    }

    /// Replays a window on an injected clock: the poll times the pacing picks, the
    /// points each costs. Returns the points spent and the polls made in the first
    /// minute.
    fn replay(c: &ProducthuntConfig, limit: u64, cost: u64) -> (u64, u64) {
        let window = 900_000u64;
        let (mut t, mut remaining, mut polls_first_minute) = (0u64, limit, 0u64);
        while t < window {
            assert!(remaining >= cost, "polled with {remaining} left, at {t} ms");
            remaining -= cost;
            if t < 60_000 {
                polls_first_minute += 1;
            }
            let b = Budget {
                limit,
                remaining,
                reset_in_ms: window - t,
            };
            let wait = next_poll_in_ms(c, Some(b), cost);
            assert!(wait >= c.min_poll_interval_ms);
            t += wait;
        }
        (limit - remaining, polls_first_minute)
    }

    #[test]
    fn polls_over_a_window_never_exceed_the_limit_and_use_it() {
        let c = config();
        for (limit, cost) in [(6250u64, 3u64), (6250, 40), (6250, 200), (40, 2), (20, 7)] {
            let (spent, first_minute) = replay(&c, limit, cost);
            assert!(spent <= limit, "{limit}/{cost}: spent {spent}");
            let reserve = (limit as f64 * RESERVE).ceil() as u64;
            if limit / cost >= 450 {
                // Enough for the floor: every 2 s from the start.
                assert!(first_minute >= 30, "{limit}/{cost}: {first_minute}");
            } else {
                // Spread: all but the reserve is used, less the poll that would
                // fall on the reset and the rounding of one.
                assert!(
                    spent + reserve + 2 * cost >= limit,
                    "{limit}/{cost}: spent {spent}"
                );
            }
        }
    }

    #[test]
    fn votes_are_read_only_with_the_points_the_floor_pace_leaves() {
        let c = config();
        // Unknown budget, or nothing new: counts only.
        assert_eq!(votes_to_ask(&c, None, 3, None, 5), 0);
        assert_eq!(votes_to_ask(&c, Some(real(6247, 900)), 3, None, 0), 0);
        // Plenty: the new votes and the slack.
        assert_eq!(votes_to_ask(&c, Some(real(6247, 900)), 3, None, 5), 7);
        // A burst: at most MAX_VOTES_PER_QUERY.
        assert_eq!(
            votes_to_ask(&c, Some(real(6247, 900)), 3, None, 500),
            MAX_VOTES_PER_QUERY
        );
        // The floor pace needs 450 × 3 = 1350 of the 1400 spendable: 50 left, and a
        // measured 7 + 3k (10 for k = 1, 25 for k = 6).
        let m = Some(VotesCost { asked: 6, cost: 25 });
        assert_eq!(votes_to_ask(&c, Some(real(2025, 900)), 3, m, 4), 6);
        assert_eq!(votes_to_ask(&c, Some(real(2025 - 30, 900)), 3, m, 4), 0);
        // Near the reset the floor needs little: votes again.
        assert_eq!(votes_to_ask(&c, Some(real(700, 20)), 3, m, 4), 6);
        // Halved until it fits: 60 points left, 42 cost 156 and 21 cost 78.
        let m = Some(VotesCost {
            asked: 10,
            cost: 37,
        });
        assert_eq!(
            votes_to_ask(&c, Some(real(625 + 30 + 60, 20)), 3, m, 40),
            10
        );
    }

    #[test]
    fn the_votes_estimate_never_undercuts_an_affine_cost() {
        // A cost of a + b·k, measured once at k0, estimated at every k.
        for (a, b) in [(7u64, 3u64), (1, 1), (40, 1), (3, 10)] {
            for k0 in 1..=50u64 {
                let m = Some(VotesCost {
                    asked: k0,
                    cost: a + b * k0,
                });
                for k in 1..=50u64 {
                    assert!(
                        estimate_votes_cost(m, 3, k) >= a + b * k,
                        "{a}+{b}k at {k}/{k0}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_vote_enters_at_its_time_clamped_to_the_mark_and_now() {
        assert_eq!(stamp(5_000, 1_000, 9_000), (5_000, false));
        assert_eq!(stamp(500, 1_000, 9_000), (1_000, true));
        assert_eq!(stamp(u64::MAX, 1_000, 9_000), (9_000, true));
        assert_eq!(stamp(0, 10_000, 9_000), (9_000, true));
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
        for bad in [
            &br#"{"data":{"post":{"votesCount":-1,"commentsCount":3}}}"#[..],
            br#"{"data":{"post":{"votesCount":"12","commentsCount":3}}}"#,
            br#"[1,2"#,
            b"",
        ] {
            assert!(parse_counts(bad, "x").is_err());
        }
    }

    #[test]
    fn hostile_votes_are_counted_not_trusted() {
        let body = br#"{"data":{"post":{"votes":{"edges":[
            {"node":{"id":"101","createdAt":"2026-12-01T06:00:00Z"}},
            {"node":{"id":102,"createdAt":"2026-12-01T06:00:01.500+00:00"}},
            {"node":{"id":"103","createdAt":"yesterday"}},
            {"node":{"id":"104"}},
            {"node":{"id":"105","createdAt":"1969-12-31T23:59:59Z"}},
            {"node":{"id":"<script>","createdAt":"2026-12-01T06:00:02Z"}},
            {"node":{"id":"101","createdAt":"2026-12-01T06:00:00Z"}},
            {"node":null},
            {"node":{"id":"109","createdAt":"2026-12-01T06:00:03Z"}}
        ],"pageInfo":{"hasNextPage":false}}}}}"#;
        let page = parse_votes(body, 8).unwrap();
        let t0 = "2026-12-01T06:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond() as u64;
        assert_eq!(
            page.votes,
            vec![
                Vote {
                    id: "101".into(),
                    created_ms: t0
                },
                Vote {
                    id: "102".into(),
                    created_ms: t0 + 1_500
                },
                Vote {
                    id: String::new(),
                    created_ms: t0 + 2_000
                },
            ]
        );
        // yesterday, no createdAt, before 1970, the repeat, null, and one past `first`.
        assert_eq!(page.malformed, 6);
        assert!(parse_votes(br#"{"data":{"post":{"votes":null}}}"#, 5).is_err());
        assert!(parse_votes(br#"{"errors":[{"message":"complexity"}]}"#, 5).is_err());
        assert!(parse_votes(b"\xff\xfe", 5).is_err());
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
        assert_eq!(Budget::from_headers(&h, 0).unwrap().spendable(), 6249 - 625);
        h.insert("x-rate-limit-remaining", "-3".parse().unwrap());
        assert_eq!(Budget::from_headers(&h, 0), None);
        h.remove("x-rate-limit-limit");
        assert_eq!(Budget::from_headers(&h, 0), None);
        assert_eq!(
            event_id("tidepool", "upvote", 7),
            "producthunt:tidepool:upvote:7"
        );
    }

    #[test]
    fn the_cost_is_what_the_remaining_dropped_by_in_one_window() {
        let mut p = Pace::new();
        assert_eq!(p.observe(Some(real(6247, 900)), "counts"), None);
        assert_eq!(p.observe(Some(real(6244, 898)), "counts"), Some(3));
        assert_eq!(p.observe(Some(real(6244, 897)), "counts"), Some(0));
        assert_eq!(p.observe(None, "counts"), None);
        assert_eq!(p.budget, Some(real(6244, 897)));
        // A reset in between: no measure.
        assert_eq!(p.observe(Some(real(6247, 900)), "counts"), None);
    }
}
