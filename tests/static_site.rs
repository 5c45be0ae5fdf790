//! The static origin as an attacker probes it: a site directory that is a checkout,
//! with a `.env`, a `.git/` and symlinks, some pointing outside. The appliance runs
//! on port 0 with `origin.static_dir` set to a temp copy of such a tree.

mod support;

use std::path::Path;

use hyper::StatusCode;
use launchguard::clock::Clock;
use support::edge::{get, T0};
use support::TestServer;

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

#[tokio::test]
async fn dotfiles_and_links_out_of_the_site_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let site = checkout(dir.path());
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(state.path(), Clock::manual(T0), move |c| {
        c.origin.static_dir = site;
    })
    .await;
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
