//! Launch-day messages to Slack-compatible incoming webhooks (`alerts.slack_webhook_urls`,
//! body `{"text": "..."}`), delivered through the outbound queue, so they survive
//! restarts, back off and end in dead letters rather than vanish.
//!
//! Signals, looked at once a second (`Alerter::evaluate`, pure, `now` passed in):
//! - shedding started / stopped: the factor above `backpressure.shed_factor`;
//! - the factor crossing each of `alerts.factor_thresholds`, either way;
//! - the first engagement event of the launch day (`conversions.timezone`);
//! - dead letters growing;
//! - disk filling: free space on the data dir's disk below `alerts.disk_free_percent`;
//! - ACME failing: the last order for `tls.domains` failed (and recovered once one
//!   succeeds).
//!
//! How flapping is kept quiet, per signal:
//! - **hysteresis**: a level signal turns on above its threshold and off only below
//!   90% of it (disk: on below the percentage, off above it plus 2 points), so noise
//!   around a threshold does not toggle it;
//! - **minimum interval**: a signal whose state differs from the one last announced is
//!   announced only if its previous message is at least `alerts.min_interval_secs`
//!   old. A signal that flaps within the interval sends nothing more; once the interval
//!   has passed, its state *then* is announced (if it differs from the last message),
//!   so the last word is always true.
//!
//! The messages of one evaluation go out as one post per URL.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// A level turns off below this fraction of its threshold.
pub const HYSTERESIS: f64 = 0.9;
/// The disk signal turns off this many points above `alerts.disk_free_percent`.
pub const DISK_HYSTERESIS_POINTS: f64 = 2.0;
/// A TLS certificate with less than this many seconds left is announced (7 days).
pub const CERT_EXPIRY_ALERT_SECS: i64 = 7 * 86_400;

/// What the evaluator looks at, read from the running appliance.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub factor: f64,
    /// Launch day of `now`, `YYYY-MM-DD` in `conversions.timezone`.
    pub day: String,
    /// Seq the next event will get: it moves when an event is accepted.
    pub next_seq: u64,
    pub deadletters: usize,
    /// Free fraction (0..1) of the data dir's disk, when it could be read.
    pub disk_free: Option<f64>,
    /// Failed ACME orders in a row (0 without ACME), and the last failure.
    pub acme_failures: u64,
    pub acme_error: Option<String>,
    /// The TLS certificate in force that expires first: seconds left and its names
    /// (None without TLS, or before the first certificate).
    pub cert_expiry: Option<(i64, Vec<String>)>,
}

#[derive(Debug, Clone)]
struct Level {
    on_above: f64,
    off_below: f64,
    actual: bool,
    announced: bool,
    last_sent_ms: Option<u64>,
}

impl Level {
    fn new(on_above: f64, off_below: f64) -> Level {
        Level {
            on_above,
            off_below,
            actual: false,
            announced: false,
            last_sent_ms: None,
        }
    }

    /// Updates with `value`; `Some(state)` when that state is to be announced now.
    fn update(&mut self, value: f64, now_ms: u64, min_interval_ms: u64) -> Option<bool> {
        if !self.actual && value > self.on_above {
            self.actual = true;
        } else if self.actual && value < self.off_below {
            self.actual = false;
        }
        let quiet = self
            .last_sent_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < min_interval_ms);
        if self.actual != self.announced && !quiet {
            self.announced = self.actual;
            self.last_sent_ms = Some(now_ms);
            Some(self.actual)
        } else {
            None
        }
    }
}

/// The alert state machine; pure.
#[derive(Debug, Clone)]
pub struct Alerter {
    min_interval_ms: u64,
    shed_factor: f64,
    shedding: Level,
    thresholds: Vec<(f64, Level)>,
    /// Disk levels run on the *used* fraction, so "above" means filling.
    disk: Level,
    disk_free_percent: f64,
    /// On at one failed ACME order in a row, off at none.
    acme: Level,
    /// Whether a certificate with less than [`CERT_EXPIRY_ALERT_SECS`] left has been
    /// announced (and not yet its renewal).
    expiring: bool,
    last_seq: u64,
    engaged_day: Option<String>,
    deadletters_reported: usize,
    deadletters_sent_ms: Option<u64>,
}

impl Alerter {
    /// `next_seq` and `engaged_day` come from the store, so a restart neither
    /// repeats today's first-engagement message nor takes old events for new ones.
    pub fn new(
        config: &Config,
        next_seq: u64,
        engaged_day: Option<String>,
        deadletters: usize,
    ) -> Alerter {
        let a = &config.alerts;
        let shed = config.backpressure.shed_factor;
        let used = 1.0 - a.disk_free_percent / 100.0;
        let used_off = 1.0 - (a.disk_free_percent + DISK_HYSTERESIS_POINTS) / 100.0;
        Alerter {
            min_interval_ms: a.min_interval_secs.saturating_mul(1000),
            shed_factor: shed,
            shedding: Level::new(shed, shed * HYSTERESIS),
            thresholds: a
                .factor_thresholds
                .iter()
                .map(|t| (*t, Level::new(*t, t * HYSTERESIS)))
                .collect(),
            disk: Level::new(used, used_off),
            disk_free_percent: a.disk_free_percent,
            acme: Level::new(0.5, 0.5),
            expiring: false,
            last_seq: next_seq,
            engaged_day,
            deadletters_reported: deadletters,
            deadletters_sent_ms: None,
        }
    }

    /// The messages `obs` calls for at `now_ms`.
    pub fn evaluate(&mut self, obs: &Observation, now_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        let interval = self.min_interval_ms;
        match self.shedding.update(obs.factor, now_ms, interval) {
            Some(true) => out.push(format!(
                ":warning: Shedding started: the scale factor is {:.2}, above backpressure.shed_factor {:.2}; non-critical paths answer 503.",
                obs.factor, self.shed_factor
            )),
            Some(false) => out.push(format!(
                ":white_check_mark: Shedding stopped: the scale factor is back to {:.2}.",
                obs.factor
            )),
            None => {}
        }
        for (t, level) in &mut self.thresholds {
            match level.update(obs.factor, now_ms, interval) {
                Some(true) => out.push(format!(
                    ":chart_with_upwards_trend: The scale factor crossed {t:.2} upwards: now {:.2}.",
                    obs.factor
                )),
                Some(false) => out.push(format!(
                    ":chart_with_downwards_trend: The scale factor fell back below {t:.2}: now {:.2}.",
                    obs.factor
                )),
                None => {}
            }
        }
        if obs.next_seq > self.last_seq {
            if self.engaged_day.as_deref() != Some(obs.day.as_str()) {
                out.push(format!(
                    ":rocket: First engagement of launch day {}: events are arriving.",
                    obs.day
                ));
                self.engaged_day = Some(obs.day.clone());
            }
            self.last_seq = obs.next_seq;
        }
        if obs.deadletters < self.deadletters_reported {
            self.deadletters_reported = obs.deadletters;
        } else if obs.deadletters > self.deadletters_reported
            && self
                .deadletters_sent_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= interval)
        {
            out.push(format!(
                ":rotating_light: Dead letters growing: {} held (was {}). See GET /admin/outbound/deadletters.",
                obs.deadletters, self.deadletters_reported
            ));
            self.deadletters_reported = obs.deadletters;
            self.deadletters_sent_ms = Some(now_ms);
        }
        if let Some(free) = obs.disk_free {
            match self.disk.update(1.0 - free, now_ms, interval) {
                Some(true) => out.push(format!(
                    ":floppy_disk: Disk filling: {:.1}% free on the data dir's disk (alert below {:.1}%).",
                    free * 100.0,
                    self.disk_free_percent
                )),
                Some(false) => out.push(format!(
                    ":floppy_disk: Disk space recovered: {:.1}% free.",
                    free * 100.0
                )),
                None => {}
            }
        }
        match self.acme.update(obs.acme_failures as f64, now_ms, interval) {
            Some(true) => out.push(format!(
                ":lock: ACME: no certificate could be obtained ({} failed orders in a row): {}. Retrying with backoff.",
                obs.acme_failures,
                obs.acme_error.as_deref().unwrap_or("unknown error")
            )),
            Some(false) => out.push(":lock: ACME: a certificate was obtained again.".to_string()),
            None => {}
        }
        if let Some((left, names)) = &obs.cert_expiry {
            let low = *left < CERT_EXPIRY_ALERT_SECS;
            if low && !self.expiring {
                out.push(if *left > 0 {
                    format!(
                        ":lock: The TLS certificate for {} expires in {:.1} days. Renew it (ACME keeps trying; with tls.cert_file, replace the files).",
                        names.join(", "),
                        *left as f64 / 86_400.0
                    )
                } else {
                    format!(
                        ":lock: The TLS certificate for {} has EXPIRED: browsers refuse the site over HTTPS.",
                        names.join(", ")
                    )
                });
                self.expiring = true;
            } else if !low && self.expiring {
                out.push(format!(
                    ":lock: The TLS certificates are valid again: the first expires in {:.0} days.",
                    *left as f64 / 86_400.0
                ));
                self.expiring = false;
            }
        }
        out
    }
}

/// Handle to the running alerter; a clone is cheap.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<AlertsInner>,
}

struct AlertsInner {
    alerter: Mutex<Alerter>,
    tz: TimeZone,
    wake: Notify,
    evaluations: watch::Sender<u64>,
}

/// What the alerts watch (the factor, the store's disk and event count, the dead
/// letters) and where they send (the outbound queue, `alerts.slack_webhook_urls`).
/// `app` builds it.
#[derive(Clone)]
pub struct Watched {
    pub store: crate::ingest::store::Store,
    pub factor: crate::ingest::factor::Factor,
    pub outbound: crate::ops::outbound::Outbound,
    pub config: std::sync::Arc<Config>,
    pub clock: crate::clock::Clock,
    /// The ACME task's status, when certificates come by ACME.
    pub acme: Option<Arc<crate::edge::tls::acme::Status>>,
    /// The TLS certificates in force, when `tls.listen` is set.
    pub certs: Option<crate::edge::tls::Certs>,
    /// In a cluster, whether this node holds the alerts' lease: only the holder
    /// sends, so Slack hears each signal once. `None`: one box, always.
    pub leading: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Alerts {
    pub fn new(alerter: Alerter, tz: TimeZone) -> Alerts {
        Alerts {
            inner: Arc::new(AlertsInner {
                alerter: Mutex::new(alerter),
                tz,
                wake: Notify::new(),
                evaluations: watch::channel(0).0,
            }),
        }
    }

    /// Evaluates now instead of at the next tick.
    pub fn kick(&self) {
        self.inner.wake.notify_one();
    }

    /// A receiver of the evaluation counter: it moves after every evaluation.
    pub fn evaluations(&self) -> watch::Receiver<u64> {
        self.inner.evaluations.subscribe()
    }

    fn observe(&self, state: &Watched, now_ms: u64) -> Observation {
        let disk_free = rustix::fs::statvfs(state.store.dir())
            .ok()
            .filter(|fs| fs.f_blocks > 0)
            .map(|fs| fs.f_bavail as f64 / fs.f_blocks as f64);
        Observation {
            factor: state.factor.current(),
            day: crate::insight::analytics::day_of(now_ms, &self.inner.tz).to_string(),
            next_seq: state.store.next_seq(),
            deadletters: state.outbound.deadletter_count(),
            disk_free,
            acme_failures: state
                .acme
                .as_ref()
                .map_or(0, |s| s.failures.load(std::sync::atomic::Ordering::Relaxed)),
            acme_error: state
                .acme
                .as_ref()
                .and_then(|s| s.last_error.lock().clone()),
            cert_expiry: state.certs.as_ref().and_then(|c| c.soonest_expiry(now_ms)),
        }
    }

    /// One evaluation: observe, decide, log and queue the messages.
    pub async fn evaluate(&self, state: &Watched) {
        let now = state.clock.now_ms();
        let obs = self.observe(state, now);
        let messages = self.inner.alerter.lock().evaluate(&obs, now);
        if !messages.is_empty() {
            let text = messages.join("\n");
            tracing::warn!(alert = %text, "alert");
            let body = serde_json::json!({ "text": text }).to_string().into_bytes();
            for url in &state.config.alerts.slack_webhook_urls {
                if let Err(e) = state
                    .outbound
                    .enqueue("alert", url, "application/json", body.clone())
                    .await
                {
                    tracing::error!(target = %crate::ops::outbound::host_of(url), "cannot queue an alert: {e}");
                }
            }
        }
        self.inner.evaluations.send_modify(|n| *n += 1);
    }

    /// Evaluates every `every` (or when kicked) until shutdown.
    pub async fn run(self, state: Watched, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.inner.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            let leading = state
                .leading
                .as_ref()
                .is_none_or(|l| l.load(std::sync::atomic::Ordering::Acquire));
            if leading {
                self.evaluate(&state).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(thresholds: &[f64]) -> Config {
        let mut c = Config::default();
        c.alerts.factor_thresholds = thresholds.to_vec();
        c.alerts.min_interval_secs = 300;
        c.backpressure.shed_factor = 4.0;
        c
    }

    fn obs(factor: f64) -> Observation {
        Observation {
            factor,
            day: "2026-11-26".into(),
            next_seq: 1,
            deadletters: 0,
            disk_free: Some(0.5),
            acme_failures: 0,
            acme_error: None,
            cert_expiry: None,
        }
    }

    #[test]
    fn a_certificate_with_less_than_seven_days_left_is_announced_once_and_its_renewal_too() {
        const DAY: i64 = 86_400;
        let mut a = Alerter::new(&config(&[2.0]), 1, None, 0);
        let with = |left: i64| {
            let mut o = obs(1.0);
            o.cert_expiry = Some((left, vec!["example.com".into()]));
            o
        };
        assert!(a.evaluate(&with(30 * DAY), 0).is_empty());
        assert!(
            a.evaluate(&with(7 * DAY), 1_000).is_empty(),
            "7 days is not less than 7"
        );
        let m = a.evaluate(&with(7 * DAY - 1), 2_000);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].contains("example.com") && m[0].contains("7.0 days"),
            "{m:?}"
        );
        assert!(a.evaluate(&with(3 * DAY), 3_000).is_empty(), "once");
        let m = a.evaluate(&with(-5), 4_000);
        assert!(m.is_empty(), "still the same episode: {m:?}");
        let m = a.evaluate(&with(60 * DAY), 5_000);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("valid again"), "{m:?}");
        // A fresh episode that starts expired says so.
        let mut b = Alerter::new(&config(&[2.0]), 1, None, 0);
        let m = b.evaluate(&with(-5), 0);
        assert!(m[0].contains("EXPIRED"), "{m:?}");
    }

    #[test]
    fn acme_failures_are_announced_once_and_the_recovery_too() {
        let mut a = Alerter::new(&config(&[2.0]), 1, None, 0);
        assert!(a.evaluate(&obs(1.0), 0).is_empty());
        let mut o = obs(1.0);
        o.acme_failures = 1;
        o.acme_error = Some("new order: connection refused".into());
        let m = a.evaluate(&o, 1_000);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("connection refused"), "{m:?}");
        o.acme_failures = 2;
        assert!(a.evaluate(&o, 400_000).is_empty());
        let m = a.evaluate(&obs(1.0), 800_000);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("obtained again"), "{m:?}");
    }

    #[test]
    fn a_crossing_is_announced_once_and_flapping_within_the_interval_is_quiet() {
        let mut a = Alerter::new(&config(&[2.0]), 1, None, 0);
        assert!(a.evaluate(&obs(1.0), 0).is_empty());
        let m = a.evaluate(&obs(2.5), 1000);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("crossed 2.00 upwards"), "{m:?}");
        // Noise within the hysteresis band does nothing at all.
        assert!(a.evaluate(&obs(1.9), 2000).is_empty());
        // A real drop and rise again inside the interval: quiet.
        for (i, f) in [1.0, 3.0, 1.0, 3.0, 1.0].iter().enumerate() {
            assert!(a.evaluate(&obs(*f), 3000 + i as u64 * 1000).is_empty());
        }
        // After the interval, the state then (below) is announced, once.
        let m = a.evaluate(&obs(1.0), 301_000);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("fell back below 2.00"), "{m:?}");
        assert!(a.evaluate(&obs(1.0), 900_000).is_empty());
        // Flapping that ends where it was announced sends nothing.
        assert!(a.evaluate(&obs(3.0), 901_000).len() == 1);
        assert!(a.evaluate(&obs(1.0), 902_000).is_empty());
        assert!(a.evaluate(&obs(3.0), 1_300_000).is_empty());
    }

    #[test]
    fn shedding_start_and_stop() {
        let mut a = Alerter::new(&config(&[]), 1, None, 0);
        let m = a.evaluate(&obs(4.5), 0);
        assert!(m[0].starts_with(":warning: Shedding started"), "{m:?}");
        assert!(a.evaluate(&obs(3.8), 400_000).is_empty(), "inside the band");
        let m = a.evaluate(&obs(3.0), 400_000);
        assert!(m[0].contains("Shedding stopped"), "{m:?}");
    }

    #[test]
    fn first_engagement_once_per_launch_day_and_not_again_after_a_restart() {
        let mut a = Alerter::new(&config(&[]), 1, None, 0);
        assert!(a.evaluate(&obs(1.0), 0).is_empty(), "no event yet");
        let mut o = obs(1.0);
        o.next_seq = 2;
        let m = a.evaluate(&o, 1);
        assert!(
            m[0].contains("First engagement of launch day 2026-11-26"),
            "{m:?}"
        );
        o.next_seq = 50;
        assert!(a.evaluate(&o, 2).is_empty());
        o.day = "2026-11-27".into();
        o.next_seq = 51;
        assert_eq!(a.evaluate(&o, 3).len(), 1);
        // A restart that knows today was announced stays quiet.
        let mut b = Alerter::new(&config(&[]), 51, Some("2026-11-27".into()), 0);
        o.next_seq = 52;
        assert!(b.evaluate(&o, 4).is_empty());
    }

    #[test]
    fn dead_letters_growing_and_disk_filling() {
        let mut a = Alerter::new(&config(&[]), 1, None, 0);
        let mut o = obs(1.0);
        o.deadletters = 2;
        let m = a.evaluate(&o, 0);
        assert!(
            m[0].contains("Dead letters growing: 2 held (was 0)"),
            "{m:?}"
        );
        o.deadletters = 3;
        assert!(a.evaluate(&o, 1000).is_empty(), "within the interval");
        let m = a.evaluate(&o, 300_000);
        assert!(m[0].contains("3 held (was 2)"), "{m:?}");
        o.deadletters = 0;
        assert!(a.evaluate(&o, 600_000).is_empty(), "shrinking is not news");

        o.disk_free = Some(0.05);
        let m = a.evaluate(&o, 700_000);
        assert!(m[0].contains("Disk filling: 5.0% free"), "{m:?}");
        o.disk_free = Some(0.11);
        assert!(
            a.evaluate(&o, 1_100_000).is_empty(),
            "inside the 2-point band"
        );
        o.disk_free = Some(0.2);
        assert!(a.evaluate(&o, 1_100_000)[0].contains("recovered"));
    }
}
