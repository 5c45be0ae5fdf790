//! The edge over real HTTP: the appliance on port 0 in front of a real local origin
//! (tests/it/support/origin.rs) that counts its requests. Time is a manual clock.

use std::io::Read;
use std::sync::Arc;

use crate::support::edge::{edge, get, metric, x_cache, T0};
use crate::support::origin::{FakeOrigin, Respond};
use crate::support::TestServer;
use hyper::header::CACHE_CONTROL;
use hyper::{Method, StatusCode};
use launchguard::clock::Clock;

async fn pin(s: &TestServer, factor: f64) {
    s.pin(factor, 86400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_requests_reach_the_origin_once() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    origin.hold();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let client = s.client.clone();
            let url = s.url("/launch/");
            tokio::spawn(async move { client.get(&url).await })
        })
        .collect();
    origin.wait_for("/launch/", 1).await;
    origin.release();
    let mut bodies = std::collections::HashSet::new();
    let mut misses = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        misses += usize::from(x_cache(&r) == "MISS");
        bodies.insert(r.body.clone());
    }
    assert_eq!(
        origin.count("/launch/"),
        1,
        "one origin fetch for 1000 requests"
    );
    assert_eq!(bodies.len(), 1, "every request got the same page");
    assert!(misses >= 1);
    s.stop().await;
}

#[tokio::test]
async fn tracking_params_hit_the_same_entry() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let a = get(&s, "/launch/?utm_source=producthunt&b=2&a=1", &[]).await;
    assert_eq!(x_cache(&a), "MISS");
    let b = get(&s, "/launch/?a=1&fbclid=xyz&b=2&ref=ph", &[]).await;
    assert_eq!(x_cache(&b), "HIT");
    assert_eq!(a.body, b.body);
    let c = get(&s, "/launch/?a=1&b=3", &[]).await;
    assert_eq!(x_cache(&c), "MISS");
    assert_eq!(origin.total(), 2);
    s.stop().await;
}

#[tokio::test]
async fn the_ttl_shrinks_when_the_factor_rises() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=60, stale-while-revalidate=30")
    );
    s.clock.advance_ms(10_000);
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header("age"), Some("10"));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=50, stale-while-revalidate=30")
    );
    // The crowd arrives: 60 / 5 = 12 s, and the page stored 10 s ago has 2 s left.
    pin(&s, 5.0).await;
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header("x-edge-scale-factor"), Some("5.00"));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=2, stale-while-revalidate=30")
    );
    s.clock.advance_ms(3_000);
    origin.hold();
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(
        x_cache(&r),
        "STALE",
        "13 s old at factor 5 is past its 12 s"
    );
    origin.release();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let first = get(&s, "/launch/", &[]).await;
    assert!(first.text().contains("version=1"));
    origin.set_version(2);
    s.clock.advance_ms(61_000);
    origin.hold();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = s.client.clone();
            let url = s.url("/launch/");
            tokio::spawn(async move { client.get(&url).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(x_cache(&r), "STALE");
        assert!(r.text().contains("version=1"));
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=0, stale-while-revalidate=30")
        );
    }
    origin.wait_for("/launch/", 2).await;
    assert_eq!(
        origin.count("/launch/"),
        2,
        "exactly one background refresh"
    );
    origin.release();
    // The refresh lands; wait for it by asking until the new page is served.
    let mut fresh = None;
    for _ in 0..20_000 {
        let r = get(&s, "/launch/", &[]).await;
        if x_cache(&r) == "HIT" {
            fresh = Some(r);
            break;
        }
        tokio::task::yield_now().await;
    }
    let fresh = fresh.expect("the refreshed page is served");
    assert!(fresh.text().contains("version=2"));
    assert_eq!(origin.count("/launch/"), 2);
    s.stop().await;
}

#[tokio::test]
async fn the_stale_copy_stands_in_when_the_origin_is_down() {
    let mut origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| c.origin.timeout_ms = 500).await;
    let first = get(&s, "/launch/", &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    origin.stop().await;
    // Past the lifetime and the SWR window, inside stale_if_error (600 s).
    s.clock.advance_ms(200_000);
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(x_cache(&r), "STALE");
    assert_eq!(r.body, first.body);
    // Never fetched: nothing to stand in.
    let r = get(&s, "/pricing", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.text().contains("origin could not be reached"),
        "{}",
        r.text()
    );
    // Past stale_if_error too.
    s.clock.advance_ms(600_000);
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    s.stop().await;
}

#[tokio::test]
async fn the_stale_copy_stands_in_for_a_failing_origin() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let first = get(&s, "/launch/", &[]).await;
    origin.set_failing(true);
    s.clock.advance_ms(200_000);
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(x_cache(&r), "STALE");
    assert_eq!(r.body, first.body);
    assert_eq!(origin.count("/launch/"), 2);
    // Without a stored copy the 500 goes through.
    assert_eq!(
        get(&s, "/pricing", &[]).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    s.stop().await;
}

#[tokio::test]
async fn a_slow_origin_gives_504_not_a_hang() {
    let origin = FakeOrigin::builder()
        .route("/hang", Respond::hang())
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| c.origin.timeout_ms = 200).await;
    let r = get(&s, "/hang", &[]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.text().contains("origin.timeout_ms"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("5"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_origin_queue_gives_503_after_queue_timeout() {
    let origin = FakeOrigin::builder()
        .route("/hang", Respond::hang())
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| {
        c.velocity.base_concurrency = 1;
        c.velocity.max_concurrency = 1;
        c.origin.timeout_ms = 3_000;
        c.origin.queue_timeout_ms = 100;
    })
    .await;
    let client = s.client.clone();
    let url = s.url("/hang");
    let hung = tokio::spawn(async move { client.get(&url).await });
    origin.wait_for("/hang", 1).await;
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(r.text().contains("origin.queue_timeout_ms"), "{}", r.text());
    assert_eq!(hung.await.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
    // The permit came back: the next fetch goes through.
    assert_eq!(get(&s, "/launch/", &[]).await.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn shedding_spares_critical_paths() {
    let origin = FakeOrigin::start().await;
    // The plain 503 (the waiting room has its own test).
    let (_d, s) = edge(&origin, |c| c.waiting_room.enabled = false).await;
    assert_eq!(get(&s, "/pricing", &[]).await.status, StatusCode::OK);
    let before = metric(
        &s,
        "launchguard_backpressure_rejections_total{class=\"normal\"}",
    )
    .await;
    pin(&s, 3.0).await;
    let r = get(&s, "/pricing", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-edge-scale-factor"), Some("3.00"));
    assert!(
        r.text().contains("backpressure.shed_factor"),
        "{}",
        r.text()
    );
    for path in [
        "/",
        "/launch/",
        "/launch/?utm_source=ph",
        "/api/leaderboard",
    ] {
        let r = get(&s, path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path} is critical");
    }
    let r = s
        .webhook(&s.event("shed-1", "upvote"), crate::support::SECRET)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let after = metric(
        &s,
        "launchguard_backpressure_rejections_total{class=\"normal\"}",
    )
    .await;
    assert!(after >= before + 1.0, "{before} -> {after}");
    s.stop().await;
}

#[tokio::test]
async fn cookies_private_and_authorization_are_never_cached() {
    let origin = FakeOrigin::builder()
        .route("/cookie", Respond::page().set_cookie())
        .route(
            "/private",
            Respond::page().header(CACHE_CONTROL, "private, max-age=60"),
        )
        .route(
            "/error",
            Respond::page().status(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    for _ in 0..2 {
        let r = get(&s, "/cookie", &[]).await;
        assert_eq!(x_cache(&r), "MISS");
        assert!(r.header("set-cookie").is_some());
        let r = get(&s, "/private", &[]).await;
        assert_eq!(x_cache(&r), "MISS");
        let r = get(&s, "/launch/", &[("authorization", "Bearer x")]).await;
        assert_eq!(x_cache(&r), "BYPASS");
    }
    assert_eq!(origin.count("/cookie"), 2);
    assert_eq!(origin.count("/private"), 2);
    assert_eq!(origin.count("/launch/"), 2);
    // Errors are not kept either.
    get(&s, "/error", &[]).await;
    let r = get(&s, "/error", &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(origin.count("/error"), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_under_max_bytes_after_100k_urls() {
    let origin = FakeOrigin::start().await;
    let max = 1024 * 1024;
    let (_d, s) = edge(&origin, |c| c.cache.max_bytes = max).await;
    let s = Arc::new(s);
    let workers: Vec<_> = (0..32u64)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..3125u64 {
                    let r = get(&s, &format!("/p/{w}/{i}"), &[]).await;
                    assert_eq!(r.status, StatusCode::OK);
                    if i % 50 == 0 {
                        get(&s, "/launch/", &[]).await;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(origin.total() - origin.count("/launch/"), 100_000);
    let bytes = s.state().edge.cache().bytes();
    assert!(bytes <= max, "{bytes} > {max}");
    // The gauge is the process's, set by every cache as it changes: alone, one more
    // page stored makes it this cache's.
    let alone = crate::support::recorder::alone().await;
    assert_eq!(x_cache(&get(&s, "/p/one-more", &[]).await), "MISS");
    let gauge = metric(&s, "launchguard_cache_bytes").await;
    drop(alone);
    assert!(gauge <= max as f64, "{gauge}");
    // The page asked for all along stayed while 100,000 one-offs went through.
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert!(
        origin.count("/launch/") <= 2,
        "{}",
        origin.count("/launch/")
    );
    Arc::try_unwrap(s).ok().expect("last handle").stop().await;
}

#[tokio::test]
async fn no_cache_revalidates_with_the_etag() {
    let origin = FakeOrigin::builder()
        .route(
            "/nocache",
            Respond::page().header(CACHE_CONTROL, "no-cache").etag(),
        )
        .route(
            "/maxage",
            Respond::page().header(CACHE_CONTROL, "public, max-age=10"),
        )
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let r = get(&s, "/nocache", &[]).await;
    assert_eq!(x_cache(&r), "MISS");
    let r = get(&s, "/nocache", &[]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(origin.count("/nocache"), 2);
    assert_eq!(origin.not_modified(), 1);
    // The origin's own Cache-Control is passed on.
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let r = get(&s, "/maxage", &[]).await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=10"));
    s.stop().await;
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let origin = FakeOrigin::builder()
        .route("/vary", Respond::vary_language())
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let en = get(&s, "/vary", &[("accept-language", "en")]).await;
    let fr = get(&s, "/vary", &[("accept-language", "fr")]).await;
    assert!(en.text().contains("lang=en"));
    assert!(fr.text().contains("lang=fr"));
    let en2 = get(&s, "/vary", &[("accept-language", "en")]).await;
    assert_eq!(x_cache(&en2), "HIT");
    assert!(en2.text().contains("lang=en"));
    assert_eq!(origin.count("/vary"), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_variants_head_and_conditional_requests() {
    let origin = FakeOrigin::builder()
        .route("/big", Respond::page().padded(300))
        .start()
        .await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let plain = get(&s, "/big", &[]).await;
    assert!(plain.header("content-encoding").is_none());
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    // The second answer starts the compression; wait for it to land.
    get(&s, "/big", &[]).await;
    let cache = s.state().edge.cache().clone();
    let key = cache.key_of(&s.public.to_string(), "/big", None).unwrap();
    let mut ready = false;
    for _ in 0..200_000 {
        let (e, _) = cache.store().get(key.as_str(), &hyper::HeaderMap::new());
        if e.is_some_and(|e| e.gzip.is_some() && e.br.is_some()) {
            ready = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(ready, "the variants were made");
    let gz = get(&s, "/big", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, plain.body);
    let br = get(&s, "/big", &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &br.body[..], &mut out).unwrap();
    assert_eq!(out, plain.body);
    assert!(br.body.len() < gz.body.len() && gz.body.len() < plain.body.len());
    let head = s
        .client
        .send(Method::HEAD, &s.url("/big"), &[], Vec::new())
        .await;
    assert_eq!(x_cache(&head), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(plain.body.len().to_string().as_str())
    );
    assert_eq!(origin.count("/big"), 1);
    s.stop().await;
}

#[tokio::test]
async fn the_static_site_keeps_its_validators() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), Clock::manual(T0), |_| {}).await;
    let r = get(&s, "/launch/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(x_cache(&r), "MISS");
    let etag = r.header("etag").expect("ServeDir's ETag").to_string();
    assert!(r.header("last-modified").is_some());
    let r = get(&s, "/launch/", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(x_cache(&r), "HIT");
    assert!(r.body.is_empty());
    let r = get(&s, "/no/such/page", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.text().contains("<html"));
    // 404s are kept briefly (min_ttl_secs).
    let r = get(&s, "/no/such/page", &[]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=5, stale-while-revalidate=30")
    );
    s.stop().await;
}

#[tokio::test]
async fn purge_warm_and_event_driven_purge() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| c.cache.warm_urls = vec!["/launch/".into()]).await;
    assert_eq!(origin.count("/launch/"), 1, "warmed at start");
    assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "HIT");

    let r = s
        .client
        .send(
            Method::POST,
            &s.admin_url("/admin/purge"),
            &[("content-type", "application/json")],
            br#"{"prefix": "/launch/"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "MISS");

    let r = s
        .client
        .send(
            Method::POST,
            &s.admin_url("/admin/purge"),
            &[("content-type", "application/json")],
            br#"{"prefix": "launch"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["field"], "prefix");

    // What a web page could make the operator's browser send is refused, token or not.
    for (headers, status) in [
        (
            vec![("content-type", "text/plain")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (vec![], StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            vec![
                ("content-type", "application/json"),
                ("origin", "https://evil.example"),
            ],
            StatusCode::FORBIDDEN,
        ),
        (
            vec![("content-type", "application/json"), ("origin", "null")],
            StatusCode::FORBIDDEN,
        ),
        (
            vec![
                ("content-type", "application/json"),
                ("host", "rebound.evil.example:9090"),
            ],
            StatusCode::FORBIDDEN,
        ),
    ] {
        let r = s
            .client
            .send(
                Method::POST,
                &s.admin_url("/admin/purge"),
                &headers,
                br#"{"prefix": "/"}"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, status, "{headers:?}: {}", r.text());
    }
    let rebound = s
        .client
        .send(
            Method::GET,
            &s.admin_url("/api/analytics"),
            &[("host", "rebound.evil.example")],
            vec![],
        )
        .await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN, "reads too");
    // The listener's own origin is fine.
    let own = format!("http://{}", s.admin);
    let r = s
        .client
        .send(
            Method::POST,
            &s.admin_url("/admin/purge"),
            &[("content-type", "application/json"), ("origin", &own)],
            br#"{"prefix": "/nothing-cached-here"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let r = s
        .client
        .send(
            Method::POST,
            &s.admin_url("/admin/warm"),
            &[("content-type", "application/json")],
            br#"{"urls": ["/pricing"]}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["warmed"][0]["cache"], "MISS");
    assert_eq!(x_cache(&get(&s, "/pricing", &[]).await), "HIT");

    // A maker comment purges /launch/ (cache.purge_on default); an upvote does not.
    let r = s
        .webhook(&s.event("up-1", "upvote"), crate::support::SECRET)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    s.pumped().await;
    assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "HIT");
    let r = s
        .webhook(&s.event("mc-1", "maker_comment"), crate::support::SECRET)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    s.pumped().await;
    // The pump purges right after it drains; wait for that, not for a time.
    let cache = s.state().edge.cache().clone();
    let key = cache
        .key_of(&s.public.to_string(), "/launch/", None)
        .unwrap();
    for _ in 0..100_000 {
        if cache
            .store()
            .get(key.as_str(), &hyper::HeaderMap::new())
            .0
            .is_none()
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "MISS");
    assert_eq!(x_cache(&get(&s, "/pricing", &[]).await), "HIT");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fetch_keeps_the_fetched_page_out() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    origin.hold();
    let client = s.client.clone();
    let url = s.url("/launch/");
    let fetch = tokio::spawn(async move { client.get(&url).await });
    origin.wait_for("/launch/", 1).await;
    // The page changes (a maker comment) while the origin is still sending the old one.
    let r = s
        .client
        .send(
            Method::POST,
            &s.admin_url("/admin/purge"),
            &[("content-type", "application/json")],
            br#"{"prefix": "/launch/"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A request after the purge does not join the fetch that began before it.
    let client = s.client.clone();
    let url = s.url("/launch/");
    let after = tokio::spawn(async move { client.get(&url).await });
    origin.wait_for("/launch/", 2).await;
    origin.release();
    assert_eq!(x_cache(&fetch.await.unwrap()), "MISS");
    let after = after.await.unwrap();
    assert_eq!(x_cache(&after), "MISS");
    assert!(after.text().contains("n=2"), "{}", after.text());
    assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "HIT");
    assert_eq!(origin.count("/launch/"), 2);
    s.stop().await;
}

#[tokio::test]
async fn proxy_hygiene_and_unsafe_methods_invalidate() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    get(
        &s,
        "/launch/",
        &[
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("host", "launch.example"),
        ],
    )
    .await;
    {
        let h = origin.last_headers();
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "launch.example");
        assert!(h.get("x-hop").is_none());
        assert_eq!(h["host"], origin.addr.to_string().as_str());
    }
    assert_eq!(
        x_cache(&get(&s, "/launch/", &[]).await),
        "MISS",
        "another host"
    );
    assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "HIT");
    let r = s
        .client
        .send(Method::POST, &s.url("/launch/"), &[], b"form".to_vec())
        .await;
    assert_eq!(x_cache(&r), "BYPASS");
    assert_eq!(r.text(), "posted");
    assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "MISS");
    // Only this host's copy was invalidated.
    assert_eq!(
        x_cache(&get(&s, "/launch/", &[("host", "launch.example")]).await),
        "HIT"
    );
    s.stop().await;
}

#[tokio::test]
async fn cache_metrics_move() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let hit = "launchguard_cache_requests_total{result=\"hit\"}";
    let miss = "launchguard_cache_requests_total{result=\"miss\"}";
    let (h0, m0) = (metric(&s, hit).await, metric(&s, miss).await);
    get(&s, "/metrics-page", &[]).await;
    get(&s, "/metrics-page", &[]).await;
    assert!(metric(&s, hit).await > h0);
    assert!(metric(&s, miss).await > m0);
    let text = s.client.get(&s.admin_url("/metrics")).await.text();
    for name in [
        "launchguard_cache_bytes",
        "launchguard_origin_inflight",
        "launchguard_origin_request_duration_seconds",
        "launchguard_http_request_duration_seconds",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_command_fills_the_running_cache() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |_| {}).await;
    let admin = format!("http://{}", s.admin);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_launchguard"))
            .args(["warm", "--admin-url", &admin, "/launch/", "/pricing"])
            .env_remove("LAUNCHGUARD_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("200 MISS /launch/"), "{stdout}");
    assert!(stdout.contains("200 MISS /pricing"), "{stdout}");
    assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "HIT");
    s.stop().await;
}

#[tokio::test]
async fn large_bodies_stream_through_and_long_urls_bypass() {
    let origin = FakeOrigin::builder()
        .route("/big", Respond::page().padded(300))
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| {
        c.cache.max_object_bytes = 1024;
        c.cache.max_key_bytes = 64;
    })
    .await;
    // /big is about 3.3 KB, over the 1 KiB object limit: served whole, never stored.
    for _ in 0..2 {
        let r = get(&s, "/big", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(x_cache(&r), "MISS");
        assert!(r.body.len() > 3000 && r.text().ends_with("</body></html>"));
    }
    assert_eq!(origin.count("/big"), 2);
    let long = format!("/launch/?q={}", "x".repeat(100));
    for _ in 0..2 {
        assert_eq!(x_cache(&get(&s, &long, &[]).await), "BYPASS");
    }
    assert_eq!(origin.count(&long), 2);
    s.stop().await;
}

/// A request still waiting on the origin when shutdown's grace period ends is cut:
/// shutdown ends, and the client sees its connection close instead of a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_request_that_outlasts_the_grace_period() {
    let origin = FakeOrigin::builder()
        .route("/hang", Respond::hang())
        .start()
        .await;
    let (_d, s) = edge(&origin, |c| {
        c.origin.timeout_ms = 60_000;
        c.server.shutdown_grace_ms = 200;
    })
    .await;
    let client = s.client.clone();
    let url = s.url("/hang");
    let hung = tokio::spawn(async move {
        client
            .try_send(hyper::Method::GET, &url, &[], Vec::new())
            .await
    });
    origin.wait_for("/hang", 1).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), s.stop())
        .await
        .expect("shutdown ends soon after the grace period");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), hung)
        .await
        .expect("the client is not left hanging")
        .unwrap();
    assert!(answer.is_err(), "the connection was closed: {answer:?}");
}

/// Waits (deadline, no fixed sleep) until the origin has seen `n` requests for `path`,
/// and says so; false when it has not within `secs`.
async fn origin_reaches(origin: &FakeOrigin, path: &str, n: u64, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while origin.count(path) < n {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

/// Refresh-ahead: when the factor crosses `cache.refresh_ahead_factor` the cached
/// funnel page is fetched again at once (not a non-funnel page), a missing warm_url
/// is warmed, and while the factor stays up the page is fetched again in the last
/// quarter of its (shrunk) lifetime, so a visitor after its end still gets a HIT.
/// With it off, the same visitor gets a STALE copy.
#[tokio::test]
async fn refresh_ahead_keeps_funnel_pages_fresh_through_the_wave() {
    for on in [true, false] {
        let origin = FakeOrigin::start().await;
        let (_d, s) = edge(&origin, |c| {
            c.cache.refresh_ahead_factor = if on { 2.0 } else { 0.0 };
            c.cache.warm_urls = vec!["/about".into()];
        })
        .await;
        // Startup warmed /about; a visitor fills /launch/ and /pricing.
        assert_eq!(origin.count("/about"), 1);
        assert_eq!(x_cache(&get(&s, "/launch/", &[]).await), "MISS");
        assert_eq!(x_cache(&get(&s, "/pricing", &[]).await), "MISS");
        let purge = s
            .client
            .send(
                Method::POST,
                &s.admin_url("/admin/purge"),
                &[("content-type", "application/json")],
                br#"{"prefix": "/about"}"#.to_vec(),
            )
            .await;
        assert_eq!(purge.status, StatusCode::OK, "{}", purge.text());

        // The wave: factor 4, lifetime 60 / 4 = 15 s.
        s.clock.advance_ms(20_000);
        pin(&s, 4.0).await;
        if on {
            assert!(
                origin_reaches(&origin, "/launch/", 2, 10).await,
                "refreshed at the crossing"
            );
            assert!(
                origin_reaches(&origin, "/about", 2, 10).await,
                "the purged warm_url warmed again"
            );
        } else {
            // Three looks' time (a look a second) without a fetch.
            assert!(
                !origin_reaches(&origin, "/launch/", 2, 3).await,
                "nothing fetches it when off"
            );
        }
        assert_eq!(origin.count("/pricing"), 1, "not a funnel page: left alone");

        // 13 s later (2 s left of 15): due again, fetched ahead of its end.
        s.clock.advance_ms(13_000);
        if on {
            assert!(
                origin_reaches(&origin, "/launch/", 3, 10).await,
                "refreshed ahead"
            );
        }
        // 4 s later the refreshed copy is 4 s old: a HIT. Without refresh-ahead the
        // copy from the first visit is 37 s old, past 15 s: STALE.
        s.clock.advance_ms(4_000);
        let r = get(&s, "/launch/", &[]).await;
        assert_eq!(x_cache(&r), if on { "HIT" } else { "STALE" }, "on = {on}");
        if on {
            let refreshed = metric(
                &s,
                "launchguard_cache_refresh_ahead_total{result=\"refreshed\"}",
            )
            .await;
            assert!(refreshed >= 2.0, "{refreshed}");
        }
        s.stop().await;
    }
}

/// The `lg_wr=` / `lg_wa=` value a response sets, if any.
fn set_cookie<'a>(r: &'a crate::support::Resp, name: &str) -> Option<&'a str> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(name)?.strip_prefix('=')?.split(';').next())
}

/// The waiting room over real HTTP: a shed page view gets the waiting page (503,
/// Retry-After, Refresh, its place), JSON on request; a refresh keeps the place and a
/// tampered cookie does not; after a restart the line is ordered by the cookies'
/// entry times, not by who asked first; when the origin has free permits the head of
/// the line is let in (served, with a session cookie that also opens other pages).
#[tokio::test]
async fn the_waiting_room_lines_up_shed_page_views_and_lets_them_in() {
    let origin = FakeOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = origin.url();
    let start = |clock: Clock| {
        let url = url.clone();
        TestServer::start(dir.path(), clock, move |c| {
            c.origin.upstream = Some(url);
            c.backpressure.low_paths = vec!["/assets/*".into()];
            // At factor 3: 3 origin permits, 2 of them for fills.
            c.velocity.base_concurrency = 1;
            c.velocity.max_concurrency = 10;
        })
    };
    let clock = Clock::manual(T0);
    let s = start(clock.clone()).await;
    pin(&s, 3.0).await;
    // The origin saturated: two critical fills hold both fill permits.
    origin.hold_only("/launch");
    let held: Vec<_> = ["/launch/a", "/launch/b"]
        .into_iter()
        .map(|p| {
            let (client, url) = (s.client.clone(), s.url(p));
            tokio::spawn(async move { client.get(&url).await })
        })
        .collect();
    origin.wait_for("/launch/a", 1).await;
    origin.wait_for("/launch/b", 1).await;
    let html = [("accept", "text/html,application/xhtml+xml")];
    let a = get(&s, "/pricing", &html).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.text().contains("You are in line"), "{}", a.text());
    assert!(
        a.text().contains(r#"<p class="place">1</p>"#),
        "{}",
        a.text()
    );
    assert_eq!(a.header("refresh"), Some("10"));
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 10, "{retry}");
    let place_a = set_cookie(&a, "lg_wr").expect("a place").to_string();
    let origin_before = origin.total();

    s.clock.advance_ms(2_000);
    let b = get(&s, "/pricing", &[("accept", "application/json")]).await;
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
    assert_eq!(v["position"], 2, "{v}");
    assert_eq!(v["refresh_secs"], 10);
    assert!(v["wait_secs"].as_u64().unwrap() >= 1);
    let place_b = set_cookie(&b, "lg_wr").unwrap().to_string();
    // An asset of a visitor not let in: the plain 503.
    let asset = get(&s, "/assets/app.css", &[]).await;
    assert_eq!(asset.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookie(&asset, "lg_wr").is_none());
    // A tampered place (an earlier time, the same MAC) goes to the end of the line.
    s.clock.advance_ms(1_000);
    let forged = place_a.replacen(&T0.to_string(), &(T0 - 60_000).to_string(), 1);
    assert_ne!(forged, place_a);
    let cookie = format!("lg_wr={forged}");
    let f = get(
        &s,
        "/pricing",
        &[("accept", "application/json"), ("cookie", &cookie)],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(v["position"], 3, "{v}");
    assert_eq!(
        origin.total(),
        origin_before,
        "nobody waiting reached the origin"
    );
    origin.release();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    s.stop().await;

    // A restart: B asks first, but A entered earlier.
    let s = start(clock.clone()).await;
    pin(&s, 3.0).await;
    let ask = |place: &str| format!("lg_wr={place}");
    let json =
        |r: &crate::support::Resp| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap();
    let b = get(
        &s,
        "/pricing",
        &[("accept", "application/json"), ("cookie", &ask(&place_b))],
    )
    .await;
    assert_eq!(json(&b)["position"], 1);
    let a = get(
        &s,
        "/pricing",
        &[("accept", "application/json"), ("cookie", &ask(&place_a))],
    )
    .await;
    assert_eq!(json(&a)["position"], 1, "A entered first");
    let b = get(
        &s,
        "/pricing",
        &[("accept", "application/json"), ("cookie", &ask(&place_b))],
    )
    .await;
    assert_eq!(json(&b)["position"], 2);

    // A second later the bank has earned the origin's two free fill permits: A (the
    // head) is let in.
    s.clock.advance_ms(1_000);
    let a = get(
        &s,
        "/pricing",
        &[("accept", "text/html"), ("cookie", &ask(&place_a))],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let session = set_cookie(&a, "lg_wa").expect("a session").to_string();
    let opened = format!("lg_wa={session}");
    let css = get(&s, "/assets/app.css", &[("cookie", &opened)]).await;
    assert_eq!(
        css.status,
        StatusCode::OK,
        "a visitor let in gets its assets"
    );
    let admitted = metric(&s, "launchguard_waiting_room_admitted_total ").await;
    assert!(admitted >= 1.0, "{admitted}");
    // The session ends after waiting_room.session_secs.
    s.clock.advance_ms(601_000);
    pin(&s, 3.0).await;
    let css = get(&s, "/assets/app.css", &[("cookie", &opened)]).await;
    assert_eq!(css.status, StatusCode::SERVICE_UNAVAILABLE);
    s.stop().await;
}
