//! Forged conversions: what a competitor's page, a script or a replayed cookie can do
//! to the day's figures through `POST /api/convert`. Nothing, but be counted by reason
//! in `launchguard_conversions_rejected_total`.
//!
//! Each test runs alone (`support::recorder`): they read the rejection counters by
//! reason exactly, and the metrics recorder is one per process.

use crate::support::*;
use hyper::{Method, StatusCode};
use launchguard::clock::Clock;

/// 2026-11-26T08:00:00Z: midnight in Los Angeles, the start of launch day 2026-11-26.
const T0: u64 = 1_795_680_000_000;

async fn visit(s: &TestServer) -> String {
    let r = s.client.get(&s.url("/launch/")).await;
    assert_eq!(r.status, StatusCode::OK);
    let set = r.header("set-cookie").expect("a new visitor gets a cookie");
    set.split(';').next().unwrap().to_string()
}

async fn beacon(s: &TestServer, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("content-type", "text/plain;charset=UTF-8")];
    h.extend_from_slice(headers);
    s.client
        .send(
            Method::POST,
            &s.url("/api/convert"),
            &h,
            br#"{"goal":"signup"}"#.to_vec(),
        )
        .await
}

/// A forged beacon: the reason it is refused for, its headers, the answer it gets.
type Forgery<'a> = (&'static str, Vec<(&'a str, &'a str)>, StatusCode);

async fn today(s: &TestServer) -> serde_json::Value {
    s.state()
        .conversions
        .flush(s.clock.now_ms())
        .expect("the counters flush");
    let r = s.client.get(&s.admin_url("/api/analytics")).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_forged_beacons_leave_the_days_conversions_unchanged() {
    let _alone = crate::support::recorder::alone().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0 + 3_600_000), |c| {
        // The budget is its own test: here every forgery reaches the checks behind it.
        c.conversions.beacons_per_minute = 1_000_000;
    })
    .await;
    let origin = format!("http://{}", s.public);
    let real = visit(&s).await;
    let bystander = visit(&s).await;
    // The real visitor converts, from the site's own page.
    let r = beacon(&s, &[("cookie", &real), ("origin", &origin)]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let before = today(&s).await;
    assert_eq!(before["conversions_total"], 1);

    // A cookie in the right shape, signed with another store's key.
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign = launchguard::insight::visitor::Visitors::open(
        &launchguard::ingest::store::Store::open(elsewhere.path()).unwrap(),
        30,
        jiff::tz::TimeZone::UTC,
    )
    .unwrap();
    let foreign_cookie = format!("lg_v={}", foreign.issue(T0).1);
    // The real cookie with its signature's last character changed.
    let mut tampered = real.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let forgeries: [Forgery; 8] = [
        ("no_visitor", vec![], StatusCode::FORBIDDEN),
        (
            "forged_visitor",
            vec![(
                "cookie",
                "lg_v=1.AAAAAAAAAAAAAAAAAAAAAA.1795680000.AAAAAAAAAAAAAAAAAAAAAA",
            )],
            StatusCode::FORBIDDEN,
        ),
        (
            "forged_visitor",
            vec![("cookie", &foreign_cookie)],
            StatusCode::FORBIDDEN,
        ),
        (
            "forged_visitor",
            vec![("cookie", &tampered)],
            StatusCode::FORBIDDEN,
        ),
        // The real visitor's cookie, replayed.
        ("repeat", vec![("cookie", &real)], StatusCode::OK),
        // A valid visitor who never converted, sent from another site's page.
        (
            "cross_site",
            vec![
                ("cookie", &bystander),
                ("origin", "https://competitor.example"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            "cross_site",
            vec![("cookie", &bystander), ("origin", "null")],
            StatusCode::FORBIDDEN,
        ),
        (
            "cross_site",
            vec![
                ("cookie", &bystander),
                ("referer", "https://competitor.example/launch/"),
            ],
            StatusCode::FORBIDDEN,
        ),
    ];
    let reasons = ["no_visitor", "forged_visitor", "repeat", "cross_site"];
    let mut counts_before = Vec::new();
    for r in reasons {
        counts_before.push(crate::support::edge::beacons_rejected(&s, r).await);
    }
    let mut sent = [0u64; 4];
    for i in 0..5000 {
        let (reason, headers, status) = &forgeries[i % forgeries.len()];
        let r = beacon(&s, headers).await;
        assert_eq!(r.status, *status, "{reason}: {}", r.text());
        sent[reasons.iter().position(|x| x == reason).unwrap()] += 1;
    }

    let after = today(&s).await;
    assert_eq!(after["conversions_total"], 1, "{after}");
    assert_eq!(after["converting_visitors"], 1);
    assert_eq!(after["unique_visitors"], 2);
    assert_eq!(after["conv_rate"], 0.5);
    for (i, reason) in reasons.iter().enumerate() {
        assert_eq!(
            crate::support::edge::beacons_rejected(&s, reason).await - counts_before[i],
            sent[i],
            "launchguard_conversions_rejected_total{{reason=\"{reason}\"}}"
        );
    }
    // The bystander, from the site itself, still converts: nothing above spent it.
    let r = beacon(
        &s,
        &[
            ("cookie", &bystander),
            ("referer", &format!("{origin}/launch/")),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(today(&s).await["conversions_total"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_past_its_beacon_budget_gets_429_and_counts_once() {
    let _alone = crate::support::recorder::alone().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0 + 3_600_000);
    let s = TestServer::start(dir.path(), clock.clone(), |c| {
        c.conversions.beacons_per_minute = 30;
    })
    .await;
    let real = visit(&s).await;
    let limited_before = crate::support::edge::beacons_rejected(&s, "rate_limited").await;
    // The issue's flood: 5,000 beacons from one client (spoofing X-Forwarded-For
    // changes nothing: the peer is not a trusted proxy).
    let mut answers = std::collections::BTreeMap::new();
    for i in 0..5000 {
        let spoof = format!("203.0.113.{}", i % 250);
        let r = beacon(&s, &[("cookie", &real), ("x-forwarded-for", &spoof)]).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.header("retry-after"), Some("2"), "{}", r.text());
            assert_eq!(r.json()["error"], "rate_limited");
        }
        *answers.entry(r.status.as_u16()).or_insert(0u32) += 1;
    }
    // 30 at once: one conversion and 29 repeats; the rest refused.
    assert_eq!(
        answers,
        [(200, 29), (204, 1), (429, 4970)].into_iter().collect(),
        "{answers:?}"
    );
    assert_eq!(
        crate::support::edge::beacons_rejected(&s, "rate_limited").await - limited_before,
        4970
    );
    let a = today(&s).await;
    assert_eq!(a["conversions_total"], 1);
    assert!(a["conv_rate"].as_f64().unwrap() <= 1.0, "{a}");
    // A token comes back every two seconds.
    clock.advance_ms(2000);
    assert_eq!(
        beacon(&s, &[("cookie", &real)]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        beacon(&s, &[("cookie", &real)]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    s.stop().await;
}
