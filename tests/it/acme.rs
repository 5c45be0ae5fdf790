//! Certificates by ACME against a real CA: Debian's pebble (`support::pebble`), every
//! name resolving to 127.0.0.1. HTTP-01 answered on `tls.http_listen`, TLS-ALPN-01 on
//! `tls.listen`; the certificate kept in the data dir and not ordered again after a
//! restart; renewed without a restart once a third of its lifetime is left (by the
//! manual clock); the CA down at startup is a logged failure, an alert and a backoff,
//! not a crash; a failed HTTP-01 falls back to TLS-ALPN-01; a fallback directory takes
//! over; external account binding.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::pebble::{free_port, Pebble, Ports};
use crate::support::tls;
use crate::support::TestServer;
use launchguard::clock::Clock;

const DOMAIN: &str = "lg.test";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `[tls]` under ACME from `pebble`, on the ports it validates (HTTP-01 on
/// `tls.http_listen` only when `http01`).
fn acme_config(c: &mut launchguard::config::Config, pebble: &Pebble, http01: bool) {
    let Ports {
        http_port,
        tls_port,
        ..
    } = pebble.ports;
    c.tls.listen = Some(format!("127.0.0.1:{tls_port}").parse().unwrap());
    c.tls.http_listen = http01.then(|| format!("127.0.0.1:{http_port}").parse().unwrap());
    c.tls.domains = vec![DOMAIN.into()];
    c.tls.acme_directory = pebble.directory.clone();
    c.tls.acme_ca_file = Some(pebble.ca_file.clone());
    c.tls.acme_email = Some("ops@lg.test".into());
}

/// A client that trusts pebble's root, offering h2 then http/1.1.
async fn client_trusting(pebble: &Pebble) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let pem = pebble.root_pem().await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Waits (deadline, no fixed sleep) until `done` holds.
async fn until(what: &str, pebble: &Pebble, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s; pebble said:\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn serial(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.raw_serial().to_vec()
}

#[tokio::test]
async fn http01_certificate_is_served_kept_across_a_restart_and_renewed_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let data = dir.path().join("state");
    let clock = Clock::manual(now_ms());
    let s = TestServer::start(&data, clock.clone(), |c| acme_config(c, &pebble, true)).await;
    let certs = s.state().certs.clone().expect("tls is on");
    let status = s.state().acme.as_ref().expect("acme is on").status();
    until("the first certificate", &pebble, || {
        certs.current().is_some()
    })
    .await;
    assert_eq!(status.orders.load(Relaxed), 1);

    // Served over HTTP/2 for lg.test, chaining to pebble's root.
    let client = client_trusting(&pebble).await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let (v, page) = tls::get(client.clone(), addr, DOMAIN, "/launch/").await;
    assert_eq!(v, hyper::Version::HTTP_2);
    assert_eq!(page.status, 200, "{}", page.text());
    let first = tls::presented(client.clone(), addr, DOMAIN).await;

    // The plain listener still redirects everything but the challenge path.
    let http = s.running.as_ref().unwrap().http_addr.unwrap();
    let r = s.client.get(&format!("http://{http}/launch/")).await;
    assert_eq!(r.status, 308);
    let r = s
        .client
        .get(&format!("http://{http}/.well-known/acme-challenge/unknown"))
        .await;
    assert_eq!(r.status, 404);

    // The expiry metric covers the ACME certificate.
    let metrics = s.client.get(&s.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(&format!(
            "launchguard_tls_certificate_expiry_seconds{{domain=\"{DOMAIN}\"}}"
        )),
        "{metrics}"
    );

    // Account and certificate in the data dir, private.
    {
        use std::os::unix::fs::PermissionsExt;
        let files: Vec<_> = std::fs::read_dir(data.join("tls"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 3, "{files:?}");
        for f in &files {
            let mode = std::fs::metadata(f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
    }
    s.stop().await;

    // A restart on the same data dir serves the stored certificate at once and orders
    // nothing.
    let s = TestServer::start(&data, clock.clone(), |c| acme_config(c, &pebble, true)).await;
    let certs = s.state().certs.clone().unwrap();
    let status = s.state().acme.as_ref().unwrap().status();
    assert!(
        certs.current().is_some(),
        "loaded before the listeners opened"
    );
    until("two renewal decisions", &pebble, || {
        status.checks.load(Relaxed) >= 2
    })
    .await;
    assert_eq!(
        status.orders.load(Relaxed),
        0,
        "no new order after a restart"
    );
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let again = tls::presented(client.clone(), addr, DOMAIN).await;
    assert_eq!(serial(&again), serial(&first));

    // Two thirds of the lifetime later (by the server's clock) it is renewed and the
    // new one is served, without a restart.
    clock.advance_ms(2_400_000 + 1_000);
    until("the renewal", &pebble, || {
        status.obtained.load(Relaxed) >= 1
    })
    .await;
    assert_eq!(status.orders.load(Relaxed), 1);
    let renewed = tls::presented(client.clone(), addr, DOMAIN).await;
    assert_ne!(
        serial(&renewed),
        serial(&first),
        "the renewed certificate is served"
    );
    let (v, page) = tls::get(client, addr, DOMAIN, "/launch/").await;
    assert_eq!((v, page.status.as_u16()), (hyper::Version::HTTP_2, 200));
    s.stop().await;
}

#[tokio::test]
async fn tls_alpn01_alone_gets_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let s = TestServer::start(&dir.path().join("state"), Clock::manual(now_ms()), |c| {
        acme_config(c, &pebble, false)
    })
    .await;
    let certs = s.state().certs.clone().unwrap();
    until("a certificate by TLS-ALPN-01", &pebble, || {
        certs.current().is_some()
    })
    .await;
    let client = client_trusting(&pebble).await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let (v, page) = tls::get(client, addr, DOMAIN, "/launch/").await;
    assert_eq!(v, hyper::Version::HTTP_2);
    assert_eq!(page.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn the_ca_down_at_startup_is_a_backoff_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::TestCa::new("unused");
    let ca_file = ca.write_pem(dir.path(), "ca.pem");
    let clock = Clock::manual(now_ms());
    let down = free_port();
    let receiver = crate::support::receiver::Receiver::start().await;
    let slack = receiver.url("/services/T000/B000/XXXX");
    let s = TestServer::start(&dir.path().join("state"), clock.clone(), |c| {
        c.alerts.slack_webhook_urls = vec![slack.clone()];
        c.tls.listen = Some("127.0.0.1:0".parse().unwrap());
        c.tls.domains = vec![DOMAIN.into()];
        c.tls.acme_directory = format!("https://127.0.0.1:{down}/dir");
        c.tls.acme_ca_file = Some(ca_file.clone());
    })
    .await;
    let status = s.state().acme.as_ref().unwrap().status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.failures.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no failure recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(status.last_error.lock().is_some());
    // The failure goes out as an alert too.
    s.state().alerts.kick();
    receiver.wait_for(1).await;
    let body: serde_json::Value = serde_json::from_slice(&receiver.requests()[0].body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("ACME: no certificate"), "{text}");
    // No certificate: handshakes fail, the rest of the appliance works.
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    assert!(tls::connect(ca.client_config(&[b"h2"]), addr, DOMAIN)
        .await
        .is_err());
    assert_eq!(s.client.get(&s.url("/launch/")).await.status, 200);
    // Within the backoff (a minute after the first failure) nothing is ordered again.
    let checks = status.checks.load(Relaxed);
    clock.advance_ms(30_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.checks.load(Relaxed) < checks + 2 {
        assert!(Instant::now() < deadline, "the renewal loop stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status.failures.load(Relaxed), 1);
    // After it, one more attempt.
    clock.advance_ms(31_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.failures.load(Relaxed) < 2 {
        assert!(
            Instant::now() < deadline,
            "no second attempt after the backoff"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
}

/// Waits until `status` has seen `n` failures.
async fn failures(status: &launchguard::edge::tls::acme::Status, n: u64, pebble: &Pebble) {
    until(&format!("{n} failed orders"), pebble, || {
        status.failures.load(Relaxed) >= n
    })
    .await;
}

#[tokio::test]
async fn a_failed_http01_falls_back_to_tls_alpn01() {
    let dir = tempfile::tempdir().unwrap();
    // Pebble validates HTTP-01 on a port where nothing listens.
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let clock = Clock::manual(now_ms());
    let s = TestServer::start(&dir.path().join("state"), clock.clone(), |c| {
        acme_config(c, &pebble, false);
        c.tls.http_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let certs = s.state().certs.clone().unwrap();
    let status = s.state().acme.as_ref().unwrap().status();
    failures(&status, 1, &pebble).await;
    assert!(certs.current().is_none());
    let error = status.last_error.lock().clone().unwrap();
    assert_eq!(status.orders.load(Relaxed), 1, "{error}");
    // After the first backoff (a minute), the next order uses TLS-ALPN-01.
    clock.advance_ms(61_000);
    until("a certificate by TLS-ALPN-01", &pebble, || {
        certs.current().is_some()
    })
    .await;
    assert_eq!(status.orders.load(Relaxed), 2);
    let client = client_trusting(&pebble).await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let (_, page) = tls::get(client, addr, DOMAIN, "/launch/").await;
    assert_eq!(page.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn a_fallback_directory_takes_over_after_two_failures() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let clock = Clock::manual(now_ms());
    let down = free_port();
    let s = TestServer::start(&dir.path().join("state"), clock.clone(), |c| {
        acme_config(c, &pebble, true);
        c.tls.acme_directory = format!("https://127.0.0.1:{down}/dir");
        c.tls.fallback_directories = vec![pebble.directory.clone()];
    })
    .await;
    let certs = s.state().certs.clone().unwrap();
    let status = s.state().acme.as_ref().unwrap().status();
    failures(&status, 1, &pebble).await;
    clock.advance_ms(61_000);
    failures(&status, 2, &pebble).await;
    assert!(certs.current().is_none());
    clock.advance_ms(121_000);
    until("a certificate from the fallback", &pebble, || {
        certs.current().is_some()
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn external_account_binding_is_sent_when_the_ca_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let Some(pebble) = Pebble::start(
        dir.path(),
        Ports {
            eab: Some(("kid-1".into(), hmac.into())),
            ..Ports::free()
        },
    ) else {
        return;
    };
    let s = TestServer::start(&dir.path().join("state"), Clock::manual(now_ms()), |c| {
        acme_config(c, &pebble, true);
        c.tls.acme_eab_kid = Some("kid-1".into());
        c.tls.acme_eab_hmac_key = Some(hmac.into());
    })
    .await;
    let certs = s.state().certs.clone().unwrap();
    until("a certificate with EAB", &pebble, || {
        certs.current().is_some()
    })
    .await;
    s.stop().await;
}

/// `systemctl reload` (SIGHUP) under ACME leaves the binary running: the signal has a
/// handler (with no files it reloads nothing), not its default action, which ends the
/// process. SIGHUP sorts before SIGTERM, so when both are pending the first is handled
/// first, and a clean exit shows it did not end the process.
#[cfg(unix)]
#[test]
fn sighup_under_acme_does_not_end_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::TestCa::new("unused");
    let ca_file = ca.write_pem(dir.path(), "ca.pem");
    let down = free_port();
    let config = crate::support::binary::write_config(
        dir.path(),
        "acme-sighup-secret",
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ndomains = [\"{DOMAIN}\"]\nacme_directory = \"https://127.0.0.1:{down}/dir\"\nacme_ca_file = {ca_file:?}\n"
        ),
    );
    let mut proc = crate::support::binary::spawn(&config, &[]);
    assert!(proc.https.is_some(), "the binary logged its https listener");
    // One answer first, as the other signal tests do: by then its handlers are set.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://{}/launch/", proc.public);
    let page = rt.block_on(crate::support::Client::new().get(&url));
    assert_eq!(page.status, 200);
    assert!(proc.signal(libc::SIGHUP));
    assert!(proc.signal(libc::SIGTERM));
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Each domain gets its own certificate (one order each, one file pair each), and
/// the listener presents, by SNI, the one for the name asked for.
#[tokio::test]
async fn each_domain_gets_its_own_certificate_chosen_by_sni() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    const WWW: &str = "www.lg.test";
    let data = dir.path().join("state");
    let s = TestServer::start(&data, Clock::manual(now_ms()), |c| {
        acme_config(c, &pebble, true);
        c.tls.domains = vec![DOMAIN.into(), WWW.into()];
    })
    .await;
    let certs = s.state().certs.clone().unwrap();
    let status = s.state().acme.as_ref().unwrap().status();
    until("both certificates", &pebble, || certs.all().len() == 2).await;
    assert_eq!(status.orders.load(Relaxed), 2);
    for d in [DOMAIN, WWW] {
        assert!(data.join(format!("tls/{d}.crt.pem")).exists(), "{d}");
    }

    let client = client_trusting(&pebble).await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let names = |der: &[u8]| {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
    };
    let apex = tls::presented(client.clone(), addr, DOMAIN).await;
    let www = tls::presented(client.clone(), addr, WWW).await;
    assert_eq!(names(&apex), [format!("DNSName({DOMAIN})")]);
    assert_eq!(names(&www), [format!("DNSName({WWW})")]);
    for d in [DOMAIN, WWW] {
        let (v, page) = tls::get(client.clone(), addr, d, "/launch/").await;
        assert_eq!(
            (v, page.status.as_u16()),
            (hyper::Version::HTTP_2, 200),
            "{d}"
        );
    }
    s.stop().await;
}

/// A CA that no longer knows the account (pebble restarted: it keeps nothing) gets a
/// new one, registered within the renewal order; the old credentials are set aside.
#[tokio::test]
async fn an_account_the_ca_forgot_is_registered_again() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let data = dir.path().join("state");
    let clock = Clock::manual(now_ms());
    let s = TestServer::start(&data, clock.clone(), |c| acme_config(c, &pebble, true)).await;
    let certs = s.state().certs.clone().unwrap();
    let status = s.state().acme.as_ref().unwrap().status();
    until("the first certificate", &pebble, || {
        status.obtained.load(Relaxed) == 1
    })
    .await;
    let first = certs.current().unwrap();

    pebble.restart();
    clock.advance_ms(2_400_000 + 1_000);
    until("the renewal with a new account", &pebble, || {
        status.obtained.load(Relaxed) == 2
    })
    .await;
    assert_eq!(status.accounts_recreated.load(Relaxed), 1);
    assert_eq!(status.failures.load(Relaxed), 0);
    assert_ne!(
        serial(&certs.current().unwrap().key.cert[0]),
        serial(&first.key.cert[0]),
        "a new certificate is in force"
    );
    let set_aside: Vec<_> = std::fs::read_dir(data.join("tls"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json.gone"))
        .collect();
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    // Served, chaining to the new pebble's root.
    let client = client_trusting(&pebble).await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let (v, page) = tls::get(client, addr, DOMAIN, "/launch/").await;
    assert_eq!((v, page.status.as_u16()), (hyper::Version::HTTP_2, 200));
    s.stop().await;
}

/// `launchguard preflight` under ACME with nothing stored registers the account
/// (proving the CA reachable and trusted) and passes that check; with the CA down it
/// fails and says what to check. `lg.test` resolves only in pebble's own DNS, so the
/// "domains resolve" check fails, naming it (`.test` never resolves for real).
#[test]
fn preflight_registers_the_acme_account_or_fails_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let data = dir.path().join("state");
    let config = |directory: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\
             [origin]\nstatic_dir = {:?}\n[webhook]\nsecrets = [\"preflight-secret\"]\n\
             [tls]\nlisten = \"127.0.0.1:0\"\ndomains = [\"lg.test\"]\nacme_directory = \"{directory}\"\nacme_ca_file = {:?}\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/site"),
            pebble.ca_file
        )
    };
    let run = |body: String| {
        let (code, out) = crate::preflight::preflight(dir.path(), &body);
        (Some(code), out)
    };
    let line = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
            .to_string()
    };
    let (code, out) = run(config(&pebble.directory));
    assert_eq!(code, Some(1), "{out}");
    let acme = line(&out, "tls certificate (ACME)");
    assert!(acme.starts_with("  PASS"), "{out}");
    assert!(
        acme.contains("lg.test: none yet") && acme.contains("registered now"),
        "{out}"
    );
    let dns = line(&out, "tls.domains resolve");
    assert!(
        dns.starts_with("  FAIL") && dns.contains("lg.test"),
        "{out}"
    );
    assert!(out.contains("1 failed"), "only the DNS check fails:\n{out}");
    // Stored now: a second run loads it.
    let (_, out) = run(config(&pebble.directory));
    assert!(
        line(&out, "tls certificate (ACME)").contains("(stored)"),
        "{out}"
    );
    // A directory nobody answers: fails, naming what to check.
    let down = format!("https://127.0.0.1:{}/dir", free_port());
    let (code, out) = run(config(&down));
    assert_eq!(code, Some(1), "{out}");
    let acme = line(&out, "tls certificate (ACME)");
    assert!(
        acme.starts_with("  FAIL") && acme.contains("no ACME account"),
        "{out}"
    );
    assert!(out.contains("tls.acme_directory is reachable"), "{out}");
}

/// The window an ARI front answers, and the certificate ids it was asked about.
struct AriFront {
    directory: String,
    asked: Arc<parking_lot::Mutex<Vec<String>>>,
    _stop: tokio_util::sync::DropGuard,
}

/// Pebble 2.4 (Debian's) has no ARI (RFC 9773), so this HTTPS front, behind a
/// certificate from the same test CA as pebble's listener, serves pebble's directory
/// with `renewalInfo` added, pointing at itself, and answers every renewal-info
/// request with `window` (Unix seconds). Everything else goes to pebble itself.
async fn ari_front(pebble: &Pebble, window: (i64, i64)) -> AriFront {
    use axum::extract::Path;
    use axum::routing::get;
    let pebble_addr: std::net::SocketAddr = pebble
        .directory
        .trim_start_matches("https://")
        .trim_end_matches("/dir")
        .parse()
        .unwrap();
    let (_, dir) = tls::get(
        pebble.ca.client_config(&[b"http/1.1"]),
        pebble_addr,
        "127.0.0.1",
        "/dir",
    )
    .await;
    let mut dir: serde_json::Value = serde_json::from_slice(&dir.body).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = listener.local_addr().unwrap();
    dir["renewalInfo"] = format!("https://{me}/renewal-info").into();
    let asked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let rfc3339 = |t: i64| jiff::Timestamp::from_second(t).unwrap().to_string();
    let info = serde_json::json!({
        "suggestedWindow": {"start": rfc3339(window.0), "end": rfc3339(window.1)}
    });
    let seen = asked.clone();
    let app = axum::Router::new()
        .route("/dir", get(move || async move { axum::Json(dir) }))
        .route(
            "/renewal-info/{id}",
            get(move |Path(id): Path<String>| async move {
                seen.lock().push(id);
                ([("retry-after", "21600")], axum::Json(info))
            }),
        );
    let stop = tokio_util::sync::CancellationToken::new();
    tls::serve(
        listener,
        pebble.ca.server_config(),
        app,
        stop.clone(),
        |_| {},
    );
    AriFront {
        directory: format!("https://{me}/dir"),
        asked,
        _stop: stop.drop_guard(),
    }
}

/// A CA that offers ARI and suggests renewing early (a revocation coming, say): the
/// certificate is renewed inside the suggested window, long before a third of its
/// lifetime is left, and the CA was asked about exactly this certificate.
#[tokio::test]
async fn a_renewal_window_from_the_ca_brings_the_renewal_forward() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let start = now_ms();
    let t0 = (start / 1000) as i64;
    // A one-hour certificate: a third left at 40 minutes. The CA asks for 10 to 11.
    let front = ari_front(&pebble, (t0 + 600, t0 + 660)).await;
    let clock = Clock::manual(start);
    let directory = front.directory.clone();
    let s = TestServer::start(&dir.path().join("state"), clock.clone(), |c| {
        acme_config(c, &pebble, true);
        c.tls.acme_directory = directory;
    })
    .await;
    let certs = s.state().certs.clone().unwrap();
    let status = s.state().acme.as_ref().unwrap().status();
    until("the first certificate", &pebble, || {
        status.obtained.load(Relaxed) == 1
    })
    .await;
    let first = certs.current().unwrap();
    until("the CA's window", &pebble, || {
        status.ari_windows.load(Relaxed) == 1
    })
    .await;
    // The id asked about is this certificate's (AKI.serial, base64url).
    let id = instant_acme::CertificateIdentifier::try_from(&first.key.cert[0]).unwrap();
    assert_eq!(
        front.asked.lock()[0],
        format!("{}.{}", id.authority_key_identifier, id.serial)
    );
    // Before the window: nothing ordered.
    clock.advance_ms(500_000);
    let checks = status.checks.load(Relaxed);
    until("two more decisions", &pebble, || {
        status.checks.load(Relaxed) >= checks + 2
    })
    .await;
    assert_eq!(status.obtained.load(Relaxed), 1);
    // Past the window's end (11 minutes in, far from 40): renewed in place.
    clock.advance_ms(170_000);
    until("the early renewal", &pebble, || {
        status.obtained.load(Relaxed) >= 2
    })
    .await;
    assert_ne!(
        serial(&certs.current().unwrap().key.cert[0]),
        serial(&first.key.cert[0])
    );
    // The front answers the same (now past) window for the new certificate: it is
    // not followed again, so no second early renewal.
    until("the window asked for the new certificate", &pebble, || {
        front.asked.lock().len() >= 2
    })
    .await;
    let checks = status.checks.load(Relaxed);
    until("two more decisions", &pebble, || {
        status.checks.load(Relaxed) >= checks + 2
    })
    .await;
    assert_eq!(
        status.obtained.load(Relaxed),
        2,
        "one early renewal, not a storm"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_orders_one_certificate_and_every_node_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let Some(nats) = crate::support::nats::Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(now_ms());
    let cluster = |c: &mut launchguard::config::Config, name: &str| {
        c.cluster.nats_url = Some(nats.url());
        c.cluster.node_id = Some(name.into());
    };
    // a starts first and takes the lease; its own listeners are not where pebble
    // looks, so the HTTP-01 answer has to come from b, which never ordered.
    let a = TestServer::start(&dir.path().join("a"), clock.clone(), |c| {
        acme_config(c, &pebble, true);
        c.tls.listen = Some("127.0.0.1:0".parse().unwrap());
        c.tls.http_listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
        cluster(c, "a");
    })
    .await;
    let b = TestServer::start(&dir.path().join("b"), clock.clone(), |c| {
        acme_config(c, &pebble, true);
        cluster(c, "b");
    })
    .await;
    let (a_certs, b_certs) = (
        a.state().certs.clone().unwrap(),
        b.state().certs.clone().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a_certs.current().is_some() && b_certs.current().is_some()) {
        if Instant::now() > deadline {
            // What the bucket holds, for the failure message.
            let client = async_nats::connect(nats.url()).await.unwrap();
            let kv = async_nats::jetstream::new(client)
                .get_key_value("LAUNCHGUARD_TLS")
                .await;
            let entry = match kv {
                Ok(kv) => format!(
                    "{:?}",
                    kv.get("cert.lg.test").await.map(|v| v.map(|v| v.len()))
                ),
                Err(e) => format!("no bucket: {e}"),
            };
            panic!(
                "a has a certificate: {}, b: {}; the bucket's cert.lg.test: {entry}; pebble said:\n{}",
                a_certs.current().is_some(),
                b_certs.current().is_some(),
                pebble.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orders = |s: &TestServer| {
        s.state()
            .acme
            .as_ref()
            .unwrap()
            .status()
            .orders
            .load(Relaxed)
    };
    assert_eq!(
        (orders(&a), orders(&b)),
        (1, 0),
        "one order for the cluster"
    );

    let client = client_trusting(&pebble).await;
    let a_addr = a.running.as_ref().unwrap().tls_addr.unwrap();
    let b_addr = b.running.as_ref().unwrap().tls_addr.unwrap();
    let (v, page) = tls::get(client.clone(), b_addr, DOMAIN, "/launch/").await;
    assert_eq!((v, page.status.as_u16()), (hyper::Version::HTTP_2, 200));
    assert_eq!(
        serial(&tls::presented(client.clone(), a_addr, DOMAIN).await),
        serial(&tls::presented(client.clone(), b_addr, DOMAIN).await),
        "the same certificate on both"
    );
    // b keeps it in its own data dir too: a restart of b alone serves it at once.
    b.stop().await;
    let b = TestServer::start(&dir.path().join("b"), clock.clone(), |c| {
        acme_config(c, &pebble, true);
        cluster(c, "b");
    })
    .await;
    assert!(b.state().certs.as_ref().unwrap().current().is_some());
    assert_eq!(orders(&b), 0);
    b.stop().await;
    a.stop().await;
}

/// TLS-ALPN-01 in a cluster: the CA's handshake reaches the node that did not order
/// (pebble's TLS port is b's listener; a, which holds the lease and orders, listens
/// elsewhere), and b answers it with the challenge certificate a shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_answers_tls_alpn01_on_a_node_that_did_not_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pebble) = Pebble::start(dir.path(), Ports::free()) else {
        return;
    };
    let Some(nats) = crate::support::nats::Nats::start(dir.path()) else {
        return;
    };
    let clock = Clock::manual(now_ms());
    let cluster = |c: &mut launchguard::config::Config, name: &str| {
        c.cluster.nats_url = Some(nats.url());
        c.cluster.node_id = Some(name.into());
    };
    let a = TestServer::start(&dir.path().join("a"), clock.clone(), |c| {
        acme_config(c, &pebble, false);
        c.tls.listen = Some("127.0.0.1:0".parse().unwrap());
        cluster(c, "a");
    })
    .await;
    let b = TestServer::start(&dir.path().join("b"), clock.clone(), |c| {
        acme_config(c, &pebble, false);
        cluster(c, "b");
    })
    .await;
    let (a_certs, b_certs) = (
        a.state().certs.clone().unwrap(),
        b.state().certs.clone().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a_certs.current().is_some() && b_certs.current().is_some()) {
        assert!(
            Instant::now() < deadline,
            "a has a certificate: {}, b: {}; a's last error: {:?}; pebble said:\n{}",
            a_certs.current().is_some(),
            b_certs.current().is_some(),
            a.state()
                .acme
                .as_ref()
                .unwrap()
                .status()
                .last_error
                .lock()
                .clone(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = |s: &TestServer| {
        let st = s.state().acme.as_ref().unwrap().status();
        (st.orders.load(Relaxed), st.obtained.load(Relaxed))
    };
    assert_eq!(
        (status(&a), status(&b)),
        ((1, 1), (0, 0)),
        "one order, validated at the first try through b"
    );
    let client = client_trusting(&pebble).await;
    let b_addr = b.running.as_ref().unwrap().tls_addr.unwrap();
    let (_, page) = tls::get(client, b_addr, DOMAIN, "/launch/").await;
    assert_eq!(page.status.as_u16(), 200);
    b.stop().await;
    a.stop().await;
}
