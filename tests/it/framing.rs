//! Request framing as a smuggler tries it, on raw TCP against the real public
//! listener: conflicting `Content-Length` / `Transfer-Encoding`, malformed lengths
//! and header lines. Each gets one answer (a 4xx: hyper's 400 for a malformed head)
//! and the connection closes, so no bytes after it are ever read as a second request.

use std::time::Duration;

use crate::support::TestServer;
use launchguard::clock::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` on a fresh connection and reads until the server closes it (5 s at
/// most): everything the server answered.
async fn exchange(s: &TestServer, raw: &str) -> String {
    let mut c = TcpStream::connect(s.public).await.unwrap();
    c.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(
        read.is_ok(),
        "the connection stays open after a bad head: {raw:?} -> {out:?}"
    );
    out
}

/// A request that must never be answered: if it is, it was smuggled in.
const SMUGGLED: &str = "GET /launch/?smuggled=1 HTTP/1.1\r\nHost: launch.test\r\n\r\n";

#[tokio::test]
async fn conflicting_and_malformed_framing_gets_one_4xx_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::system(), |_| {}).await;
    let cases = [
        // CL.TE and TE.CL: both framings at once.
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
        ),
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{SMUGGLED}"
        ),
        // Two different lengths.
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nContent-Length: 0\r\nContent-Length: 60\r\n\r\n{SMUGGLED}"
        ),
        // A length that is not a plain number.
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nContent-Length: +0\r\n\r\n{SMUGGLED}"
        ),
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nContent-Length: 0x10\r\n\r\n{SMUGGLED}"
        ),
        // A transfer coding other than chunked last.
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"
        ),
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
        ),
        // A space before the colon, and an obsolete folded line.
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
        ),
        format!(
            "GET /launch/ HTTP/1.1\r\nHost: launch.test\r\nX-A: 1\r\n folded: 2\r\n\r\n{SMUGGLED}"
        ),
        // A chunk size that overflows.
        format!(
            "POST /api/convert HTTP/1.1\r\nHost: launch.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n\r\n{SMUGGLED}"
        ),
    ];
    for (i, raw) in cases.iter().enumerate() {
        let out = exchange(&s, raw).await;
        if i < 2 {
            // Both framings: the body is read as chunked (RFC 9112 §6.3), so the
            // beacon sees the empty body `0\r\n\r\n` frames, and hyper closes after.
            assert!(out.contains("invalid_body"), "{raw:?} -> {out:?}");
        }
        let answers = out.matches("HTTP/1.1 ").count();
        assert_eq!(answers, 1, "one answer only: {raw:?} -> {out:?}");
        let status: u16 = out[9..12].parse().unwrap();
        assert!(
            (400..500).contains(&status) || status == 501,
            "{raw:?} -> {out:?}"
        );
        assert!(!out.contains("smuggled"), "{raw:?} -> {out:?}");
    }
    // And the listener still serves a plain request.
    let ok = exchange(
        &s,
        "GET /launch/ HTTP/1.1\r\nHost: launch.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    s.stop().await;
}
