//! The appliance in front of a `FakeOrigin`, and the small readers edge tests share.

use hyper::Method;
use launchguard::clock::Clock;
use launchguard::config::Config;

use super::origin::FakeOrigin;
use super::{Resp, TestServer};

/// The manual clock's start.
pub const T0: u64 = 1_780_000_000_000;

/// The test server with `origin` as its upstream, after `tweak` has had its say.
pub async fn edge(
    origin: &FakeOrigin,
    tweak: impl FnOnce(&mut Config),
) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let url = origin.url();
    let s = TestServer::start(dir.path(), Clock::manual(T0), move |c| {
        c.origin.upstream = Some(url);
        tweak(c);
    })
    .await;
    (dir, s)
}

pub async fn get(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> Resp {
    s.client
        .send(Method::GET, &s.url(path), headers, Vec::new())
        .await
}

pub fn x_cache(r: &Resp) -> &str {
    r.header("x-cache").unwrap_or("-")
}

/// The value of one sample line in the admin `/metrics` text (0 when absent).
pub async fn metric(s: &TestServer, series: &str) -> f64 {
    let text = s.client.get(&s.admin_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Conversion beacons refused for `reason` so far
/// (`launchguard_conversions_rejected_total{reason}`).
pub async fn beacons_rejected(s: &TestServer, reason: &str) -> u64 {
    let series = format!("launchguard_conversions_rejected_total{{reason=\"{reason}\"}} ");
    metric(s, &series).await as u64
}
