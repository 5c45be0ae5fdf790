//! `launchguard preflight` as an operator runs it: the binary, a config file, the
//! printed checklist and the exit code.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_launchguard");

fn site() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/site")
}

/// Runs `preflight` on a config with `body`; returns (exit code, stdout).
pub(crate) fn preflight(dir: &Path, body: &str) -> (i32, String) {
    let config = dir.join("launchguard.toml");
    std::fs::write(&config, body).unwrap();
    let out = Command::new(BIN)
        .args([
            "preflight",
            "--connections",
            "1000",
            "--events",
            "1000",
            "--config",
        ])
        .arg(&config)
        .env_remove("LAUNCHGUARD_WEBHOOK_SECRET")
        .env_remove("LAUNCHGUARD_PRODUCTHUNT_TOKEN")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A config on free loopback ports with a secret and the demo's pages to warm.
fn config(data_dir: &Path, static_dir: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {data_dir:?}\n\
         [origin]\nstatic_dir = {static_dir:?}\n[webhook]\nsecrets = [\"preflight-secret\"]\n\
         [cache]\nwarm_urls = [\"/\", \"/launch/\"]\n"
    )
}

/// The same with `origin.upstream` set.
fn upstream_config(data_dir: &Path, upstream: &str) -> String {
    config(data_dir, &site()).replace(
        "[origin]\n",
        &format!("[origin]\nupstream = \"{upstream}\"\ntimeout_ms = 500\n"),
    )
}

#[test]
fn passes_on_the_demo_site() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = preflight(dir.path(), &config(&dir.path().join("state"), &site()));
    assert_eq!(code, 0, "{out}");
    for line in [
        "PASS  config",
        "PASS  webhook secret",
        "PASS  data dir",
        "PASS  open files",
        "PASS  origin",
        "PASS  warm urls",
        "PASS  product hunt         poller off",
        "WARN  alerts",
        "PASS  server.listen",
        "PASS  server.admin_listen",
        "PASS  launch day",
        "0 failed: ready for launch",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn fails_clearly_on_a_read_only_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    // chmod does not stop root; /proc refuses new files to everyone.
    let data_dir = if rustix::process::geteuid().is_root() {
        Path::new("/proc").to_path_buf()
    } else {
        let d = dir.path().join("ro");
        std::fs::create_dir(&d).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o500)).unwrap();
        d
    };
    let (code, out) = preflight(dir.path(), &config(&data_dir, &site()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  data dir"), "{out}");
    assert!(out.contains("is not writable"), "{out}");
    assert!(
        out.contains("fix: give the service user write access"),
        "{out}"
    );
    assert!(out.contains("fix the failures before launch"), "{out}");
}

#[test]
fn fails_clearly_without_a_site_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-site");
    std::fs::create_dir(&empty).unwrap();
    let (code, out) = preflight(dir.path(), &config(&dir.path().join("state"), &empty));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  origin"), "{out}");
    assert!(out.contains("fix: point origin.static_dir"), "{out}");
}

#[test]
fn a_bad_config_key_is_named_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = preflight(dir.path(), "[webhook]\ndurability = \"sometimes\"\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  config"), "{out}");
    assert!(out.contains("webhook.durability"), "{out}");
}

#[test]
fn a_taken_listener_fails() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let body = config(&dir.path().join("state"), &site()).replace(
        "listen = \"127.0.0.1:0\"\nadmin",
        &format!("listen = \"{addr}\"\nadmin"),
    );
    let (code, out) = preflight(dir.path(), &body);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  server.listen"), "{out}");
    assert!(out.contains("already in use"), "{out}");
}

#[test]
fn fails_clearly_when_the_upstream_is_down() {
    let dir = tempfile::tempdir().unwrap();
    // A port bound and never listened on: connections to it are refused, and while
    // `held` lives no other test (they share this process) can bind it.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let closed = held.local_addr().unwrap().as_socket().unwrap();
    let upstream = format!("http://{closed}");
    let (code, out) = preflight(
        dir.path(),
        &upstream_config(&dir.path().join("state"), &upstream),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("FAIL  origin               upstream {upstream}")),
        "{out}"
    );
    assert!(out.contains("could not be reached"), "{out}");
    assert!(out.contains("fix: start the site"), "{out}");
}

/// A real upstream that answers: `/` fast, `/launch/` with a cookie, `/private` private.
#[test]
fn an_upstream_page_that_cannot_be_cached_fails_the_warm_check() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "home" }))
        .route(
            "/launch/",
            axum::routing::get(|| async { ([("set-cookie", "session=1")], "launch") }),
        );
    rt.spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = preflight(
        dir.path(),
        &upstream_config(&dir.path().join("state"), &format!("http://{addr}")),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PASS  origin"), "{out}");
    assert!(out.contains("answered GET / with 200 OK in"), "{out}");
    assert!(out.contains("FAIL  warm urls"), "{out}");
    assert!(out.contains("/launch/ sets a cookie"), "{out}");
    rt.shutdown_background();
}

/// An https upstream (a local TLS origin, its certificate from a test CA): PASS with
/// the CA in `origin.ca_file`, a FAIL naming the certificate and the key without it,
/// and a FAIL naming `origin.ca_file` when that file is bad.
#[test]
fn an_https_upstream_is_checked_with_origin_ca_file() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::TestCa::new("launchguard upstream CA");
    let ca_file = ca.write_pem(dir.path(), "ca.pem");
    let origin =
        rt.block_on(crate::support::origin::FakeOrigin::builder().start_tls(ca.server_config()));
    let upstream = format!("https://localhost:{}", origin.addr.port());
    let state = dir.path().join("state");
    let with_ca = |file: &Path| {
        upstream_config(&state, &upstream)
            .replace("[origin]\n", &format!("[origin]\nca_file = {file:?}\n"))
    };

    let (code, out) = preflight(dir.path(), &with_ca(&ca_file));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "PASS  origin               upstream {upstream} answered GET / with 200 OK"
        )),
        "{out}"
    );
    assert!(out.contains("PASS  warm urls"), "{out}");

    let (code, out) = preflight(dir.path(), &upstream_config(&state, &upstream));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  origin"), "{out}");
    assert!(out.contains("certificate"), "{out}");
    assert!(out.contains("fix: the upstream's certificate"), "{out}");
    assert!(out.contains("origin.ca_file"), "{out}");

    let (code, out) = preflight(dir.path(), &with_ca(&dir.path().join("missing.pem")));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  origin               origin.ca_file: "),
        "{out}"
    );
    assert!(out.contains("fix: point origin.ca_file"), "{out}");
    drop(origin);
    rt.shutdown_background();
}

#[test]
fn a_half_configured_poller_fails_naming_the_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let body =
        config(&dir.path().join("state"), &site()) + "[producthunt]\npost_slug = \"my-product\"\n";
    let (code, out) = preflight(dir.path(), &body);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  product hunt"), "{out}");
    assert!(out.contains("no token is set"), "{out}");
    assert!(out.contains("fix: set producthunt.token_file"), "{out}");
}
