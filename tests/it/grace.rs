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
    let counts = s.state().grace.as_ref().unwrap().counts();
    assert_eq!(counts.admitted_requests, 5);
    s.stop().await;
}

/// A conversion by a visitor the grace admitted is counted as protected; one by a
/// visitor it never had to admit is not.
#[tokio::test]
async fn a_conversion_after_a_grace_admission_is_counted_protected() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| {
        c.backpressure.funnel_grace_secs = GRACE_SECS;
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
    let counts = s.state().grace.as_ref().unwrap().counts();
    assert_eq!(counts.admitted_requests, 1);
    assert_eq!(counts.protected_conversions, 1);
    s.stop().await;
}

/// `funnel_grace_secs = 0`: no funnel mark is set, and a visitor who just viewed the
/// funnel is shed like anyone else.
#[tokio::test]
async fn with_the_grace_off_nobody_is_spared() {
    let origin = FakeOrigin::start().await;
    let (_d, s) = edge(&origin, |c| {
        c.backpressure.funnel_grace_secs = 0;
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
