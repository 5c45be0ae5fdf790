//! Visits, the conversion beacon, the flusher and the analytics API, over real HTTP
//! against a real bound server with a manual clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::support::*;
use axum::http::StatusCode as AxumStatus;
use hyper::{Method, StatusCode};
use launchguard::clock::Clock;
use launchguard::ingest::factor::Factor;
use launchguard::ingest::store::Store;
use launchguard::insight::counters::{self, Conversions};
use launchguard::insight::history::History;

/// 2026-11-26T08:00:00Z: midnight in Los Angeles, the start of launch day 2026-11-26.
const T0: u64 = 1_795_680_000_000;
const DAY: &str = "2026-11-26";

/// The test server with the periodic flush pushed out of reach (an hour of real
/// time), so only the test's own flushes and the one at shutdown write batches.
async fn start(
    dir: &std::path::Path,
    clock: Clock,
    tweak: impl FnOnce(&mut launchguard::config::Config),
) -> TestServer {
    TestServer::start(dir, clock, |c| {
        c.conversions.flush_interval_ms = 3_600_000;
        tweak(c);
    })
    .await
}

async fn analytics(s: &TestServer, query: &str) -> serde_json::Value {
    let r = s
        .client
        .get(&s.admin_url(&format!("/api/analytics{query}")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// A beacon with no visitor cookie.
async fn convert(s: &TestServer, content_type: Option<&str>, body: &str) -> Resp {
    convert_as(s, None, content_type, body).await
}

/// A beacon carrying `cookie` (a `Cookie` header value) when given.
async fn convert_as(
    s: &TestServer,
    cookie: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> Resp {
    let mut headers: Vec<(&str, &str)> = content_type
        .map(|ct| vec![("content-type", ct)])
        .unwrap_or_default();
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    s.client
        .send(
            Method::POST,
            &s.url("/api/convert"),
            &headers,
            body.as_bytes().to_vec(),
        )
        .await
}

/// A new visitor's page view of `/launch/`: its `lg_v=...` cookie pair.
async fn visit(s: &TestServer) -> String {
    let r = s.client.get(&s.url("/launch/")).await;
    assert_eq!(r.status, StatusCode::OK);
    let set = r.header("set-cookie").expect("a new visitor gets a cookie");
    set.split(';').next().unwrap().to_string()
}

fn flush(s: &TestServer) {
    s.state()
        .conversions
        .flush(s.clock.now_ms())
        .expect("flush writes");
}

#[tokio::test]
async fn only_html_page_views_under_the_funnel_are_visits() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Clock::manual(T0), |_| {}).await;
    let get = |path: &'static str| {
        let s = &s;
        async move { s.client.get(&s.url(path)).await }
    };
    // Visits: the launch page, by its directory and by its file name.
    assert_eq!(get("/launch/").await.status, StatusCode::OK);
    assert_eq!(get("/launch/index.html").await.status, StatusCode::OK);
    assert_eq!(
        get("/launch/?utm_source=producthunt").await.status,
        StatusCode::OK
    );
    // Not visits: outside the funnel, assets, a 404 page, a redirect, HEAD, POST.
    assert_eq!(get("/").await.status, StatusCode::OK);
    assert_eq!(get("/style.css").await.status, StatusCode::OK);
    assert_eq!(get("/app.js").await.status, StatusCode::OK);
    let missing = get("/launch/nope.html").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(get("/launch").await.status.is_redirection());
    let head = s
        .client
        .send(Method::HEAD, &s.url("/launch/"), &[], Vec::new())
        .await;
    assert_eq!(head.status, StatusCode::OK);
    s.client
        .send(Method::POST, &s.url("/launch/"), &[], Vec::new())
        .await;

    // A browser reload answered 304 is a page view.
    let page = get("/launch/").await;
    let etag = page
        .header("etag")
        .expect("the site sends ETags")
        .to_string();
    let reload = s
        .client
        .send(
            Method::GET,
            &s.url("/launch/"),
            &[
                ("if-none-match", &etag),
                ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
            ],
            Vec::new(),
        )
        .await;
    assert_eq!(reload.status, StatusCode::NOT_MODIFIED);
    // The same 304 to a script's fetch (Accept: */*) is not a page view.
    let fetched = s
        .client
        .send(
            Method::GET,
            &s.url("/launch/"),
            &[("if-none-match", &etag), ("accept", "*/*")],
            Vec::new(),
        )
        .await;
    assert_eq!(fetched.status, StatusCode::NOT_MODIFIED);

    let (live, _) = s.state().conversions.counters().peek();
    assert_eq!(live.visits(), 5);
    assert_eq!(live.requests(), 13);
    let a = analytics(&s, &format!("?day={DAY}")).await;
    assert_eq!(a["visits"], 5);
    assert_eq!(a["requests"], 13);
    s.stop().await;
}

/// The layer judges the final answer: a shed request (503, even with an HTML body)
/// under the funnel is a request but not a visit. The site's router has no shedding
/// yet, so the layer wraps a handler that sheds, on its own real listener.
#[tokio::test]
async fn a_shed_request_is_not_a_visit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let config = launchguard::config::Config::default();
    let conv = Conversions::new(
        &config.conversions,
        History::open(&store).unwrap(),
        Factor::new(),
        T0,
    )
    .unwrap();
    let app = axum::Router::new()
        .route(
            "/launch/",
            axum::routing::get(|| async {
                (
                    AxumStatus::SERVICE_UNAVAILABLE,
                    [("content-type", "text/html; charset=utf-8")],
                    "<h1>busy</h1>",
                )
            }),
        )
        .route(
            "/launch/ok",
            axum::routing::get(|| async { axum::response::Html("<h1>hi</h1>") }),
        )
        .layer(axum::middleware::from_fn_with_state(
            counters::Counting::new(
                conv.clone(),
                launchguard::insight::visitor::Visitors::open(&store, 30, conv.timezone().clone())
                    .unwrap(),
                Clock::manual(T0),
            ),
            counters::count_requests,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new();
    let r = client.get(&format!("http://{addr}/launch/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = client.get(&format!("http://{addr}/launch/ok")).await;
    assert_eq!(r.status, StatusCode::OK);
    let (live, _) = conv.counters().peek();
    assert_eq!(live.requests(), 2);
    assert_eq!(live.visits(), 1, "only the 200 counts");
    assert_eq!(live.unique_visitors(), 1, "and only it counts its visitor");
    server.abort();
}

/// Through the real edge: a funnel page shed by admission is a request and a
/// rejection, not a visit; cache misses and hits are counted from the answers.
#[tokio::test]
async fn the_edge_reports_rejections_hits_and_misses() {
    let dir = tempfile::tempdir().unwrap();
    // Only "/" is critical, so the funnel's /launch/ is shed above the shed factor.
    let s = start(dir.path(), Clock::manual(T0), |c| {
        c.backpressure.critical_paths = vec!["/".into()];
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            s.client.get(&s.url("/launch/")).await.status,
            StatusCode::OK
        );
    }
    s.pin(3.0, 600).await;
    let shed = s.client.get(&s.url("/launch/")).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(shed.header("retry-after").is_some());

    let (live, _) = s.state().conversions.counters().peek();
    assert_eq!(live.requests(), 4);
    assert_eq!(live.visits(), 3, "the shed page view is not a visit");
    let a = analytics(&s, &format!("?day={DAY}")).await;
    assert_eq!(a["rejections"], 1, "{a}");
    assert_eq!(a["cache_misses"], 1, "{a}");
    assert_eq!(a["cache_hits"], 2, "{a}");
    s.stop().await;
}

#[tokio::test]
async fn the_beacon_counts_known_goals_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Clock::manual(T0), |c| {
        c.conversions.goals = vec!["signup".into(), "waitlist".into()];
    })
    .await;
    let (one, two) = (visit(&s).await, visit(&s).await);
    let ok = convert_as(
        &s,
        Some(&one),
        Some("application/json"),
        r#"{"goal":"signup"}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.text());
    assert!(ok.body.is_empty());
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    assert!(ok.header("x-edge-scale-factor").is_some());
    // What navigator.sendBeacon sends for a string body.
    let beacon = convert_as(
        &s,
        Some(&one),
        Some("text/plain;charset=UTF-8"),
        r#"{"goal":"waitlist"}"#,
    )
    .await;
    assert_eq!(beacon.status, StatusCode::NO_CONTENT);
    // No content type at all.
    let bare = convert_as(&s, Some(&two), None, r#"{"goal":"signup"}"#).await;
    assert_eq!(bare.status, StatusCode::NO_CONTENT);
    // The same visitor's second signup of the day is a duplicate.
    let again = convert_as(&s, Some(&two), None, r#"{"goal":"signup"}"#).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["status"], "duplicate");

    let unknown = convert(&s, Some("application/json"), r#"{"goal":"purchase"}"#).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.json()["error"], "unknown_goal");
    assert_eq!(unknown.json()["field"], "goal");
    let msg = unknown.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("\"purchase\"") && msg.contains("conversions.goals: signup, waitlist"),
        "{msg}"
    );
    for (body, field) in [
        ("goal=signup", "body"),
        ("", "body"),
        ("[1]", "body"),
        (r#"{"goal":null}"#, "goal"),
        (r#"{"goals":"signup"}"#, "goal"),
    ] {
        let r = convert(&s, Some("text/plain"), body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text());
    }
    let form = convert(&s, Some("application/x-www-form-urlencoded"), "goal=signup").await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = format!(
        r#"{{"goal":"signup","pad":"{}"}}"#,
        "x".repeat(counters::BEACON_MAX_BYTES)
    );
    let big = convert(&s, Some("application/json"), &big).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let get = s.client.get(&s.url("/api/convert")).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);

    let a = analytics(&s, "").await;
    assert_eq!(
        a["day"], DAY,
        "the default day is today in the launch time zone"
    );
    assert_eq!(
        a["conversions"],
        serde_json::json!({"signup": 2, "waitlist": 1})
    );
    assert_eq!(a["conversions_total"], 3);
    assert_eq!(a["unique_visitors"], 2);
    assert_eq!(a["converting_visitors"], 2);
    assert_eq!(a["conv_rate"], 1.0);
    s.stop().await;
}

#[tokio::test]
async fn the_demo_signup_button_sends_the_beacon() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Clock::manual(T0), |_| {}).await;
    let page = s.client.get(&s.url("/launch/")).await;
    let cookie = page.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.starts_with("lg_v=") && cookie.contains("; HttpOnly; SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = page.text();
    assert!(page.contains(r#"<script src="/app.js""#));
    assert!(page.contains(r#"id="signup-form""#));
    let js = s.client.get(&s.url("/app.js")).await.text();
    assert!(js.contains(r#"navigator.sendBeacon("/api/convert", body)"#));
    assert!(js.contains(r#"sendConversion("signup")"#));
    assert!(js.contains("JSON.stringify({ goal: goal })"));
    // Exactly what the page sends: JSON.stringify({goal: "signup"}) as text/plain,
    // with the cookie the page view set.
    let r = convert_as(
        &s,
        Some(&cookie),
        Some("text/plain;charset=UTF-8"),
        r#"{"goal":"signup"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test]
async fn analytics_is_exact_between_flushes_and_history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0 + 9 * 3_600_000); // 09:00 PST
    let s = start(dir.path(), clock.clone(), |_| {}).await;
    let mut visitors = Vec::new();
    for _ in 0..4 {
        visitors.push(visit(&s).await);
    }
    let signup = r#"{"goal":"signup"}"#;
    convert_as(&s, Some(&visitors[0]), None, signup).await;
    let a = analytics(&s, &format!("?day={DAY}")).await;
    assert_eq!(a["visits"], 4, "live counts are included before any flush");
    assert_eq!(a["conversions"]["signup"], 1);
    assert_eq!(a["series"].as_array().unwrap().len(), 1);
    assert_eq!(a["series"][0]["live"], true);

    clock.advance_ms(5000);
    flush(&s);
    for _ in 0..6 {
        visitors.push(visit(&s).await);
    }
    convert_as(&s, Some(&visitors[4]), None, signup).await;
    convert_as(&s, Some(&visitors[9]), None, signup).await;
    let a = analytics(&s, &format!("?day={DAY}")).await;
    assert_eq!(a["visits"], 10);
    assert_eq!(a["unique_visitors"], 10);
    assert_eq!(a["converting_visitors"], 3);
    assert_eq!(a["conversions_total"], 3);
    assert_eq!(a["conv_rate"], 0.3);
    assert_eq!(a["spend_usd"], 125.0);
    assert_eq!(a["revenue_usd"], 144.0);
    assert_eq!(a["roi"], (144.0 - 125.0) / 125.0);
    let cac = a["cac_usd"].as_f64().unwrap();
    assert!((cac - 125.0 / 3.0).abs() < 1e-9, "{cac}");
    assert_eq!(a["timezone"], "America/Los_Angeles");
    assert_eq!(a["hours_in_day"], 24);
    let series = a["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["live"], false);
    assert_eq!(series[0]["visits"], 4);
    assert_eq!(series[0]["window_ms"], 5000);
    assert_eq!(series[1]["live"], true);
    assert_eq!(a["hourly"][9]["hour"], "09:00 PST");
    assert_eq!(a["hourly"][9]["visits"], 10);
    // The first window: 4 visits + 1 beacon = 5 requests over 5 s; the live one is shorter.
    assert!(a["peak_rps"].as_f64().unwrap() >= 1.0);

    // A shutdown flushes what is pending; a restart reads it all back.
    clock.advance_ms(1000);
    s.stop().await;
    let s = start(dir.path(), clock.clone(), |_| {}).await;
    let a = analytics(&s, &format!("?day={DAY}")).await;
    assert_eq!(a["visits"], 10);
    assert_eq!(a["unique_visitors"], 10);
    assert_eq!(a["conversions_total"], 3);
    let series = a["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert!(series.iter().all(|p| p["live"] == false));

    let l = s.client.get(&s.admin_url("/api/launches")).await.json();
    assert_eq!(l["timezone"], "America/Los_Angeles");
    assert_eq!(l["launches"][0]["day"], DAY);
    assert_eq!(l["launches"][0]["visits"], 10);
    // Requests counted before the restart: 4 + 1 + 6 + 2 page and beacon requests.
    assert_eq!(l["launches"][0]["requests"], 13);
    s.stop().await;
}

#[tokio::test]
async fn ranges_and_launches_compare_days() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0 - 3_600_000); // 23:00 PST on 2026-11-25
    let s = start(dir.path(), clock.clone(), |_| {}).await;
    s.client.get(&s.url("/launch/")).await;
    clock.advance_ms(3_600_000);
    flush(&s);
    let mut today = Vec::new();
    for _ in 0..3 {
        today.push(visit(&s).await);
    }
    convert_as(
        &s,
        Some(&today[1]),
        Some("application/json"),
        r#"{"goal":"signup"}"#,
    )
    .await;

    let r = analytics(&s, "?from=2026-11-25&to=2026-11-26").await;
    assert_eq!(r["visits"], 4);
    let days = r["days"].as_array().unwrap();
    assert_eq!(days.len(), 2);
    assert_eq!(days[0]["day"], "2026-11-25");
    assert_eq!(days[0]["visits"], 1);
    assert!(days[0]["cac_usd"].is_null());
    assert_eq!(days[1]["visits"], 3);
    assert_eq!(days[1]["conversions"]["signup"], 1);
    let only = analytics(&s, "?from=2026-11-26&to=2026-11-26").await;
    assert_eq!(only["visits"], 3);
    let empty = analytics(&s, "?day=2026-01-01").await;
    assert_eq!(empty["visits"], 0);
    assert!(empty["conv_rate"].is_null());
    assert!(empty["roi"].is_null());

    let l = s.client.get(&s.admin_url("/api/launches")).await.json();
    let l = l["launches"].as_array().unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["day"], "2026-11-26", "newest first");
    assert_eq!(l[1]["day"], "2026-11-25");

    for (q, field) in [
        ("?day=2026-13-01", "day"),
        ("?day=yesterday", "day"),
        ("?from=2026-11-25", "to"),
        ("?to=2026-11-25", "from"),
        ("?from=2026-11-26&to=2026-11-25", "from"),
        ("?day=2026-11-26&from=2026-11-25&to=2026-11-26", "day"),
    ] {
        let r = s
            .client
            .get(&s.admin_url(&format!("/api/analytics{q}")))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text());
        assert_eq!(r.json()["field"], field, "{q}: {}", r.text());
    }
    let r = s.client.get(&s.admin_url("/api/analytics?week=1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test]
async fn analytics_needs_the_admin_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin_token");
    std::fs::write(&token_file, "a-long-enough-admin-token-0123\n").unwrap();
    let data = dir.path().join("state");
    let s = start(&data, Clock::manual(T0), |c| {
        c.server.admin_token_file = Some(token_file.clone());
    })
    .await;
    for path in ["/api/analytics", "/api/launches"] {
        let r = s.client.get(&s.admin_url(path)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        let r = s
            .client
            .send(
                Method::GET,
                &s.admin_url(path),
                &[("authorization", "Bearer a-long-enough-admin-token-0123")],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    // The beacon on the public listener needs no token.
    let cookie = visit(&s).await;
    let r = convert_as(
        &s,
        Some(&cookie),
        Some("application/json"),
        r#"{"goal":"signup"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test]
async fn a_flush_writes_one_batch_with_every_counter_and_feeds_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let s = start(dir.path(), clock.clone(), |c| {
        c.conversions.goals = vec!["signup".into(), "metrics_probe".into()];
    })
    .await;
    let scrape = |s: &TestServer| {
        let url = s.admin_url("/metrics");
        let client = s.client.clone();
        async move { client.get(&url).await.text() }
    };
    let probe = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("launchguard_conversions_total{goal=\"metrics_probe\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = probe(&scrape(&s).await);

    let r = s.webhook(&s.event("evt-c1", "upvote"), SECRET).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = s.webhook(&s.event("evt-c1", "upvote"), SECRET).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a duplicate is not counted as accepted"
    );
    // Three visitors whose cookies came from an earlier day convert without a page
    // view today: each is counted a visitor of today as well.
    for _ in 0..3 {
        let cookie = format!("lg_v={}", s.state().visitors.issue(T0 - 86_400_000).1);
        let r = convert_as(&s, Some(&cookie), None, r#"{"goal":"metrics_probe"}"#).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    }
    // A request served while the factor was pinned at 2.5 leaves that as the window's
    // peak, though the factor is back to the computed one by the flush.
    let f = &s.state().factor;
    f.pin(
        launchguard::ingest::factor::Pin {
            factor: 2.5,
            until_ms: T0 + 60_000,
        },
        T0,
    );
    s.client.get(&s.url("/launch/")).await;
    f.unpin(T0);
    // That GET was the page's first: a cache miss. The rest by hand.
    let c = s.state().conversions.counters();
    c.record_cache_hit();
    c.record_cache_hit();
    c.record_rejection();
    s.pumped().await;
    for _ in 0..1000 {
        if s.state().factor.velocity() > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    clock.advance_ms(5000);
    let batch = s
        .state()
        .conversions
        .flush(clock.now_ms())
        .unwrap()
        .expect("a batch");
    assert_eq!(batch.window_start_ms, T0);
    assert_eq!(batch.window_ms, 5000);
    let t = &batch.tally;
    assert_eq!(t.visits, 1);
    assert_eq!((t.unique_visitors, t.converting_visitors), (3 + 1, 3));
    assert_eq!(t.conversions_of("metrics_probe"), 3);
    assert_eq!(t.conversions_of("signup"), 0);
    assert_eq!(t.requests, 2 + 3 + 1);
    assert_eq!((t.cache_hits, t.cache_misses, t.rejections), (2, 1, 1));
    assert_eq!(t.webhooks_accepted, 1);
    assert_eq!(batch.peak_factor, 2.5);
    assert!(batch.velocity > 0.0, "one upvote in the window");
    // Stored under its window start, and nothing is left in the cells.
    let rows = s.state().conversions.history().batches(T0, T0 + 1).unwrap();
    assert_eq!(rows, vec![batch]);
    assert!(s.state().conversions.counters().peek().0.is_zero());
    // An empty window writes nothing.
    clock.advance_ms(5000);
    assert!(s
        .state()
        .conversions
        .flush(clock.now_ms())
        .unwrap()
        .is_none());

    let after = probe(&scrape(&s).await);
    assert_eq!(after - before, 3.0);
    let text = scrape(&s).await;
    assert!(text.contains("launchguard_visits_total"), "{text}");
    s.stop().await;
}

/// N threads × M increments racing the real flusher (swap + sled write, in a loop)
/// sum exactly to N × M in the stored rows and in the day's totals.
#[test]
fn increments_racing_the_flusher_are_never_lost_or_doubled() {
    const THREADS: u64 = 4;
    const EACH: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let config = launchguard::config::Config::default();
    let conv = Conversions::new(
        &config.conversions,
        History::open(&store).unwrap(),
        Factor::new(),
        T0,
    )
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (conv, done) = (conv.clone(), done.clone());
        std::thread::spawn(move || {
            let mut now = T0;
            let mut written = 0;
            while !done.load(Ordering::Acquire) {
                now += 1; // one window per ms of the fake clock
                if conv.flush(now).unwrap().is_some() {
                    written += 1;
                }
            }
            (now, written)
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let conv = conv.clone();
            std::thread::spawn(move || {
                let c = conv.counters();
                for i in 0..EACH {
                    c.record_visit();
                    c.record_request();
                    if i % 2 == 0 {
                        c.record_conversion(0);
                    }
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    done.store(true, Ordering::Release);
    let (now, written) = flusher.join().unwrap();
    conv.flush(now + 1).unwrap();

    let rows = conv.history().batches(0, u64::MAX).unwrap();
    assert!(written >= 1 && rows.len() as u64 >= written);
    let visits: u64 = rows.iter().map(|b| b.tally.visits).sum();
    let requests: u64 = rows.iter().map(|b| b.tally.requests).sum();
    let signups: u64 = rows.iter().map(|b| b.tally.conversions_of("signup")).sum();
    assert_eq!(visits, THREADS * EACH);
    assert_eq!(requests, THREADS * EACH);
    assert_eq!(signups, THREADS * EACH / 2);
    let day = conv.history().day(DAY).unwrap().expect("the day's totals");
    assert_eq!(day.tally.visits, THREADS * EACH);
    assert_eq!(day.tally.conversions_of("signup"), THREADS * EACH / 2);
    assert_eq!(day.batches, rows.len() as u64);
}

/// Waits (bounded) for the background retention pass that runs at startup.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test]
async fn retention_sweeps_payloads_then_rows_and_keeps_daily_totals() {
    const DAY_MS: u64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let s = start(dir.path(), clock.clone(), |_| {}).await;
    let r = s.webhook(&s.event("evt-old", "upvote"), SECRET).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    s.client.get(&s.url("/launch/")).await;
    clock.advance_ms(5000);
    flush(&s);
    s.stop().await;

    // 31 days on: past webhook.retention_days (30), within conversions.retention_days.
    clock.set_ms(T0 + 31 * DAY_MS);
    let s = start(dir.path(), clock.clone(), |_| {}).await;
    until("the payload sweep", || {
        s.state()
            .store
            .event(1)
            .unwrap()
            .is_some_and(|e| e.payload.is_empty())
    })
    .await;
    let kept = s.state().store.event(1).unwrap().unwrap();
    assert_eq!(kept.id, "evt-old", "the event itself stays");
    assert_eq!(s.state().store.next_seq(), 2);
    let rows = s
        .state()
        .conversions
        .history()
        .batches(0, u64::MAX)
        .unwrap();
    assert_eq!(rows.len(), 1, "metrics rows are kept 400 days");
    s.stop().await;

    // 401 days on: the row is gone, the day's totals are not.
    clock.set_ms(T0 + 401 * DAY_MS);
    let s = start(dir.path(), clock.clone(), |_| {}).await;
    until("the metrics sweep", || {
        s.state()
            .conversions
            .history()
            .batches(0, u64::MAX)
            .unwrap()
            .is_empty()
    })
    .await;
    let a = analytics(&s, &format!("?day={DAY}")).await;
    assert_eq!(a["visits"], 1);
    assert_eq!(a["webhooks_accepted"], 1);
    assert_eq!(a["series"].as_array().unwrap().len(), 0);
    let l = s.client.get(&s.admin_url("/api/launches")).await.json();
    assert_eq!(l["launches"][0]["day"], DAY);
    assert_eq!(l["launches"][0]["visits"], 1);
    s.stop().await;
}

/// The visitor cookie is added after the cache: two visitors share one cached page
/// and get cookies of their own; a returning visitor gets no new one (only its funnel
/// mark) and counts once.
#[tokio::test]
async fn the_visitor_cookie_is_added_after_the_cache_and_counts_a_visitor_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Clock::manual(T0), |c| {
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let first = s.client.get(&s.url("/launch/")).await;
    let second = s.client.get(&s.url("/launch/")).await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(first.body, second.body, "one shared page");
    let (a, b) = (
        first.header("set-cookie").unwrap(),
        second.header("set-cookie").unwrap(),
    );
    assert_ne!(a, b, "each visitor its own id");
    let a = a.split(';').next().unwrap();
    for _ in 0..3 {
        let back = s
            .client
            .send(
                Method::GET,
                &s.url("/launch/"),
                &[("cookie", a)],
                Vec::new(),
            )
            .await;
        assert_eq!(back.header("x-cache"), Some("HIT"));
        // A known visitor keeps its cookie; its funnel mark (the funnel grace) is
        // renewed.
        let set: Vec<_> = back.headers.get_all("set-cookie").iter().collect();
        assert_eq!(set.len(), 1, "{set:?}");
        assert!(set[0].to_str().unwrap().starts_with("lg_f="), "{set:?}");
    }
    // Assets are not visits and get no cookie.
    let css = s.client.get(&s.url("/style.css")).await;
    assert_eq!(css.header("set-cookie"), None);
    // Behind a trusted TLS balancer the cookie is Secure.
    let tls = s
        .client
        .send(
            Method::GET,
            &s.url("/launch/"),
            &[("x-forwarded-proto", "https")],
            Vec::new(),
        )
        .await;
    assert!(
        tls.header("set-cookie").unwrap().ends_with("; Secure"),
        "{:?}",
        tls.header("set-cookie")
    );
    let a = analytics(&s, "").await;
    assert_eq!(a["visits"], 6);
    assert_eq!(a["unique_visitors"], 3);
    s.stop().await;
}
