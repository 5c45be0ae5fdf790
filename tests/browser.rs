//! The dashboard in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver (Debian: `apt-get install chromium chromium-driver`), loads `/dashboard`
//! from a running server, and the test watches the charts take new samples from
//! `/api/live`, sees a webhook in the live feed, checks the phone layout does not
//! scroll sideways, and saves screenshots (desktop and phone) under the target dir.
//! Without a browser on the machine the test says so and passes.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use launchguard::clock::Clock;
use serde_json::{json, Value};
use support::*;

struct Driver {
    child: Child,
    base: String,
    session: String,
    client: Client,
}

impl Driver {
    async fn start(profile: &std::path::Path) -> Option<Driver> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client
                .try_send(Method::GET, &format!("{base}/status"), &[], Vec::new())
                .await
            {
                if r.json()["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,1100",
                     format!("--user-data-dir={}", profile.display())]
        }}}});
        let r = post(&client, &format!("{base}/session"), &caps).await;
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Some(Driver {
            child,
            base,
            session,
            client,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{}", self.base, self.session, path)
    }

    async fn goto(&self, url: &str) {
        post(&self.client, &self.url("/url"), &json!({ "url": url })).await;
    }

    async fn eval(&self, script: &str) -> Value {
        post(
            &self.client,
            &self.url("/execute/sync"),
            &json!({"script": script, "args": []}),
        )
        .await["value"]
            .clone()
    }

    async fn window(&self, w: u32, h: u32) {
        post(
            &self.client,
            &self.url("/window/rect"),
            &json!({"width": w, "height": h}),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        let r = self.client.get(&self.url("/screenshot")).await.json();
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().expect("a screenshot"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Evaluates `script` until it returns true, or fails after `secs`.
    async fn until(&self, script: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(script).await == true {
                return;
            }
            assert!(Instant::now() < deadline, "never true: {script}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn quit(mut self) {
        let _ = self
            .client
            .try_send(Method::DELETE, &self.url(""), &[], Vec::new())
            .await;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(client: &Client, url: &str, body: &Value) -> Value {
    let r = client
        .send(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await;
    assert!(r.status.is_success(), "{url}: {} {}", r.status, r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_charts_update_live_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let Some(driver) = Driver::start(&dir.path().join("profile")).await else {
        eprintln!("no chromium + chromedriver on this machine; browser test skipped");
        return;
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
