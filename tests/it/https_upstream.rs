//! An `https://` upstream: the edge in front of a real local TLS origin (the fake
//! origin behind rustls, its certificate from a test CA for `localhost` and
//! `127.0.0.1`). Trusted through `origin.ca_file`, pages are fetched over pooled
//! connections, by the upstream's host name, and cached; untrusted, the visitor gets
//! the edge's 502 at once; a bad `origin.ca_file` stops the start naming the key.

use std::time::{Duration, Instant};

use crate::support::edge::{edge, get, x_cache};
use crate::support::origin::{FakeOrigin, Respond};
use crate::support::tls::{self, TestCa};
use hyper::StatusCode;

#[tokio::test]
async fn pages_come_over_tls_trusting_origin_ca_file_and_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard upstream CA");
    let ca_file = ca.write_pem(dir.path(), "ca.pem");
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start_tls(ca.server_config())
        .await;
    assert!(origin.url().starts_with("https://127.0.0.1:"));
    let host = format!("localhost:{}", origin.addr.port());
    let upstream = format!("https://{host}");
    let (_d, s) = edge(&origin, |c| {
        c.origin.upstream = Some(upstream);
        c.origin.ca_file = Some(ca_file);
    })
    .await;

    let a = get(&s, "/launch/", &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(x_cache(&a), "MISS");
    assert!(a.text().contains("path=/launch/"), "{}", a.text());
    let b = get(&s, "/launch/", &[]).await;
    assert_eq!(x_cache(&b), "HIT");
    assert_eq!(a.body, b.body);
    assert_eq!(origin.count("/launch/"), 1);

    // As over http: `Host` names the upstream, `X-Forwarded-*` say what the edge saw.
    let r = get(&s, "/reflect", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = origin
        .headers_of("/reflect")
        .expect("the origin got /reflect");
    assert_eq!(seen["host"], host.as_str());
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(
        seen["x-forwarded-host"]
            .to_str()
            .unwrap()
            .starts_with("127.0.0.1"),
        "{seen:?}"
    );

    // Two more misses, one after the other: the pool keeps the connection, so fewer
    // handshakes than fetches, each naming the upstream's host (SNI).
    for path in ["/pricing", "/about"] {
        let r = get(&s, path, &[]).await;
        assert_eq!((r.status, x_cache(&r)), (StatusCode::OK, "MISS"));
    }
    assert_eq!(origin.total(), 4);
    let handshakes = origin.handshakes();
    assert!(
        !handshakes.is_empty() && handshakes.len() < 4,
        "{handshakes:?}"
    );
    for h in &handshakes {
        assert_eq!(
            h.as_ref().map(|name| name.as_deref()),
            Ok(Some("localhost")),
            "{handshakes:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn an_address_upstream_is_verified_by_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard upstream CA");
    let ca_file = ca.write_pem(dir.path(), "ca.pem");
    let origin = FakeOrigin::builder().start_tls(ca.server_config()).await;
    let (_d, s) = edge(&origin, |c| c.origin.ca_file = Some(ca_file)).await;
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(
        (r.status, x_cache(&r)),
        (StatusCode::OK, "MISS"),
        "{}",
        r.text()
    );
    // No SNI for an address; the certificate was checked against 127.0.0.1.
    assert_eq!(origin.handshakes(), vec![Ok(None)]);
    s.stop().await;
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_a_502_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard upstream CA");
    let stranger = TestCa::new("some other CA");
    let wrong_ca_file = stranger.write_pem(dir.path(), "wrong-ca.pem");
    let origin = FakeOrigin::builder().start_tls(ca.server_config()).await;
    let upstream = format!("https://localhost:{}", origin.addr.port());
    // The webpki roots alone, then another CA's file.
    for (n, ca_file) in [None, Some(wrong_ca_file)].into_iter().enumerate() {
        let up = upstream.clone();
        let (_d, s) = edge(&origin, |c| {
            c.origin.upstream = Some(up);
            c.origin.ca_file = ca_file.clone();
            // Far longer than the answer may take: a 502 now, not a 504 then.
            c.origin.timeout_ms = 20_000;
        })
        .await;
        let started = Instant::now();
        let r = get(&s, "/launch/", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_GATEWAY,
            "{ca_file:?}: {}",
            r.text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            r.text().contains("origin could not be reached"),
            "{}",
            r.text()
        );
        let handshakes = origin.wait_handshakes(n + 1).await;
        assert!(handshakes[n].is_err(), "{handshakes:?}");
        assert_eq!(origin.total(), 0, "no request got through");
        s.stop().await;
    }
}

#[tokio::test]
async fn a_bad_origin_ca_file_stops_the_start_naming_the_key() {
    tls::bad_ca_files_stop_the_start("origin.ca_file", |c, file| {
        c.origin.upstream = Some("https://localhost:9".into());
        c.origin.ca_file = Some(file);
    })
    .await;
}
