//! The dashboard page and its live feed over real HTTP: `/dashboard` is one
//! self-contained page, `/api/live` streams a JSON sample a second as Server-Sent
//! Events, new webhook events show up in it, and the feed needs the admin token when
//! one is configured. A client that connects late gets the samples before it at once
//! (the last five minutes), and one that reconnects with `Last-Event-ID` gets only
//! those after it.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use launchguard::clock::Clock;
use serde_json::Value;

/// T0 of the manual clock: 2026-11-26T08:00:00Z, which is 00:00 in Los Angeles.
const T0: u64 = 1_795_680_000_000;

/// Reads SSE frames from `url` until `want` samples arrived, calling `between` after
/// the first one. Gives up after 30 s.
async fn samples(
    url: &str,
    token: Option<&str>,
    want: usize,
    between: impl AsyncFnOnce(),
) -> Vec<Value> {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(url).header("accept", "text/event-stream");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = res.into_body();
    let mut buf = String::new();
    let mut out = Vec::new();
    let mut between = Some(between);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < want {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("samples keep coming")
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf[..end].to_string();
            buf.drain(..end + 2);
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            out.push(serde_json::from_str(&data).unwrap());
            if out.len() == 1 {
                if let Some(f) = between.take() {
                    f().await;
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    let r = s.client.get(&s.admin_url("/dashboard")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = r.text();
    assert!(page.contains("/api/live"));
    // Nothing loaded from elsewhere: no external scripts, styles or fonts.
    for needle in ["src=\"http", "href=\"http", "@import", "cdn"] {
        assert!(!page.contains(needle), "the page references {needle}");
    }
    s.stop().await;
}

#[tokio::test]
async fn the_live_feed_streams_samples_with_new_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    for _ in 0..3 {
        assert_eq!(
            s.client.get(&s.url("/launch/")).await.status,
            StatusCode::OK
        );
    }
    // The first sample may predate the requests above (it is the newest one when the
    // stream opens); later ones count them.
    let got = samples(&s.admin_url("/api/live"), None, 4, async || {
        let r = s.webhook(&s.event("evt-live-1", "upvote"), SECRET).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    })
    .await;
    let last = got.last().unwrap();
    assert_eq!(last["today"]["day"], "2026-11-26");
    assert_eq!(last["today"]["timezone"], "America/Los_Angeles");
    assert_eq!(last["today"]["visits"], 3, "{last}");
    assert!(last["requests_total"].as_u64().unwrap() >= 3, "{last}");
    assert_eq!(last["webhooks_total"], 1, "{last}");
    assert!(last["velocity"].as_f64().unwrap() > 0.0, "{last}");
    assert!(last["factor"].as_f64().unwrap() > 1.0, "{last}");
    assert_eq!(last["shedding"], false);
    // Three GETs of one page: the first a miss, the others hits, in some sample's
    // interval; the ratio is null in intervals without lookups.
    let (hits, lookups) = got
        .iter()
        .fold((0.0, 0), |(h, n), s| match s["hit_ratio"].as_f64() {
            Some(r) => (h + r, n + 1),
            None => (h, n),
        });
    assert!(lookups >= 1 && hits > 0.0, "{got:?}");
    // The webhook sent after the first sample shows up in a later one, once.
    let later: Vec<&Value> = got[1..]
        .iter()
        .flat_map(|s| s["events"].as_array().unwrap())
        .filter(|e| e["id"] == "evt-live-1")
        .collect();
    assert_eq!(later.len(), 1, "{got:?}");
    assert_eq!(later[0]["event_type"], "upvote");
    s.stop().await;
}

#[tokio::test]
async fn the_live_feed_needs_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin_token");
    std::fs::write(&token_file, "live-token-0123456789\n").unwrap();
    let s = TestServer::start(&dir.path().join("state"), Clock::manual(T0), |c| {
        c.server.admin_token_file = Some(token_file.clone());
    })
    .await;
    let r = s.client.get(&s.admin_url("/api/live")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The page itself is served, and asks for the token.
    assert_eq!(
        s.client.get(&s.admin_url("/dashboard")).await.status,
        StatusCode::OK
    );
    let got = samples(
        &s.admin_url("/api/live"),
        Some("live-token-0123456789"),
        1,
        async || {},
    )
    .await;
    assert_eq!(got[0]["factor"], 1.0);
    s.stop().await;
}

/// Reads SSE frames from `url` (sending `Last-Event-ID: last_event_id` when given)
/// until `done` holds for the samples so far: each as its `id` and its JSON. Gives up
/// after 30 s.
pub(crate) async fn frames(
    url: &str,
    last_event_id: Option<&str>,
    mut done: impl FnMut(&[(u64, Value)]) -> bool,
) -> Vec<(u64, Value)> {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("samples keep coming")
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf[..end].to_string();
            buf.drain(..end + 2);
            let field = |name: &str| -> String {
                event
                    .lines()
                    .filter_map(|l| l.strip_prefix(name))
                    .map(str::trim_start)
                    .collect()
            };
            let data = field("data:");
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let id = field("id:").parse().expect("every sample has a numeric id");
            out.push((id, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

fn ids(frames: &[(u64, Value)]) -> Vec<u64> {
    frames.iter().map(|(id, _)| *id).collect()
}

fn consecutive(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[1] == w[0] + 1)
}

/// With samples taken every 20 ms: a second client, connecting after the first has
/// seen 20 samples, gets every one of those before anything newer (the backlog, at
/// once, from the same first sample); a reconnect with `Last-Event-ID` starts right
/// after that id, with no sample twice; a `Last-Event-ID` that is not one of the
/// feed's ids gets the whole backlog.
#[tokio::test]
async fn a_late_client_gets_the_backlog_at_once_and_a_reconnect_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(
        dir.path(),
        Clock::manual(T0),
        |o| o.live_every = Duration::from_millis(20),
        |_| {},
    )
    .await;
    let url = s.admin_url("/api/live");
    let first = ids(&frames(&url, None, |f| f.len() >= 20).await);
    assert!(consecutive(&first), "{first:?}");
    let seen = *first.last().unwrap();

    let late = ids(&frames(&url, None, |f| f.last().is_some_and(|(id, _)| *id >= seen)).await);
    assert_eq!(
        late[0], first[0],
        "the backlog reaches back to the first sample"
    );
    assert!(consecutive(&late), "{late:?}");
    assert!(late.len() >= first.len());

    let resumed_from = first[9];
    let resumed = ids(&frames(&url, Some(&resumed_from.to_string()), |f| f.len() >= 15).await);
    assert_eq!(resumed[0], resumed_from + 1, "{resumed:?}");
    assert!(
        consecutive(&resumed),
        "no sample twice, none missed: {resumed:?}"
    );

    for junk in ["x1", "-1", "99999999999999999999999"] {
        let again = ids(&frames(&url, Some(junk), |f| !f.is_empty()).await);
        assert_eq!(again[0], first[0], "{junk}: the whole backlog");
    }
    s.stop().await;
}

/// The grace tile's numbers: `grace` in each sample, `null` when the grace is off.
#[tokio::test]
async fn samples_say_what_the_funnel_grace_did() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    let got = frames(&s.admin_url("/api/live"), None, |f| !f.is_empty()).await;
    let grace = &got[0].1["grace"];
    assert_eq!(grace["grace_secs"], 900, "{grace}");
    assert_eq!(grace["admitted_requests"], 0, "{grace}");
    assert_eq!(grace["protected_conversions"], 0, "{grace}");
    s.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |c| {
        c.backpressure.funnel_grace_secs = 0;
    })
    .await;
    let got = frames(&s.admin_url("/api/live"), None, |f| !f.is_empty()).await;
    assert!(got[0].1["grace"].is_null(), "{}", got[0].1);
    s.stop().await;
}

/// The samples carry the waiting room: a shed page view is one visitor in line (the
/// tile's value), and `null` with the room off.
#[tokio::test]
async fn samples_say_how_long_the_waiting_room_is() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    s.pin(3.0, 3600).await;
    let r = s.client.get(&s.url("/pricing")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let got = frames(&s.admin_url("/api/live"), None, |f| {
        f.iter().any(|(_, v)| v["waiting_room"]["length"] == 1)
    })
    .await;
    let room = &got.last().unwrap().1["waiting_room"];
    assert_eq!(room["admitted_total"], 0, "{room}");
    s.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |c| {
        c.waiting_room.enabled = false;
    })
    .await;
    let got = frames(&s.admin_url("/api/live"), None, |f| !f.is_empty()).await;
    assert!(got[0].1["waiting_room"].is_null(), "{}", got[0].1);
    s.stop().await;
}
