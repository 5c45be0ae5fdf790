//! Several nodes, one launch: launchguard nodes on loopback sharing a real
//! `nats-server -js` (Debian's package; `.ci/run` installs it). The nodes run
//! in-process on one manual clock, so their windows are compared at the same instant.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use launchguard::clock::Clock;
use launchguard::ingest::store::trees;
use parking_lot::Mutex;

use crate::support::edge::{get, x_cache};
use crate::support::nats::Nats;
use crate::support::{Resp, TestServer, SECRET};

/// Long enough for a second node to have tried to take a lease already held (it
/// tries every 2 s): had it polled, it would show by then.
const LEASE_SETTLE: Duration = Duration::from_millis(4500);

const T0: u64 = 1_780_000_000_000;

async fn node(dir: &Path, name: &str, nats: &Nats, clock: &Clock) -> TestServer {
    let url = nats.url();
    let name = name.to_string();
    TestServer::start(&dir.join(&name), clock.clone(), move |c| {
        c.cluster.nats_url = Some(url);
        c.cluster.node_id = Some(name);
    })
    .await
}

/// The ids of every event in the node's store, each as often as it is stored.
fn stored_ids(s: &TestServer) -> Vec<String> {
    s.state()
        .store
        .events_since(0)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Waits (polling, up to 20 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every node's store holds exactly `ids`, each once, and its pump has
/// applied them.
async fn all_hold(nodes: &[&TestServer], ids: &HashSet<String>) {
    for (i, n) in nodes.iter().enumerate() {
        until(&format!("node {i} holds all {} events", ids.len()), || {
            stored_ids(n).len() >= ids.len()
        })
        .await;
        let stored = stored_ids(n);
        assert_eq!(stored.len(), ids.len(), "node {i} holds an event twice");
        assert_eq!(&stored.into_iter().collect::<HashSet<_>>(), ids, "node {i}");
        n.pumped().await;
    }
}

async fn accepted(s: &TestServer, id: &str) {
    let r = s.webhook(&s.event(id, "upvote"), SECRET).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{id}: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_spread_over_three_nodes_reach_every_window_once_with_one_factor() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let c = node(dir.path(), "c", &nats, &clock).await;
    let nodes = [&a, &b, &c];
    let mut ids = HashSet::new();
    for i in 0..90 {
        let id = format!("spread-{i}");
        accepted(nodes[i % 3], &id).await;
        ids.insert(id);
    }
    all_hold(&nodes, &ids).await;
    let factors: Vec<f64> = nodes.iter().map(|n| n.state().factor.current()).collect();
    assert!(factors[0] > 1.0, "90 upvotes raise the factor: {factors:?}");
    for f in &factors {
        assert!((f - factors[0]).abs() < 0.01, "factors differ: {factors:?}");
    }
    // Each node's copy of another's event names where it came from; its own do not.
    let b_events = b.state().store.events_since(0).unwrap();
    let from_a = b_events.iter().find(|e| e.id == "spread-0").unwrap();
    assert_eq!(from_a.origin.as_ref().map(|o| o.node.as_str()), Some("a"));
    let own = b_events.iter().find(|e| e.id == "spread-1").unwrap();
    assert!(own.origin.is_none());
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_retried_on_another_node_is_a_duplicate_there_and_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let c = node(dir.path(), "c", &nats, &clock).await;
    // Every node has published once, so each knows JetStream is reachable.
    let mut ids = HashSet::new();
    for (i, n) in [&a, &b, &c].iter().enumerate() {
        let id = format!("hello-{i}");
        accepted(n, &id).await;
        ids.insert(id);
    }
    all_hold(&[&a, &b, &c], &ids).await;

    // The sender retries on b, then on c, right after a accepted: whether or not
    // they have stored a's copy yet, JetStream knows the id.
    for round in 0..20 {
        let id = format!("retried-{round}");
        let body = a.event(&id, "upvote");
        let first = a.webhook(&body, SECRET).await;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
        for (name, other) in [("b", &b), ("c", &c)] {
            let again = other.webhook(&body, SECRET).await;
            assert_eq!(again.status, StatusCode::OK, "{name}: {}", again.text());
            assert_eq!(again.json()["status"], "duplicate", "{name}");
        }
        ids.insert(id);
    }
    all_hold(&[&a, &b, &c], &ids).await;
    let factors: Vec<f64> = [&a, &b, &c]
        .iter()
        .map(|n| n.state().factor.current())
        .collect();
    assert!((factors[0] - factors[1]).abs() < 0.01 && (factors[0] - factors[2]).abs() < 0.01);
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_down_and_back_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let mut ids = HashSet::new();
    for i in 0..10 {
        let id = format!("before-{i}");
        accepted(if i % 2 == 0 { &a } else { &b }, &id).await;
        ids.insert(id);
    }
    all_hold(&[&a, &b], &ids).await;

    // NATS goes away: both nodes keep accepting, each durable on its own store,
    // and answer without waiting on NATS.
    nats.stop();
    for i in 0..20 {
        let id = format!("during-{i}");
        let n = if i % 2 == 0 { &a } else { &b };
        let started = Instant::now();
        accepted(n, &id).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "a webhook waited {:?} on the missing NATS",
            started.elapsed()
        );
        ids.insert(id);
    }
    nats.start_again();
    for i in 0..10 {
        let id = format!("after-{i}");
        accepted(if i % 2 == 0 { &a } else { &b }, &id).await;
        ids.insert(id);
    }
    // The outboxes publish what was accepted meanwhile; the consumers catch up.
    all_hold(&[&a, &b], &ids).await;
    let (fa, fb) = (a.state().factor.current(), b.state().factor.current());
    assert!((fa - fb).abs() < 0.01, "{fa} vs {fb}");
    a.stop().await;
    b.stop().await;
}

/// The `Nats-Msg-Id` of the last message node `node` has in the events stream, if
/// the stream is there and holds one.
async fn last_published(js: &async_nats::jetstream::Context, node: &str) -> Option<String> {
    let stream = js.get_stream_no_info("LAUNCHGUARD_EVENTS").await.ok()?;
    let m = stream
        .get_last_raw_message_by_subject(&format!("launchguard.events.{node}"))
        .await
        .ok()?;
    Some(m.headers.get("Nats-Msg-Id")?.as_str().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_events_stream_deleted_under_a_node_is_made_again_by_its_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    // One node alone: no consumer of its own would make the stream again.
    let a = node(dir.path(), "a", &nats, &clock).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    accepted(&a, "before").await;
    assert_eq!(last_published(&js, "a").await.as_deref(), Some("before"));

    js.delete_stream("LAUNCHGUARD_EVENTS").await.unwrap();
    // JetStream answers the next publish with "no responders": the outbox sets the
    // stream up again and publishes it there.
    accepted(&a, "after").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_published(&js, "a").await.as_deref() != Some("after") {
        assert!(
            Instant::now() < deadline,
            "the event accepted after the stream went is not in a new one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_late_catches_up_the_current_window() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let mut ids = HashSet::new();
    for i in 0..40 {
        let id = format!("early-{i}");
        accepted(if i % 2 == 0 { &a } else { &b }, &id).await;
        ids.insert(id);
    }
    all_hold(&[&a, &b], &ids).await;
    let late = node(dir.path(), "late", &nats, &clock).await;
    all_hold(&[&a, &b, &late], &ids).await;
    let (fa, fl) = (a.state().factor.current(), late.state().factor.current());
    assert!(fa > 1.0 && (fa - fl).abs() < 0.01, "{fa} vs {fl}");
    for n in [a, b, late] {
        n.stop().await;
    }
}

async fn admin(s: &TestServer, method: axum::http::Method, path: &str, body: &str) -> Resp {
    let r = s
        .client
        .send(
            method,
            &s.admin_url(path),
            &[("content-type", "application/json")],
            body.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_given_on_one_node_is_in_force_on_every_node_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let c = node(dir.path(), "c", &nats, &clock).await;
    let r = admin(
        &a,
        Method::POST,
        "/admin/factor",
        r#"{"pin": 3.5, "for_secs": 600}"#,
    )
    .await;
    assert_eq!(r.header("launchguard-cluster"), Some("shared"));
    let started = Instant::now();
    until("c follows a's pin", || c.state().factor.current() == 3.5).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Persisted there too: c restarted keeps it.
    assert_eq!(
        c.state().store.load_pin().unwrap().map(|p| p.factor),
        Some(3.5)
    );
    // A node started after the pin gets the pin in force.
    let late = node(dir.path(), "late", &nats, &clock).await;
    until("the late node has the pin", || {
        late.state().factor.current() == 3.5
    })
    .await;
    // Unpinned on c: a and the late node follow.
    admin(&c, Method::DELETE, "/admin/factor", "").await;
    until("a unpinned", || a.state().factor.pinned(T0).is_none()).await;
    until("late unpinned", || late.state().factor.pinned(T0).is_none()).await;
    assert_eq!(a.state().factor.current(), 1.0);
    for n in [a, c, late] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_on_one_node_empties_every_cache_and_a_warm_up_warms_every_cache() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let c = node(dir.path(), "c", &nats, &clock).await;
    for n in [&a, &b, &c] {
        get(n, "/launch/", &[]).await;
        assert_eq!(x_cache(&get(n, "/launch/", &[]).await), "HIT");
    }
    let r = admin(&b, Method::POST, "/admin/purge", r#"{"prefix": "/"}"#).await;
    assert_eq!(r.header("launchguard-cluster"), Some("shared"));
    for (name, n) in [("a", &a), ("c", &c)] {
        until(&format!("{name}'s cache is empty"), || {
            n.state().edge.cache().bytes() == 0
        })
        .await;
    }
    assert_eq!(x_cache(&get(&a, "/launch/", &[]).await), "MISS");
    // Warmed on a: b and c answer the first request from their cache.
    admin(&a, Method::POST, "/admin/purge", r#"{"prefix": "/"}"#).await;
    for n in [&b, &c] {
        until("empty again", || n.state().edge.cache().bytes() == 0).await;
    }
    admin(&a, Method::POST, "/admin/warm", r#"{"urls": ["/app.js"]}"#).await;
    for (name, n) in [("b", &b), ("c", &c)] {
        until(&format!("{name} warmed"), || {
            n.state().edge.cache().bytes() > 0
        })
        .await;
        assert_eq!(x_cache(&get(n, "/app.js", &[]).await), "HIT", "{name}");
    }
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// A Product Hunt API that answers counts and records which token asked.
async fn counting_api() -> (String, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let app = axum::Router::new().route(
        "/v2/api/graphql",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                seen.lock().push(token);
                (
                    [
                        ("x-rate-limit-limit", "6250"),
                        ("x-rate-limit-remaining", "6000"),
                        ("x-rate-limit-reset", "900"),
                    ],
                    r#"{"data":{"post":{"votesCount":0,"commentsCount":0}}}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v2/api/graphql", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_poller_runs_on_one_node_and_moves_to_another_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let (api, asked) = counting_api().await;
    let clock = Clock::manual(T0);
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let (url, api, name) = (nats.url(), api.clone(), name.to_string());
        nodes.push(
            TestServer::start(&dir.path().join(&name), clock.clone(), move |c| {
                c.cluster.nats_url = Some(url);
                c.producthunt.token = Some(format!("token-{name}"));
                c.producthunt.post_slug = Some("tidepool".into());
                c.producthunt.api_url = api;
                c.cluster.node_id = Some(name);
            })
            .await,
        );
    }
    // The clock stands still, so the lease holder polls once and waits.
    until("someone polled", || !asked.lock().is_empty()).await;
    tokio::time::sleep(LEASE_SETTLE).await;
    let polled: HashSet<String> = asked.lock().iter().cloned().collect();
    assert_eq!(polled.len(), 1, "more than one node polled: {polled:?}");
    let holder = polled.into_iter().next().unwrap();
    let i = ["a", "b", "c"]
        .iter()
        .position(|n| holder == format!("Bearer token-{n}"))
        .expect("a node's token");
    nodes.remove(i).stop().await;
    until("another node polls", || {
        asked.lock().iter().any(|t| *t != holder)
    })
    .await;
    let after: HashSet<String> = asked
        .lock()
        .iter()
        .filter(|t| **t != holder)
        .cloned()
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    for n in nodes {
        n.stop().await;
    }
}

/// `GET /api/analytics` (today, by the node's clock) on `s`.
async fn analytics(s: &TestServer) -> serde_json::Value {
    let r = s.client.get(&s.admin_url("/api/analytics")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_reports_the_clusters_exact_totals_with_a_line_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let c = node(dir.path(), "c", &nats, &clock).await;
    let nodes = [&a, &b, &c];
    // Page views: 3 on a, 5 on b, 7 on c. Webhooks: 4 on each, and one id sent
    // to a and then retried on b and c (a duplicate there).
    let mut ids = HashSet::new();
    let mut lg_v = String::new();
    for (i, n) in nodes.iter().enumerate() {
        for _ in 0..(3 + 2 * i) {
            let r = get(n, "/launch/", &[]).await;
            assert_eq!(r.status, StatusCode::OK);
            if let Some(v) = r.header("set-cookie").filter(|v| v.starts_with("lg_v=")) {
                lg_v = v.split(';').next().unwrap().to_string();
            }
        }
        for k in 0..4 {
            let id = format!("count-{i}-{k}");
            accepted(n, &id).await;
            ids.insert(id);
        }
    }
    let body = a.event("retried-everywhere", "upvote");
    assert_eq!(a.webhook(&body, SECRET).await.status, StatusCode::ACCEPTED);
    for n in [&b, &c] {
        assert_eq!(n.webhook(&body, SECRET).await.json()["status"], "duplicate");
    }
    ids.insert("retried-everywhere".into());
    all_hold(&nodes, &ids).await;
    // The funnel grace on c alone (pinned there, not through the cluster): c's last
    // visitor is let through once where others are shed.
    let pin = launchguard::ingest::factor::Pin {
        factor: 3.0,
        until_ms: clock.now_ms() + 60_000,
    };
    c.state().factor.pin(pin, clock.now_ms());
    let graced = get(&c, "/app.js", &[("cookie", lg_v.as_str())]).await;
    assert_eq!(graced.status, StatusCode::OK);
    c.state().factor.unpin(clock.now_ms());
    for n in nodes {
        n.state().conversions.flush(clock.now_ms()).unwrap();
    }
    for (name, n) in [("a", &a), ("b", &b), ("c", &c)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let report = loop {
            let r = analytics(n).await;
            if r["nodes"].as_array().is_some_and(|l| l.len() == 3)
                && r["visits"] == 15
                && r["webhooks_accepted"] == 13
                && r["grace_admitted_requests"] == 1
            {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never showed the cluster's totals: {r}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Requests count the webhook posts too: a's 3 + 5, b's 5 + 5, c's 7 + 5 + 1.
        assert_eq!(report["requests"], 31, "{name}");
        // c's grace count travelled with its rows (version 3 batches).
        assert_eq!(report["grace_admitted_requests"], 1, "{name}");
        let lines: Vec<(String, u64, u64, u64)> = report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["node"].as_str().unwrap().to_string(),
                    l["visits"].as_u64().unwrap(),
                    l["webhooks_accepted"].as_u64().unwrap(),
                    l["grace_admitted_requests"].as_u64().unwrap(),
                )
            })
            .collect();
        let by_node = |id: &str| lines.iter().find(|l| l.0 == id).cloned();
        assert_eq!(
            by_node("a"),
            Some(("a".into(), 3, 5, 0)),
            "{name}: {lines:?}"
        );
        assert_eq!(
            by_node("b"),
            Some(("b".into(), 5, 4, 0)),
            "{name}: {lines:?}"
        );
        assert_eq!(
            by_node("c"),
            Some(("c".into(), 7, 4, 1)),
            "{name}: {lines:?}"
        );
        // The launches list says the same.
        let launches = n.client.get(&n.admin_url("/api/launches")).await.json();
        let day = &launches["launches"][0];
        assert_eq!(day["visits"], 15, "{name}: {launches}");
        assert_eq!(day["requests"], 31, "{name}: {launches}");
        assert_eq!(day["grace_admitted_requests"], 1, "{name}: {launches}");
        assert_eq!(day["webhooks_accepted"], 13, "{name}: {launches}");
    }
    // The dashboard's live samples carry the nodes too, this node's first.
    let got = crate::dashboard::frames(&c.admin_url("/api/live"), None, |f| {
        f.last()
            .is_some_and(|(_, s)| s["nodes"].as_array().is_some_and(|n| n.len() == 3))
    })
    .await;
    let nodes = &got.last().unwrap().1["nodes"];
    assert_eq!(nodes[0]["node"], "c", "{nodes}");
    assert_eq!(nodes[0]["visits"], 7, "{nodes}");
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// The `lg_v` cookie a page view on `s` sets (`name=value`), if it sets one.
fn visitor_cookie(r: &Resp) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("lg_v="))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// A balancer that is not sticky sends a visitor to any node: the cookie one node
/// made is honoured by the others. On b, a's visitor gets no new cookie, is not
/// counted again, and its conversion beacon counts instead of being refused as
/// forged; b had keys of its own from a start without the cluster, and took the
/// cluster's (so the cookie b made then is now another store's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cookie_made_on_one_node_is_honoured_on_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let alone = TestServer::start(&dir.path().join("b"), clock.clone(), |_| {}).await;
    let before = visitor_cookie(&get(&alone, "/launch/", &[]).await).expect("a new visitor");
    alone.stop().await;
    clock.advance_ms(60_000);

    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let cookie = visitor_cookie(&get(&a, "/launch/", &[]).await).expect("a new visitor");
    let on_b = get(&b, "/launch/", &[("cookie", &cookie)]).await;
    assert_eq!(on_b.status, StatusCode::OK);
    assert_eq!(visitor_cookie(&on_b), None, "b honours a's cookie");
    let origin = format!("http://{}", b.public);
    let beacon = b
        .client
        .send(
            Method::POST,
            &b.url("/api/convert"),
            &[
                ("content-type", "text/plain;charset=UTF-8"),
                ("cookie", &cookie),
                ("origin", &origin),
            ],
            br#"{"goal":"signup"}"#.to_vec(),
        )
        .await;
    assert_eq!(beacon.status, StatusCode::NO_CONTENT, "{}", beacon.text());
    // The cookie b signed before it joined is no longer one of the cluster's.
    let stale = get(&b, "/launch/", &[("cookie", &before)]).await;
    assert!(visitor_cookie(&stale).is_some(), "a new cookie for it");

    for n in [&a, &b] {
        n.state().conversions.flush(clock.now_ms()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = analytics(&a).await;
        // a's visitor once (at its cookie's issue, on a); on b, the visitor of its
        // start alone and the stale cookie's new one; one conversion, on b.
        if r["nodes"].as_array().is_some_and(|l| l.len() == 2)
            && r["unique_visitors"] == 3
            && r["conversions_total"] == 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never counted a's visitor once and its conversion: {r}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in [a, b] {
        n.stop().await;
    }
}

/// Flushes every node's counters now (the claims' corrections among them). The
/// clock moves a millisecond first, so each flush writes a row of its own, as a
/// running node's do: a row merged into one already published is not published
/// again.
fn flush_all(nodes: &[&TestServer], clock: &Clock) {
    clock.advance_ms(1);
    for n in nodes {
        n.state().conversions.flush(clock.now_ms()).unwrap();
    }
}

/// Waits (flushing every node meanwhile) until every node's `/api/analytics` shows
/// `want` (a field and its value each) with a line for each node, and the lines'
/// `sum_field` add up to the total's; returns the last report of each node.
async fn every_node_shows(
    nodes: &[(&str, &TestServer)],
    clock: &Clock,
    want: &[(&str, u64)],
    sum_field: &str,
) -> Vec<serde_json::Value> {
    let all: Vec<&TestServer> = nodes.iter().map(|(_, n)| *n).collect();
    let mut out = Vec::new();
    for (name, n) in nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        let report = loop {
            flush_all(&all, clock);
            let r = analytics(n).await;
            let lines = r["nodes"].as_array().cloned().unwrap_or_default();
            let summed: u64 = lines.iter().map(|l| l[sum_field].as_u64().unwrap()).sum();
            if lines.len() == nodes.len()
                && want.iter().all(|(k, v)| r[*k] == *v)
                && Some(summed) == r[sum_field].as_u64()
            {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never showed {want:?} (the lines summing to the total): {:?}, lines {:?}",
                want.iter().map(|(k, _)| (*k, &r[*k])).collect::<Vec<_>>(),
                lines
                    .iter()
                    .map(|l| (&l["node"], &l[sum_field]))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        out.push(report);
    }
    out
}

/// A visitor whose cookie is from an earlier day is counted by every node it
/// reaches (each keeps its own once-a-day mark, no NATS call on the request's
/// path); the nodes claim it in NATS, one keeps it, the others subtract it. Every
/// node's report then shows one visitor, and the node lines add up to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_visitor_from_an_earlier_day_on_three_nodes_is_one_visitor_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let c = node(dir.path(), "c", &nats, &clock).await;
    let cookie = visitor_cookie(&get(&a, "/launch/", &[]).await).expect("a new visitor");
    // The next day: every node's window starts in it.
    clock.advance_ms(86_400_000);
    flush_all(&[&a, &b, &c], &clock);
    for n in [&a, &b, &c] {
        for _ in 0..2 {
            let r = get(n, "/launch/", &[("cookie", &cookie)]).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(visitor_cookie(&r), None, "the cookie is honoured");
        }
    }
    let reports = every_node_shows(
        &[("a", &a), ("b", &b), ("c", &c)],
        &clock,
        &[("unique_visitors", 1), ("visits", 6)],
        "unique_visitors",
    )
    .await;
    // One node keeps it, the same one on every node's report.
    let keeper = |r: &serde_json::Value| -> Vec<String> {
        r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["unique_visitors"] == 1)
            .map(|l| l["node"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keeper(&reports[0]).len(), 1, "{}", reports[0]);
    assert!(reports.iter().all(|r| keeper(r) == keeper(&reports[0])));
    // Still one, once everything has settled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    flush_all(&[&a, &b, &c], &clock);
    for n in [&a, &b, &c] {
        assert_eq!(analytics(n).await["unique_visitors"], 1);
    }
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// Counts made while NATS is down keep their claims in each node's store (through
/// a restart of the node too) and are claimed when NATS is back: the cluster's
/// totals are exact again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_kept_while_nats_is_down_are_made_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let cookie = visitor_cookie(&get(&a, "/launch/", &[]).await).expect("a new visitor");
    clock.advance_ms(86_400_000);
    flush_all(&[&a, &b], &clock);
    nats.stop();
    for n in [&a, &b] {
        let r = get(n, "/launch/", &[("cookie", &cookie)]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(visitor_cookie(&r), None);
    }
    flush_all(&[&a, &b], &clock);
    // Each node counted it, and could claim it nowhere.
    for n in [&a, &b] {
        let r = analytics(n).await;
        assert_eq!(r["unique_visitors"], 1, "{}", r["nodes"]);
    }
    // b restarts while NATS is still down: its claim waits in its store.
    b.stop().await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    nats.start_again();
    every_node_shows(
        &[("a", &a), ("b", &b)],
        &clock,
        &[("unique_visitors", 1), ("visits", 2)],
        "unique_visitors",
    )
    .await;
    for n in [a, b] {
        n.stop().await;
    }
}

/// The same conversion beacon (one visitor, goal and day) sent to two nodes is
/// counted by each (a 204 on both: neither waits on the other) and kept once: one
/// conversion and one converting visitor on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_conversion_sent_to_two_nodes_counts_once_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    let cookie = visitor_cookie(&get(&a, "/launch/", &[]).await).expect("a new visitor");
    for n in [&a, &b] {
        let origin = format!("http://{}", n.public);
        let beacon = n
            .client
            .send(
                Method::POST,
                &n.url("/api/convert"),
                &[
                    ("content-type", "text/plain;charset=UTF-8"),
                    ("cookie", &cookie),
                    ("origin", &origin),
                ],
                br#"{"goal":"signup"}"#.to_vec(),
            )
            .await;
        assert_eq!(beacon.status, StatusCode::NO_CONTENT, "{}", beacon.text());
    }
    every_node_shows(
        &[("a", &a), ("b", &b)],
        &clock,
        &[
            ("conversions_total", 1),
            ("converting_visitors", 1),
            ("unique_visitors", 1),
        ],
        "conversions_total",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    flush_all(&[&a, &b], &clock);
    for n in [&a, &b] {
        let r = analytics(n).await;
        assert_eq!(r["conversions_total"], 1, "{r}");
        assert_eq!(r["conversions"]["signup"], 1, "{r}");
        assert_eq!(r["converting_visitors"], 1, "{r}");
    }
    for n in [a, b] {
        n.stop().await;
    }
}

/// A node that starts while NATS is down signs with keys of its own; once NATS is
/// back it takes the cluster's (a cookie another node made is honoured there), and
/// the cookies it made meanwhile still verify on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_with_nats_down_takes_the_clusters_keys_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let from_a = visitor_cookie(&get(&a, "/launch/", &[]).await).expect("a new visitor");
    // The server holds the keys a offered before it is killed.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut held = 0;
        if let Ok(kv) = js.get_key_value("LAUNCHGUARD_KEYS").await {
            for name in [trees::META_VISITOR_KEY, trees::META_WAITING_ROOM_KEY] {
                if matches!(kv.get(name).await, Ok(Some(_))) {
                    held += 1;
                }
            }
        }
        if held == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the keys bucket never held a's keys"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(js);
    nats.stop();
    let b = node(dir.path(), "b", &nats, &clock).await;
    let meanwhile = visitor_cookie(&get(&b, "/launch/", &[]).await).expect("a new visitor");
    let on_b = get(&b, "/launch/", &[("cookie", &from_a)]).await;
    assert!(
        visitor_cookie(&on_b).is_some(),
        "b signs with its own key while NATS is down"
    );
    nats.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let on_b = get(&b, "/launch/", &[("cookie", &from_a)]).await;
        if visitor_cookie(&on_b).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "b never took the cluster's keys");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What b signed meanwhile still verifies on b: that visitor keeps its cookie.
    let again = get(&b, "/launch/", &[("cookie", &meanwhile)]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        visitor_cookie(&again),
        None,
        "b still honours its own cookie"
    );
    // What b signs now is honoured on a.
    let from_b = visitor_cookie(&get(&b, "/launch/", &[]).await).expect("a new visitor");
    assert_eq!(
        visitor_cookie(&get(&a, "/launch/", &[("cookie", &from_b)]).await),
        None,
        "a honours what b signs now"
    );
    // And after a restart of b, with NATS up, both still verify on b.
    b.stop().await;
    let b = node(dir.path(), "b", &nats, &clock).await;
    for cookie in [&from_a, &meanwhile, &from_b] {
        let r = get(&b, "/launch/", &[("cookie", cookie)]).await;
        assert_eq!(visitor_cookie(&r), None, "{cookie}");
    }
    for n in [a, b] {
        n.stop().await;
    }
}

mod processes {
    //! The same cluster as real processes of the binary, for what only a process
    //! shows: SIGKILL mid-load, and a NATS restart under load.

    use std::collections::{HashMap, HashSet};
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use axum::http::{Method, StatusCode};
    use launchguard::ingest::webhook::signature::{sign_producthunt, Key};
    use parking_lot::{Mutex, RwLock};

    use crate::support::binary::{spawn, write_config, Proc};
    use crate::support::nats::Nats;
    use crate::support::{event_at, Client};

    const SECRET: &str = "cluster-process-secret";

    struct Node {
        config: PathBuf,
        proc: Option<Proc>,
    }

    impl Node {
        fn start(dir: &Path, name: &str, nats: &Nats) -> Node {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let config = write_config(
                &dir,
                SECRET,
                &format!(
                    "[cluster]\nnats_url = \"{}\"\nnode_id = \"{name}\"\n[conversions]\nflush_interval_ms = 200\n",
                    nats.url()
                ),
            );
            let proc = spawn(&config, &[]);
            Node {
                config,
                proc: Some(proc),
            }
        }

        fn public(&self) -> SocketAddr {
            self.proc.as_ref().unwrap().public
        }

        fn admin(&self) -> SocketAddr {
            self.proc.as_ref().unwrap().admin
        }

        fn kill(&mut self) {
            let mut p = self.proc.take().unwrap();
            p.child.kill().unwrap();
            p.child.wait().unwrap();
        }

        fn restart(&mut self) {
            assert!(self.proc.is_none());
            self.proc = Some(spawn(&self.config, &[]));
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            if let Some(mut p) = self.proc.take() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }

    /// Sends uniquely numbered signed webhooks round-robin to `targets` (a target
    /// may be down: its sends fail) from 8 tasks until `stop`; returns the ids each
    /// node acknowledged (202, or 200 duplicate).
    async fn load(
        targets: Arc<RwLock<Vec<Option<SocketAddr>>>>,
        stop: Arc<AtomicBool>,
    ) -> HashSet<String> {
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let next = Arc::new(AtomicU64::new(0));
        let key = Key::parse(SECRET).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (targets, stop, acked, next, key) = (
                targets.clone(),
                stop.clone(),
                acked.clone(),
                next.clone(),
                key.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let client = Client::new();
                while !stop.load(Ordering::Acquire) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let target = {
                        let t = targets.read();
                        t[n as usize % t.len()]
                    };
                    let Some(addr) = target else {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    };
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as u64;
                    let id = format!("load-{n}");
                    let body = event_at(&id, "upvote", now);
                    let sig = sign_producthunt(&key, &body);
                    let sent = client
                        .try_send(
                            Method::POST,
                            &format!("http://{addr}/webhooks/producthunt"),
                            &[("x-producthunt-signature", &sig)],
                            body,
                        )
                        .await;
                    if let Ok(r) = sent {
                        if r.status == StatusCode::ACCEPTED || r.status == StatusCode::OK {
                            acked.lock().insert(id);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let ids = acked.lock().clone();
        ids
    }

    /// Every event id in a node's store, with how often it is there.
    async fn stored(client: &Client, admin: SocketAddr) -> HashMap<String, usize> {
        let mut ids = HashMap::new();
        let mut after = 0;
        loop {
            let r = client
                .get(&format!(
                    "http://{admin}/admin/events?after={after}&limit=1000"
                ))
                .await
                .json();
            let events = r["events"].as_array().unwrap();
            if events.is_empty() {
                return ids;
            }
            for e in events {
                *ids.entry(e["id"].as_str().unwrap().to_string())
                    .or_default() += 1;
                after = e["seq"].as_u64().unwrap();
            }
        }
    }

    /// Waits until every node holds every id of `acked`, each once, and all hold the
    /// same ids (acked, plus events a killed node had made durable without
    /// answering); returns how many.
    async fn all_hold(
        client: &Client,
        nodes: &[&Node],
        acked: &HashSet<String>,
        nats_url: &str,
    ) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut stores = Vec::new();
            for n in nodes {
                stores.push(stored(client, n.admin()).await);
            }
            for (i, ids) in stores.iter().enumerate() {
                let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
                assert!(twice.is_empty(), "node {i} holds events twice: {twice:?}");
            }
            let complete = stores
                .iter()
                .all(|ids| acked.iter().all(|id| ids.contains_key(id)));
            let same = stores.iter().all(|ids| {
                ids.len() == stores[0].len() && ids.keys().all(|k| stores[0].contains_key(k))
            });
            if complete && same {
                return stores[0].len();
            }
            if Instant::now() > deadline {
                let all: HashSet<&String> = stores.iter().flat_map(|s| s.keys()).collect();
                let gaps: Vec<(usize, Vec<&&String>)> = stores
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i, all.iter().filter(|id| !s.contains_key(**id)).collect()))
                    .collect();
                let logs: Vec<String> = nodes
                    .iter()
                    .map(|m| {
                        std::fs::read_to_string(m.config.with_file_name("stderr.log"))
                            .unwrap_or_default()
                            .lines()
                            .filter(|l| !l.contains("lease"))
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .collect();
                // Where the missing ones are: in the stream (a consumer did not store
                // them) or not (the outbox did not publish them, or NATS lost them).
                let census = crate::support::nats::census(nats_url, "LAUNCHGUARD_EVENTS").await;
                let in_stream: Vec<String> = match &census {
                    Ok(msgs) => gaps
                        .iter()
                        .flat_map(|(_, ids)| ids.iter())
                        .map(|id| {
                            let at: Vec<_> = msgs.iter().filter(|m| &m.1 == **id).collect();
                            format!("{id}: {at:?}")
                        })
                        .collect(),
                    Err(e) => vec![format!("cannot read the stream: {e}")],
                };
                let mut cluster_metrics = Vec::new();
                for n in nodes {
                    let text = client
                        .get(&format!("http://{}/metrics", n.admin()))
                        .await
                        .text();
                    cluster_metrics.push(
                        text.lines()
                            .filter(|l| l.starts_with("launchguard_cluster_"))
                            .collect::<Vec<_>>()
                            .join("\n"),
                    );
                }
                panic!(
                    "the stores never agreed; missing per node: {gaps:?} (acknowledged: {})\n\
                     in the stream ({} messages): {in_stream:?}\nmetrics:\n{}\nlogs:\n{}",
                    acked.len(),
                    census.as_ref().map_or(0, |m| m.len()),
                    cluster_metrics.join("\n----\n"),
                    logs.join("\n----\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the day's cluster-wide "webhooks accepted" on `admin` is `n`.
    async fn analytics_count(client: &Client, admin: SocketAddr, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = client
                .get(&format!("http://{admin}/api/analytics"))
                .await
                .json();
            if r["webhooks_accepted"] == n as u64 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "analytics on {admin} say {} webhooks, the stores hold {n}; by node: {}",
                r["webhooks_accepted"],
                r["nodes"]
                    .as_array()
                    .map(|l| l
                        .iter()
                        .map(|x| format!("{}={}", x["node"], x["webhooks_accepted"]))
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_node_killed_mid_load_and_restarted_loses_nothing_and_counts_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mut nats) = Nats::start(dir.path()) else {
            return;
        };
        let mut nodes: Vec<Node> = ["a", "b", "c"]
            .iter()
            .map(|n| Node::start(dir.path(), n, &nats))
            .collect();
        let targets = Arc::new(RwLock::new(
            nodes.iter().map(|n| Some(n.public())).collect::<Vec<_>>(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let sender = tokio::spawn(load(targets.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // b dies with requests in flight.
        targets.write()[1] = None;
        nodes[1].kill();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // NATS restarts under load; a and c keep answering.
        nats.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        nats.start_again();
        tokio::time::sleep(Duration::from_millis(500)).await;
        nodes[1].restart();
        targets.write()[1] = Some(nodes[1].public());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Release);
        let acked = sender.await.unwrap();
        assert!(
            acked.len() > 100,
            "only {} webhooks acknowledged",
            acked.len()
        );

        let client = Client::new();
        let refs: Vec<&Node> = nodes.iter().collect();
        let held = all_hold(&client, &refs, &acked, &nats.url()).await;
        for n in nodes.iter().rev() {
            analytics_count(&client, n.admin(), held).await;
        }
        let mut factors = Vec::new();
        for n in &nodes {
            let f = client
                .get(&format!("http://{}/admin/factor", n.admin()))
                .await
                .json();
            factors.push(f["velocity"].as_f64().unwrap());
        }
        assert!(factors[0] > 0.0, "{factors:?}");
        for v in &factors {
            assert!(
                (v - factors[0]).abs() <= 0.02 * factors[0],
                "velocities differ: {factors:?}"
            );
        }
    }
}

/// A preflight config for a node `node_id` of the cluster at `nats_url`.
fn preflight_config(dir: &Path, nats_url: &str, node_id: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
         [origin]\nstatic_dir = {:?}\n[webhook]\nsecrets = [\"preflight-secret\"]\n\
         [cluster]\nnats_url = \"{nats_url}\"\nnode_id = \"{node_id}\"\n",
        dir.join(format!("state-{node_id}")),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/site"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preflight_checks_the_nats_server_the_stream_and_that_the_node_id_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = Nats::start(dir.path()) else {
        return;
    };
    // Nothing listens there.
    let nowhere = format!("nats://127.0.0.1:{}", crate::support::pebble::free_port());
    let (code, out) =
        crate::preflight::preflight(dir.path(), &preflight_config(dir.path(), &nowhere, "z"));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("cluster: NATS") && out.contains("nats-server"),
        "{out}"
    );

    // Before any node ran: the stream is made at start.
    let (code, out) =
        crate::preflight::preflight(dir.path(), &preflight_config(dir.path(), &nats.url(), "z"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("does not exist yet"), "{out}");

    // A claims bucket that forgets its entries within the hour is refused, by name.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    // (Made as its backing stream, as launchguard makes buckets: nats-server 2.9 does
    // not answer async-nats's create_key_value.)
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KV_LAUNCHGUARD_CLAIMS".into(),
        subjects: vec!["$KV.LAUNCHGUARD_CLAIMS.>".into()],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(3600),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let (code, out) = tokio::task::spawn_blocking({
        let (dir, config) = (
            dir.path().to_path_buf(),
            preflight_config(dir.path(), &nats.url(), "z"),
        );
        move || crate::preflight::preflight(&dir, &config)
    })
    .await
    .unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("LAUNCHGUARD_CLAIMS") && out.contains("keeps entries 3600 s"),
        "{out}"
    );
    js.delete_stream("KV_LAUNCHGUARD_CLAIMS").await.unwrap();

    // With node "a" running, "a" is taken and "z" is free.
    let clock = Clock::manual(T0);
    let a = node(dir.path(), "a", &nats, &clock).await;
    let taken = preflight_config(dir.path(), &nats.url(), "a");
    let free = preflight_config(dir.path(), &nats.url(), "z");
    // (a takes its presence entry a moment after it starts: asked until then.)
    let ((code_taken, out_taken), (code_free, out_free)) = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let taken = loop {
                let (code, out) = crate::preflight::preflight(&dir, &taken);
                if code != 0 || Instant::now() > deadline {
                    break (code, out);
                }
            };
            (taken, crate::preflight::preflight(&dir, &free))
        }
    })
    .await
    .unwrap();
    assert_ne!(code_taken, 0, "{out_taken}");
    assert!(out_taken.contains("cluster: node id"), "{out_taken}");
    assert_eq!(code_free, 0, "{out_free}");
    assert!(
        out_free.contains("LAUNCHGUARD_EVENTS: 0 events"),
        "{out_free}"
    );
    assert!(
        out_free.contains("bucket LAUNCHGUARD_KEYS (the cookie keys) is there"),
        "{out_free}"
    );
    a.stop().await;
}
