//! Headless Chromium driven over WebDriver by ChromeDriver (Debian: `apt-get install
//! chromium chromium-driver`). `Driver::start` finds both on `PATH` through
//! `tools::require_tool`: without them it returns `None` (the test skips) outside CI
//! and fails under CI.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use super::tools::require_tool;
use super::Client;

pub struct Driver {
    child: Child,
    base: String,
    session: String,
    client: Client,
}

impl Driver {
    /// Starts ChromeDriver on a free loopback port and opens a headless Chromium
    /// session with its profile in `profile` (a fresh directory). `None` when the
    /// browser or the driver is missing outside CI.
    pub async fn start(profile: &Path) -> Option<Driver> {
        let chromium = require_tool(&["chromium", "chromium-browser"], "chromium")?;
        let driver = require_tool(&["chromedriver"], "chromium-driver")?;
        Some(Driver::start_with(&chromium, &driver, profile).await)
    }

    async fn start_with(chromium: &Path, driver: &Path, profile: &Path) -> Driver {
        // Its own process group, so `Drop` can end ChromeDriver and the browser it
        // started when a test fails before `quit`. Port 0: it binds a free port and
        // names it (a port picked here and handed over could be taken meanwhile by
        // another test of this process).
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let stdout = child.stdout.take().unwrap();
        let mut driver = Driver {
            child,
            base: String::new(),
            session: String::new(),
            client: Client::new(),
        };
        let port = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::task::spawn_blocking(move || listening_port(stdout)),
        )
        .await
        .expect("chromedriver named its port in time")
        .unwrap();
        driver.base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = driver
                .client
                .try_send(
                    Method::GET,
                    &format!("{}/status", driver.base),
                    &[],
                    Vec::new(),
                )
                .await
            {
                if r.json()["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Running as root needs --no-sandbox; the networking switches keep Chromium
        // from calling out of a machine with no network.
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,1100",
                     format!("--user-data-dir={}", profile.display())]
        }}}});
        let r = post(&driver.client, &format!("{}/session", driver.base), &caps).await;
        driver.session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        driver
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{}", self.base, self.session, path)
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        post(&self.client, &self.url("/url"), &json!({ "url": url })).await;
    }

    /// Runs `script` (a function body: `return ...`) in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        post(
            &self.client,
            &self.url("/execute/sync"),
            &json!({"script": script, "args": []}),
        )
        .await["value"]
            .clone()
    }

    /// Evaluates `script` until it returns true, or fails after `secs`.
    pub async fn until(&self, script: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(script).await == true {
                return;
            }
            assert!(Instant::now() < deadline, "never true: {script}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every cookie the browser holds for the current page, HttpOnly ones included,
    /// as WebDriver lists them (`name`, `value`, `httpOnly`, `secure`, `sameSite`, ...).
    pub async fn cookies(&self) -> Vec<Value> {
        let r = self.client.get(&self.url("/cookie")).await;
        assert!(r.status.is_success(), "cookies: {} {}", r.status, r.text());
        r.json()["value"].as_array().cloned().unwrap_or_default()
    }

    /// The cookie called `name` for the current page, if the browser holds one.
    pub async fn cookie(&self, name: &str) -> Option<Value> {
        self.cookies().await.into_iter().find(|c| c["name"] == name)
    }

    /// Resizes the window (a phone: 390 × 844).
    pub async fn window(&self, w: u32, h: u32) {
        post(
            &self.client,
            &self.url("/window/rect"),
            &json!({"width": w, "height": h}),
        )
        .await;
    }

    /// Saves a PNG of the viewport under the target dir's tmp folder and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let r = self.client.get(&self.url("/screenshot")).await.json();
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().expect("a screenshot"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Ends the session (the browser closes) and the driver.
    pub async fn quit(self) {
        let _ = self
            .client
            .try_send(Method::DELETE, &self.url(""), &[], Vec::new())
            .await;
        // `Drop` ends the driver's process group.
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

/// Reads ChromeDriver's stdout up to "ChromeDriver was started successfully on port
/// N." and returns N; the rest is drained on a thread, so it never blocks on the pipe.
fn listening_port(stdout: ChildStdout) -> u16 {
    let mut lines = BufReader::new(stdout).lines();
    let port = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once("started successfully on port ")
                .and_then(|(_, rest)| rest.trim_end_matches('.').parse().ok())
        })
        .expect("chromedriver names the port it listens on");
    std::thread::spawn(move || for _ in lines {});
    port
}

#[allow(unsafe_code)]
fn kill_group(pgid: u32) {
    // SAFETY: kill(2) takes plain integers; the group is the one our child leads.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

/// POSTs JSON to a WebDriver endpoint; a non-2xx answer fails the test.
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
