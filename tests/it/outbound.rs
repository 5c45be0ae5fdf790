//! The outbound queue against a real local receiver: 500s spend attempts and end in
//! dead letters after exactly `outbound.max_retries`, 429s spend none and their
//! `Retry-After` is honoured, `X-Request-Id` is stable across retries, the admin API
//! lists, retries and drops dead letters, a job in flight at SIGKILL is sent
//! again after a restart, and https goes through a real TLS handshake with a receiver
//! whose certificate a test CA issued: trusted through `outbound.ca_file`, refused
//! without it or with another CA.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::support::binary::{self, write_config};
use crate::support::receiver::{Answer, Receiver};
use crate::support::tls::TestCa;
use crate::support::TestServer;
use hyper::{Method, StatusCode};
use launchguard::clock::Clock;
use launchguard::ingest::store::Store;
use launchguard::ops::outbound::Outbound;

const START_MS: u64 = 1_790_000_000_000;

/// Waits until the queue has recorded `n` attempts.
async fn attempts_recorded(outbound: &Outbound, n: u64) {
    let mut rx = outbound.progress();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|c| *c >= n))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "only {} of {n} attempts recorded",
                *outbound.progress().borrow()
            )
        })
        .unwrap();
}

#[tokio::test]
async fn failures_end_in_dead_letters_after_max_retries_and_429s_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    let server = TestServer::start(dir.path(), clock.clone(), |_| {}).await;
    let receiver = Receiver::start().await;
    let throttle = Answer::Status(429, vec![("retry-after", "120".into())]);
    receiver.script([
        Answer::status(500),
        throttle.clone(),
        Answer::status(503),
        throttle.clone(),
        throttle,
        Answer::status(500),
    ]);
    let outbound = server.state().outbound.clone();
    let job = outbound
        .enqueue(
            "test",
            &receiver.url("/hook"),
            "application/json",
            b"{\"text\":\"hello\"}".to_vec(),
        )
        .await
        .unwrap();

    for n in 1..=6u64 {
        receiver.wait_for(n as usize).await;
        attempts_recorded(&outbound, n).await;
        let pending = outbound.pending().unwrap();
        match n {
            1 => {
                assert_eq!(pending[0].attempts, 1);
                // First retry: 1200 ms ± 40%.
                let wait = pending[0].next_at_ms - clock.now_ms();
                assert!((720..=1680).contains(&wait), "first backoff {wait} ms");
            }
            2 => {
                assert_eq!((pending[0].attempts, pending[0].throttled), (1, 1));
                let wait = pending[0].next_at_ms - clock.now_ms();
                assert!(wait >= 120_000, "Retry-After: 120 undercut: {wait} ms");
            }
            6 => assert!(pending.is_empty(), "{pending:?}"),
            _ => assert_eq!(pending.len(), 1),
        }
        clock.advance_ms(3_600_000);
        outbound.kick();
    }
    assert_eq!(receiver.count(), 6, "exactly 3 failures + 3 throttles");
    let ids: Vec<_> = receiver
        .requests()
        .into_iter()
        .map(|r| r.request_id.unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == job.idempotency_id), "{ids:?}");

    let list = server
        .client
        .get(&server.admin_url("/admin/outbound/deadletters"))
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let dead = list.json()["deadletters"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], job.id);
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["target"], receiver.addr.to_string());
    assert!(
        dead[0]["last_error"].as_str().unwrap().contains("500"),
        "{dead:?}"
    );
    let metrics = server
        .client
        .get(&server.admin_url("/metrics"))
        .await
        .text();
    assert!(
        metrics.contains("launchguard_outbound_jobs_total{result=\"dead_letter\"}"),
        "{metrics}"
    );
    // The gauge is process-wide and other tests here move it too: only its presence.
    assert!(
        metrics.contains("launchguard_outbound_deadletter "),
        "{metrics}"
    );

    // Retry it: it goes again with the same X-Request-Id and is delivered.
    let r = server
        .client
        .send(
            Method::POST,
            &server.admin_url(&format!("/admin/outbound/deadletters/{}/retry", job.id)),
            &[("content-type", "application/json")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    receiver.wait_for(7).await;
    attempts_recorded(&outbound, 7).await;
    assert_eq!(
        receiver.requests()[6].request_id.as_deref(),
        Some(job.idempotency_id.as_str())
    );
    assert!(outbound.pending().unwrap().is_empty());
    assert_eq!(outbound.deadletter_count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn dead_letters_can_be_dropped_and_bad_ids_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    let server = TestServer::start(dir.path(), clock.clone(), |c| {
        c.outbound.max_retries = 1;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.set_fallback(Answer::status(500));
    let outbound = server.state().outbound.clone();
    let job = outbound
        .enqueue("test", &receiver.url("/x"), "text/plain", b"x".to_vec())
        .await
        .unwrap();
    attempts_recorded(&outbound, 1).await;
    assert_eq!(outbound.deadletter_count(), 1);

    let url = server.admin_url(&format!("/admin/outbound/deadletters/{}", job.id));
    let r = server.client.send(Method::DELETE, &url, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "dropped");
    let r = server.client.send(Method::DELETE, &url, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("GET /admin/outbound/deadletters"));
    let r = server
        .client
        .send(
            Method::POST,
            &server.admin_url("/admin/outbound/deadletters/abc/retry"),
            &[("content-type", "application/json")],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("abc") && r.text().contains("not a dead-letter id"));
    let list = server
        .client
        .get(&server.admin_url("/admin/outbound/deadletters"))
        .await
        .json();
    assert_eq!(list["deadletters"].as_array().unwrap().len(), 0);
    assert_eq!(receiver.count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_admin_api_needs_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin-token\n").unwrap();
    let server = TestServer::start(dir.path(), Clock::manual(START_MS), |c| {
        c.server.admin_token_file = Some(token.clone());
    })
    .await;
    let url = server.admin_url("/admin/outbound/deadletters");
    let r = server.client.get(&url).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = server
        .client
        .send(
            Method::GET,
            &url,
            &[("authorization", "Bearer s3cret-admin-token")],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    server.stop().await;
}

/// Starts the binary on `dir` and returns it with its admin address.
fn spawn(dir: &Path) -> (Child, SocketAddr) {
    let config = write_config(dir, "outbound-test", "");
    let proc = binary::spawn(&config, &[]);
    (proc.child, proc.admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_flight_at_sigkill_is_sent_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.set_fallback(Answer::Hold);

    // Queue a job in the store the binary will open.
    let job = {
        let store = Store::open(&dir.path().join("state")).unwrap();
        let config = launchguard::config::OutboundConfig::default();
        let tls = launchguard::client::tls_config(&config).unwrap();
        let outbound = Outbound::open(&store, &config, Clock::system(), tls).unwrap();
        let job = outbound
            .enqueue(
                "test",
                &receiver.url("/slack"),
                "application/json",
                b"{}".to_vec(),
            )
            .await
            .unwrap();
        store.flush_durable(true).unwrap();
        job
    };

    let (mut child, _) = spawn(dir.path());
    receiver.wait_for(1).await; // in flight: the receiver holds it
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    receiver.set_fallback(Answer::status(200));
    let (mut child, admin) = spawn(dir.path());
    receiver.wait_for(2).await;
    let client = crate::support::Client::new();
    let delivered = "launchguard_outbound_jobs_total{result=\"delivered\"} 1";
    let mut seen = false;
    for _ in 0..1500 {
        if client
            .get(&format!("http://{admin}/metrics"))
            .await
            .text()
            .contains(delivered)
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the retried job was not recorded as delivered");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let ids: Vec<_> = receiver
        .requests()
        .into_iter()
        .map(|r| r.request_id.unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![job.idempotency_id.clone(), job.idempotency_id.clone()]
    );
    let store = Store::open(&dir.path().join("state")).unwrap();
    let config = launchguard::config::OutboundConfig::default();
    let tls = launchguard::client::tls_config(&config).unwrap();
    let outbound = Outbound::open(&store, &config, Clock::system(), tls).unwrap();
    assert!(outbound.pending().unwrap().is_empty());
    assert_eq!(outbound.deadletter_count(), 0);
}

#[tokio::test]
async fn one_host_gets_no_more_than_its_budget_per_minute() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START_MS);
    let server = TestServer::start(dir.path(), clock.clone(), |c| {
        c.outbound.host_budget_per_minute = 2;
    })
    .await;
    let receiver = Receiver::start().await;
    let outbound = server.state().outbound.clone();
    for n in 0..3 {
        outbound
            .enqueue(
                "test",
                &receiver.url(&format!("/{n}")),
                "text/plain",
                vec![],
            )
            .await
            .unwrap();
    }
    receiver.wait_for(2).await;
    attempts_recorded(&outbound, 2).await;
    // The third is due but the host's budget is spent: nothing goes until a refill.
    assert_eq!(outbound.run_due().await, 0);
    assert_eq!(receiver.count(), 2);
    assert_eq!(outbound.pending().unwrap().len(), 1);
    let metrics = server
        .client
        .get(&server.admin_url("/metrics"))
        .await
        .text();
    let gauge = format!(
        "launchguard_outbound_budget_remaining{{host=\"{}\"}} 0",
        receiver.addr
    );
    assert!(metrics.contains(&gauge), "{metrics}");

    clock.advance_ms(30_000); // 2 a minute: one more token after 30 s
    outbound.kick();
    receiver.wait_for(3).await;
    attempts_recorded(&outbound, 3).await;
    assert!(outbound.pending().unwrap().is_empty());
    server.stop().await;
}

/// What one https delivery attempt came to: the receiver saw its body, or the job
/// is a dead letter whose error names the host.
async fn deliver_over_tls(
    ca_file: Option<std::path::PathBuf>,
    receiver: &Receiver,
    host: &str,
) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), Clock::manual(START_MS), |c| {
        c.outbound.max_retries = 1;
        c.outbound.ca_file = ca_file;
    })
    .await;
    let outbound = server.state().outbound.clone();
    let before = receiver.count();
    let target = format!("https://{host}:{}/hook", receiver.addr.port());
    outbound
        .enqueue(
            "test",
            &target,
            "application/json",
            br#"{"text":"over TLS"}"#.to_vec(),
        )
        .await
        .unwrap();
    attempts_recorded(&outbound, 1).await;
    let result = if outbound.pending().unwrap().is_empty() && outbound.deadletter_count() == 0 {
        receiver.wait_for(before + 1).await;
        Ok(receiver.requests()[before].body.to_vec())
    } else {
        let dead = outbound.deadletters().unwrap();
        Err(dead[0].last_error.clone().unwrap())
    };
    server.stop().await;
    result
}

#[tokio::test]
async fn https_delivery_trusts_outbound_ca_file_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let ca_file = ca.write_pem(dir.path(), "ca.pem");
    let stranger = TestCa::new("some other CA");
    let wrong_ca_file = stranger.write_pem(dir.path(), "wrong-ca.pem");
    let receiver = Receiver::start_tls(ca.server_config()).await;
    assert!(receiver.url("/").starts_with("https://"));

    // Trusting the test CA: a real handshake, by name and by address, and the body
    // arrives.
    for (n, host) in ["localhost", "127.0.0.1"].into_iter().enumerate() {
        let body = deliver_over_tls(Some(ca_file.clone()), &receiver, host)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(body, br#"{"text":"over TLS"}"#);
        assert_eq!(
            receiver.handshakes().ok,
            n + 1,
            "{:?}",
            receiver.handshakes()
        );
    }
    assert!(receiver.handshakes().failed.is_empty());

    // The webpki roots alone, or another CA: the handshake fails, the error names
    // the host and the certificate, and no request reaches the receiver.
    for (n, ca_file) in [None, Some(wrong_ca_file)].into_iter().enumerate() {
        let error = deliver_over_tls(ca_file.clone(), &receiver, "localhost")
            .await
            .expect_err("an untrusted certificate must not be accepted");
        let host = format!("localhost:{}", receiver.addr.port());
        assert!(
            error.starts_with(&format!("cannot reach {host}")),
            "{ca_file:?}: {error}"
        );
        assert!(
            error.to_lowercase().contains("certificate"),
            "{ca_file:?}: {error}"
        );
        let seen = receiver.wait_for_failed_handshakes(n + 1).await;
        assert_eq!(seen.ok, 2, "{seen:?}");
        assert_eq!(receiver.count(), 2, "nothing more reached the receiver");
    }
}

#[tokio::test]
async fn a_bad_outbound_ca_file_stops_the_start_naming_the_key() {
    crate::support::tls::bad_ca_files_stop_the_start("outbound.ca_file", |c, file| {
        c.outbound.ca_file = Some(file);
    })
    .await;
}
