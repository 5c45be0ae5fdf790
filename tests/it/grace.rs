//! The funnel grace over real HTTP (`backpressure.funnel_grace_secs`): with the factor
//! pinned above `backpressure.shed_factor`, a visitor who viewed a funnel page is
//! served non-critical paths (a page, an asset) while a visitor without that proof is
//! shed, until the grace after its last funnel page view is over (the manual clock
//! moved past it); the cookies never reach the origin nor split the cache.

use hyper::{Method, StatusCode};

use crate::support::edge::{edge, get, metric, x_cache};
use crate::support::origin::FakeOrigin;

const GRACE_SECS: u64 = 900;

/// The `name=value` part of the `Set-Cookie` for `name` in `r`, if any.
fn set_cookie(r: &crate::support::Resp, name: &str) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

const PAGE: &[(&str, &str)] = &[("accept", "text/html")];

#[tokio::test]
async fn a_visitor_in_the_funnel_is_served_while_others_are_shed_until_its_grace_ends() {
    // The grace counters are the process's: alone, their moves are this test's.
    let _alone = crate::support::recorder::alone().await;
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| {
        c.backpressure.funnel_grace_secs = GRACE_SECS;
        // The grace against the plain 503 (the waiting room would let some in).
        c.waiting_room.enabled = false;
        c.backpressure.low_paths = vec!["/assets/*".into()];
    })
    .await;
    let graced = r#"launchguard_funnel_grace_admitted_total{class="normal"} "#;
    let graced_low = r#"launchguard_funnel_grace_admitted_total{class="low"} "#;
    let shed = r#"launchguard_backpressure_rejections_total{class="normal"} "#;
    let (graced0, low0, shed0) = (
        metric(&s, graced).await,
        metric(&s, graced_low).await,
        metric(&s, shed).await,
    );

    // A new visitor views the launch page: its lg_v says when.
    let view = get(&s, "/launch/", PAGE).await;
    assert_eq!(view.status, StatusCode::OK);
    let lg_v = set_cookie(&view, "lg_v").expect("a new visitor gets lg_v");
    assert_eq!(set_cookie(&view, "lg_f"), None, "lg_v says it already");

    s.pin(3.0, 86_400).await;
    let with_v = [("cookie", lg_v.as_str())];
    let r = get(&s, "/pricing", &with_v).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(x_cache(&r), "MISS");
    let r = get(&s, "/assets/app.js", &with_v).await;
    assert_eq!(r.status, StatusCode::OK, "a low path too");
    // Without the cookie, or with a forged one: shed.
    assert_eq!(
        get(&s, "/pricing", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let last = if lg_v.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{last}", &lg_v[..lg_v.len() - 1]);
    let r = get(&s, "/pricing", &[("cookie", forged.as_str())]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // The graced visitor shares the cached page, and the origin never saw a lg_ cookie.
    let r = get(&s, "/pricing", &with_v).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(origin.count("/pricing"), 1);
    let seen = origin.headers_of("/pricing").unwrap();
    assert!(seen.get("cookie").is_none(), "{seen:?}");

    // Ten minutes on, the visitor views a funnel page again: a funnel mark.
    s.clock.advance_ms(600_000);
    let again = get(
        &s,
        "/launch/",
        &[("accept", "text/html"), ("cookie", &lg_v)],
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        set_cookie(&again, "lg_v"),
        None,
        "a known visitor keeps lg_v"
    );
    let lg_f = set_cookie(&again, "lg_f").expect("a known visitor's view renews lg_f");
    let attrs = again
        .headers
        .get_all("set-cookie")
        .iter()
        .find_map(|v| v.to_str().ok().filter(|v| v.starts_with("lg_f=")))
        .unwrap();
    assert!(
        attrs.ends_with("; Path=/; Max-Age=900; HttpOnly; SameSite=Lax"),
        "{attrs}"
    );
    let both = format!("{lg_v}; {lg_f}");
    let with_both = [("cookie", both.as_str())];

    // 901 s after the first view: lg_v alone is past its grace, the mark is not.
    s.clock.advance_ms(301_000);
    assert_eq!(
        get(&s, "/pricing", &with_v).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&s, "/pricing", &with_both).await.status, StatusCode::OK);

    // The mark's last second still admits; one second past it, shed again.
    s.clock.advance_ms((GRACE_SECS - 301) * 1000);
    assert_eq!(get(&s, "/pricing", &with_both).await.status, StatusCode::OK);
    s.clock.advance_ms(1_000);
    let r = get(&s, "/pricing", &with_both).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("5"));

    // Admitted by the grace: /pricing 4 times, the asset once; shed: /pricing 4 times.
    assert_eq!(metric(&s, graced).await - graced0, 4.0);
    assert_eq!(metric(&s, graced_low).await - low0, 1.0);
    assert_eq!(metric(&s, shed).await - shed0, 4.0);
    // And the day's report has them (live counts included).
    let a = s.client.get(&s.admin_url("/api/analytics")).await.json();
    assert_eq!(a["grace_admitted_requests"], 5, "{a}");
    assert_eq!(a["grace_protected_conversions"], 0, "{a}");
    s.stop().await;
}

/// A conversion by a visitor the grace admitted is counted as protected; one by a
/// visitor it never had to admit is not.
#[tokio::test]
async fn a_conversion_after_a_grace_admission_is_counted_protected() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| {
        c.backpressure.funnel_grace_secs = GRACE_SECS;
        // The grace against the plain 503 (the waiting room would let some in).
        c.waiting_room.enabled = false;
    })
    .await;
    let visitor = |r: &crate::support::Resp| set_cookie(r, "lg_v").unwrap();
    let graced = visitor(&get(&s, "/launch/", PAGE).await);
    let plain = visitor(&get(&s, "/launch/", PAGE).await);
    s.pin(3.0, 86_400).await;
    let r = get(&s, "/signup", &[("cookie", graced.as_str())]).await;
    assert_eq!(r.status, StatusCode::OK);
    for cookie in [&plain, &graced] {
        let r = s
            .client
            .send(
                Method::POST,
                &s.url("/api/convert"),
                &[("content-type", "application/json"), ("cookie", cookie)],
                br#"{"goal":"signup"}"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    }
    let a = s.client.get(&s.admin_url("/api/analytics")).await.json();
    assert_eq!(a["grace_admitted_requests"], 1, "{a}");
    assert_eq!(a["grace_protected_conversions"], 1, "{a}");
    assert_eq!(a["conversions_total"], 2, "{a}");
    s.stop().await;
}

/// `funnel_grace_secs = 0`: no funnel mark is set, and a visitor who just viewed the
/// funnel is shed like anyone else.
#[tokio::test]
async fn with_the_grace_off_nobody_is_spared() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| {
        c.backpressure.funnel_grace_secs = 0;
        // The grace against the plain 503 (the waiting room would let some in).
        c.waiting_room.enabled = false;
    })
    .await;
    let lg_v = set_cookie(&get(&s, "/launch/", PAGE).await, "lg_v").unwrap();
    let again = get(
        &s,
        "/launch/",
        &[("accept", "text/html"), ("cookie", &lg_v)],
    )
    .await;
    assert_eq!(set_cookie(&again, "lg_f"), None);
    s.pin(3.0, 86_400).await;
    let r = get(&s, "/pricing", &[("cookie", lg_v.as_str())]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(s.state().grace.is_none());
    s.stop().await;
}

/// The factor, second by second, of the seed curve `data/curves/launch-hour.csv`
/// played at `speed` times its rates: each minute's events spread evenly over it,
/// weighed and windowed as the pump does (the default `[velocity]`).
fn curve_factors(speed: u64) -> Vec<f64> {
    let config = launchguard::config::Config::default();
    let weight = |kind: &str| {
        launchguard::ingest::velocity::to_milli(
            config
                .velocity
                .weights
                .get(kind)
                .copied()
                .unwrap_or(config.velocity.default_weight),
        )
    };
    let kinds = [weight("upvote"), weight("comment"), weight("maker_comment")];
    let curve = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/curves/launch-hour.csv"),
    )
    .unwrap();
    let mut per_second: Vec<u64> = Vec::new();
    for line in curve
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
    {
        let n: Vec<u64> = line.split(',').map(|x| x.trim().parse().unwrap()).collect();
        let start = n[0] as usize * 60;
        per_second.resize(per_second.len().max(start + 60), 0);
        for (count, w) in n[1..].iter().zip(kinds) {
            let count = count * speed;
            for i in 0..count {
                per_second[start + (i * 60 / count) as usize] += w;
            }
        }
    }
    // Two quiet minutes after the curve, for the last visitors' funnels.
    per_second.resize(per_second.len() + 120, 0);
    let mut window = launchguard::ingest::velocity::Window::new(&config.velocity, 0);
    per_second
        .iter()
        .enumerate()
        .map(|(sec, &w)| {
            let now = sec as u64 * 1000;
            window.advance(now);
            if w > 0 {
                window.record(now, w, now);
            }
            window.factor()
        })
        .collect()
}

/// Replays the seed curve's factor against the real server (pinned second by second
/// on the manual clock) while a visitor starts the funnel every 20 s: the launch page,
/// pricing 20 s later, the launch page again, the signup POST to the site at 60 s, the
/// beacon. A visitor whose pricing or signup request is shed gives up: a conversion
/// lost. Returns (lost, converted, protected).
async fn lab_run(factors: &[f64], grace_secs: u64) -> (usize, u64, u64) {
    use launchguard::ingest::factor::Pin;
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| {
        c.backpressure.funnel_grace_secs = grace_secs;
        // The grace against the plain 503 (the waiting room would let some in).
        c.waiting_room.enabled = false;
        c.conversions.flush_interval_ms = 3_600_000;
    })
    .await;
    let t0 = s.clock.now_ms();
    let last_start = factors.len() as u64 - 120;
    // (second, visitor, step)
    let mut steps: Vec<(u64, usize, u8)> = Vec::new();
    for (v, start) in (0..last_start).step_by(20).enumerate() {
        for (step, at) in [0, 20, 45, 60, 61].into_iter().enumerate() {
            steps.push((start + at, v, step as u8));
        }
    }
    steps.sort();
    let visitors = steps.iter().map(|s| s.1).max().unwrap() + 1;
    let mut jar: Vec<Vec<String>> = vec![Vec::new(); visitors];
    let mut lost = vec![false; visitors];
    let factor = &s.state().factor;
    for (sec, v, step) in steps {
        if lost[v] {
            continue;
        }
        let now = t0 + sec * 1000;
        s.clock.set_ms(now);
        let f = factors[sec as usize];
        factor.pin(
            Pin {
                factor: f,
                until_ms: now + 86_400_000,
            },
            now,
        );
        let cookie = jar[v].join("; ");
        let mut headers = vec![("accept", "text/html")];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        let r = match step {
            0 | 2 => get(&s, "/launch/", &headers).await,
            1 => get(&s, "/pricing", &headers).await,
            3 => {
                let url = s.url("/api/signup");
                s.client
                    .send(Method::POST, &url, &headers, b"email=ada".to_vec())
                    .await
            }
            _ => {
                headers.push(("content-type", "application/json"));
                let url = s.url("/api/convert");
                s.client
                    .send(
                        Method::POST,
                        &url,
                        &headers,
                        br#"{"goal":"signup"}"#.to_vec(),
                    )
                    .await
            }
        };
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(step == 1 || step == 3, "step {step} is critical");
            assert!(f > 2.0, "shed at factor {f}");
            lost[v] = true;
            continue;
        }
        assert!(r.status.is_success(), "step {step}: {}", r.status);
        for name in ["lg_v", "lg_f"] {
            if let Some(pair) = set_cookie(&r, name) {
                jar[v].retain(|c| !c.starts_with(&format!("{name}=")));
                jar[v].push(pair);
            }
        }
    }
    let a = s.client.get(&s.admin_url("/api/analytics")).await.json();
    let converted = a["conversions_total"].as_u64().unwrap();
    let protected = a["grace_protected_conversions"].as_u64().unwrap();
    s.stop().await;
    (lost.iter().filter(|&&l| l).count(), converted, protected)
}

/// The issue's lab goal: on the seed curve (at its own rates, and at three times
/// them), no conversion is lost to shedding with the grace on; with it off, some are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_conversion_is_lost_to_shedding_on_the_seed_curve() {
    for speed in [1, 3] {
        let factors = curve_factors(speed);
        let peak = factors.iter().copied().fold(1.0, f64::max);
        assert!(peak > 2.0, "the curve sheds at {speed}x (peak {peak})");
        let visitors = (factors.len() as u64 - 120).div_ceil(20);
        let (lost_on, converted_on, protected) = lab_run(&factors, 900).await;
        let (lost_off, converted_off, _) = lab_run(&factors, 0).await;
        eprintln!(
            "seed curve at {speed}x (peak factor {peak:.2}), {visitors} visitors: \
             grace on: {lost_on} lost, {converted_on} converted ({protected} protected); \
             grace off: {lost_off} lost, {converted_off} converted"
        );
        assert_eq!(lost_on, 0);
        assert_eq!(converted_on, visitors);
        assert!(lost_off > 0, "shedding costs signups without the grace");
        assert_eq!(converted_off + lost_off as u64, visitors);
        assert!(protected > 0 && protected <= converted_on);
    }
}

/// The funnel grace's counts outlive a SIGKILL: the real binary (flushing every
/// 200 ms) lets a graced visitor through three times while shedding and counts its
/// conversion protected; once `/api/analytics` shows all of it in flushed rows (and a
/// webhook's fsync has put those rows on disk), the process is killed. Restarted on
/// the same store, the day's counts are the same, not doubled, and go on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_counts_survive_a_sigkill_and_continue() {
    use crate::support::binary::{self, write_config};
    use crate::support::{event_at, Client};
    use launchguard::ingest::webhook::signature::{sign_producthunt, Key};

    const SECRET: &str = "grace-kill-secret";
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        SECRET,
        "[conversions]\nflush_interval_ms = 200\n[waiting_room]\nenabled = false\n",
    );
    let mut proc = binary::spawn(&config, &[]);
    let client = Client::new();
    let url = |addr: std::net::SocketAddr, path: &str| format!("http://{addr}{path}");
    let json = [("content-type", "application/json")];

    // A visitor views the launch page, then shedding starts (pinned, kept in the store).
    let view = client
        .send(Method::GET, &url(proc.public, "/launch/"), PAGE, Vec::new())
        .await;
    assert_eq!(view.status, StatusCode::OK);
    let lg_v = set_cookie(&view, "lg_v").expect("a new visitor gets lg_v");
    let with_v = [("cookie", lg_v.as_str())];
    let pin = client
        .send(
            Method::POST,
            &url(proc.admin, "/admin/factor"),
            &json,
            br#"{"pin": 3.0, "for_secs": 3600}"#.to_vec(),
        )
        .await;
    assert!(pin.status.is_success(), "{}", pin.text());
    for _ in 0..3 {
        let r = client
            .send(
                Method::GET,
                &url(proc.public, "/app.js"),
                &with_v,
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "graced");
    }
    let r = client
        .send(Method::GET, &url(proc.public, "/app.js"), &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "shed without it");
    let beacon = client
        .send(
            Method::POST,
            &url(proc.public, "/api/convert"),
            &[("content-type", "application/json"), ("cookie", &lg_v)],
            br#"{"goal":"signup"}"#.to_vec(),
        )
        .await;
    assert_eq!(beacon.status, StatusCode::NO_CONTENT, "{}", beacon.text());

    // The day's counts as the API shows them: (total, in flushed rows).
    let counts = |a: &serde_json::Value| {
        let flushed = |field: &str| -> u64 {
            a["series"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["live"] == false)
                .map(|p| p[field].as_u64().unwrap())
                .sum()
        };
        (
            (
                a["grace_admitted_requests"].as_u64().unwrap(),
                a["grace_protected_conversions"].as_u64().unwrap(),
            ),
            (
                flushed("grace_admitted_requests"),
                flushed("grace_protected_conversions"),
            ),
        )
    };
    let analytics = |admin| {
        let client = client.clone();
        async move {
            client
                .get(&format!("http://{admin}/api/analytics"))
                .await
                .json()
        }
    };
    let a = analytics(proc.admin).await;
    let day = a["day"].as_str().unwrap().to_string();
    assert_eq!(counts(&a).0, (3, 1), "{a}");
    // Wait (polling) until the flusher has written all of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let a = analytics(proc.admin).await;
        if counts(&a).1 == (3, 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never flushed: {a}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The rows are in sled; an acknowledged webhook (durability "fsync") means sled's
    // log is on disk up to it, rows included.
    let body = event_at(
        "grace-kill-1",
        "upvote",
        launchguard::clock::Clock::system().now_ms(),
    );
    let sig = sign_producthunt(&Key::parse(SECRET).unwrap(), &body);
    let r = client
        .send(
            Method::POST,
            &url(proc.public, "/webhooks/producthunt"),
            &[("x-producthunt-signature", &sig)],
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    proc.child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix.
    proc.child.wait().unwrap();

    let mut proc = binary::spawn(&config, &[]);
    let a = analytics(proc.admin).await;
    if a["day"] == day {
        assert_eq!(counts(&a), ((3, 1), (3, 1)), "kept, not doubled: {a}");
        // And the day goes on from there: the pin held, the visitor is still graced.
        let r = client
            .send(
                Method::GET,
                &url(proc.public, "/app.js"),
                &with_v,
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "graced after the restart");
        let a = analytics(proc.admin).await;
        assert_eq!(counts(&a).0, (4, 1), "{a}");
    } else {
        eprintln!(
            "the launch day changed during the test ({day} -> {}); not compared",
            a["day"]
        );
    }
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
}
