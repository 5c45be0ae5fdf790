//! The dashboard in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver (Debian: `apt-get install chromium chromium-driver`), loads `/dashboard`
//! from a running server, and the test watches the charts take new samples from
//! `/api/live`, sees a webhook in the live feed, checks the phone layout does not
//! scroll sideways, and saves screenshots (desktop and phone) under the target dir.
//! Without a browser on the machine the test says so and skips; under CI (`CI=true`)
//! it fails instead (`support::tools::require_tool`). The driver is
//! `support::browser::Driver`. A second test signs up on the demo page in the
//! browser: the visitor cookie, the beacon counted once, a foreign page refused.

use crate::support::browser::Driver;
use crate::support::*;
use launchguard::clock::Clock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_charts_update_live_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let Some(driver) = Driver::start(&dir.path().join("profile")).await else {
        return; // no browser here, and not under CI: the note is on stderr
    };
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |_| {}).await;
    driver.goto(&s.admin_url("/dashboard")).await;
    driver
        .until("return Number(document.body.dataset.samples || 0) >= 2", 20)
        .await;
    let before = driver
        .eval("return Number(document.getElementById('c-rps').dataset.points || 0)")
        .await
        .as_u64()
        .unwrap();

    // Traffic and a webhook while the page watches.
    for _ in 0..20 {
        s.client.get(&s.url("/launch/")).await;
    }
    let r = s.webhook(&s.event("evt-browser-1", "upvote"), SECRET).await;
    assert_eq!(r.status.as_u16(), 202, "{}", r.text());
    driver
        .until(
            "return document.getElementById('feed').textContent.includes('evt-browser-1')",
            20,
        )
        .await;
    driver
        .until(
            &format!("return Number(document.getElementById('c-rps').dataset.points) > {before}"),
            20,
        )
        .await;
    let status = driver
        .eval("return document.getElementById('conn').textContent")
        .await;
    assert_eq!(status, "live");
    driver.screenshot("dashboard-desktop.png").await;

    // On a phone: one column, nothing wider than the screen.
    driver.window(390, 844).await;
    driver
        .until(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            10,
        )
        .await;
    driver.screenshot("dashboard-phone.png").await;
    driver.quit().await;
    s.stop().await;
}

/// Opened after 50 samples (one every 20 ms), the dashboard gets them at once: the
/// first sample it applies is one from before it loaded, and it has applied every
/// sample from there on exactly once (as many as its ids span).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_opened_late_draws_the_last_samples_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(driver) = Driver::start(&dir.path().join("profile")).await else {
        return; // no browser here, and not under CI: the note is on stderr
    };
    let s = TestServer::start_with(
        &dir.path().join("state"),
        Clock::system(),
        |o| o.live_every = std::time::Duration::from_millis(20),
        |_| {},
    )
    .await;
    let feed = &s.state().live;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let oldest = loop {
        if let Some(id) = feed.newest_id() {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "no sample");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    while feed.newest_id().unwrap() < oldest + 49 {
        assert!(std::time::Instant::now() < deadline, "no 50 samples");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    driver.goto(&s.admin_url("/dashboard")).await;
    driver
        .until(
            "return Number(document.body.dataset.samples || 0) >= 50",
            20,
        )
        .await;
    let first = driver
        .eval("return Number(document.body.dataset.firstId)")
        .await
        .as_u64()
        .unwrap();
    assert!(first <= oldest, "the page began {first}, after {oldest}");
    let spans = driver
        .eval(
            "const b = document.body.dataset; \
             return Number(b.samples) === Number(b.lastId) - Number(b.firstId) + 1",
        )
        .await;
    assert_eq!(spans, true, "each sample once");
    driver
        .until(
            "return Number(document.getElementById('c-rps').dataset.points) >= 50",
            10,
        )
        .await;
    let tile = driver
        .eval("return document.getElementById('t-grace').textContent")
        .await;
    assert!(
        tile.as_str().unwrap().contains("requests let through"),
        "{tile}"
    );
    driver.quit().await;
    s.stop().await;
}

/// Polls the admin API until `what` of today's analytics is `want` (10 s at most).
async fn analytics_until(s: &TestServer, what: &str, want: u64) {
    for _ in 0..200 {
        let a = s.client.get(&s.admin_url("/api/analytics")).await.json();
        if a[what] == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what} never reached {want}");
}

/// The demo's signup in Chromium: the page view sets the visitor cookie (HttpOnly,
/// SameSite=Lax), the form's `sendBeacon` carries it, and the conversion counts once;
/// a second signup by the same browser is a repeat, and a beacon from another origin
/// (the admin listener's page, same host, another port) is refused as cross-site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_signup_counts_once_and_a_foreign_page_cannot_add_one() {
    let dir = tempfile::tempdir().unwrap();
    let Some(driver) = Driver::start(&dir.path().join("profile")).await else {
        return; // no browser here, and not under CI: the note is on stderr
    };
    // The rejection counters are the process's: alone, their moves are this test's.
    let _alone = crate::support::recorder::alone().await;
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |_| {}).await;
    let (repeats, foreign) = (
        crate::support::edge::beacons_rejected(&s, "repeat").await,
        crate::support::edge::beacons_rejected(&s, "cross_site").await,
    );
    let signup = r#"
        document.getElementById('signup-email').value = 'ada@example.com';
        document.getElementById('signup-button').click();
        return document.querySelector('.confirmation') !== null;"#;

    driver.goto(&s.url("/launch/")).await;
    let cookie = driver.cookie("lg_v").await.expect("the page view set lg_v");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Lax", "{cookie}");
    assert_eq!(
        driver.eval("return document.cookie.includes('lg_v')").await,
        false,
        "page scripts cannot read it"
    );
    assert_eq!(driver.eval(signup).await, true, "the form confirmed");
    analytics_until(&s, "conversions_total", 1).await;
    analytics_until(&s, "unique_visitors", 1).await;

    // The same browser signs up again: one visitor, one conversion.
    driver.goto(&s.url("/launch/")).await;
    assert_eq!(driver.eval(signup).await, true);
    for _ in 0..200 {
        if crate::support::edge::beacons_rejected(&s, "repeat").await > repeats {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        crate::support::edge::beacons_rejected(&s, "repeat").await,
        repeats + 1
    );

    // Another origin's page sends the same beacon, cookie and all.
    driver.goto(&s.admin_url("/healthz")).await;
    let sent = driver
        .eval(&format!(
            "return navigator.sendBeacon('{}', JSON.stringify({{goal: 'signup'}}))",
            s.url("/api/convert")
        ))
        .await;
    assert_eq!(sent, true, "the browser queued the beacon");
    for _ in 0..200 {
        if crate::support::edge::beacons_rejected(&s, "cross_site").await > foreign {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        crate::support::edge::beacons_rejected(&s, "cross_site").await,
        foreign + 1
    );
    let a = s.client.get(&s.admin_url("/api/analytics")).await.json();
    assert_eq!(a["conversions_total"], 1, "{a}");
    assert_eq!(a["conv_rate"], 1.0, "{a}");
    driver.quit().await;
    s.stop().await;
}
