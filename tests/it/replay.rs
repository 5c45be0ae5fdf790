//! Captured webhooks replayed after the dedup window are refused by their signed time,
//! under both signature schemes, and never counted twice. The webhook metrics are the
//! process's: the test runs alone (`support::recorder`) and counts from where they
//! stood when it began, so their moves are this test's and compare exactly.
//!
//! The worst case is taken: the smallest TTL the config allows (more than twice the
//! tolerance: 601 s against 300 s) and a signed time as far ahead of the clock as the
//! tolerance lets it be, so the request stays acceptable by age for the longest time.

use crate::support::*;
use hyper::StatusCode;
use launchguard::clock::Clock;

/// 2026-11-26T08:00:00Z, midnight in Los Angeles: the launch day 2026-11-26 begins.
const T0: u64 = 1_795_680_000_000;
const STD_SECRET: &str = "whsec_c3RhbmRhcmQtd2ViaG9va3Mta2V5LWJ5dGVz";

/// Accepted, duplicate and refused webhooks so far (process-wide metric).
async fn webhooks(s: &TestServer) -> [u64; 3] {
    let mut counts = [0; 3];
    let results = ["accepted", "duplicate", "unauthorized"];
    for (count, result) in counts.iter_mut().zip(results) {
        let series = format!("launchguard_webhooks_total{{result=\"{result}\"}}");
        *count = crate::support::edge::metric(s, &series).await as u64;
    }
    counts
}

/// Accepted, duplicate and refused webhooks since `start` (the metric), the events
/// the store holds, and what the launch day's report counts as accepted.
async fn tally(s: &TestServer, start: [u64; 3]) -> (u64, u64, u64, u64, u64) {
    let day = s
        .client
        .get(&s.admin_url("/api/analytics?day=2026-11-26"))
        .await
        .json();
    let now = webhooks(s).await;
    (
        now[0] - start[0],
        now[1] - start[1],
        now[2] - start[2],
        s.state().store.next_seq() - 1,
        day["webhooks_accepted"]
            .as_u64()
            .expect("webhooks_accepted"),
    )
}

#[tokio::test]
async fn replays_after_the_dedup_ttl_are_refused_by_their_signed_time_and_never_counted() {
    let _alone = crate::support::recorder::alone().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let s = TestServer::start(dir.path(), clock.clone(), |c| {
        c.webhook.tolerance_secs = 300;
        c.webhook.dedup_ttl_secs = 601;
        c.webhook.secrets.push(STD_SECRET.into());
    })
    .await;
    let start = webhooks(&s).await;

    // The captured requests, signed for T0 + 300 s (the sender's clock runs ahead).
    let ph_body = event_at("evt-captured", "upvote", T0 + 300_000);
    let std_ts = T0 / 1000 + 300;
    let std_body = br#"{"type":"upvote","data":{"post":"tidepool"}}"#;
    let send = async || {
        let ph = s.webhook(&ph_body, SECRET).await;
        let std = s
            .std_webhook("msg_captured", std_ts, std_body, STD_SECRET)
            .await;
        [ph, std]
    };

    for r in send().await {
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    }
    assert_eq!(tally(&s, start).await, (2, 0, 0, 2, 2));

    // 600 s later the signed times are 300 s behind, still acceptable: the ids are
    // remembered, so the replays are duplicates.
    clock.set_ms(T0 + 600_000);
    for r in send().await {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["status"], "duplicate");
    }
    assert_eq!(tally(&s, start).await, (2, 2, 0, 2, 2));

    // 601 s later the ids have left the dedup index, and the signed times are 301 s
    // behind: refused by age, nothing stored or counted.
    clock.set_ms(T0 + 601_000);
    for (r, field) in send().await.iter().zip(["created_at", "webhook-timestamp"]) {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        assert_eq!(r.json()["field"], field, "{}", r.text());
        assert!(r.text().contains("301 s behind"), "{}", r.text());
    }
    assert_eq!(tally(&s, start).await, (2, 2, 2, 2, 2));

    // And a day later, after a restart that rebuilds the dedup index from the log.
    s.stop().await;
    clock.set_ms(T0 + 86_400_000);
    let s = TestServer::start(dir.path(), clock.clone(), |c| {
        c.webhook.tolerance_secs = 300;
        c.webhook.dedup_ttl_secs = 601;
        c.webhook.secrets.push(STD_SECRET.into());
    })
    .await;
    let ph = s.webhook(&ph_body, SECRET).await;
    let std = s
        .std_webhook("msg_captured", std_ts, std_body, STD_SECRET)
        .await;
    for r in [ph, std] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    }
    assert_eq!(tally(&s, start).await, (2, 2, 4, 2, 2));
    let events = s.client.get(&s.admin_url("/admin/events")).await.json();
    assert_eq!(events["events"].as_array().unwrap().len(), 2, "{events}");
    s.stop().await;
}
