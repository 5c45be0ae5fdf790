//! The static origin as an attacker probes it: a site directory that is a checkout,
//! with a `.env`, a `.git/` and symlinks, some pointing outside. The appliance runs
//! on port 0 with `origin.static_dir` set to a temp copy of such a tree.

use std::path::Path;

use crate::support::edge::{get, T0};
use crate::support::TestServer;
use hyper::StatusCode;
use launchguard::clock::Clock;

/// A site in `dir/site` with secrets beside its pages, and `dir/outside` next to it.
fn checkout(dir: &Path) -> std::path::PathBuf {
    let site = dir.join("site");
    let outside = dir.join("outside");
    for d in [&site, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::create_dir_all(site.join(".git")).unwrap();
    std::fs::create_dir_all(site.join(".well-known")).unwrap();
    std::fs::create_dir_all(site.join("launch")).unwrap();
    std::fs::create_dir_all(site.join("assets/.cache")).unwrap();
    let files = [
        ("site/index.html", "<p>home</p>"),
        ("site/404.html", "<p>not here</p>"),
        ("site/launch/index.html", "<p>launch</p>"),
        ("site/.env", "DATABASE_URL=postgres://secret"),
        ("site/.git/config", "[remote] url = secret"),
        ("site/assets/.cache/token", "secret"),
        (
            "site/.well-known/security.txt",
            "Contact: mailto:ops@example.com",
        ),
        ("site/shared.css", "body{}"),
        ("outside/passwd", "root:secret"),
        ("outside/index.html", "<p>secret index</p>"),
    ];
    for (p, text) in files {
        std::fs::write(dir.join(p), text).unwrap();
    }
    let link = |target: &Path, at: &str| std::os::unix::fs::symlink(target, site.join(at)).unwrap();
    link(&outside, "etc-link");
    link(&outside.join("passwd"), "passwd.txt");
    link(&site.join("shared.css"), "style.css");
    link(&site.join("launch"), "now");
    site
}

/// The appliance serving a fresh [`checkout`]; the temp dirs live as long as the first.
async fn serve_checkout() -> ((tempfile::TempDir, tempfile::TempDir), TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let site = checkout(dir.path());
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(state.path(), Clock::manual(T0), move |c| {
        c.origin.static_dir = site;
    })
    .await;
    ((dir, state), s)
}

#[tokio::test]
async fn dotfiles_and_links_out_of_the_site_are_never_served() {
    let (_dirs, s) = serve_checkout().await;
    for path in [
        "/.env",
        "/.git/config",
        "/%2eenv",
        "/%2Egit/config",
        "/assets/.cache/token",
        "/etc-link/passwd",
        "/etc-link/",
        "/passwd.txt",
        "/.well-known/../.env",
    ] {
        let r = get(&s, path, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text());
        assert!(!r.text().contains("secret"), "{path}: {}", r.text());
        assert!(
            r.text().contains("not here"),
            "{path}: the site's own 404 page"
        );
    }
    for (path, body) in [
        ("/.well-known/security.txt", "Contact"),
        ("/style.css", "body{}"),
        ("/now/", "launch"),
        ("/launch/", "launch"),
    ] {
        let r = get(&s, path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(r.text().contains(body), "{path}: {}", r.text());
    }
    s.stop().await;
}

/// Random paths built from the pieces a traversal uses (dot segments, encoded dots
/// and slashes, backslashes, NULs, the links, the dot-directories), sent raw so no
/// client normalizes them first: nothing outside the site and no dot-path's content
/// is ever answered, and every answer is a 2xx, 3xx or 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_traversal_paths_never_reach_a_secret() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (_dirs, s) = serve_checkout().await;
    let piece = prop_oneof![
        Just(".."),
        Just("."),
        Just("%2e%2e"),
        Just("%2E."),
        Just(".%2e"),
        Just("%2f"),
        Just("%5c"),
        Just("\\"),
        Just("%00"),
        Just("//"),
        Just(".env"),
        Just(".git"),
        Just("config"),
        Just("etc-link"),
        Just("passwd"),
        Just("passwd.txt"),
        Just("outside"),
        Just("assets"),
        Just(".cache"),
        Just("token"),
        Just(".well-known"),
        Just("launch"),
        Just("now"),
        Just("index.html"),
    ];
    let paths = prop::collection::vec(piece, 1..8).prop_map(|p| format!("/{}", p.join("/")));
    let mut runner = TestRunner::new(Config {
        cases: 1500,
        failure_persistence: None,
        ..Config::default()
    });
    let mut cases = Vec::new();
    for _ in 0..1500 {
        cases.push(paths.new_tree(&mut runner).unwrap().current());
    }
    for path in cases {
        let mut c = tokio::net::TcpStream::connect(s.public).await.unwrap();
        let raw = format!("GET {path} HTTP/1.1\r\nHost: launch.test\r\nConnection: close\r\n\r\n");
        c.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        let status: u16 = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((200..500).contains(&status), "{path}: {out}");
        assert!(!out.contains("secret"), "{path}: {out}");
    }
    s.stop().await;
}
