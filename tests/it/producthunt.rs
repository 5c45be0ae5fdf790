//! The Product Hunt poller against a fake GraphQL endpoint on `127.0.0.1:0` that
//! speaks Product Hunt's budget (on the test's clock): a points limit per 15-minute
//! window (6,250 for the real one), `X-Rate-Limit-Limit/Remaining/Reset` on every
//! answer, 429 past it, and a complexity per query that grows with the votes asked for
//! (`votes(first: k)`, graphql-ruby's rule: the counts query 3 points, the votes query
//! `4 + 3k`). It serves `votesCount`, `commentsCount` and `votes(first, createdAfter)`
//! with each vote's `createdAt`, newest first, and counts the points spent per window:
//! the poller never goes past the budget, resumes at the reset, reacts within seconds,
//! dates each vote at its `createdAt`, and replays after a restart (or an overlapping
//! webhook) are not counted twice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{TestServer, SECRET};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hyper::StatusCode;
use launchguard::clock::Clock;
use launchguard::config::Config;
use launchguard::ingest::store::Store;
use parking_lot::Mutex;

const START_MS: u64 = 1_790_000_000_000;
const WINDOW_MS: u64 = 900_000;
const TOKEN: &str = "ph-test-token";
/// Product Hunt's GraphQL budget: points per 15 minutes.
const PH_LIMIT: u64 = 6250;
/// Complexity of `post { votesCount commentsCount }`: one per field.
const PH_COUNTS_COST: u64 = 3;
/// Complexity of `post { votes(first: k) { edges { node { id createdAt } } pageInfo
/// { hasNextPage } } }`: post, votes, pageInfo, hasNextPage, and k × (edge, id, createdAt).
fn ph_votes_cost(first: u64) -> u64 {
    4 + 3 * first
}

#[derive(Default)]
struct Budgeted {
    limit: u64,
    /// Points a counts query costs.
    cost: u64,
    /// Points spent per window index.
    spent: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Every vote in the API: (id, createdAt as RFC 3339 or anything a hostile API says,
    /// createdAt ms for the `createdAfter` filter).
    votes: Mutex<Vec<(u64, String, u64)>>,
    comments: AtomicU64,
    ok: AtomicU64,
    votes_queries: AtomicU64,
    /// The largest `first` asked.
    max_first: AtomicU64,
    throttled: AtomicU64,
    unauthorized: AtomicU64,
    /// Answer 200 with this body instead (a broken or hostile API).
    garbage: Mutex<Option<String>>,
}

struct FakeApi {
    addr: SocketAddr,
    state: Arc<Budgeted>,
}

impl FakeApi {
    async fn start(clock: Clock, limit: u64, cost: u64) -> FakeApi {
        let state = Arc::new(Budgeted {
            limit,
            cost,
            ..Budgeted::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v2/api/graphql", post(graphql))
            .with_state((state.clone(), clock));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApi { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/v2/api/graphql", self.addr)
    }

    fn requests(&self) -> u64 {
        self.state.ok.load(Ordering::SeqCst) + self.state.throttled.load(Ordering::SeqCst)
    }

    /// `n` votes cast at `at_ms`, visible from now on. Returns their ids.
    fn add_votes(&self, n: u64, at_ms: u64) -> Vec<u64> {
        let stamp = jiff::Timestamp::from_millisecond(at_ms as i64)
            .unwrap()
            .to_string();
        self.add_raw_votes(n, &stamp, at_ms)
    }

    /// `n` votes whose `createdAt` is `created_at` verbatim (`at_ms` for the filter).
    fn add_raw_votes(&self, n: u64, created_at: &str, at_ms: u64) -> Vec<u64> {
        let mut votes = self.state.votes.lock();
        (0..n)
            .map(|_| {
                let id = 1000 + votes.len() as u64;
                votes.push((id, created_at.to_string(), at_ms));
                id
            })
            .collect()
    }

    fn vote_count(&self) -> u64 {
        self.state.votes.lock().len() as u64
    }

    /// Points spent per window so far.
    fn spent(&self) -> std::collections::BTreeMap<u64, u64> {
        self.state.spent.lock().clone()
    }
}

async fn graphql(
    State((s, clock)): State<(Arc<Budgeted>, Clock)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        s.unauthorized.fetch_add(1, Ordering::SeqCst);
        return (AxStatus::UNAUTHORIZED, "{}").into_response();
    }
    let q: serde_json::Value = serde_json::from_str(&body).unwrap();
    let query = q["query"].as_str().unwrap();
    assert_eq!(q["variables"]["slug"], "tidepool");
    // Which query, and what it costs.
    let votes_asked = if query.contains("votes(") {
        assert!(query.contains("createdAt") && query.contains("createdAfter"));
        let first = q["variables"]["first"].as_u64().expect("first: Int");
        assert!((1..=100).contains(&first), "first: {first}");
        s.max_first.fetch_max(first, Ordering::SeqCst);
        let after: jiff::Timestamp = q["variables"]["createdAfter"]
            .as_str()
            .expect("createdAfter: DateTime")
            .parse()
            .expect("createdAfter is RFC 3339");
        Some((first, after.as_millisecond() as u64))
    } else {
        assert!(query.contains("votesCount") && query.contains("commentsCount"));
        None
    };
    let cost = match votes_asked {
        Some((first, _)) => ph_votes_cost(first) - PH_COUNTS_COST + s.cost,
        None => s.cost,
    };
    let now = clock.now_ms();
    let window = now / WINDOW_MS;
    let reset_secs = ((window + 1) * WINDOW_MS - now).div_ceil(1000);
    let mut spent = s.spent.lock();
    let used = spent.entry(window).or_insert(0);
    let over = *used + cost > s.limit;
    if !over {
        *used += cost;
    }
    let remaining = s.limit - *used;
    drop(spent);
    let rate = [
        ("x-rate-limit-limit", s.limit.to_string()),
        ("x-rate-limit-remaining", remaining.to_string()),
        ("x-rate-limit-reset", reset_secs.to_string()),
    ];
    let mut res = if over {
        s.throttled.fetch_add(1, Ordering::SeqCst);
        (
            AxStatus::TOO_MANY_REQUESTS,
            r#"{"errors":[{"error":"rate_limit_reached"}]}"#.to_string(),
        )
            .into_response()
    } else if let Some(body) = s.garbage.lock().clone() {
        s.ok.fetch_add(1, Ordering::SeqCst);
        (AxStatus::OK, body).into_response()
    } else {
        s.ok.fetch_add(1, Ordering::SeqCst);
        let votes = s.votes.lock();
        let data = match votes_asked {
            None => serde_json::json!({"data": {"post": {
                "votesCount": votes.len(),
                "commentsCount": s.comments.load(Ordering::SeqCst),
            }}}),
            Some((first, after_ms)) => {
                s.votes_queries.fetch_add(1, Ordering::SeqCst);
                let matching: Vec<_> = votes.iter().rev().filter(|v| v.2 > after_ms).collect();
                let edges: Vec<_> = matching
                    .iter()
                    .take(first as usize)
                    .map(|(id, created, _)| {
                        serde_json::json!({"node": {"id": id.to_string(), "createdAt": created}})
                    })
                    .collect();
                serde_json::json!({"data": {"post": {"votes": {
                    "edges": edges,
                    "pageInfo": {"hasNextPage": matching.len() > first as usize},
                }}}})
            }
        };
        (AxStatus::OK, data.to_string()).into_response()
    };
    for (k, v) in rate {
        res.headers_mut().insert(k, v.parse().unwrap());
    }
    res
}

fn poller_config(api: &FakeApi) -> impl Fn(&mut Config) + Clone + '_ {
    move |c: &mut Config| {
        c.producthunt.token = Some(TOKEN.into());
        c.producthunt.post_slug = Some("tidepool".into());
        c.producthunt.api_url = api.url();
        c.producthunt.poll_interval_ms = 60_000;
        c.producthunt.min_poll_interval_ms = 5_000;
    }
}

/// Moves the clock by `ms` and waits for the poller to have looked at it.
async fn step(server: &TestServer, ms: u64) {
    let poller = server
        .state()
        .producthunt
        .as_ref()
        .expect("the poller runs");
    server.clock.advance_ms(ms);
    let mut turns = poller.turns();
    let before = *turns.borrow_and_update();
    poller.kick();
    tokio::time::timeout(Duration::from_secs(30), turns.wait_for(|n| *n > before))
        .await
        .expect("the poller took a turn")
        .unwrap();
}

/// Steps until `done` holds (at most `max` steps of `ms`).
async fn step_until(server: &TestServer, ms: u64, max: usize, done: impl Fn() -> bool) {
    for _ in 0..max {
        if done() {
            return;
        }
        step(server, ms).await;
    }
    assert!(done(), "the condition did not hold after {max} steps");
}

#[tokio::test]
async fn the_poller_stays_within_the_budget_resumes_at_the_reset_and_moves_the_factor() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    // 20 points per 15 minutes, 2 per poll: 10 polls a window at most.
    let api = FakeApi::start(clock.clone(), 20, 2).await;
    let server = TestServer::start(dir.path(), clock.clone(), poller_config(&api)).await;
    let poller = server.state().producthunt.clone().unwrap();

    // The first poll records the baseline: no events.
    step_until(&server, 1000, 30, || api.requests() >= 1).await;
    step_until(&server, 1000, 30, || poller.baseline().unwrap().is_some()).await;
    let seq0 = server.state().store.next_seq();

    // Engagement: 30 votes and 10 comments appear.
    api.add_votes(30, clock.now_ms());
    api.state.comments.store(10, Ordering::SeqCst);
    let store = server.state().store.clone();
    step_until(&server, 5000, 200, || store.next_seq() >= seq0 + 40).await;
    server.pumped().await;
    let computed = server.state().factor.computed();
    assert!(computed > 1.3, "40 events in the window: factor {computed}");
    assert_eq!(
        store.next_seq(),
        seq0 + 40,
        "one event per new vote or comment"
    );
    let ev = store.event(seq0).unwrap().unwrap();
    assert_eq!(ev.id, "producthunt:tidepool:upvote:1");
    assert_eq!(ev.scheme.as_str(), "producthunt-api");

    // So small a budget leaves nothing for reading votes: counts only.
    assert_eq!(api.state.votes_queries.load(Ordering::SeqCst), 0);
    assert_eq!(poller.stats().dated, 0);

    // Walk through two whole windows in 5 s steps.
    for _ in 0..(2 * WINDOW_MS / 5000) {
        step(&server, 5000).await;
    }
    assert_eq!(
        api.state.throttled.load(Ordering::SeqCst),
        0,
        "the poller went past the budget"
    );
    assert_eq!(api.state.unauthorized.load(Ordering::SeqCst), 0);
    let spent = api.state.spent.lock().clone();
    assert!(spent.len() >= 3, "polls in every window: {spent:?}");
    for (w, points) in &spent {
        assert!(*points <= 20, "window {w}: {points} points");
    }
    // Polling resumed after each reset and used most of each full window's budget.
    let full: Vec<u64> = spent.values().copied().collect();
    assert!(
        full[1..full.len() - 1].iter().all(|p| *p >= 12),
        "budget left unused: {spent:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn after_a_429_the_poller_waits_for_the_reset() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    let api = FakeApi::start(clock.clone(), 20, 2).await;
    // Someone spent this window's budget already.
    api.state.spent.lock().insert(START_MS / WINDOW_MS, 20);
    let reset_at = (START_MS / WINDOW_MS + 1) * WINDOW_MS;
    let server = TestServer::start(dir.path(), clock.clone(), poller_config(&api)).await;

    step_until(&server, 1000, 30, || api.requests() >= 1).await;
    assert_eq!(api.state.throttled.load(Ordering::SeqCst), 1);
    while clock.now_ms() + 5000 < reset_at {
        step(&server, 5000).await;
        assert_eq!(api.requests(), 1, "polled again before the reset");
    }
    step_until(&server, 5000, 10, || {
        api.state.ok.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(api.state.throttled.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn replays_after_a_restart_and_overlapping_webhooks_are_not_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    let api = FakeApi::start(clock.clone(), 6250, 1).await;
    let server = TestServer::start(dir.path(), clock.clone(), poller_config(&api)).await;
    let poller = server.state().producthunt.clone().unwrap();
    step_until(&server, 1000, 30, || poller.baseline().unwrap().is_some()).await;
    let seq0 = server.state().store.next_seq();

    api.add_votes(5, clock.now_ms());
    let store = server.state().store.clone();
    step_until(&server, 5000, 100, || store.next_seq() == seq0 + 5).await;

    // A relay sends the 6th vote as a webhook with the same deterministic id first.
    let r = server
        .webhook(
            &server.event("producthunt:tidepool:upvote:6", "upvote"),
            SECRET,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    api.add_votes(1, clock.now_ms());
    step_until(&server, 5000, 100, || {
        poller.baseline().unwrap().map(|c| c.votes) == Some(6)
    })
    .await;
    assert_eq!(
        store.next_seq(),
        seq0 + 6,
        "the poller's 6th vote was a duplicate"
    );
    drop((store, poller));
    server.stop().await;

    // A crash that lost the baseline (written after the events): the restart replays
    // votes 1..=6, and every one of them is a duplicate.
    {
        let store = Store::open(dir.path()).unwrap();
        let tree = store.open_tree("producthunt").unwrap();
        let mut zero = vec![1u8];
        zero.extend_from_slice(&[0u8; 16]);
        tree.insert("tidepool", zero).unwrap();
        store.flush_durable(true).unwrap();
    }
    let server = TestServer::start(dir.path(), clock.clone(), poller_config(&api)).await;
    let poller = server.state().producthunt.clone().unwrap();
    assert_eq!(poller.baseline().unwrap().unwrap().votes, 0);
    step_until(&server, 5000, 100, || {
        poller.baseline().unwrap().map(|c| c.votes) == Some(6)
    })
    .await;
    assert_eq!(server.state().store.next_seq(), seq0 + 6, "replays counted");
    server.stop().await;
}

/// The poller's events in the store, oldest first: (id, time in the window).
fn poller_events(server: &TestServer) -> Vec<(String, u64)> {
    server
        .state()
        .store
        .events_since(0)
        .unwrap()
        .into_iter()
        .filter(|e| e.scheme.as_str() == "producthunt-api")
        .map(|e| (e.id, e.received_ms))
        .collect()
}

/// The window holds exactly the stored votes of the last 60 seconds, by their stored
/// times (checked right after an ingest, when the pump has drained at this clock).
async fn assert_window_holds_the_stored_times(server: &TestServer) {
    server.pumped().await;
    let now_sec = server.clock.now_ms() / 1000;
    let in_window = poller_events(server)
        .iter()
        .filter(|(_, at)| now_sec - at / 1000 < 60)
        .count();
    let sum = server.state().factor.velocity() * 60.0;
    assert!(
        (sum - 1.2 * in_window as f64).abs() < 1e-6,
        "window sum {sum}, expected {in_window} votes of 1.2"
    );
}

#[tokio::test]
async fn votes_reach_the_factor_within_seconds_at_their_time_within_the_real_budget() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    let api = FakeApi::start(clock.clone(), PH_LIMIT, PH_COUNTS_COST).await;
    // Before launchguard starts: 3 votes 20 minutes ago, 4 within the last minute.
    api.add_votes(3, START_MS - 1_200_000);
    let recent = [
        START_MS - 50_000,
        START_MS - 41_500,
        START_MS - 30_000,
        START_MS - 2_000,
    ];
    for at in recent {
        api.add_votes(1, at);
    }
    let server = TestServer::start(dir.path(), clock.clone(), |c| {
        poller_config(&api)(c);
        // The default: the budget decides the pace, never faster than this.
        c.producthunt.min_poll_interval_ms = 2_000;
    })
    .await;
    let poller = server.state().producthunt.clone().unwrap();
    let store = server.state().store.clone();

    // The first poll: the counts, and the votes of the last minute, once, each at its
    // createdAt (c); the older ones are only the baseline.
    step_until(&server, 250, 40, || poller.baseline().unwrap().is_some()).await;
    let expected: Vec<(String, u64)> = (4..=7)
        .zip(recent)
        .map(|(n, at)| (format!("producthunt:tidepool:upvote:{n}"), at))
        .collect();
    assert_eq!(poller_events(&server), expected);
    assert_eq!(poller.baseline().unwrap().unwrap().votes, 7);
    assert_window_holds_the_stored_times(&server).await;
    assert!(server.state().factor.computed() > 1.0);

    // (a) Votes appear at uneven moments; each reaches the factor within a poll or so
    // of appearing (the budget allows one every 2 s from the first minute on), and (c)
    // enters the window at its createdAt.
    let mut latencies = Vec::new();
    for i in 0..15u64 {
        step(&server, 1_000 + (i * 737) % 3_000).await;
        let before = store.next_seq();
        let appeared = clock.now_ms();
        api.add_votes(1, appeared);
        step_until(&server, 250, 80, || store.next_seq() > before).await;
        latencies.push(clock.now_ms() - appeared);
        assert_eq!(store.next_seq(), before + 1);
        let (id, at) = poller_events(&server).pop().unwrap();
        assert_eq!(id, format!("producthunt:tidepool:upvote:{}", 8 + i));
        assert_eq!(at, appeared, "the vote entered the window at its createdAt");
        assert_window_holds_the_stored_times(&server).await;
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(median < 5_000, "median {median} ms: {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l <= 2_250),
        "a vote waited longer than one 2 s poll: {latencies:?}"
    );
    // From the first minute on, not once a minute: a poll at every turn 2 s after the
    // last (a step of the clock of up to 4 s is one turn, so one poll).
    let (polls, elapsed) = (poller.stats().polls, clock.now_ms() - START_MS);
    assert!(
        elapsed < 90_000 && polls >= 20,
        "{polls} polls in {elapsed} ms"
    );

    // Hostile times: one far in the future is moved to the poll, one that is no date
    // enters at the poll; both counted, neither in the future.
    let before = (store.next_seq(), poller.stats());
    api.add_raw_votes(1, "2999-01-01T00:00:00Z", u64::MAX / 2);
    api.add_raw_votes(1, "not a date", clock.now_ms());
    step_until(&server, 250, 80, || store.next_seq() >= before.0 + 2).await;
    let after = poller.stats();
    assert_eq!(after.clamped, before.1.clamped + 1);
    assert_eq!(after.malformed, before.1.malformed + 1);
    let evs = poller_events(&server);
    for (id, at) in &evs[evs.len() - 2..] {
        assert!(
            *at <= clock.now_ms() && *at + 2_250 >= clock.now_ms(),
            "{id} at {at}"
        );
    }
    assert_window_holds_the_stored_times(&server).await;

    // (b) A hot stretch, 3 votes every 2 s, through the reset and a whole window after
    // it: the budget is never exceeded, the counts are polled every 2 s all along, and
    // the points left over date votes.
    let full_window = clock.now_ms() / WINDOW_MS + 1;
    let mut polls_at_full = None;
    let mut i = 0u64;
    while clock.now_ms() < (full_window + 1) * WINDOW_MS + 1_000 {
        if polls_at_full.is_none() && clock.now_ms() >= full_window * WINDOW_MS {
            polls_at_full = Some((poller.stats().polls, poller.stats().dated));
        }
        if i.is_multiple_of(2) {
            api.add_votes(3, clock.now_ms());
        }
        step(&server, 1_000).await;
        i += 1;
    }
    let (polls0, dated0) = polls_at_full.unwrap();
    let stats = poller.stats();
    let spent = api.spent();
    assert_eq!(
        api.state.throttled.load(Ordering::SeqCst),
        0,
        "a 429: {spent:?}"
    );
    assert_eq!(api.state.unauthorized.load(Ordering::SeqCst), 0);
    for (w, points) in &spent {
        assert!(*points <= PH_LIMIT, "window {w}: {points} points");
    }
    let full = spent[&full_window];
    eprintln!(
        "latencies {latencies:?} ms; points per window {spent:?}; {} polls, {} votes dated",
        stats.polls - polls0,
        stats.dated - dated0
    );
    assert!(
        full >= PH_LIMIT / 2,
        "the full window spent only {full} of {PH_LIMIT}: {spent:?}"
    );
    assert!(
        stats.polls - polls0 >= 440,
        "{} polls in the full window",
        stats.polls - polls0
    );
    assert!(
        stats.dated - dated0 >= 100,
        "{} votes dated in the full window",
        stats.dated - dated0
    );
    // Every vote counted once.
    step_until(&server, 1_000, 10, || {
        poller.baseline().unwrap().map(|c| c.votes) == Some(api.vote_count())
    })
    .await;
    assert_eq!(
        poller_events(&server).len() as u64,
        api.vote_count() - 3,
        "one event per vote, but the three older than the window at startup"
    );
    assert!(api.state.max_first.load(Ordering::SeqCst) <= 50);
    server.stop().await;
}

#[tokio::test]
async fn a_restart_rebuilds_the_window_around_votes_stored_at_their_time() {
    // A vote dated before a webhook but stored after it: the log is out of time order
    // by up to a window, and the rebuild at startup must still find the webhook.
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    let api = FakeApi::start(clock.clone(), PH_LIMIT, PH_COUNTS_COST).await;
    let server = TestServer::start(dir.path(), clock.clone(), |c| {
        poller_config(&api)(c);
        c.producthunt.min_poll_interval_ms = 2_000;
    })
    .await;
    let poller = server.state().producthunt.clone().unwrap();
    let store = server.state().store.clone();
    step_until(&server, 250, 40, || poller.baseline().unwrap().is_some()).await;
    let polls = poller.stats().polls;
    step_until(&server, 250, 40, || poller.stats().polls > polls).await;
    let polled = clock.now_ms();
    // A whole second after that poll, before the next: a relay's webhook, and a vote
    // cast 2 ms before it that the next poll reads.
    let t = ((polled + 2) / 1000 + 1) * 1000;
    clock.set_ms(t);
    let seq = store.next_seq();
    let r = server
        .webhook(&server.event("relay-upvote-1", "upvote"), SECRET)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    api.add_votes(1, t - 2);
    step_until(&server, 250, 40, || store.next_seq() == seq + 2).await;
    assert_eq!(
        poller_events(&server),
        vec![("producthunt:tidepool:upvote:1".into(), t - 2)]
    );
    drop((store, poller));
    server.stop().await;

    // One window later, to the millisecond: the webhook (second t/1000) is in it, the
    // vote (the second before) is not, and the vote, stored last, is older than a
    // window.
    clock.set_ms(t + 59_999);
    let server = TestServer::start(dir.path(), clock.clone(), poller_config(&api)).await;
    let sum = server.state().factor.velocity() * 60.0;
    assert!(
        (sum - 1.2).abs() < 1e-9,
        "the rebuilt window holds {sum}, not the webhook's 1.2"
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_answers_are_counted_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    let api = FakeApi::start(clock.clone(), PH_LIMIT, PH_COUNTS_COST).await;
    api.add_votes(2, START_MS - 5_000);
    *api.state.garbage.lock() = Some(r#"{"data":{"post":{"votesCount":"lots","#.into());
    let server = TestServer::start(dir.path(), clock.clone(), poller_config(&api)).await;
    let poller = server.state().producthunt.clone().unwrap();
    let store = server.state().store.clone();
    let seq0 = store.next_seq();
    step_until(&server, 1_000, 30, || poller.stats().failed >= 1).await;
    assert_eq!(poller.baseline().unwrap(), None);
    assert_eq!(store.next_seq(), seq0);
    // Well-formed JSON that is not the counts: also a failure.
    *api.state.garbage.lock() =
        Some(r#"{"data":{"post":{"votesCount":-4,"commentsCount":1e400}}}"#.into());
    let failed = poller.stats().failed;
    step_until(&server, 1_000, 120, || poller.stats().failed > failed).await;
    assert_eq!(poller.baseline().unwrap(), None);
    assert_eq!(store.next_seq(), seq0);
    // The API mends: the two votes of the last minute count, at their time.
    *api.state.garbage.lock() = None;
    step_until(&server, 1_000, 120, || poller.baseline().unwrap().is_some()).await;
    assert_eq!(
        poller_events(&server)
            .iter()
            .map(|(_, at)| *at)
            .collect::<Vec<_>>(),
        vec![START_MS - 5_000; 2]
    );
    server.stop().await;
}

#[tokio::test]
async fn the_poller_is_off_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), Clock::manual(START_MS), |c| {
        c.producthunt.post_slug = Some("tidepool".into());
    })
    .await;
    assert!(server.state().producthunt.is_none());
    server.stop().await;
    let e = Config::parse("[producthunt]\npost_slug = \"https://www.producthunt.com/posts/x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("producthunt.post_slug:"), "{e}");
}

/// The value of `name{labels}` in Prometheus text (0 when absent: a counter not yet
/// moved).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = n == name
                && rest.matches('=').count() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_pollers_counts_are_on_metrics_with_the_apis_own_numbers() {
    // Gauges and counters are the process's: read them with no other server running.
    let _alone = crate::support::recorder::alone().await;
    let dir = tempfile::tempdir().unwrap();
    // Ten seconds before a reset, with that window's budget already spent by someone.
    let reset_at = (START_MS / WINDOW_MS + 1) * WINDOW_MS;
    let t0 = reset_at - 10_000;
    let clock = Clock::manual(t0);
    let api = FakeApi::start(clock.clone(), PH_LIMIT, PH_COUNTS_COST).await;
    api.state.spent.lock().insert(t0 / WINDOW_MS, PH_LIMIT);
    api.add_votes(2, t0 - 5_000);
    let before = launchguard::telemetry::recorder().render();
    let server = TestServer::start(dir.path(), clock.clone(), |c| {
        poller_config(&api)(c);
        c.producthunt.min_poll_interval_ms = 2_000;
    })
    .await;
    let poller = server.state().producthunt.clone().unwrap();
    let store = server.state().store.clone();
    let s = &server;
    let scrape = move || async move { s.client.get(&s.admin_url("/metrics")).await.text() };
    let delta = |after: &str, name: &str, labels: &[(&str, &str)]| {
        sample(after, name, labels) - sample(&before, name, labels)
    };
    const P: &str = "launchguard_producthunt_";
    let name = |n: &str| format!("{P}{n}");

    // The first poll is answered 429 with nothing left: the poller waits for the reset.
    // (at t0: the poller's first poll is at its start, before the clock moves).
    tokio::time::timeout(
        Duration::from_secs(30),
        poller.polls().wait_for(|n| *n >= 1),
    )
    .await
    .expect("the first poll")
    .unwrap();
    step(&server, 0).await; // the turn of that poll is over
    let m = scrape().await;
    assert_eq!(api.state.throttled.load(Ordering::SeqCst), 1);
    let polls = name("polls_total");
    assert_eq!(
        delta(&m, &polls, &[("query", "counts"), ("result", "throttled")]),
        1.0
    );
    assert_eq!(sample(&m, &name("budget_remaining_points"), &[]), 0.0);
    assert_eq!(
        sample(&m, &name("budget_limit_points"), &[]),
        PH_LIMIT as f64
    );
    assert_eq!(sample(&m, &name("budget_reset_seconds"), &[]), 10.0);
    assert_eq!(sample(&m, &name("next_poll_seconds"), &[]), 10.0);

    // At the reset: the counts, and the two votes of the last minute read with their
    // times; then three votes, two comments and a vote dated in the future.
    step_until(&server, 5_000, 10, || poller.baseline().unwrap().is_some()).await;
    assert_eq!(poller.stats().dated, 2);
    let m = scrape().await;
    let lag = sample(&m, &name("last_vote_lag_seconds"), &[]);
    assert_eq!(lag, (clock.now_ms() - (t0 - 5_000)) as f64 / 1000.0);
    let seq = store.next_seq();
    step(&server, 1_300).await;
    let cast = clock.now_ms();
    api.add_votes(3, cast);
    step_until(&server, 250, 40, || store.next_seq() >= seq + 3).await;
    let lag_ms = clock.now_ms() - cast;
    assert!(lag_ms > 0 && lag_ms <= 2_250, "{lag_ms}");
    let m = scrape().await;
    assert_eq!(
        sample(&m, &name("last_vote_lag_seconds"), &[]),
        lag_ms as f64 / 1000.0
    );
    api.state.comments.store(2, Ordering::SeqCst);
    step_until(&server, 250, 40, || store.next_seq() >= seq + 5).await;
    // A vote dated in the future: moved to the poll, counted clamped, no lag.
    api.add_raw_votes(1, "2999-01-01T00:00:00Z", u64::MAX / 2);
    step_until(&server, 250, 40, || store.next_seq() >= seq + 6).await;
    assert_eq!(store.next_seq(), seq + 6);

    let m = scrape().await;
    let ok = api.state.ok.load(Ordering::SeqCst);
    let votes_queries = api.state.votes_queries.load(Ordering::SeqCst);
    let counts_ok = ok - votes_queries;
    assert!(
        counts_ok >= 3 && votes_queries >= 2,
        "{counts_ok} {votes_queries}"
    );
    for (query, result, expected) in [
        ("counts", "ok", counts_ok),
        ("counts", "throttled", 1),
        ("counts", "failed", 0),
        ("votes", "ok", votes_queries),
        ("votes", "throttled", 0),
        ("votes", "failed", 0),
    ] {
        assert_eq!(
            delta(&m, &polls, &[("query", query), ("result", result)]),
            expected as f64,
            "{query} {result}"
        );
    }
    assert_eq!(poller.stats().polls, counts_ok + 1, "the 429 is a poll too");
    // The budget as the API last reported it.
    let window = clock.now_ms() / WINDOW_MS;
    assert_eq!(window, reset_at / WINDOW_MS);
    let spent = api.spent()[&window];
    assert_eq!(
        sample(&m, &name("budget_remaining_points"), &[]),
        (PH_LIMIT - spent) as f64
    );
    assert_eq!(
        sample(&m, &name("budget_limit_points"), &[]),
        PH_LIMIT as f64
    );
    let reset_secs = ((window + 1) * WINDOW_MS - clock.now_ms()).div_ceil(1000);
    assert_eq!(
        sample(&m, &name("budget_reset_seconds"), &[]),
        reset_secs as f64
    );
    // Every point the API charged, but the first answer of the window (nothing to
    // measure it against); the counts polls at 3 points each.
    let points = name("points_spent_total");
    let counts_points = delta(&m, &points, &[("query", "counts")]);
    let votes_points = delta(&m, &points, &[("query", "votes")]);
    assert_eq!(counts_points, (PH_COUNTS_COST * (counts_ok - 1)) as f64);
    assert_eq!(
        counts_points + votes_points,
        (spent - PH_COUNTS_COST) as f64
    );
    // A plentiful budget: the floor of 2 s.
    assert_eq!(sample(&m, &name("next_poll_seconds"), &[]), 2.0);
    assert_eq!(sample(&m, &name("post_votes"), &[]), 6.0);
    assert_eq!(sample(&m, &name("post_comments"), &[]), 2.0);
    assert_eq!(delta(&m, &name("votes_seen_total"), &[]), 6.0);
    assert_eq!(delta(&m, &name("comments_seen_total"), &[]), 2.0);
    assert_eq!(delta(&m, &name("votes_dated_total"), &[]), 6.0);
    assert_eq!(poller.stats().dated, 6);
    assert_eq!(delta(&m, &name("votes_clamped_total"), &[]), 1.0);
    assert_eq!(poller.stats().clamped, 1);
    assert_eq!(delta(&m, &name("malformed_total"), &[]), 0.0);
    assert_eq!(sample(&m, &name("last_vote_lag_seconds"), &[]), 0.0);
    // Described, for whoever reads the scrape.
    assert!(m.contains(&format!("# HELP {P}polls_total ")), "{m}");
    drop((store, poller));
    server.stop().await;
}
