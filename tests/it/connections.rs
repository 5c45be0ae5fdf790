//! Keep-alive connections park between requests (no hyper session, no buffers) and
//! serve again when the client sends. Raw TCP against the real server, so that what
//! is on the wire (pipelining, a request split across writes, an unread body) is
//! exactly what the test says.

use std::time::Duration;

use crate::support::TestServer;
use launchguard::clock::Clock;
use launchguard::edge::server::Connections;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One client connection with its own read buffer (pipelined answers may arrive in
/// one read).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Conn {
    async fn open(srv: &TestServer) -> Conn {
        Conn {
            stream: TcpStream::connect(srv.public).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes into the buffer; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the server answers within 10 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer, or None if the server closed the connection first.
    async fn answer(&mut self) -> Option<Answer> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "closed mid-answer: {:?}", self.buf);
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("ASCII head");
        let status: u16 = head[9..12].parse().expect("a status code");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().expect("a length"))
            })
            .unwrap_or(0);
        while self.buf.len() < end + len {
            assert!(self.fill().await, "closed mid-body");
        }
        let body = self.buf[end..end + len].to_vec();
        self.buf.drain(..end + len);
        Some(Answer { status, head, body })
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send(get(path).as_bytes()).await;
        self.answer().await.expect("an answer")
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: launch.test\r\n\r\n")
}

/// Waits (polling the live counts, 10 s at most) until `cond` holds.
async fn until(what: &str, conns: &Connections, cond: impl Fn(&Connections) -> bool) {
    for _ in 0..2000 {
        if cond(conns) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "{what}: open {}, parked {}, sessions {}",
        conns.open(),
        conns.parked(),
        conns.sessions()
    );
}

async fn server() -> (tempfile::TempDir, TestServer) {
    server_with(|_| {}).await
}

#[tokio::test]
async fn idle_keep_alive_connections_park_and_serve_again() {
    // The connection gauges are the process's: alone, they are this server's.
    let _alone = crate::support::recorder::alone().await;
    let (_dir, srv) = server().await;
    let conns = srv.state().connections.clone();
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut c = Conn::open(&srv).await;
        let a = c.get("/launch/").await;
        assert_eq!(a.status, 200, "{}", a.head);
        clients.push((c, a.body));
    }
    until("all 50 park after their answer", &conns, |c| {
        c.open() == 50 && c.parked() == 50
    })
    .await;
    assert_eq!(conns.sessions(), 50, "one session per connection so far");
    let m = srv.client.get(&srv.admin_url("/metrics")).await.text();
    assert!(
        m.contains("launchguard_http_connections{state=\"parked\"} 50"),
        "{m}"
    );
    assert!(
        m.contains("launchguard_http_connections{state=\"active\"} 0"),
        "{m}"
    );

    // The same sockets, again: each wakes a new session and gets the same page.
    for (c, first) in clients.iter_mut() {
        let a = c.get("/launch/").await;
        assert_eq!(a.status, 200, "{}", a.head);
        assert_eq!(&a.body, first, "the same page on the parked connection");
    }
    until(
        "each parked connection woke once and parked again",
        &conns,
        |c| c.sessions() == 100 && c.parked() == 50,
    )
    .await;

    drop(clients);
    until("closed connections are gone", &conns, |c| c.open() == 0).await;
    srv.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let (_dir, srv) = server().await;
    let conns = srv.state().connections.clone();
    let mut c = Conn::open(&srv).await;
    let three = format!("{}{}{}", get("/launch/"), get("/nope"), get("/"));
    c.send(three.as_bytes()).await;
    let statuses = [
        c.answer().await.expect("first").status,
        c.answer().await.expect("second").status,
        c.answer().await.expect("third").status,
    ];
    assert_eq!(statuses, [200, 404, 200]);
    until("parks after the last answer", &conns, |c| c.parked() == 1).await;
    assert_eq!(c.get("/").await.status, 200);
    srv.stop().await;
}

#[tokio::test]
async fn a_request_split_across_writes_is_served_whether_parked_or_not() {
    let (_dir, srv) = server().await;
    let conns = srv.state().connections.clone();
    let mut c = Conn::open(&srv).await;
    assert_eq!(c.get("/launch/").await.status, 200);

    // Straight after an answer, while the session may still be up.
    let req = get("/launch/");
    let (head, tail) = req.split_at(10);
    c.send(head.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send(tail.as_bytes()).await;
    assert_eq!(c.answer().await.expect("an answer").status, 200);

    // Once parked: the first bytes wake a session, which then waits for the rest.
    until("parked", &conns, |c| c.parked() == 1).await;
    let before = conns.sessions();
    c.send(head.as_bytes()).await;
    until("the first bytes start a session", &conns, |c| {
        c.sessions() == before + 1 && c.parked() == 0
    })
    .await;
    c.send(tail.as_bytes()).await;
    assert_eq!(c.answer().await.expect("an answer").status, 200);

    // A webhook whose body comes in a second write after a pause.
    until("parked again", &conns, |c| c.parked() == 1).await;
    let body = srv.event("split-1", "upvote");
    let sig = launchguard::ingest::webhook::signature::sign_producthunt(
        &launchguard::ingest::webhook::signature::Key::parse(crate::support::SECRET).unwrap(),
        &body,
    );
    let head = format!(
        "POST /webhooks/producthunt HTTP/1.1\r\nHost: launch.test\r\nContent-Type: application/json\r\n\
         X-ProductHunt-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send(&body).await;
    let a = c.answer().await.expect("an answer");
    assert_eq!(
        a.status,
        202,
        "{}{}",
        a.head,
        String::from_utf8_lossy(&a.body)
    );
    until("parks after the webhook", &conns, |c| c.parked() == 1).await;
    srv.stop().await;
}

#[tokio::test]
async fn an_unread_request_body_never_turns_into_a_bad_request() {
    let (_dir, srv) = server().await;
    let mut c = Conn::open(&srv).await;
    assert_eq!(c.get("/").await.status, 200);
    // Past webhook.max_body_bytes: refused from the length alone, body unread.
    let len = 200 * 1024;
    let head = format!(
        "POST /webhooks/producthunt HTTP/1.1\r\nHost: launch.test\r\nContent-Type: application/json\r\n\
         X-ProductHunt-Signature: sha256=00\r\nContent-Length: {len}\r\n\r\n"
    );
    c.send(head.as_bytes()).await;
    c.send(&vec![b'x'; 1024]).await;
    let a = c.answer().await.expect("an answer");
    assert_eq!(a.status, 413, "{}", a.head);
    // The rest of the body arrives late, then a GET. The server may read the body
    // away and answer the GET, or close; it must never take body bytes for a request.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let _ = c.stream.write_all(&vec![b'x'; len - 1024]).await;
    let _ = c.stream.write_all(get("/").as_bytes()).await;
    while let Some(a) = c.answer().await {
        assert_eq!(a.status, 200, "only the GET may be answered: {}", a.head);
    }
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections() {
    let (_dir, srv) = server().await;
    let conns = srv.state().connections.clone();
    let mut parked = Conn::open(&srv).await;
    assert_eq!(parked.get("/").await.status, 200);
    until("parked", &conns, |c| c.parked() == 1).await;
    srv.stop().await;
    assert!(
        parked.answer().await.is_none(),
        "a parked connection is closed at shutdown"
    );
    assert_eq!(conns.open(), 0);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_stays_parked() {
    let (_dir, srv) = server().await;
    let conns = srv.state().connections.clone();
    let _c = Conn::open(&srv).await;
    until("accepted", &conns, |c| c.open() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!((conns.parked(), conns.sessions()), (1, 0));
    srv.stop().await;
}

async fn server_with(
    tweak: impl FnOnce(&mut launchguard::config::Config),
) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Clock::system(), tweak).await;
    (dir, srv)
}

#[tokio::test]
async fn a_head_that_never_ends_is_cut_after_the_header_timeout() {
    let (_dir, srv) = server_with(|c| c.server.header_timeout_ms = 300).await;
    let conns = srv.state().connections.clone();
    let mut c = Conn::open(&srv).await;
    assert_eq!(c.get("/").await.status, 200, "a whole request is served");
    // Parked first, so the session and its header timer start with the first byte.
    until("parked", &conns, |c| c.parked() == 1).await;
    let started = std::time::Instant::now();
    c.send(b"GET /launch/ HTTP/1.1\r\nHost: launch.test\r\nX-Slow: 1\r\n")
        .await;
    assert!(c.answer().await.is_none(), "closed, not answered");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the timeout: {:?}",
        started.elapsed()
    );
    until("the connection is gone", &conns, |c| c.open() == 0).await;
    srv.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_is_closed_after_the_header_timeout() {
    let (_dir, srv) = server_with(|c| c.server.header_timeout_ms = 300).await;
    let started = std::time::Instant::now();
    let mut c = Conn::open(&srv).await;
    assert!(c.answer().await.is_none(), "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(300));
    srv.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let (_dir, srv) = server_with(|c| c.server.keepalive_timeout_secs = 1).await;
    let conns = srv.state().connections.clone();
    let mut c = Conn::open(&srv).await;
    assert_eq!(c.get("/").await.status, 200);
    let answered = std::time::Instant::now();
    until("parked", &conns, |c| c.parked() == 1).await;
    assert!(c.answer().await.is_none(), "closed once idle for a second");
    assert!(answered.elapsed() >= Duration::from_secs(1));
    until("the connection is gone", &conns, |c| c.open() == 0).await;
    srv.stop().await;
}

/// A site with one file far bigger than the sockets' buffers, so that hyper still holds
/// part of the answer when the request side is done.
async fn big_file_server() -> (tempfile::TempDir, TestServer, usize) {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let len = 16 << 20;
    std::fs::write(site.join("big.bin"), vec![7u8; len]).unwrap();
    std::fs::write(site.join("index.html"), "<html>home</html>").unwrap();
    let srv = TestServer::start(&dir.path().join("state"), Clock::system(), |c| {
        c.origin.static_dir = site;
        // Cached, so that it is answered from memory as one 16 MiB chunk: hyper then
        // holds the whole answer at once, most of it waiting for the socket. (An object
        // may take a quarter of one of the cache's 16 shards.)
        c.cache.max_object_bytes = 20 << 20;
        c.cache.max_bytes = 1 << 30;
    })
    .await;
    let mut warm = Conn::open(&srv).await;
    let first = warm.get("/big.bin").await;
    assert_eq!((first.status, first.body.len()), (200, len));
    let again = warm.get("/big.bin").await;
    assert!(again.head.contains("x-cache: HIT"), "{}", again.head);
    (dir, srv, len)
}

/// The head and the body's length of the next answer.
async fn body_len(c: &mut Conn) -> (String, usize) {
    let a = c.answer().await.expect("an answer");
    (a.head, a.body.len())
}

#[tokio::test]
async fn an_answer_is_delivered_whole_when_the_request_body_is_left_unread() {
    let (_dir, srv, len) = big_file_server().await;
    let mut c = Conn::open(&srv).await;
    c.send(
        b"GET /big.bin HTTP/1.1\r\nHost: launch.test\r\nContent-Length: 1000000\r\n\r\n0123456789",
    )
    .await;
    // Not reading yet: the answer fills the socket buffers and waits in hyper.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (head, got) = body_len(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(got, len, "every byte of the answer");
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_delivers_a_download_that_closes_the_connection() {
    let (_dir, srv, len) = big_file_server().await;
    let mut c = Conn::open(&srv).await;
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: launch.test\r\nConnection: close\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(srv.stop());
    let (head, got) = body_len(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(got, len, "every byte of the answer, though shutdown began");
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_gets_431() {
    let (_dir, srv) = server().await;
    let mut c = Conn::open(&srv).await;
    let big = "a".repeat(70_000);
    c.send(format!("GET /launch/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let a = c.answer().await.expect("an answer before the close");
    assert_eq!(a.status, 431, "{}", a.head);
    // Just under server.max_header_bytes (64 KiB) is served.
    let mut c = Conn::open(&srv).await;
    let fits = "a".repeat(60_000);
    c.send(format!("GET /launch/ HTTP/1.1\r\nHost: x\r\nX-Big: {fits}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(c.answer().await.expect("an answer").status, 200);
    // A smaller configured limit holds too.
    let (_dir2, small) = server_with(|c| c.server.max_header_bytes = 8192).await;
    let mut c = Conn::open(&small).await;
    let over = "a".repeat(9_000);
    c.send(format!("GET /launch/ HTTP/1.1\r\nHost: x\r\nX-Big: {over}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(c.answer().await.expect("an answer").status, 431);
    small.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn accepting_pauses_at_max_connections_and_resumes_when_one_closes() {
    let _alone = crate::support::recorder::alone().await;
    let (_dir, srv) = server_with(|c| c.server.max_connections = 3).await;
    let conns = srv.state().connections.clone();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::open(&srv).await;
        assert_eq!(c.get("/launch/").await.status, 200);
        held.push(c);
    }
    // The fourth waits in the kernel's backlog: accepted only when one closes.
    let mut fourth = Conn::open(&srv).await;
    fourth
        .send(b"GET /launch/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    for _ in 0..1_000_000 {
        if conns.paused() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(conns.paused(), "the listener paused at the limit");
    assert_eq!(conns.open(), 3);
    assert!(conns.pauses() >= 1);
    let metrics = srv.client.get(&srv.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("launchguard_http_accept_paused 1"),
        "{metrics}"
    );
    drop(held.pop());
    let a = fourth.answer().await.expect("served once a slot is free");
    assert_eq!(a.status, 200);
    srv.stop().await;
}

/// The send timeout is about progress, not the whole answer: a client on a slow
/// link that keeps reading is never cut (the stubborn ones are in `slow_readers.rs`).
#[tokio::test]
async fn a_slow_reader_that_keeps_reading_is_served_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Clock::system(), |c| {
        c.server.send_timeout_ms = 600;
    })
    .await;
    let conns = srv.state().connections.clone();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket.connect(srv.public).await.unwrap();
    c.write_all(get("/style.css").repeat(5).as_bytes())
        .await
        .unwrap();
    // 8 KB every 250 ms: the whole takes about two seconds, three send timeouts,
    // but every write makes progress well within one.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let want = 5 * 11_000;
    while got.len() < want {
        let n = c.read(&mut chunk).await.expect("not reset");
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..64]);
    assert_eq!(conns.send_timeouts(), 0);
    srv.stop().await;
}
