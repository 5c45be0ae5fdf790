//! HTTPS on `tls.listen` with certificates from files: the same edge over HTTP/2 and
//! HTTP/1.1, TLS 1.3 and 1.2, HSTS, the redirect listener, and a certificate replaced
//! under a running listener (by a change of the files, and by SIGHUP to the binary).

use std::time::{Duration, Instant};

use crate::support;
use crate::support::tls::{self, TestCa};
use crate::support::TestServer;
use launchguard::clock::Clock;

fn tls_config(
    c: &mut launchguard::config::Config,
    files: &tls::IssuedFiles,
    http_listen: bool,
    hsts: u64,
) {
    c.tls.listen = Some("127.0.0.1:0".parse().unwrap());
    if http_listen {
        c.tls.http_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    c.tls.cert_file = Some(files.cert_file.clone());
    c.tls.key_file = Some(files.key_file.clone());
    c.tls.hsts_max_age_secs = hsts;
}

#[tokio::test]
async fn https_serves_the_same_edge_over_http2_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let files = ca.issue_files(&["localhost", "127.0.0.1"], dir.path(), "site");
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |c| {
        tls_config(c, &files, true, 86_400)
    })
    .await;
    let running = s.running.as_ref().unwrap();
    let addr = running.tls_addr.expect("tls.listen is bound");

    // HTTP/1.1 first: the page is fetched from the origin and stored.
    let (v, first) = tls::get(
        ca.client_config(&[b"http/1.1"]),
        addr,
        "localhost",
        "/launch/",
    )
    .await;
    assert_eq!(v, hyper::Version::HTTP_11);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert!(first.header("x-edge-scale-factor").is_some());
    assert_eq!(
        first.header("strict-transport-security"),
        Some("max-age=86400")
    );

    // HTTP/2, chosen by ALPN: the same cache answers.
    let (v, second) = tls::get(
        ca.client_config(&[b"h2", b"http/1.1"]),
        addr,
        "localhost",
        "/launch/",
    )
    .await;
    assert_eq!(v, hyper::Version::HTTP_2);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert_eq!(
        second.header("strict-transport-security"),
        Some("max-age=86400")
    );

    // Plain HTTP on server.listen still serves, and carries no HSTS.
    let plain = s.client.get(&s.url("/launch/")).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("strict-transport-security"), None);

    // TLS 1.2 only clients are served too; the default is 1.3.
    let tls12 = ca.client_config_with(&[b"http/1.1"], &[&rustls::version::TLS12]);
    let conn = tls::connect(tls12, addr, "localhost")
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        conn.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let conn = tls::connect(ca.client_config(&[b"h2"]), addr, "localhost")
        .await
        .unwrap();
    assert_eq!(
        conn.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // A client that does not trust the certificate fails its handshake.
    let other = TestCa::new("someone else");
    assert!(
        tls::connect(other.client_config(&[b"h2"]), addr, "localhost")
            .await
            .is_err()
    );

    // tls.http_listen: 308 to the same host, path and query over https.
    let http = running.http_addr.expect("tls.http_listen is bound");
    let r = s
        .client
        .get(&format!("http://127.0.0.1:{}/launch/?ref=ph", http.port()))
        .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://127.0.0.1:{}/launch/?ref=ph", addr.port()).as_str())
    );
    s.stop().await;
}

#[tokio::test]
async fn hosts_outside_server_hosts_get_no_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let files = ca.issue_files(&["localhost"], dir.path(), "site");
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |c| {
        tls_config(c, &files, true, 0);
        c.server.hosts = vec!["localhost".into()];
    })
    .await;
    let running = s.running.as_ref().unwrap();
    let http = running.http_addr.unwrap();
    let url = format!("http://127.0.0.1:{}/launch/", http.port());
    let r = s
        .client
        .send(
            hyper::Method::GET,
            &url,
            &[("host", "evil.example")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 421, "an unknown host is not redirected anywhere");
    let r = s
        .client
        .send(
            hyper::Method::GET,
            &url,
            &[("host", "localhost")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 308);
    let tls_port = running.tls_addr.unwrap().port();
    assert_eq!(
        r.header("location"),
        Some(format!("https://localhost:{tls_port}/launch/").as_str())
    );
    s.stop().await;
}

#[tokio::test]
async fn a_changed_certificate_is_served_without_a_restart_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let first = ca.issue_files(&["localhost"], dir.path(), "site");
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |c| {
        tls_config(c, &first, false, 0)
    })
    .await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let client = ca.client_config(&[b"h2"]);
    assert_eq!(
        tls::presented(client.clone(), addr, "localhost").await,
        first.leaf
    );

    let certs = s.state().certs.clone().expect("HTTPS is on");
    // Nothing changed: nothing is read again.
    assert!(!certs.reload_if_changed().unwrap());

    // A renewed certificate written over the files is in force for the next handshake.
    // A connection opened before keeps its session.
    let before = tls::connect(client.clone(), addr, "localhost")
        .await
        .unwrap();
    let second = ca.issue_files(&["localhost"], dir.path(), "site");
    assert_ne!(second.leaf, first.leaf);
    // Ok(true) if this call read it, Ok(false) if the file watcher did first.
    certs.reload_if_changed().unwrap();
    assert_eq!(
        tls::presented(client.clone(), addr, "localhost").await,
        second.leaf
    );
    assert_eq!(
        before.get_ref().1.peer_certificates().unwrap()[0],
        first.leaf
    );

    // A broken certificate file: the old pair stays, and the error names the key.
    std::fs::write(
        &second.cert_file,
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    let e = certs.reload().unwrap_err().to_string();
    assert!(e.starts_with("tls.cert_file:"), "{e}");
    assert_eq!(
        tls::presented(client.clone(), addr, "localhost").await,
        second.leaf
    );

    // A key that belongs to another certificate: refused, the old pair stays.
    let third = ca.issue_files(&["localhost"], dir.path(), "other");
    std::fs::copy(&third.cert_file, &second.cert_file).unwrap();
    let e = certs.reload().unwrap_err().to_string();
    assert!(
        e.starts_with("tls.key_file:") && e.contains("does not belong"),
        "{e}"
    );
    assert_eq!(tls::presented(client, addr, "localhost").await, second.leaf);
    s.stop().await;
}

#[tokio::test]
async fn certificate_errors_stop_the_start_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let files = ca.issue_files(&["localhost"], dir.path(), "site");
    let start = |tweak: Box<dyn FnOnce(&mut launchguard::config::Config)>| {
        let mut c = support::config(&dir.path().join("state"));
        tls_config(&mut c, &files, false, 0);
        tweak(&mut c);
        async move {
            match launchguard::app::start(c, Default::default()).await {
                Ok(_) => panic!("started"),
                Err(e) => e.to_string(),
            }
        }
    };
    let missing = dir.path().join("missing.pem");
    let m = missing.clone();
    let e = start(Box::new(move |c| c.tls.cert_file = Some(m))).await;
    assert!(
        e.contains("tls.cert_file") && e.contains("missing.pem"),
        "{e}"
    );
    let key = files.key_file.clone();
    let e = start(Box::new(move |c| c.tls.cert_file = Some(key))).await;
    assert!(
        e.contains("tls.cert_file") && e.contains("CERTIFICATE"),
        "{e}"
    );
    let cert = files.cert_file.clone();
    let e = start(Box::new(move |c| c.tls.key_file = Some(cert))).await;
    assert!(e.contains("tls.key_file"), "{e}");
}

/// The binary reloads its certificate on SIGHUP. The new files keep the old ones'
/// size, inode and mtime, so the change watcher cannot see them: only the signal can.
#[cfg(unix)]
#[test]
fn sighup_reloads_the_certificate_in_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let first = ca.issue_files(&["localhost"], dir.path(), "site");
    let config = support::binary::write_config(
        dir.path(),
        "sighup-secret",
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n",
            first.cert_file, first.key_file
        ),
    );
    let mut proc = support::binary::spawn(&config, &[]);
    let addr = proc.https.expect("the binary logged its https listener");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = ca.client_config(&[b"http/1.1"]);
    let presented = |c| rt.block_on(tls::presented(c, addr, "localhost"));
    assert_eq!(presented(client.clone()), first.leaf);

    let mtimes: Vec<_> = [&first.cert_file, &first.key_file]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    let second = ca.issue_files(&["localhost"], dir.path(), "site");
    for (path, mtime) in [&second.cert_file, &second.key_file].iter().zip(&mtimes) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(*mtime)
            .unwrap();
    }
    // The file watcher looks every 2 s: give it more than one look, and it has seen
    // nothing (this wait shows that nothing happens, it waits for nothing to happen).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(presented(client.clone()), first.leaf);

    assert!(proc.signal(libc::SIGHUP));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if presented(client.clone()) == second.leaf {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still serving, and still the same process.
    assert!(proc.child.try_wait().unwrap().is_none());
    assert!(proc.signal(libc::SIGTERM));
    proc.child.wait().unwrap();
}

async fn until(
    what: &str,
    conns: &launchguard::edge::server::Connections,
    cond: impl Fn(&launchguard::edge::server::Connections) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond(conns) {
        assert!(
            Instant::now() < deadline,
            "{what}: open {}, parked {}, sessions {}",
            conns.open(),
            conns.parked(),
            conns.sessions()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends one `GET /launch/` on `tls` and reads its whole answer; returns the status
/// line's first 12 bytes.
async fn answer(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /launch/ HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-answer");
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if got.len() >= end + 4 + len {
                return text[..12].to_string();
            }
        }
    }
}

/// HTTP/1.1 over TLS parks between requests like a plain connection: no hyper session
/// while idle, and the same TLS session serves the next request.
#[tokio::test]
async fn idle_http1_over_tls_parks_and_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let files = ca.issue_files(&["localhost"], dir.path(), "site");
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |c| {
        tls_config(c, &files, false, 0)
    })
    .await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let conns = s.state().connections.clone();
    let mut tls = tls::connect(ca.client_config(&[b"http/1.1"]), addr, "localhost")
        .await
        .unwrap();
    assert_eq!(answer(&mut tls).await, "HTTP/1.1 200");
    until("parks after the answer", &conns, |c| c.parked() == 1).await;
    let sessions = conns.sessions();
    assert_eq!(answer(&mut tls).await, "HTTP/1.1 200");
    assert_eq!(
        conns.sessions(),
        sessions + 1,
        "a new hyper session, the same TLS session"
    );
    until("parks again", &conns, |c| c.parked() == 1).await;
    s.stop().await;
}

/// CVE-2023-44487: a client that opens streams and resets them at once is sent GOAWAY,
/// while another client on its own connection keeps being answered.
#[tokio::test]
async fn an_http2_rapid_reset_client_is_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let files = ca.issue_files(&["localhost"], dir.path(), "site");
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |c| {
        tls_config(c, &files, false, 0)
    })
    .await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let client = ca.client_config(&[b"h2"]);

    let attacker = tls::connect(client.clone(), addr, "localhost")
        .await
        .unwrap();
    let (mut send, conn) = h2::client::handshake(attacker).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let mut sent = 0u32;
    let cut_off = loop {
        let ready = match send.clone().ready().await {
            Ok(r) => r,
            Err(e) => break e,
        };
        send = ready;
        let req = hyper::Request::get(format!("https://localhost:{}/launch/", addr.port()))
            .body(())
            .unwrap();
        match send.send_request(req, true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(e) => break e,
        }
        sent += 1;
        if sent.is_multiple_of(50) {
            tokio::task::yield_now().await;
        }
        assert!(
            sent < 100_000,
            "the server never cut the resetting client off"
        );
    };
    let ended = driver.await.unwrap();
    // GOAWAY ENHANCE_YOUR_CALM ("too many resets"), seen by the sender or the driver.
    let calm = |e: &h2::Error| e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
    assert!(
        calm(&cut_off) || ended.as_ref().err().is_some_and(calm),
        "after {sent} resets: {cut_off:?} / {ended:?}"
    );

    // Another client is served all along.
    let (v, r) = tls::get(client, addr, "localhost", "/launch/").await;
    assert_eq!((v, r.status.as_u16()), (hyper::Version::HTTP_2, 200));
    s.stop().await;
}

/// An HTTP/2 frame: 9-byte header (length, type, flags, stream) and `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The CONTINUATION flood (CVE-2024-27316 and kin): a HEADERS frame that never ends,
/// followed by CONTINUATION frames without END_HEADERS. The server stops reading it
/// (GOAWAY, or the connection closed) once the header block passes its limit, long
/// before the flood ends, and another client is answered meanwhile.
#[tokio::test]
async fn an_http2_continuation_flood_is_cut_off_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let files = ca.issue_files(&["localhost"], dir.path(), "site");
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |c| {
        tls_config(c, &files, false, 0)
    })
    .await;
    let addr = s.running.as_ref().unwrap().tls_addr.unwrap();
    let client = ca.client_config(&[b"h2"]);
    let limit = s.state().config.server.max_header_bytes;

    let tls = tls::connect(client.clone(), addr, "localhost")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut rd, mut wr) = tokio::io::split(tls);
    // What the server sends: done when a GOAWAY arrives or the connection ends.
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len = (usize::from(buf[at]) << 16)
                    | (usize::from(buf[at + 1]) << 8)
                    | usize::from(buf[at + 2]);
                if buf[at + 3] == 7 && buf.len() >= at + 9 + 8 {
                    let p = &buf[at + 9..];
                    return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                at += 9 + len;
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[])); // SETTINGS
                                        // HEADERS on stream 1: END_STREAM, no END_HEADERS; :method GET, :scheme https, :path /.
    out.extend(h2_frame(1, 0x1, 1, &[0x82, 0x87, 0x84]));
    wr.write_all(&out).await.unwrap();
    let mut field = vec![0x00, 0x03];
    field.extend_from_slice(b"x-a");
    field.push(100);
    field.extend_from_slice(&[b'a'; 100]);
    let continuation = h2_frame(9, 0, 1, &field);
    let mut sent = 0usize;
    const FLOOD: usize = 64 * 1024 * 1024;
    while sent < FLOOD && !reader.is_finished() {
        if wr.write_all(&continuation).await.is_err() {
            break;
        }
        sent += continuation.len();
        if sent.is_multiple_of(64 * continuation.len()) {
            tokio::task::yield_now().await;
        }
    }
    let goaway = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the server ends the flood")
        .unwrap();
    // Cut off within a few header limits of sending (the kernel's socket buffers
    // hold the rest), not after reading the whole flood.
    assert!(
        sent < 4 * 1024 * 1024,
        "the server read {sent} bytes of one header block (limit {limit})"
    );
    if let Some(code) = goaway {
        // ENHANCE_YOUR_CALM, PROTOCOL_ERROR or COMPRESSION_ERROR: any error, not NO_ERROR.
        assert_ne!(code, 0, "GOAWAY with an error code");
    }

    // Another client is served.
    let (v, r) = tls::get(client, addr, "localhost", "/launch/").await;
    assert_eq!((v, r.status.as_u16()), (hyper::Version::HTTP_2, 200));
    s.stop().await;
}

/// An admin listener off loopback speaks TLS with the public certificate; plain HTTP
/// to it gets no answer. (On loopback it stays plain: every other test.)
#[tokio::test]
async fn a_non_loopback_admin_listener_is_served_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("launchguard test CA");
    let files = ca.issue_files(&["localhost", "127.0.0.1"], dir.path(), "site");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin-token-for-tests").unwrap();
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |c| {
        tls_config(c, &files, false, 0);
        c.server.admin_listen = "0.0.0.0:0".parse().unwrap();
        c.server.admin_token_file = Some(token.clone());
    })
    .await;
    let port = s.running.as_ref().unwrap().admin_addr.port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let (v, r) = tls::get(
        ca.client_config(&[b"h2", b"http/1.1"]),
        addr,
        "localhost",
        "/healthz",
    )
    .await;
    assert_eq!(
        (v, r.status.as_u16()),
        (hyper::Version::HTTP_2, 200),
        "{}",
        r.text()
    );

    // Plain HTTP: the server waits for a TLS ClientHello and never answers in HTTP.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    s.stop().await;
}
