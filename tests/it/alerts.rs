//! Alerts against a fake Slack incoming webhook (a local HTTP receiver): a threshold
//! crossing sends exactly one message, flapping within `alerts.min_interval_secs`
//! sends no more, the state after the interval is announced, and the first event of
//! the launch day is announced once. Messages go through the outbound queue.

use std::time::Duration;

use crate::support::receiver::Receiver;
use crate::support::{TestServer, SECRET};
use hyper::{Method, StatusCode};
use launchguard::clock::Clock;

const START_MS: u64 = 1_790_000_000_000;

/// Runs one evaluation of the alert signals and waits for it.
async fn evaluate(server: &TestServer) {
    let alerts = &server.state().alerts;
    let mut rx = alerts.evaluations();
    let before = *rx.borrow_and_update();
    alerts.kick();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n > before))
        .await
        .expect("the alerts were evaluated")
        .unwrap();
}

async fn pin(server: &TestServer, factor: f64) {
    let r = server
        .client
        .send(
            Method::POST,
            &server.admin_url("/admin/factor"),
            &[("content-type", "application/json")],
            format!(r#"{{"pin": {factor}, "for_secs": 3600}}"#).into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

fn texts(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_threshold_crossing_sends_one_message_and_flapping_sends_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let clock = Clock::manual(START_MS);
    let url = receiver.url("/services/T000/B000/XXXX");
    let server = TestServer::start(dir.path(), clock.clone(), |c| {
        c.alerts.slack_webhook_urls = vec![url.clone()];
        c.alerts.factor_thresholds = vec![3.0];
        c.alerts.min_interval_secs = 300;
        c.backpressure.shed_factor = 5.0;
    })
    .await;
    evaluate(&server).await;
    assert_eq!(receiver.count(), 0, "nothing to say at factor 1.0");

    pin(&server, 3.5).await;
    evaluate(&server).await;
    receiver.wait_for(1).await;
    let t = texts(&receiver);
    assert!(t[0].contains("crossed 3.00 upwards: now 3.50"), "{t:?}");
    assert_eq!(receiver.requests()[0].path, "/services/T000/B000/XXXX");

    // Flapping across the threshold within the interval: nothing is even queued.
    for f in [1.0, 3.5, 1.0, 4.0, 1.0] {
        pin(&server, f).await;
        evaluate(&server).await;
        assert!(server.state().outbound.pending().unwrap().is_empty());
    }
    assert_eq!(receiver.count(), 1);

    // Once the interval has passed, the state then is announced, once.
    clock.advance_ms(301_000);
    evaluate(&server).await;
    receiver.wait_for(2).await;
    evaluate(&server).await;
    assert!(server.state().outbound.pending().unwrap().is_empty());
    let t = texts(&receiver);
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(t[1].contains("fell back below 3.00"), "{t:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_first_event_of_the_launch_day_is_announced_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let clock = Clock::manual(START_MS);
    let url = receiver.url("/hook");
    let tweak = |c: &mut launchguard::config::Config| {
        c.alerts.slack_webhook_urls = vec![url.clone()];
    };
    let server = TestServer::start(dir.path(), clock.clone(), tweak).await;
    let r = server
        .webhook(&server.event("first-1", "upvote"), SECRET)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    evaluate(&server).await;
    receiver.wait_for(1).await;
    assert!(texts(&receiver)[0].contains("First engagement of launch day"));
    let r = server
        .webhook(&server.event("first-2", "comment"), SECRET)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    evaluate(&server).await;
    assert!(server.state().outbound.pending().unwrap().is_empty());
    server.stop().await;

    let server = TestServer::start(dir.path(), clock.clone(), tweak).await;
    let r = server
        .webhook(&server.event("first-3", "upvote"), SECRET)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    evaluate(&server).await;
    assert!(server.state().outbound.pending().unwrap().is_empty());
    assert_eq!(receiver.count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_message_that_fails_every_retry_becomes_a_dead_letter_and_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Receiver::start().await;
    broken.set_fallback(crate::support::receiver::Answer::status(500));
    let working = Receiver::start().await;
    let clock = Clock::manual(START_MS);
    let urls = vec![broken.url("/hook"), working.url("/hook")];
    let server = TestServer::start(dir.path(), clock.clone(), |c| {
        c.alerts.slack_webhook_urls = urls.clone();
        c.alerts.factor_thresholds = vec![3.0];
        c.backpressure.shed_factor = 5.0;
        c.outbound.max_retries = 1;
    })
    .await;
    pin(&server, 3.5).await;
    evaluate(&server).await;
    working.wait_for(1).await;
    broken.wait_for(1).await;
    let outbound = &server.state().outbound;
    let mut progress = outbound.progress();
    tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|n| *n >= 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outbound.deadletter_count(), 1);
    evaluate(&server).await;
    working.wait_for(2).await;
    let t = texts(&working);
    assert!(
        t[1].contains("Dead letters growing: 1 held (was 0)"),
        "{t:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn alert_urls_are_checked_at_startup() {
    let e = launchguard::config::Config::parse(
        "[alerts]\nslack_webhook_urls = [\"hooks.slack.com/services/x\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("alerts.slack_webhook_urls[0]:"), "{e}");
    assert!(e.contains("https://"), "{e}");
    let e = launchguard::config::Config::parse("[alerts]\nfactor_thresholds = [0.5]\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("alerts.factor_thresholds[0]:"), "{e}");
}
