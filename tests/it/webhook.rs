//! The webhook path and the admin API, over real HTTP against a real bound server.

use std::time::Duration;

use crate::support::*;
use hyper::{Method, StatusCode};
use launchguard::clock::Clock;
use launchguard::ingest::webhook::signature::{sign_producthunt, Key};

/// A fixed instant for tests that drive time by hand (2026-11-26T08:00:00Z).
const T0: u64 = 1_795_680_000_000;

async fn factor_header(s: &TestServer) -> String {
    let r = s.client.get(&s.url("/")).await;
    r.header("x-edge-scale-factor")
        .expect("factor header")
        .to_string()
}

/// Polls until the public factor header reads `want` (the pump ticks on its own).
async fn wait_for_factor(s: &TestServer, want: &str) {
    for _ in 0..400 {
        if factor_header(s).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "factor header never reached {want}, last {}",
        factor_header(s).await
    );
}

#[tokio::test]
async fn accepted_then_duplicate_and_not_counted_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    let body = s.event("evt-1", "upvote");
    let r = s.webhook(&body, SECRET).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"status": "accepted", "seq": 1})
    );
    // The 202 carries the factor of the moment it was answered: the pump may or may
    // not have applied this upvote yet, so either value is right.
    let f = r.header("x-edge-scale-factor").expect("factor header");
    assert!(f == "1.00" || f == "1.01", "factor header {f}");

    let r = s.webhook(&body, SECRET).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({"status": "duplicate"}));
    assert_eq!(s.state().store.next_seq(), 2, "a duplicate is not stored");

    // One upvote (1.2) in a 60 s window: 1 + 0.4 * 1.2 / 60 = 1.008.
    s.pumped().await;
    wait_for_factor(&s, "1.01").await;
    assert_eq!(s.state().factor.computed(), 1.0 + 0.4 * 1.2 / 60.0);
    s.stop().await;
}

#[tokio::test]
async fn bad_signatures_get_401_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    let body = s.event("evt-x", "upvote");
    let url = s.url("/webhooks/producthunt");

    let missing = s.client.send(Method::POST, &url, &[], body.clone()).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(
        missing.text().contains("missing signature"),
        "{}",
        missing.text()
    );

    let wrong = s.webhook(&body, "not-the-secret").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error"], "bad_signature");

    let malformed = s
        .client
        .send(
            Method::POST,
            &url,
            &[("x-producthunt-signature", "md5=abc")],
            body.clone(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::UNAUTHORIZED);
    assert!(
        malformed.text().contains("malformed"),
        "{}",
        malformed.text()
    );

    // Signed for other bytes: the signature covers the raw body exactly.
    let sig = sign_producthunt(&Key::parse(SECRET).unwrap(), &body);
    let mut tampered = body.clone();
    tampered.push(b' ');
    let r = s
        .client
        .send(
            Method::POST,
            &url,
            &[("x-producthunt-signature", &sig)],
            tampered,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    assert_eq!(s.state().store.next_seq(), 1, "nothing stored for a 401");
    s.stop().await;
}

#[tokio::test]
async fn signature_is_over_raw_bytes_whatever_their_layout() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    // created_at is T0, the server's clock.
    let odd = b"\n  {\"data\" :{ \"b\":2,\"a\" : 1},\t\"event_type\"   : \"comment\" ,\r\n \"id\":\"evt-odd\",\"created_at\":\"2026-11-26T08:00:00Z\" }  \n";
    let r = s.webhook(odd, SECRET).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let stored = s.state().store.event(1).unwrap().unwrap();
    assert_eq!(
        stored.payload,
        odd.to_vec(),
        "the raw bytes are stored as signed"
    );
    assert_eq!(stored.event_type, "comment");
    assert_eq!(stored.weight_milli, 1000);
    s.stop().await;
}

#[tokio::test]
async fn invalid_payloads_get_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    let cases: &[(&[u8], &str)] = &[
        (b"this is not json", "body"),
        (b"[]", "body"),
        (br#"{"event_type":"upvote"}"#, "id"),
        (br#"{"id":42,"event_type":"upvote"}"#, "id"),
        (br#"{"id":"a"}"#, "event_type"),
        (
            br#"{"id":"a","event_type":"upvote","created_at":"tuesday"}"#,
            "created_at",
        ),
        // X-ProductHunt-Signature signs no time but the body's: it must be there.
        (br#"{"id":"a","event_type":"upvote"}"#, "created_at"),
        (
            br#"{"id":"a","event_type":"upvote","created_at":null}"#,
            "created_at",
        ),
    ];
    for (body, field) in cases {
        let r = s.webhook(body, SECRET).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(r.json()["field"], *field, "{}", r.text());
        assert!(r.json()["message"].as_str().unwrap().starts_with(field));
    }
    assert_eq!(s.state().store.next_seq(), 1);
    s.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_with_or_without_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    let big = format!(
        r#"{{"id":"big","event_type":"upvote","data":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    let r = s.webhook(big.as_bytes(), SECRET).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"], "body_too_large");

    // Chunked, so no Content-Length to refuse up front: the limit applies while reading.
    let sig = sign_producthunt(&Key::parse(SECRET).unwrap(), big.as_bytes());
    let status = raw_request(
        s.public,
        format!(
            "POST /webhooks/producthunt HTTP/1.1\r\nhost: x\r\nx-producthunt-signature: {sig}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
            big.len()
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert_eq!(s.state().store.next_seq(), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_slow_sender_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::system(), |c| {
        c.server.body_timeout_ms = 200;
    })
    .await;
    // Announces 100 bytes and sends none: the server gives up, it does not wait forever.
    let status = raw_request(
        s.public,
        "POST /webhooks/producthunt HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n".into(),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    s.stop().await;
}

/// Writes a raw HTTP/1.1 request and returns the status line.
async fn raw_request(addr: std::net::SocketAddr, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before the whole body is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the server answers")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn rotation_accepts_every_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    assert_eq!(
        s.webhook(&s.event("r-1", "upvote"), SECRET).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        s.webhook(&s.event("r-2", "upvote"), OLD_SECRET)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    s.stop().await;

    // The rotation finished: the old secret is dropped from the config.
    let s = TestServer::start(dir.path(), Clock::manual(T0), |c| {
        c.webhook.secrets = vec![SECRET.into()];
    })
    .await;
    assert_eq!(
        s.webhook(&s.event("r-3", "upvote"), OLD_SECRET)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.webhook(&s.event("r-4", "upvote"), SECRET).await.status,
        StatusCode::ACCEPTED
    );
    s.stop().await;
}

#[tokio::test]
async fn standard_webhooks_scheme_with_timestamp_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let whsec = "whsec_c3RhbmRhcmQtd2ViaG9va3Mta2V5LWJ5dGVz";
    let s = TestServer::start(dir.path(), Clock::manual(T0), |c| {
        c.webhook.secrets.push(whsec.into());
    })
    .await;
    let now = T0 / 1000;
    let body = br#"{"type":"maker_comment","data":{"text":"hi"}}"#;

    let r = s.std_webhook("msg_1", now - 10, body, whsec).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let stored = s.state().store.event(1).unwrap().unwrap();
    assert_eq!(stored.id, "msg_1");
    assert_eq!(stored.event_type, "maker_comment");
    assert_eq!(stored.weight_milli, 1500);

    // Dedup on webhook-id.
    let r = s.std_webhook("msg_1", now, body, whsec).await;
    assert_eq!(r.json()["status"], "duplicate");

    // Expired timestamp: refused, with the skew in the message.
    let r = s.std_webhook("msg_2", now - 301, body, whsec).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("301 s behind"), "{}", r.text());
    assert_eq!(r.json()["field"], "webhook-timestamp");
    let r = s.std_webhook("msg_3", now + 301, body, whsec).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Several signatures, the first from a stranger: any valid one is enough.
    let ts = now.to_string();
    let good = launchguard::ingest::webhook::signature::sign_standard(
        &Key::parse(SECRET).unwrap(),
        "msg_4",
        now,
        body,
    );
    let bad = launchguard::ingest::webhook::signature::sign_standard(
        &Key::parse("stranger").unwrap(),
        "msg_4",
        now,
        body,
    );
    let both = format!("{bad} v2,ignored {good}");
    let r = s
        .client
        .send(
            Method::POST,
            &s.url("/webhooks/producthunt"),
            &[
                ("webhook-id", "msg_4"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &both),
            ],
            body.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());

    // A signature header without webhook-id is a 401 that says what is missing.
    let r = s
        .client
        .send(
            Method::POST,
            &s.url("/webhooks/producthunt"),
            &[("webhook-timestamp", &ts), ("webhook-signature", &good)],
            body.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("webhook-id"), "{}", r.text());
    s.stop().await;
}

#[tokio::test]
async fn dedup_survives_a_restart_and_a_replay_past_its_ttl_is_refused_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let s = TestServer::start(dir.path(), clock.clone(), |_| {}).await;
    // One captured request: these bytes and their signature, sent again and again.
    let captured = s.event("d-1", "upvote");
    assert_eq!(
        s.webhook(&captured, SECRET).await.status,
        StatusCode::ACCEPTED
    );
    s.stop().await;

    let s = TestServer::start(dir.path(), clock.clone(), |_| {}).await;
    let r = s.webhook(&captured, SECRET).await;
    assert_eq!(r.json()["status"], "duplicate");
    let r = s.webhook(&s.event("d-2", "upvote"), SECRET).await;
    assert_eq!(r.json()["seq"], 2, "seqs continue after a restart");

    // Past the 24 h TTL the id is forgotten, but the signed created_at is a day old:
    // the replay is refused, and nothing is stored or counted.
    clock.advance_ms(86_400_000 + 1000);
    let r = s.webhook(&captured, SECRET).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["field"], "created_at");
    assert!(r.text().contains("86401 s behind"), "{}", r.text());
    assert_eq!(s.state().store.next_seq(), 3);
    s.stop().await;
}

#[tokio::test]
async fn signed_times_are_accepted_up_to_the_tolerance_and_refused_one_second_past() {
    let dir = tempfile::tempdir().unwrap();
    let whsec = "whsec_c3RhbmRhcmQtd2ViaG9va3Mta2V5LWJ5dGVz";
    let s = TestServer::start(dir.path(), Clock::manual(T0), |c| {
        c.webhook.secrets.push(whsec.into());
    })
    .await;
    let now = T0 / 1000;
    let mut seq = 0;
    for (n, offset_secs) in [-300i64, 300, -301, 301].into_iter().enumerate() {
        let in_tolerance = offset_secs.abs() <= 300;
        // X-ProductHunt-Signature: the body's created_at.
        let at_ms = T0.saturating_add_signed(offset_secs * 1000);
        let r = s
            .webhook(&event_at(&format!("edge-{n}"), "upvote", at_ms), SECRET)
            .await;
        // Standard Webhooks: webhook-timestamp.
        let ts = now.saturating_add_signed(offset_secs);
        let body = br#"{"type":"upvote","data":{}}"#;
        let std = s
            .std_webhook(&format!("msg-edge-{n}"), ts, body, whsec)
            .await;
        for (r, field) in [(&r, "created_at"), (&std, "webhook-timestamp")] {
            if in_tolerance {
                seq += 1;
                assert_eq!(
                    r.status,
                    StatusCode::ACCEPTED,
                    "{offset_secs}: {}",
                    r.text()
                );
                assert_eq!(r.json()["seq"], seq);
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::UNAUTHORIZED,
                    "{offset_secs}: {}",
                    r.text()
                );
                assert_eq!(r.json()["error"], "bad_signature");
                assert_eq!(r.json()["field"], field);
                let side = if offset_secs < 0 {
                    "behind"
                } else {
                    "ahead of"
                };
                assert!(
                    r.text().contains(&format!("{field} is 301 s {side}")),
                    "{}",
                    r.text()
                );
            }
        }
    }
    assert_eq!(
        s.state().store.next_seq(),
        5,
        "four accepted, nothing else stored"
    );

    // A replay inside the tolerance is a duplicate: the id is remembered.
    let r = s
        .webhook(&event_at("edge-0", "upvote", T0 - 300_000), SECRET)
        .await;
    assert_eq!(r.json()["status"], "duplicate");
    s.stop().await;
}

#[tokio::test]
async fn factor_rises_with_events_and_decays_to_one_when_they_stop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let s = TestServer::start(dir.path(), clock.clone(), |_| {}).await;
    for i in 0..30 {
        let r = s
            .webhook(&s.event(&format!("f-{i}"), "upvote"), SECRET)
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    // 30 × 1.2 = 36 in 60 s → 1 + 0.4 × 0.6 = 1.24.
    wait_for_factor(&s, "1.24").await;
    let f = s.client.get(&s.admin_url("/admin/factor")).await.json();
    assert!((f["velocity"].as_f64().unwrap() - 0.6).abs() < 1e-9, "{f}");

    // A restart rebuilds the window from the log.
    s.stop().await;
    let s = TestServer::start(dir.path(), clock.clone(), |_| {}).await;
    assert_eq!(factor_header(&s).await, "1.24");

    clock.advance_ms(60_000);
    wait_for_factor(&s, "1.00").await;
    assert_eq!(s.state().factor.current(), 1.0);
    s.stop().await;
}

#[tokio::test]
async fn operator_pin_overrides_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let s = TestServer::start(dir.path(), clock.clone(), |_| {}).await;
    for i in 0..30 {
        s.webhook(&s.event(&format!("p-{i}"), "upvote"), SECRET)
            .await;
    }
    wait_for_factor(&s, "1.24").await;
    let url = s.admin_url("/admin/factor");
    let r = s
        .client
        .send(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            br#"{"pin": 1.0, "for_secs": 600}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["pinned"]["factor"], 1.0);
    assert_eq!(
        factor_header(&s).await,
        "1.00",
        "the pin is in force at once"
    );

    for (body, field) in [
        (r#"{"pin": 9.0}"#, Some("pin")),
        (r#"{"pin": 0.5}"#, Some("pin")),
        (r#"{"pin": 2.0, "for_secs": 0}"#, Some("for_secs")),
        (r#"{"pinn": 2.0}"#, None),
    ] {
        let r = s
            .client
            .send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                body.as_bytes().to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        if let Some(field) = field {
            assert_eq!(r.json()["field"], field);
        }
    }
    s.stop().await;

    let s = TestServer::start(dir.path(), clock.clone(), |_| {}).await;
    assert_eq!(
        factor_header(&s).await,
        "1.00",
        "the pin survives a restart"
    );
    let r = s
        .client
        .send(Method::DELETE, &s.admin_url("/admin/factor"), &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["pinned"], serde_json::Value::Null);
    assert_eq!(factor_header(&s).await, "1.24");

    // A pin lapses by itself.
    s.client
        .send(
            Method::POST,
            &s.admin_url("/admin/factor"),
            &[("content-type", "application/json")],
            br#"{"pin": 5.0, "for_secs": 10}"#.to_vec(),
        )
        .await;
    assert_eq!(factor_header(&s).await, "5.00");
    clock.advance_ms(10_000);
    wait_for_factor(&s, "1.24").await;
    s.stop().await;
}

#[tokio::test]
async fn every_public_answer_carries_the_factor_and_the_site_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    let home = s.client.get(&s.url("/")).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.text().contains("<html"));
    let launch = s.client.get(&s.url("/launch/")).await;
    assert_eq!(launch.status, StatusCode::OK);
    assert!(launch.text().contains("signup-button"));
    let missing = s.client.get(&s.url("/no/such/page")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let wrong_method = s.client.get(&s.url("/webhooks/producthunt")).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    let unauthorized = s.webhook(&s.event("h", "upvote"), "nope").await;
    for r in [&home, &launch, &missing, &wrong_method, &unauthorized] {
        assert_eq!(
            r.header("x-edge-scale-factor"),
            Some("1.00"),
            "{:?}",
            r.status
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn admin_health_readiness_metrics_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    assert_eq!(
        s.client.get(&s.admin_url("/healthz")).await.status,
        StatusCode::OK
    );
    let ready = s.client.get(&s.admin_url("/readyz")).await;
    assert_eq!(ready.json()["status"], "ready");

    let accepted_before = metric(&s, "launchguard_webhooks_total{result=\"accepted\"}").await;
    s.webhook(&s.event("m-1", "upvote"), SECRET).await;
    s.webhook(&s.event("m-2", "comment"), SECRET).await;
    let text = s.client.get(&s.admin_url("/metrics")).await.text();
    for name in [
        "launchguard_webhooks_total",
        "launchguard_engagement_velocity",
        "launchguard_scale_factor",
        "launchguard_ring_depth",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let accepted_after = metric(&s, "launchguard_webhooks_total{result=\"accepted\"}").await;
    assert!(
        accepted_after >= accepted_before + 2.0,
        "{accepted_before} -> {accepted_after}"
    );

    let events = s.client.get(&s.admin_url("/admin/events")).await.json();
    let ids: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["m-2", "m-1"], "newest first");
    let after = s
        .client
        .get(&s.admin_url("/admin/events?after=1&limit=5"))
        .await
        .json();
    assert_eq!(after["events"][0]["seq"], 2);
    assert_eq!(after["events"][0]["payload"]["data"]["post"], "tidepool");
    let bad = s.client.get(&s.admin_url("/admin/events?limit=0")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    s.stop().await;
}

async fn metric(s: &TestServer, series: &str) -> f64 {
    let text = s.client.get(&s.admin_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn admin_api_needs_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "a-long-enough-admin-token-0123\n").unwrap();
    let s = TestServer::start(&dir.path().join("state"), Clock::manual(T0), |c| {
        c.server.admin_token_file = Some(token_file.clone());
    })
    .await;
    let url = s.admin_url("/admin/factor");
    assert_eq!(s.client.get(&url).await.status, StatusCode::UNAUTHORIZED);
    let wrong = s
        .client
        .send(
            Method::GET,
            &url,
            &[("authorization", "Bearer a-long-enough-admin-token-0124")],
            vec![],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let ok = s
        .client
        .send(
            Method::GET,
            &url,
            &[("authorization", "Bearer a-long-enough-admin-token-0123")],
            vec![],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(
        s.client.get(&s.admin_url("/healthz")).await.status,
        StatusCode::OK
    );
    s.stop().await;
}
