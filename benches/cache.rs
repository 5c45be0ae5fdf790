//! The edge cache in process (criterion), without the network:
//!
//! ```text
//! cargo bench --bench cache      # about 30 seconds
//! ```
//!
//! - `cache_hit/handle`: one `Cache::handle` on a warm `/launch/` (key normalization
//!   with tracking parameters, store lookup, freshness verdict at the current factor,
//!   the answer's headers), driven on a current-thread runtime. This is the edge's
//!   share of a cache HIT; hyper's parsing and writing come on top.
//! - `cache_hit/key_normalize`: `key::normalize` of a URL with tracking parameters.
//! - `cache_miss/bust`: one `Cache::handle` of a URL never seen before
//!   (`/launch/?bust=<n>`), from the demo site's static origin: the whole miss as a
//!   cache-busting flood costs it (key, single-flight, origin read, store), with the
//!   spawned fetch task and the blocking pool on a current-thread runtime.
//! - `cache_lookup`: the store lookup plus verdict, against a naive baseline: a
//!   `Mutex<HashMap<String, Arc<Entry>>>` (no bound, no eviction) with the same verdict.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request};
use criterion::{criterion_group, criterion_main, Criterion};

use launchguard::clock::Clock;
use launchguard::config::Config;
use launchguard::edge::admission::OriginLimit;
use launchguard::edge::cache::freshness::{self, Policy};
use launchguard::edge::cache::{key, Cache};
use launchguard::edge::origin::{Forwarded, Origin};
use launchguard::ingest::factor::Factor;

const URL: &str = "/launch/?utm_source=producthunt&utm_medium=launch&b=2&a=1";

fn bench(c: &mut Criterion) {
    let _ = launchguard::telemetry::recorder();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::default();
    config.origin.static_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/site");
    let factor = Factor::new();
    let clock = Clock::manual(1_000_000);
    let cache = Cache::new(
        &config.cache,
        5,
        Origin::new(&config.origin).unwrap(),
        OriginLimit::new(&config.velocity, 0.5, Duration::from_secs(1)),
        factor.clone(),
        clock.clone(),
    );
    let req = || Request::builder().uri(URL).body(Body::empty()).unwrap();
    let fwd = || Forwarded {
        client: None,
        host: HeaderValue::from_static("launch.example"),
        proto: "http",
    };
    let warm = rt.block_on(cache.handle(req(), fwd(), 1.0));
    assert!(warm.status().is_success());
    let hit = rt.block_on(cache.handle(req(), fwd(), 1.0));
    assert_eq!(hit.headers()["x-cache"], "HIT");

    let mut g = c.benchmark_group("cache_hit");
    g.bench_function("handle", |b| {
        b.iter(|| rt.block_on(cache.handle(black_box(req()), fwd(), 1.0)))
    });
    g.bench_function("key_normalize", |b| {
        b.iter(|| {
            key::normalize(
                black_box("launch.example"),
                black_box("/launch/"),
                black_box(URL.split_once('?').map(|x| x.1)),
                &launchguard::config::QueryMode::Sorted,
                2048,
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cache_miss");
    let mut n = 0u64;
    g.bench_function("bust", |b| {
        b.iter(|| {
            n += 1;
            let req = Request::builder()
                .uri(format!("/launch/?bust={n}"))
                .body(Body::empty())
                .unwrap();
            let res = rt.block_on(cache.handle(black_box(req), fwd(), 1.0));
            debug_assert_eq!(res.headers()["x-cache"], "MISS");
            res
        })
    });
    g.finish();

    let policy = Policy::from_config(&config.cache);
    let k = key::normalize(
        "launch.example",
        "/launch/",
        Some("a=1&b=2"),
        &launchguard::config::QueryMode::Sorted,
        2048,
    )
    .unwrap()
    .as_str()
    .to_string();
    let empty = HeaderMap::new();
    let entry = cache.store().get(&k, &empty).0.unwrap();
    let naive: Mutex<HashMap<String, _>> = Mutex::new(HashMap::from([(k.clone(), entry)]));
    let mut g = c.benchmark_group("cache_lookup");
    g.bench_function("quick_cache_get_verdict", |b| {
        b.iter(|| {
            let (e, _) = cache.store().get(black_box(&k), &empty);
            let e = e.unwrap();
            freshness::verdict(&e.life, &policy, factor.current(), 1_000_500)
        })
    });
    g.bench_function("naive_mutex_hashmap_get_verdict", |b| {
        b.iter(|| {
            let e = naive.lock().unwrap().get(black_box(&k)).cloned().unwrap();
            freshness::verdict(&e.life, &policy, factor.current(), 1_000_500)
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(2500))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
