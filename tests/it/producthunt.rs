//! The Product Hunt poller against a fake GraphQL endpoint on `127.0.0.1:0` that
//! enforces a points budget per window (on the test's clock), answers 429 with the
//! rate-limit headers past it, and counts: the poller never goes past the budget,
//! resumes at the reset, its events move the factor, and replays after a restart (or
//! an overlapping webhook) are not counted twice.

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

#[derive(Default)]
struct Budgeted {
    limit: u64,
    cost: u64,
    /// Points spent per window index.
    spent: Mutex<std::collections::BTreeMap<u64, u64>>,
    votes: AtomicU64,
    comments: AtomicU64,
    ok: AtomicU64,
    throttled: AtomicU64,
    unauthorized: AtomicU64,
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
    assert!(q["query"].as_str().unwrap().contains("votesCount"));
    assert_eq!(q["variables"]["slug"], "tidepool");
    let now = clock.now_ms();
    let window = now / WINDOW_MS;
    let reset_secs = ((window + 1) * WINDOW_MS - now).div_ceil(1000);
    let mut spent = s.spent.lock();
    let used = spent.entry(window).or_insert(0);
    let over = *used + s.cost > s.limit;
    if !over {
        *used += s.cost;
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
    } else {
        s.ok.fetch_add(1, Ordering::SeqCst);
        let data = serde_json::json!({"data": {"post": {
            "votesCount": s.votes.load(Ordering::SeqCst),
            "commentsCount": s.comments.load(Ordering::SeqCst),
        }}});
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
    api.state.votes.store(30, Ordering::SeqCst);
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

    // Pin the factor high, so the poller wants to poll every 5 s; walk through two
    // whole windows in 5 s steps.
    server.state().factor.pin(
        launchguard::ingest::factor::Pin {
            factor: 5.0,
            until_ms: START_MS + 10 * WINDOW_MS,
        },
        clock.now_ms(),
    );
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

    api.state.votes.store(5, Ordering::SeqCst);
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
    api.state.votes.store(6, Ordering::SeqCst);
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
