//! `launchguard simulate` against a real server: every webhook of the curve is signed,
//! accepted and counted, and the factor rises.

use crate::support::*;
use launchguard::clock::Clock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_curve_is_accepted_and_moves_the_factor() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |_| {}).await;
    let curve = dir.path().join("curve.csv");
    std::fs::write(
        &curve,
        "minute,upvotes,comments,maker_comments\n0,40,8,1\n1,60,10,0\n",
    )
    .unwrap();
    let url = s.url("/webhooks/producthunt");
    // 600 curve minutes per minute: the two minutes play in 0.2 s.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_launchguard"))
            .args([
                "simulate", "--speed", "600", "--secret", SECRET, "--url", &url, "--curve",
            ])
            .arg(&curve)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("minute   0:   40 upvotes   8 comments  1 maker comments -> 49 accepted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sent 119: 119 accepted, 0 refused"),
        "{stdout}"
    );
    assert_eq!(s.state().store.next_seq(), 120);
    s.pumped().await;
    // 40 + 60 upvotes (1.2), 18 comments, 1 maker comment (1.5) in the 60 s window.
    let weighted = 100.0 * 1.2 + 18.0 + 1.5;
    let want = 1.0 + 0.4 * weighted / 60.0;
    assert!(
        (s.state().factor.computed() - want).abs() < 1e-9,
        "factor {} want {want}",
        s.state().factor.computed()
    );
    s.stop().await;
}

#[test]
fn a_bad_curve_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let curve = dir.path().join("bad.csv");
    std::fs::write(&curve, "0,1,1,1\n1,two,0,0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_launchguard"))
        .args([
            "simulate",
            "--secret",
            "s",
            "--url",
            "http://127.0.0.1:9/x",
            "--curve",
        ])
        .arg(&curve)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("curve line 2: upvotes: expected a whole number"),
        "{err}"
    );
}
