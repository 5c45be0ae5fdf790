//! The edge cache as an attacker and a launch-day visitor try it: poisoning through
//! the host, forwarding and override headers, cookies and authorization; fills lost
//! to unrelated POSTs; the origin's own `Cache-Control` and `Vary`; dot-segments that
//! dodge shedding; compression on the miss path; the query modes; and origin permits
//! kept for fills. The appliance runs on port 0 in front of a real local origin whose
//! `/reflect` page renders what it was told, the way real apps do
//! (tests/it/support/origin.rs). The victim must never see the attacker's value.

use std::sync::Arc;
use std::time::Duration;

use crate::support::edge::{edge, get, metric, x_cache};
use crate::support::origin::{FakeOrigin, Respond};
use crate::support::{Resp, TestServer};
use hyper::header::CACHE_CONTROL;
use hyper::{Method, StatusCode};
use launchguard::config::QueryMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SITE: &str = "launch.example";

/// A GET as a visitor of the site sends it.
async fn visit(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut all = vec![("host", SITE)];
    all.extend_from_slice(headers);
    get(s, path, &all).await
}

/// Sends raw bytes on a new connection and reads the whole answer (the request asks
/// to close); the status and the text.
async fn raw(s: &TestServer, request: &str) -> (u16, String) {
    let mut c = tokio::net::TcpStream::connect(s.public).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

#[tokio::test]
async fn a_host_not_served_gets_421_and_never_reaches_the_origin() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| c.server.hosts = vec![SITE.into()]).await;
    let r = get(&s, "/reflect", &[("host", "evil.example")]).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{}", r.text());
    assert!(r.text().contains("server.hosts"));
    assert!(r.header("x-edge-scale-factor").is_some());
    assert_eq!(origin.total(), 0);
    // The same name in another case, with the default port and a trailing dot, is ours.
    let r = get(&s, "/reflect", &[("host", "LAUNCH.example.:80")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().contains("http://launch.example/launch/"),
        "{}",
        r.text()
    );
    // An absolute-form request names its host in the target: that one is checked.
    let (status, _) = raw(
        &s,
        "GET http://evil.example/reflect HTTP/1.1\r\nHost: launch.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 421);
    // A port other than the listener's would only multiply the keys of one page.
    let r = get(&s, "/reflect", &[("host", "launch.example:1234")]).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    let own = format!("launch.example:{}", s.public.port());
    assert_eq!(
        get(&s, "/reflect", &[("host", &own)]).await.status,
        StatusCode::OK
    );
    assert_eq!(origin.count("/reflect"), 2);
    s.stop().await;
}

#[tokio::test]
async fn missing_duplicate_and_malformed_hosts_get_400() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| c.server.hosts = vec![SITE.into()]).await;
    for request in [
        "GET /reflect HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /reflect HTTP/1.1\r\nHost: launch.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "GET /reflect HTTP/1.1\r\nHost: launch.example@evil.example\r\nConnection: close\r\n\r\n",
        "GET /reflect HTTP/1.1\r\nHost: launch.example:99999\r\nConnection: close\r\n\r\n",
        "GET /reflect HTTP/1.1\r\nHost: launch.example..\r\nConnection: close\r\n\r\n",
        // Absolute-form names the host in the target, but HTTP/1.1 still needs one Host line.
        "GET http://launch.example/reflect HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET http://launch.example/reflect HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    ] {
        let (status, text) = raw(&s, request).await;
        assert_eq!(status, 400, "{request:?}: {text}");
        assert!(text.contains("bad_host"), "{text}");
    }
    assert_eq!(origin.total(), 0);
    // HTTP/1.0 may omit Host: it is served as the primary name.
    let (status, text) = raw(&s, "GET /reflect HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("http://launch.example/launch/"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn with_any_host_allowed_each_host_is_its_own_page() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let attack = get(&s, "/reflect", &[("host", "evil.example")]).await;
    assert_eq!(x_cache(&attack), "MISS");
    assert!(attack.text().contains("evil.example"));
    let victim = visit(&s, "/reflect", &[]).await;
    assert_eq!(x_cache(&victim), "MISS", "not the attacker's entry");
    assert!(!victim.text().contains("evil"), "{}", victim.text());
    assert!(victim.text().contains("http://launch.example/launch/"));
    // Host normalization: one entry for the spellings of one host.
    let again = get(&s, "/reflect", &[("host", "Launch.Example:80")]).await;
    assert_eq!(x_cache(&again), "HIT");
    assert_eq!(again.body, victim.body);
    s.stop().await;
}

#[tokio::test]
async fn client_forwarding_headers_never_reach_the_origin() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let forged = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-for", "203.0.113.66"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/evil"),
        (
            "forwarded",
            "for=203.0.113.66;host=evil.example;proto=https",
        ),
        ("x-real-ip", "203.0.113.66"),
    ];
    let attack = visit(&s, "/reflect", &forged).await;
    assert_eq!(x_cache(&attack), "MISS");
    for page in [attack.text(), visit(&s, "/reflect", &[]).await.text()] {
        assert!(!page.contains("evil"), "{page}");
        assert!(!page.contains("203.0.113.66"), "{page}");
        assert!(!page.contains("8443"), "{page}");
        assert!(
            page.contains("<a href=\"http://launch.example/launch/\">"),
            "{page}"
        );
        assert!(page.contains("x-forwarded-for=127.0.0.1<"), "{page}");
    }
    // Also on a request that bypasses the cache.
    let bypass = visit(
        &s,
        "/reflect?me",
        &[forged[0], forged[1], ("authorization", "Bearer t")],
    )
    .await;
    assert_eq!(x_cache(&bypass), "BYPASS");
    assert!(!bypass.text().contains("evil") && !bypass.text().contains("203.0.113.66"));
    assert_eq!(origin.count("/reflect"), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_trusted_balancer_names_the_client_and_the_scheme() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| {
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()]
    })
    .await;
    let r = visit(
        &s,
        "/reflect",
        &[
            ("x-forwarded-for", "198.51.100.23, 127.0.0.5"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await;
    let page = r.text();
    assert!(page.contains("x-forwarded-for=198.51.100.23<"), "{page}");
    assert!(
        page.contains("<a href=\"https://launch.example/launch/\">"),
        "{page}"
    );
    assert!(
        !page.contains("evil"),
        "the host is still the verified one: {page}"
    );
    s.stop().await;
}

#[tokio::test]
async fn override_headers_cannot_cache_a_404_for_everyone() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    for (i, header) in [
        ("x-http-method-override", "DELETE"),
        ("x-original-url", "/nothing-here"),
        ("x-rewrite-url", "/nothing-here"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/reflect/{i}");
        let attack = visit(&s, &path, &[header]).await;
        assert_eq!(
            attack.status,
            StatusCode::OK,
            "{header:?} reached the origin"
        );
        let victim = visit(&s, &path, &[]).await;
        assert_eq!(victim.status, StatusCode::OK);
        assert_eq!(x_cache(&victim), "HIT");
        let seen = origin.headers_of(&path).unwrap();
        assert!(!seen.contains_key(header.0));
    }
    s.stop().await;
}

#[tokio::test]
async fn a_session_cookie_bypasses_and_its_page_is_never_shared() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let alice = visit(&s, "/reflect", &[("cookie", "session=alice; lg_vid=v1")]).await;
    assert_eq!(x_cache(&alice), "BYPASS");
    assert!(alice.text().contains("hello alice"));
    // The origin saw Alice's session, never launchguard's own cookie.
    let seen = origin.headers_of("/reflect").unwrap();
    assert_eq!(seen["cookie"], "session=alice");
    let victim = visit(&s, "/reflect", &[]).await;
    assert_eq!(x_cache(&victim), "MISS");
    assert!(victim.text().contains("hello guest"), "{}", victim.text());
    assert!(!victim.text().contains("alice"));
    let alice = visit(&s, "/reflect", &[("cookie", "_ga=GA1; session=alice")]).await;
    assert_eq!(x_cache(&alice), "BYPASS");
    assert!(alice.text().contains("hello alice"));
    assert_eq!(origin.count("/reflect"), 3);
    s.stop().await;
}

#[tokio::test]
async fn analytics_and_own_cookies_share_the_cache_and_stay_home() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let first = visit(
        &s,
        "/reflect",
        &[(
            "cookie",
            "_ga=GA1.1.attacker; _gid=x; _fbp=fb; lg_vid=v1; __Host-lg_wr=w",
        )],
    )
    .await;
    assert_eq!(x_cache(&first), "MISS");
    assert!(!origin
        .headers_of("/reflect")
        .unwrap()
        .contains_key("cookie"));
    assert!(!first.text().contains("attacker"));
    let second = visit(&s, "/reflect", &[("cookie", "_ga=GA1.1.other; lg_vid=v2")]).await;
    assert_eq!(x_cache(&second), "HIT");
    // A configured list replaces the default one.
    let (_d2, s2) = edge(&origin, |c| c.cache.ignore_cookies = vec!["theme".into()]).await;
    assert_eq!(
        x_cache(&visit(&s2, "/p1", &[("cookie", "theme=dark")]).await),
        "MISS"
    );
    assert_eq!(
        x_cache(&visit(&s2, "/p1", &[("cookie", "theme=light")]).await),
        "HIT"
    );
    assert_eq!(
        x_cache(&visit(&s2, "/p1", &[("cookie", "_ga=1")]).await),
        "BYPASS"
    );
    s2.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_never_builds_or_joins_a_shared_fetch() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    origin.hold();
    let client = s.client.clone();
    let url = s.url("/reflect");
    let victim = tokio::spawn(async move {
        client
            .send(Method::GET, &url, &[("host", SITE)], Vec::new())
            .await
    });
    origin.wait_for("/reflect", 1).await;
    // While the shared fetch is held, a request with credentials goes on its own.
    let client = s.client.clone();
    let url = s.url("/reflect");
    let admin = tokio::spawn(async move {
        client
            .send(
                Method::GET,
                &url,
                &[("host", SITE), ("authorization", "Basic YWRtaW46cHc=")],
                Vec::new(),
            )
            .await
    });
    origin.wait_for("/reflect", 2).await;
    origin.release();
    let victim = victim.await.unwrap();
    let admin = admin.await.unwrap();
    assert_eq!(x_cache(&admin), "BYPASS");
    assert!(admin.text().contains("authorization=Basic"));
    assert_eq!(x_cache(&victim), "MISS");
    assert!(
        victim.text().contains("authorization=<"),
        "{}",
        victim.text()
    );
    let later = visit(&s, "/reflect", &[]).await;
    assert_eq!(x_cache(&later), "HIT");
    assert!(!later.text().contains("Basic"));
    // First with credentials, then without: the second builds its own entry.
    let admin = visit(&s, "/reflect/first", &[("authorization", "Bearer t")]).await;
    assert_eq!(x_cache(&admin), "BYPASS");
    let anon = visit(&s, "/reflect/first", &[]).await;
    assert_eq!(x_cache(&anon), "MISS");
    assert!(!anon.text().contains("Bearer"), "{}", anon.text());
    s.stop().await;
}

#[tokio::test]
async fn a_get_with_a_body_cannot_desync_the_origin_connection() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let smuggled = "GET /reflect HTTP/1.1\r\nHost: launch.example\r\nContent-Length: 44\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nGET /admin HTTP/1.1\r\nHost: launch.example\r\n\r\n";
    let (status, text) = raw(&s, smuggled).await;
    assert_eq!(status, 200, "{text}");
    let seen = origin.headers_of("/reflect").unwrap();
    assert!(!seen.contains_key("content-length"), "{seen:?}");
    assert!(!seen.contains_key("content-type"));
    // The pooled connection to the origin is still in step: the next shared fetch
    // gets its own page, and nothing asked for /admin.
    let next = visit(&s, "/reflect/next", &[]).await;
    assert_eq!(next.status, StatusCode::OK);
    assert!(
        next.text().contains("url=/reflect/next<"),
        "{}",
        next.text()
    );
    assert_eq!(origin.count("/admin"), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_header_named_in_connection_cannot_poison_a_vary_variant() {
    let origin = FakeOrigin::builder()
        .route("/vary", Respond::vary_language())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    // The origin never sees Accept-Language (hop-by-hop by the client's word) and
    // renders its default; that page must not be stored as the French one.
    let attack = get(
        &s,
        "/vary",
        &[("accept-language", "fr"), ("connection", "accept-language")],
    )
    .await;
    assert!(attack.text().contains("lang=none"), "{}", attack.text());
    let french = get(&s, "/vary", &[("accept-language", "fr")]).await;
    assert_eq!(x_cache(&french), "MISS");
    assert!(french.text().contains("lang=fr"), "{}", french.text());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_elsewhere_does_not_throw_away_the_pages_being_filled() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    origin.hold();
    let fills: Vec<_> = (1..=5)
        .map(|i| {
            let client = s.client.clone();
            let url = s.url(&format!("/b{i}"));
            tokio::spawn(async move { client.get(&url).await })
        })
        .collect();
    origin.wait_total(5).await;
    let r = s
        .client
        .send(
            Method::POST,
            &s.url("/api/signup"),
            &[],
            b"email=a@b.c".to_vec(),
        )
        .await;
    assert_eq!(x_cache(&r), "BYPASS");
    assert_eq!(r.status, StatusCode::OK);
    origin.release();
    for f in fills {
        assert_eq!(x_cache(&f.await.unwrap()), "MISS");
    }
    for i in 1..=5 {
        assert_eq!(
            x_cache(&get(&s, &format!("/b{i}"), &[]).await),
            "HIT",
            "/b{i}"
        );
    }
    // A POST to the page itself while it fills does keep that fill out.
    origin.hold();
    let client = s.client.clone();
    let url = s.url("/b6");
    let fill = tokio::spawn(async move { client.get(&url).await });
    origin.wait_for("/b6", 1).await;
    s.client
        .send(Method::POST, &s.url("/b6"), &[], b"x".to_vec())
        .await;
    origin.release();
    fill.await.unwrap();
    assert_eq!(x_cache(&get(&s, "/b6", &[]).await), "MISS");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_fills_survive_a_hundred_signups() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| {
        // 1000 permits for fills, 1000 for bypass traffic (bypass_share 0.5).
        c.velocity.base_concurrency = 2000;
        c.velocity.max_concurrency = 2000;
        c.origin.timeout_ms = 60_000;
    })
    .await;
    let s = Arc::new(s);
    origin.hold();
    let fills: Vec<_> = (0..1000)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { get(&s, &format!("/page/{i}"), &[]).await })
        })
        .collect();
    origin.wait_total(1000).await;
    for i in 0..100 {
        let r = s
            .client
            .send(
                Method::POST,
                &s.url(&format!("/api/signup?n={i}")),
                &[],
                b"email=a@b.c".to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    origin.release();
    for f in fills {
        assert_eq!(x_cache(&f.await.unwrap()), "MISS");
    }
    for i in 0..1000 {
        let r = get(&s, &format!("/page/{i}"), &[]).await;
        assert_eq!(x_cache(&r), "HIT", "/page/{i}");
    }
    assert_eq!(origin.total(), 1100);
    Arc::try_unwrap(s).ok().expect("last handle").stop().await;
}

#[tokio::test]
async fn the_origins_cache_control_and_vary_are_passed_on() {
    let origin = FakeOrigin::builder()
        .route(
            "/maxage",
            Respond::page().header(CACHE_CONTROL, "public, max-age=10"),
        )
        .route("/vary", Respond::vary_language())
        .route("/big", Respond::page().padded(300))
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let r = get(&s, "/maxage", &[]).await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=10"));
    assert_eq!(r.header("age"), Some("0"));
    s.clock.advance_ms(3_000);
    let r = get(&s, "/maxage", &[]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header("cache-control"), Some("public, max-age=10"));
    assert_eq!(r.header("age"), Some("3"));
    // Silent origin: the edge's dynamic header.
    let r = get(&s, "/silent", &[]).await;
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=60, stale-while-revalidate=30")
    );
    // The origin's Vary as sent (a small page: no encoded variants, nothing added).
    let r = get(&s, "/vary", &[("accept-language", "fr")]).await;
    assert_eq!(r.header("vary"), Some("Accept-Language"));
    let r = get(&s, "/vary", &[("accept-language", "fr")]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header("vary"), Some("Accept-Language"));
    // A page the edge compresses says so.
    assert_eq!(
        get(&s, "/big", &[]).await.header("vary"),
        Some("Accept-Encoding")
    );
    s.stop().await;
}

#[tokio::test]
async fn withheld_and_connection_named_fields_reach_no_other_client() {
    let origin = FakeOrigin::builder()
        .route("/withheld", Respond::withheld())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let first = get(&s, "/withheld", &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(
        first.header("set-cookie"),
        Some("visitor=1"),
        "the fetching client keeps its cookie"
    );
    assert!(first.header("x-hop").is_none());
    let second = get(&s, "/withheld", &[]).await;
    assert_eq!(x_cache(&second), "HIT");
    assert!(
        second.header("set-cookie").is_none(),
        "never given to another client"
    );
    assert!(second.header("x-hop").is_none());
    assert_eq!(
        second.header("cache-control"),
        Some("max-age=60, private=\"set-cookie\"")
    );
    assert_eq!(origin.count("/withheld"), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_304_refreshes_the_stored_headers() {
    let origin = FakeOrigin::builder()
        .route(
            "/nocache",
            Respond::page().header(CACHE_CONTROL, "no-cache").etag(),
        )
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let r = get(&s, "/nocache", &[]).await;
    assert_eq!(r.header("x-origin-n"), Some("1"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let r = get(&s, "/nocache", &[]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(origin.not_modified(), 1);
    assert_eq!(
        r.header("x-origin-n"),
        Some("2"),
        "the 304's headers are kept"
    );
    let r = get(&s, "/nocache", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    s.stop().await;
}

#[tokio::test]
async fn dot_segments_cannot_dodge_shedding() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    s.pin(5.0, 86400).await;
    for path in [
        "/launch/../pricing",
        "/launch/%2e%2e/pricing",
        "/launch/.%2E/pricing",
        "/launch/./../pricing",
    ] {
        let r = get(&s, path, &[]).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path} was not shed"
        );
    }
    for path in [
        "/launch/..%2fpricing",
        "/launch/..%2Fpricing",
        "/../pricing",
        "/launch/../../pricing",
        "/launch/%00",
        "/launch/..;/pricing",
        "/launch/..%5cpricing",
    ] {
        let r = get(&s, path, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.json()["error"], "bad_path");
    }
    assert_eq!(origin.total(), 0);
    // A critical path spelled with dots is served, and the origin gets it canonical.
    let r = get(&s, "/launch/x/%2e%2e/%7Eteam", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(origin.count("/launch/~team"), 1);
    let r = get(&s, "/launch/./~team", &[]).await;
    assert_eq!(x_cache(&r), "HIT", "one key for both spellings");
    s.stop().await;
}

/// Waits until the stored `/big` has its compressed variants.
async fn compressed(s: &TestServer, path: &str) -> bool {
    let host = s.public.to_string();
    let cache = s.state().edge.cache().clone();
    let key = cache.key_of(&host, path, None).unwrap();
    for _ in 0..200_000 {
        let (e, _) = cache.store().get(key.as_str(), &hyper::HeaderMap::new());
        if e.is_some_and(|e| e.br.is_some()) {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_compressed_once_asked_for_twice_and_busting_costs_none() {
    let origin = FakeOrigin::builder()
        .route("/big", Respond::page().padded(300))
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let br = [("accept-encoding", "gzip, br")];
    let first = get(&s, "/big", &br).await;
    assert_eq!(x_cache(&first), "MISS");
    assert!(
        first.header("content-encoding").is_none(),
        "no compression on a miss"
    );
    assert_eq!(first.header("vary"), Some("Accept-Encoding"));
    let second = get(&s, "/big", &br).await;
    assert_eq!(x_cache(&second), "HIT");
    assert!(
        compressed(&s, "/big").await,
        "compressed after the second request"
    );
    let third = get(&s, "/big", &br).await;
    assert_eq!(third.header("content-encoding"), Some("br"));
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &third.body[..], &mut out).unwrap();
    assert_eq!(out, first.body);
    assert_eq!(origin.count("/big"), 1);
    // One-off URLs are never compressed.
    // The counters are the process's: other tests compress too, but not these URLs,
    // so the check is on the stored entries; the counters only bound it.
    let done = "launchguard_cache_compressions_total{result=\"done\"}";
    let busy = "launchguard_cache_compressions_total{result=\"busy\"}";
    let (before, busy_before) = (metric(&s, done).await, metric(&s, busy).await);
    for i in 0..50 {
        let r = get(&s, &format!("/big?bust={i}"), &br).await;
        assert_eq!(x_cache(&r), "MISS");
        assert!(r.header("content-encoding").is_none());
    }
    assert!(metric(&s, done).await - before < 50.0);
    assert!(metric(&s, busy).await - busy_before < 50.0);
    let cache = s.state().edge.cache().clone();
    for i in 0..50 {
        let q = format!("bust={i}");
        let key = cache
            .key_of(&s.public.to_string(), "/big", Some(&q))
            .unwrap();
        let (e, _) = cache.store().get(key.as_str(), &hyper::HeaderMap::new());
        assert!(e.unwrap().br.is_none());
    }
    s.stop().await;
}

#[tokio::test]
async fn warm_ups_compress_at_once() {
    let origin = FakeOrigin::builder()
        .route("/big", Respond::page().padded(300))
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| c.cache.warm_urls = vec!["/big".into()]).await;
    let r = get(&s, "/big", &[("accept-encoding", "br")]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header("content-encoding"), Some("br"));
    s.stop().await;
}

#[tokio::test]
async fn the_query_modes_key_and_fetch_the_same_url() {
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| c.cache.query = QueryMode::Ignore).await;
    let a = visit(&s, "/reflect?bust=1", &[]).await;
    assert_eq!(x_cache(&a), "MISS");
    assert!(a.text().contains("url=/reflect<"), "{}", a.text());
    assert_eq!(x_cache(&visit(&s, "/reflect?bust=2", &[]).await), "HIT");
    assert_eq!(origin.total(), 1);
    s.stop().await;

    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| {
        c.cache.query = QueryMode::Keep(vec!["page".into()]);
    })
    .await;
    let a = visit(&s, "/reflect?bust=1&page=2&utm_source=x", &[]).await;
    assert!(a.text().contains("url=/reflect?page=2<"), "{}", a.text());
    assert_eq!(
        x_cache(&visit(&s, "/reflect?page=2&bust=9", &[]).await),
        "HIT"
    );
    assert_eq!(x_cache(&visit(&s, "/reflect?page=3", &[]).await), "MISS");
    s.stop().await;

    // The default drops tracking parameters from the key and from the origin's URL.
    let origin = FakeOrigin::builder()
        .route("/reflect", Respond::reflect())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let a = visit(&s, "/reflect?utm_source=evil&b=2&a=1", &[]).await;
    assert!(
        a.text().contains("url=/reflect?a=1&amp;b=2<")
            || a.text().contains("url=/reflect?a=1&b=2<"),
        "{}",
        a.text()
    );
    assert!(!a.text().contains("evil"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_credentials_cannot_take_every_origin_permit() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| {
        c.origin.timeout_ms = 60_000;
        c.origin.queue_timeout_ms = 60_000;
    })
    .await;
    let s = Arc::new(s);
    origin.hold_only("/account");
    let logged_in: Vec<_> = (0..60)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                get(
                    &s,
                    &format!("/account?u={i}"),
                    &[("authorization", "Bearer t")],
                )
                .await
            })
        })
        .collect();
    // base_concurrency 50, bypass_share 0.5: 25 reach the origin, 35 wait.
    origin.wait_total(25).await;
    let cold = get(&s, "/launch/", &[]).await;
    assert_eq!(
        cold.status,
        StatusCode::OK,
        "a visitor's cold page found a permit"
    );
    assert_eq!(x_cache(&cold), "MISS");
    assert_eq!(s.state().edge.cache().origin_limit().bypass_inflight(), 25);
    origin.release();
    for r in logged_in {
        assert_eq!(r.await.unwrap().status, StatusCode::OK);
    }
    Arc::try_unwrap(s).ok().expect("last handle").stop().await;
}
