//! Clients that send requests and never read the answers: each is reset once its
//! writes have made no progress for `server.send_timeout_ms`, and the kernel memory
//! its unread answers held is given back.
//!
//! The one test outside the `it` binary (`tests/it`), in a binary of its own: it
//! reads the machine-wide TCP memory (`/proc/net/sockstat`). In `it`, the other
//! tests run in parallel threads of the same process, opening sockets and moving
//! bytes (their servers, clients, receivers and the processes they spawn) while it
//! measures; cargo runs test binaries one after another, so here the only other
//! traffic is what else the machine runs, which the margins below allow for.
//!
//! The server's side of each connection is watched in `/proc/net/tcp` (its send
//! queue, found by the client's port), so the test sees exactly when the server
//! resets it, without reading from the client (which would be the progress the
//! server waits for).

// The harness of `tests/it`, of which this test needs only `TestServer`.
#[allow(dead_code)]
#[path = "it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use launchguard::clock::Clock;
use support::TestServer;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const SEND_TIMEOUT_MS: u64 = 3000;

/// A client with a small receive buffer, so the answers it does not read wait on the
/// server's side (the memory under test), not in the client's own socket.
async fn stubborn_client(server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(server).await.expect("connect")
}

/// The server side's unsent bytes for the connection from `client_port`, or `None`
/// when the server no longer has that connection open (closed, or reset).
fn server_send_queue(server_port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        // State 01 is ESTABLISHED; a reset socket leaves the table.
        (port(f[1]) == Some(server_port) && port(f[2]) == Some(client_port) && f[3] == "01")
            .then(|| u64::from_str_radix(f[4].split(':').next().unwrap(), 16).unwrap())
    })
}

/// The machine's TCP memory in pages (`/proc/net/sockstat`, `TCP: ... mem N`).
fn tcp_memory_pages() -> u64 {
    let stat = std::fs::read_to_string("/proc/net/sockstat").expect("/proc/net/sockstat");
    let line = stat.lines().find(|l| l.starts_with("TCP:")).unwrap();
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem").expect("a mem field");
    words.next().unwrap().parse().unwrap()
}

/// Polls `cond` every 10 ms for at most `limit`; the time it took, or a panic.
async fn within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Answers the server has made, of every kind (each request for the stylesheet is
/// one cache lookup).
fn answered(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("launchguard_cache_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn send_timeouts(metrics: &str) -> u64 {
    metric(metrics, "launchguard_http_send_timeouts_total")
}

const REQUEST: &str = "GET /style.css HTTP/1.1\r\nHost: launch.test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_reset_after_the_send_timeout_and_memory_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Clock::system(), |c| {
        c.server.send_timeout_ms = SEND_TIMEOUT_MS;
    })
    .await;
    let port = srv.public.port();
    let conns = srv.state().connections.clone();
    let before = srv.client.get(&srv.admin_url("/metrics")).await.text();
    let baseline = tcp_memory_pages();

    // One client pipelines 3,000 requests for the 11 KB stylesheet (33 MB of
    // answers); 49 more send 100 each (1.1 MB). None reads a byte.
    let sent_at = Instant::now();
    let mut clients = Vec::new();
    let mut sent = 0u64;
    for i in 0..50 {
        let n: usize = if i == 0 { 3000 } else { 100 };
        sent += n as u64;
        let (read, mut write) = stubborn_client(srv.public).await.into_split();
        let client_port = read.local_addr().unwrap().port();
        // The server reads requests only as it answers them: write from a task,
        // which ends when the connection does.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(REQUEST.repeat(n).as_bytes()).await;
            write
        });
        clients.push((client_port, read, writer));
    }

    // Every connection stalls with answers queued on the server's side.
    let ports: Vec<u16> = clients.iter().map(|c| c.0).collect();
    let mut queued = 0;
    within("every answer queue fills", Duration::from_secs(10), || {
        let queues: Vec<Option<u64>> = ports.iter().map(|p| server_send_queue(port, *p)).collect();
        queued = queues.iter().flatten().sum();
        queues.iter().all(|q| q.is_some_and(|q| q > 0))
    })
    .await;
    let held = tcp_memory_pages();

    // Then each is reset: gone from the server's table, and its task ended.
    within(
        "every stalled connection is reset",
        Duration::from_millis(SEND_TIMEOUT_MS) + Duration::from_secs(10),
        || ports.iter().all(|p| server_send_queue(port, *p).is_none()),
    )
    .await;
    let took = sent_at.elapsed();
    assert!(
        took >= Duration::from_millis(SEND_TIMEOUT_MS),
        "reset before the send timeout: {took:?}"
    );
    within("the server's tasks end", Duration::from_secs(5), || {
        conns.open() == 0
    })
    .await;
    let after = tcp_memory_pages();
    let metrics = srv.client.get(&srv.admin_url("/metrics")).await.text();
    let made = answered(&metrics) - answered(&before);
    eprintln!(
        "queued {queued} bytes on the server; TCP memory {baseline} -> {held} -> {after} pages; \
         {made} of {sent} requests answered; reset after {took:?}"
    );

    assert_eq!(conns.send_timeouts(), 50);
    assert_eq!(send_timeouts(&metrics) - send_timeouts(&before), 50);
    // The unread answers held kernel memory, and the resets gave it back. (Machine
    // wide, so with a margin for whatever else runs.)
    let rise = held.saturating_sub(baseline);
    assert!(
        rise * 4096 >= queued / 2,
        "the queued answers show in TCP memory: {baseline} -> {held} pages for {queued} bytes"
    );
    assert!(
        after <= baseline + rise / 4,
        "TCP memory falls back: {baseline} -> {held} -> {after} pages"
    );
    // Pipelined requests are read only as answers go out: the 49 small batches fit
    // in the kernel's buffers, but most of the 3,000 were never even read.
    assert!(made < 49 * 100 + 3000 / 2, "{made} of {sent} answered");
    drop(clients);
    srv.stop().await;
}
