//! The real binary as a process: SIGKILL under load loses no acknowledged event,
//! SIGTERM drains and exits 0, `sign` matches published test vectors, and config
//! errors name the key.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::binary::{self, write_config, Proc, BIN};
use crate::support::{event_at, Client};
use hyper::{Method, StatusCode};
use launchguard::clock::Clock;
use launchguard::ingest::webhook::signature::{sign_producthunt, Key};

const SECRET: &str = "process-test-secret";

/// Starts the binary on `dir` with the given durability.
fn spawn(dir: &Path, durability: &str) -> Proc {
    let config = write_config(dir, SECRET, &format!("durability = \"{durability}\"\n"));
    binary::spawn(&config, &[])
}

fn signed(id: &str) -> (Vec<u8>, String) {
    let body = event_at(id, "upvote", Clock::system().now_ms());
    let sig = sign_producthunt(&Key::parse(SECRET).unwrap(), &body);
    (body, sig)
}

async fn post(client: &Client, addr: SocketAddr, id: &str) -> Result<crate::support::Resp, String> {
    let (body, sig) = signed(id);
    client
        .try_send(
            Method::POST,
            &format!("http://{addr}/webhooks/producthunt"),
            &[("x-producthunt-signature", &sig)],
            body,
        )
        .await
}

/// Every stored event, seq → id, paging through the admin API.
async fn stored_events(client: &Client, admin: SocketAddr) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let mut after = 0;
    loop {
        let page = client
            .get(&format!(
                "http://{admin}/admin/events?after={after}&limit=1000"
            ))
            .await
            .json();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return out;
        }
        for e in events {
            after = e["seq"].as_u64().unwrap();
            out.insert(after, e["id"].as_str().unwrap().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = spawn(dir.path(), "fsync");
    let client = Client::new();

    const SENDERS: usize = 32;
    const PER_SENDER: usize = 150; // 4,800 planned; the kill lands part-way.
    const KILL_AFTER: usize = 1_500;
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<(String, u64)>::new()));
    let ack_count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let (client, acked, ack_count, killed) = (
            client.clone(),
            acked.clone(),
            ack_count.clone(),
            killed.clone(),
        );
        let addr = proc.public;
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                if killed.load(Ordering::Acquire) {
                    return;
                }
                let id = format!("kill-{sender}-{n}");
                match post(&client, addr, &id).await {
                    Ok(r) if r.status == StatusCode::ACCEPTED => {
                        let seq = r.json()["seq"].as_u64().unwrap();
                        acked.lock().push((id, seq));
                        ack_count.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(r) => panic!("unexpected answer {}: {}", r.status, r.text()),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    while ack_count.load(Ordering::Acquire) < KILL_AFTER {
        tokio::task::yield_now().await;
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    proc.child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
    killed.store(true, Ordering::Release);
    proc.child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} acks before the kill",
        acked.len()
    );

    let mut proc = spawn(dir.path(), "fsync");
    let client = Client::new();
    let stored = stored_events(&client, proc.admin).await;
    for (id, seq) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(id),
            "acknowledged seq {seq} ({id}) is missing after SIGKILL"
        );
    }
    // Every acknowledged id is known: a replay is a duplicate, not a new event.
    for (id, _) in acked.iter().step_by(7) {
        let r = post(&client, proc.public, id).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{id}: {}", r.text());
        assert_eq!(r.json()["status"], "duplicate");
    }
    // Events stored but not yet acknowledged at the kill (their batch was cut) are
    // known too: the store never keeps an event without its dedup entry.
    let acked_ids: std::collections::HashSet<&String> = acked.iter().map(|(id, _)| id).collect();
    for id in stored.values().filter(|id| !acked_ids.contains(id)) {
        let r = post(&client, proc.public, id).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{id}: {}", r.text());
        assert_eq!(r.json()["status"], "duplicate");
    }
    // And counted: the rebuilt window holds at least every acknowledged upvote.
    let f = client
        .get(&format!("http://{}/admin/factor", proc.admin))
        .await
        .json();
    let weighted = f["velocity"].as_f64().unwrap() * 60.0;
    assert!(
        weighted + 1e-6 >= acked.len() as f64 * 1.2,
        "window holds {weighted}, acknowledged {}",
        acked.len()
    );
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // Buffered: the 202 comes before the disk, so only the shutdown flush saves these.
    let mut proc = spawn(dir.path(), "buffered");
    let client = Client::new();
    let mut ids = Vec::new();
    for n in 0..200 {
        let id = format!("term-{n}");
        let r = post(&client, proc.public, &id).await.unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED);
        ids.push((r.json()["seq"].as_u64().unwrap(), id));
    }
    let rc = unsafe_kill(proc.child.id(), libc::SIGTERM);
    assert_eq!(rc, 0);
    let status = proc.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");

    let mut proc = spawn(dir.path(), "buffered");
    let stored = stored_events(&client, proc.admin).await;
    for (seq, id) in &ids {
        assert_eq!(stored.get(seq), Some(id));
    }
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 after the listeners are
/// bound, WATCHDOG=1 pings from the runtime, STOPPING=1 on SIGTERM. The test binds the
/// notification socket itself, as systemd would.
#[test]
fn notifies_systemd_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let config = write_config(dir.path(), SECRET, "");
    let mut proc = binary::spawn(
        &config,
        &[
            ("NOTIFY_SOCKET", sock_path.as_os_str()),
            ("WATCHDOG_USEC", "200000".as_ref()),
        ],
    );
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification arrives");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.contains("READY=1"), "{first}");
    assert!(first.contains("STATUS=serving on 127.0.0.1:"), "{first}");
    // Pings keep coming (every 100 ms for WATCHDOG_USEC = 200 ms).
    for _ in 0..3 {
        let ping = next();
        assert_eq!(ping, "WATCHDOG=1\n");
    }
    assert_eq!(unsafe_kill(proc.child.id(), libc::SIGTERM), 0);
    let stopping = loop {
        let m = next();
        if m != "WATCHDOG=1\n" {
            break m;
        }
    };
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert_eq!(proc.child.wait().unwrap().code(), Some(0));
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: u32, signal: i32) -> i32 {
    // SAFETY: kill(2) takes plain integers; the pid is our own child.
    unsafe { libc::kill(pid as i32, signal) }
}

fn run(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("LAUNCHGUARD_WEBHOOK_SECRET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sign_prints_headers_matching_published_vectors() {
    // RFC 4231, test case 2.
    let (code, out, _) = run(
        &["sign", "--secret", "Jefe"],
        b"what do ya want for nothing?",
    );
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "X-ProductHunt-Signature: sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843\n"
    );
    // The Standard Webhooks reference vector.
    let (code, out, _) = run(
        &[
            "sign",
            "--scheme",
            "standard",
            "--secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "--id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "--timestamp",
            "1614265330",
        ],
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek\nwebhook-timestamp: 1614265330\nwebhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\n"
    );
}

/// What the README's demo does: `sign --stamp-to` stamps a sample payload's
/// `created_at` with now and signs the stamped file, which the server accepts; the
/// sample as shipped (a fixed, old created_at) is signed with a note on stderr, and the
/// server refuses it by age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_stamps_created_at_so_a_sample_payload_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/samples/upvote.json");
    let stamped = dir.path().join("upvote.json");
    let (code, header, note) = run(
        &[
            "sign",
            "--secret",
            SECRET,
            "--file",
            sample.to_str().unwrap(),
            "--stamp-to",
            stamped.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, 0, "{note}");
    assert!(note.is_empty(), "{note}");
    let body = std::fs::read(&stamped).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["id"], "evt-demo-upvote-1");
    assert_eq!(json["data"]["user"], "maya");
    let at: jiff::Timestamp = json["created_at"].as_str().unwrap().parse().unwrap();
    let skew_ms = at.as_millisecond() - Clock::system().now_ms() as i64;
    assert!(skew_ms.abs() < 60_000, "created_at {at} is not now");
    let sig = sign_producthunt(&Key::parse(SECRET).unwrap(), &body);
    assert_eq!(header, format!("X-ProductHunt-Signature: {sig}\n"));

    let (code, as_shipped, note) = run(
        &[
            "sign",
            "--secret",
            SECRET,
            "--file",
            sample.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, 0);
    assert!(
        note.contains("created_at 2026-11-25T08:00:00Z is") && note.contains("--stamp-to"),
        "{note}"
    );

    let mut proc = spawn(dir.path(), "fsync");
    let client = Client::new();
    let url = format!("http://{}/webhooks/producthunt", proc.public);
    let send = async |body: Vec<u8>, header: &str| {
        let sig = header
            .trim()
            .strip_prefix("X-ProductHunt-Signature: ")
            .unwrap();
        client
            .send(
                Method::POST,
                &url,
                &[
                    ("x-producthunt-signature", sig),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
    };
    let old = send(std::fs::read(&sample).unwrap(), &as_shipped).await;
    let fresh = send(body, &header).await;
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "{}", old.text());
    assert_eq!(old.json()["field"], "created_at");
    assert_eq!(fresh.status, StatusCode::ACCEPTED, "{}", fresh.text());
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[webhook]\ndurability = \"sometimes\"\n",
            "webhook.durability",
        ),
        (
            "[server]\nlistne = \"127.0.0.1:1\"\n",
            "unknown field `listne`",
        ),
        (
            "[server]\nlisten = \"0.0.0.0:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
            "webhook.secrets",
        ),
    ];
    for (text, needle) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("{text}\n")).unwrap();
        let full = format!(
            "{}\n[origin]\nstatic_dir = {:?}\n",
            std::fs::read_to_string(&path).unwrap(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/site")
        );
        std::fs::write(&path, full).unwrap();
        let (code, _, err) = run(&["serve", "--config", path.to_str().unwrap()], b"");
        assert_eq!(code, 2, "{text}: {err}");
        assert!(
            err.contains(needle),
            "{text}: expected {needle:?} in {err:?}"
        );
    }
}
