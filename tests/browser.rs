//! The dashboard in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver (Debian: `apt-get install chromium chromium-driver`), loads `/dashboard`
//! from a running server, and the test watches the charts take new samples from
//! `/api/live`, sees a webhook in the live feed, checks the phone layout does not
//! scroll sideways, and saves screenshots (desktop and phone) under the target dir.
//! Without a browser on the machine the test says so and skips; under CI (`CI=true`)
//! it fails instead (`support::tools::require_tool`). The driver is
//! `support::browser::Driver`.

mod support;

use launchguard::clock::Clock;
use support::browser::Driver;
use support::*;

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
    let r = s.webhook(&event("evt-browser-1", "upvote"), SECRET).await;
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
