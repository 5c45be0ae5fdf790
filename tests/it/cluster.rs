//! Several nodes, one launch: launchguard nodes on loopback sharing a real
//! `nats-server -js` (Debian's package; `.ci/run` installs it). The nodes run
//! in-process on one manual clock, so their windows are compared at the same instant.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use launchguard::clock::Clock;

use crate::support::nats::Nats;
use crate::support::{TestServer, SECRET};

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
