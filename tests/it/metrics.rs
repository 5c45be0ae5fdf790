//! The metrics the shipped alert rules (data/prometheus/alerts.yml) and the Grafana
//! dashboard (data/grafana/launchguard.json) read exist on `/metrics`, with the labels
//! they select on, once the server has seen some traffic.
//!
//! The recorder is the process's, so a name may also be there from another test's
//! traffic; the series this test's traffic must move are read before and after it,
//! alone (`support::recorder`), and must have grown.

use crate::support::*;
use hyper::{Method, StatusCode};
use launchguard::clock::Clock;

const T0: u64 = 1_795_680_000_000;

#[tokio::test]
async fn every_metric_the_alerts_and_the_grafana_dashboard_read_is_exported() {
    let _alone = crate::support::recorder::alone().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |c| {
        c.backpressure.critical_paths = vec!["/".into()];
    })
    .await;
    // Counted by this test's traffic below.
    let moved = [
        r#"launchguard_http_request_duration_seconds_count{status="2xx"}"#,
        r#"launchguard_http_request_duration_seconds_count{status="4xx"}"#,
        r#"launchguard_http_request_duration_seconds_count{status="5xx"}"#,
        r#"launchguard_webhooks_total{result="unauthorized"}"#,
        r#"launchguard_backpressure_rejections_total{class="normal"}"#,
    ];
    let mut before = Vec::new();
    for series in moved {
        before.push(crate::support::edge::metric(&s, series).await);
    }
    // A 2xx, a 4xx, a rejected webhook, and (with the factor pinned high) a shed 5xx.
    let page = s.client.get(&s.url("/launch/")).await;
    assert_eq!(page.status, StatusCode::OK);
    let cookie = page
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        s.client.get(&s.url("/no-such-page")).await.status,
        StatusCode::NOT_FOUND
    );
    let bad = s.webhook(&s.event("evt-m", "upvote"), "wrong-secret").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let good = s.webhook(&s.event("evt-m", "upvote"), SECRET).await;
    assert_eq!(good.status, StatusCode::ACCEPTED);
    // A conversion, and a beacon that does not count (no visitor cookie).
    for (cookie, status) in [
        (cookie.as_str(), StatusCode::NO_CONTENT),
        ("", StatusCode::FORBIDDEN),
    ] {
        let beacon = s
            .client
            .send(
                Method::POST,
                &s.url("/api/convert"),
                &[("content-type", "application/json"), ("cookie", cookie)],
                br#"{"goal":"signup"}"#.to_vec(),
            )
            .await;
        assert_eq!(beacon.status, status, "{}", beacon.text());
    }
    s.pin(3.0, 60).await;
    assert_eq!(
        s.client.get(&s.url("/launch/")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    s.pumped().await;
    s.state()
        .conversions
        .flush(s.clock.now_ms() + 1)
        .expect("the counters flush");

    let metrics = s.client.get(&s.admin_url("/metrics")).await.text();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let grafana: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("data/grafana/launchguard.json")).unwrap(),
    )
    .expect("the Grafana dashboard is JSON");
    let panels = grafana["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    let rules = std::fs::read_to_string(root.join("data/prometheus/alerts.yml")).unwrap()
        + &exprs.join("\n");
    let mut names: Vec<&str> = rules
        .match_indices("launchguard_")
        .map(|(i, _)| {
            let rest = &rules[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} is not exported:\n{metrics}"
        );
    }
    let bucket = r#"launchguard_http_request_duration_seconds_bucket{status="2xx",le="0.1"}"#;
    for series in moved.iter().chain([&bucket]) {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "{series} is missing:\n{metrics}"
        );
    }
    for (series, before) in moved.into_iter().zip(before) {
        let after = crate::support::edge::metric(&s, series).await;
        assert!(after > before, "{series}: {before} -> {after}");
    }
    s.stop().await;
}
