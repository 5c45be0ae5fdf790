//! `launchguard lab`: replays a launch against launchguard in front of a real origin
//! with a stated capacity, and reports what happened, with each feature off and on.
//!
//! - **Input**: a curve (`minute,upvotes,comments,maker_comments`, as `simulate`
//!   reads, plus `# lab.burst` lines) and the visitor model (`model.rs`).
//! - **What runs**, per scenario, all on `127.0.0.1`: the lab's origin (`origin.rs`:
//!   `concurrency` at once, `latency` each, 503 above), a launchguard started
//!   in-process on port 0 in front of it (the caller hands [`run`] a [`Start`], so this
//!   wing does not import `app`), the curve's upvotes as signed webhooks
//!   (`simulate::play`) and the visitors over real HTTP (`drive.rs`): page views,
//!   assets, the signup form and the beacon, each visitor with its own cookies.
//! - **Time**: `speed` launch seconds pass in one real second. The keys that are
//!   durations are divided by it (the velocity window, with the gain divided too so
//!   the factor is the curve's own; cache lifetimes; the waiting room's refresh and
//!   session; `Retry-After`; the funnel grace), each at least one second. Request
//!   rates are not: the offered load is set by `peak_rps`, in real requests a second
//!   on this machine.
//! - **Features** are config tweaks (`Feature::toml`). The scenarios are "all on"
//!   and one per feature with that feature off; a feature whose key this build does
//!   not know (the config refuses it) is left out, with a note.
//! - **The lab's site**: `/launch/*` is the funnel and critical, `/assets/*` low,
//!   everything else normal; launchguard is told the origin's concurrency
//!   (`velocity.base_concurrency`, with `max_concurrency` keeping the factor's cap).
//!
//! **Invariant:** the lab sends traffic only to what it started on 127.0.0.1, every
//! run ends by a deadline, and what it started is stopped before `run` returns.

pub(crate) mod chart;
pub(crate) mod drive;
pub(crate) mod model;
pub(crate) mod origin;
pub(crate) mod report;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ops::simulate::Minute;

pub use model::{Burst, VisitorModel};
pub use origin::Capacity;
pub use report::Report;

/// A launchguard started for a scenario: its listeners, and how to stop it.
pub struct Appliance {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub stop: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Starts a launchguard with a config; the duration is how often its refresh-ahead
/// task and pump should look (a second over `speed`).
pub type Start = Arc<
    dyn Fn(Config, Duration) -> Pin<Box<dyn Future<Output = Result<Appliance, String>> + Send>>
        + Send
        + Sync,
>;

/// A feature the lab turns off and on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    WaitingRoom,
    FunnelGrace,
    RefreshAhead,
}

impl Feature {
    pub const ALL: [Feature; 3] = [
        Feature::WaitingRoom,
        Feature::FunnelGrace,
        Feature::RefreshAhead,
    ];

    /// Its name on the command line (`--features`).
    pub fn name(self) -> &'static str {
        match self {
            Feature::WaitingRoom => "waiting-room",
            Feature::FunnelGrace => "funnel-grace",
            Feature::RefreshAhead => "refresh-ahead",
        }
    }

    pub fn parse(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The config key that turns it off and on.
    pub fn key(self) -> &'static str {
        match self {
            Feature::WaitingRoom => "waiting_room.enabled",
            Feature::FunnelGrace => "backpressure.funnel_grace_secs",
            Feature::RefreshAhead => "cache.refresh_ahead_factor",
        }
    }

    /// The TOML that turns it `on` or off, `base` being the operator's table (its
    /// own value when it has one) and `speed` the time compression.
    pub fn toml(self, on: bool, base: &toml::Table, speed: f64) -> String {
        let own = |table: &str, key: &str| {
            base.get(table)
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        };
        match (self, on) {
            (Feature::WaitingRoom, on) => format!("[waiting_room]\nenabled = {on}\n"),
            // The grace's default (900 s) on the branch that brings it; 0 is off.
            (Feature::FunnelGrace, true) => format!(
                "[backpressure]\nfunnel_grace_secs = {}\n",
                scaled_secs(
                    own("backpressure", "funnel_grace_secs").unwrap_or(900.0),
                    speed
                )
            ),
            (Feature::FunnelGrace, false) => "[backpressure]\nfunnel_grace_secs = 0\n".into(),
            (Feature::RefreshAhead, true) => format!(
                "[cache]\nrefresh_ahead_factor = {:?}\n",
                own("cache", "refresh_ahead_factor")
                    .filter(|f| *f >= 1.0)
                    .unwrap_or(1.5)
            ),
            (Feature::RefreshAhead, false) => "[cache]\nrefresh_ahead_factor = 0.0\n".into(),
        }
    }
}

/// `secs` of launch time in real seconds at `speed`, at least 1.
fn scaled_secs(secs: f64, speed: f64) -> u64 {
    ((secs / speed).round() as u64).max(1)
}

/// The same, but 0 (a duration that is off) stays 0.
fn scaled_secs_or_off(secs: f64, speed: f64) -> u64 {
    if secs <= 0.0 {
        0
    } else {
        scaled_secs(secs, speed)
    }
}

/// What to run.
#[derive(Clone)]
pub struct Plan {
    /// The curve's file name, for the report.
    pub curve_name: String,
    pub curve: Vec<Minute>,
    pub bursts: Vec<Burst>,
    /// The operator's config text ("" for the defaults): the base of every scenario.
    pub base_config: String,
    pub speed: f64,
    /// Offered requests a second (real) at the curve's busiest second.
    pub peak_rps: f64,
    pub capacity: Capacity,
    pub features: Vec<Feature>,
    pub seed: u64,
    /// How long (launch seconds) a visitor keeps a waiting page open before leaving.
    pub patience_secs: f64,
    /// Where the scenarios keep their stores (removed after).
    pub scratch: PathBuf,
}

impl Plan {
    /// The factor refresh-ahead starts at when it is on (the operator's
    /// `cache.refresh_ahead_factor`, or its default 1.5): the lab counts the funnel
    /// page's misses and stale copies at or above it apart, in every scenario.
    pub fn warm_from(&self) -> f64 {
        self.base_config
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| {
                t.get("cache")?
                    .get("refresh_ahead_factor")
                    .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
            })
            .filter(|f| *f >= 1.0)
            .unwrap_or(1.5)
    }
}

/// One scenario: a name and the features it turns on and off.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub toggles: Vec<(Feature, bool)>,
}

/// "all on", then each feature off.
pub fn scenarios(features: &[Feature]) -> Vec<Scenario> {
    let mut out = vec![Scenario {
        name: "all on".into(),
        toggles: features.iter().map(|f| (*f, true)).collect(),
    }];
    for off in features {
        out.push(Scenario {
            name: format!("{} off", off.name()),
            toggles: features.iter().map(|f| (*f, f != off)).collect(),
        });
    }
    out
}

/// Deep-merges `over` into `base`.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn table(text: &str) -> toml::Table {
    text.parse().expect("the lab's own TOML parses")
}

/// The lab's keys over the operator's config: listeners, store, origin, secret,
/// the lab site's paths, and every duration divided by `speed`.
fn lab_overrides(base: &Config, plan: &Plan, secret: &str, origin: SocketAddr) -> String {
    let s = plan.speed;
    let v = &base.velocity;
    let cap = v.max_concurrency as f64 / v.base_concurrency as f64;
    let conc = plan.capacity.concurrency as u32;
    let c = &base.cache;
    let base_ttl = scaled_secs(c.base_ttl_secs as f64, s);
    let w = &base.waiting_room;
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
hosts = []
trusted_proxies = []
[origin]
upstream = "http://{origin}"
[webhook]
secrets = [{secret:?}]
[velocity]
window_secs = {window}
gain = {gain:?}
base_concurrency = {conc}
max_concurrency = {max}
[cache]
base_ttl_secs = {base_ttl}
min_ttl_secs = {min_ttl}
stale_while_revalidate_secs = {swr}
warm_urls = []
[waiting_room]
refresh_secs = {refresh}
session_secs = {session}
[backpressure]
retry_after_secs = {retry}
critical_paths = ["/", "/launch/*", "/api/leaderboard"]
low_paths = ["/assets/*"]
[conversions]
goals = ["signup"]
funnel_paths = ["/launch/*"]
beacons_per_minute = 1000000
[alerts]
slack_webhook_urls = []
disk_free_percent = 0.0
"#,
        window = scaled_secs(f64::from(v.window_secs), s),
        gain = v.gain / s,
        max = ((f64::from(conc) * cap).round() as u32).max(conc),
        min_ttl = scaled_secs(c.min_ttl_secs as f64, s).min(base_ttl),
        swr = scaled_secs_or_off(c.stale_while_revalidate_secs as f64, s),
        refresh = scaled_secs(w.refresh_secs as f64, s).min(300),
        session = scaled_secs(w.session_secs as f64, s),
        retry = scaled_secs(base.backpressure.retry_after_secs as f64, s),
    )
}

/// The config of one scenario, or why not (the error names the key).
pub fn scenario_config(
    plan: &Plan,
    scenario: &Scenario,
    secret: &str,
    origin: SocketAddr,
    data_dir: PathBuf,
) -> Result<Config, String> {
    let base = Config::parse(&plan.base_config).map_err(|e| format!("config: {e}"))?;
    let mut t: toml::Table = plan
        .base_config
        .parse()
        .map_err(|e| format!("config: {e}"))?;
    let raw = t.clone();
    // What would reach outside the lab or need files it does not have.
    for table in ["tls", "producthunt", "cluster"] {
        t.remove(table);
    }
    for (table, key) in [
        ("server", "admin_token_file"),
        ("server", "admin_hosts"),
        ("webhook", "secret_file"),
        ("origin", "static_dir"),
        ("origin", "ca_file"),
        ("outbound", "ca_file"),
        ("waiting_room", "template_file"),
    ] {
        if let Some(toml::Value::Table(inner)) = t.get_mut(table) {
            inner.remove(key);
        }
    }
    merge(&mut t, table(&lab_overrides(&base, plan, secret, origin)));
    for (f, on) in &scenario.toggles {
        merge(&mut t, table(&f.toml(*on, &raw, plan.speed)));
    }
    let text = toml::to_string(&t).map_err(|e| format!("config: {e}"))?;
    let mut config = Config::parse(&text).map_err(|e| format!("config: {e}"))?;
    config.server.data_dir = data_dir;
    Ok(config)
}

/// Which of `features` this build knows: the config must take each one's key.
pub fn available(plan: &Plan, features: &[Feature]) -> (Vec<Feature>, Vec<String>) {
    let mut ok = Vec::new();
    let mut notes = Vec::new();
    let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
    for f in features {
        let probe = Scenario {
            name: String::new(),
            toggles: vec![(*f, true)],
        };
        match scenario_config(plan, &probe, "probe", addr, plan.scratch.clone()) {
            Ok(_) => ok.push(*f),
            Err(e) if e.contains(f.key().rsplit('.').next().unwrap_or_default()) => {
                notes.push(format!(
                    "{}: not in this build ({} is not a config key here); left out",
                    f.name(),
                    f.key()
                ))
            }
            Err(e) => notes.push(format!("{}: {e}", f.name())),
        }
    }
    (ok, notes)
}

/// Runs every scenario of `plan` one after another; `progress` gets a line as each
/// starts and ends.
pub async fn run(
    plan: &Plan,
    start: Start,
    mut progress: impl FnMut(&str),
) -> Result<Report, String> {
    let (features, notes) = available(plan, &plan.features);
    for n in &notes {
        progress(&format!("note: {n}"));
    }
    let mut model = VisitorModel::default();
    // The scale that puts the busiest second at `peak_rps` real requests a second.
    let unscaled = model::arrivals(&plan.curve, &plan.bursts, &model, plan.seed);
    let len = plan
        .curve
        .last()
        .map_or(0, |m| (m.minute as usize + 1) * 60);
    let peak = model::offered_per_second(&unscaled, len + 120)
        .iter()
        .map(|c| c.iter().sum::<u32>())
        .max()
        .unwrap_or(0);
    if peak == 0 {
        return Err("--curve: the curve brings no visitors (no upvotes)".into());
    }
    model.scale = plan.peak_rps / (f64::from(peak) * plan.speed);
    let arrivals = model::arrivals(&plan.curve, &plan.bursts, &model, plan.seed);
    let mut runs = Vec::new();
    for (i, scenario) in scenarios(&features).into_iter().enumerate() {
        progress(&format!(
            "scenario {}: {} ({} visitors, about {:.0} s)",
            i + 1,
            scenario.name,
            arrivals.len(),
            (len as f64 + 62.0 + plan.patience_secs) / plan.speed
        ));
        let dir = plan.scratch.join(format!("scenario-{i}"));
        let result = drive::scenario(plan, &scenario, &arrivals, &start, dir.clone()).await;
        let _ = std::fs::remove_dir_all(&dir);
        let run = result?;
        progress(&format!(
            "scenario {}: {} done: {} conversions, {} lost",
            i + 1,
            scenario.name,
            run.conversions(),
            run.lost()
        ));
        runs.push(run);
    }
    Ok(Report {
        curve_name: plan.curve_name.clone(),
        speed: plan.speed,
        capacity: plan.capacity,
        peak_rps: plan.peak_rps,
        scale: model.scale,
        shed_factor: Config::parse(&plan.base_config)
            .map(|c| c.backpressure.shed_factor)
            .unwrap_or(2.0),
        warm_from: plan.warm_from(),
        notes,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(base: &str) -> Plan {
        Plan {
            curve_name: "t".into(),
            curve: Vec::new(),
            bursts: Vec::new(),
            base_config: base.into(),
            speed: 20.0,
            peak_rps: 100.0,
            capacity: Capacity {
                concurrency: 10,
                latency: Duration::from_millis(40),
            },
            features: Feature::ALL.to_vec(),
            seed: 1,
            patience_secs: 600.0,
            scratch: PathBuf::from("scratch"),
        }
    }

    #[test]
    fn a_scenario_scales_durations_and_keeps_the_operators_other_keys() {
        let p = plan("[backpressure]\nshed_factor = 2.5\n[cache]\nwarm_urls = [\"/x\"]\n");
        let s = Scenario {
            name: "x".into(),
            toggles: vec![(Feature::WaitingRoom, false), (Feature::RefreshAhead, true)],
        };
        let addr: SocketAddr = ([127, 0, 0, 1], 3000).into();
        let c = scenario_config(&p, &s, "sec", addr, "d".into()).unwrap();
        assert_eq!(c.backpressure.shed_factor, 2.5, "the operator's");
        assert_eq!(c.velocity.window_secs, 3, "60 s at speed 20");
        assert!((c.velocity.gain - 0.02).abs() < 1e-12);
        assert_eq!(c.velocity.base_concurrency, 10);
        assert_eq!(c.velocity.max_concurrency, 50, "the cap stays 5");
        assert_eq!(c.cache.base_ttl_secs, 3);
        assert_eq!(c.cache.min_ttl_secs, 1, "at least a second");
        assert!(c.cache.warm_urls.is_empty());
        assert_eq!(c.waiting_room.refresh_secs, 1);
        assert_eq!(c.waiting_room.session_secs, 30);
        assert!(!c.waiting_room.enabled);
        assert_eq!(c.cache.refresh_ahead_factor, 1.5);
        assert_eq!(c.origin.upstream.as_deref(), Some("http://127.0.0.1:3000"));
        assert_eq!(c.webhook.secrets, vec!["sec".to_string()]);
    }

    #[test]
    fn a_duration_that_is_off_stays_off_and_the_warming_threshold_is_the_operators() {
        let p = plan("[cache]\nstale_while_revalidate_secs = 0\nrefresh_ahead_factor = 1.8\n");
        let s = Scenario {
            name: "x".into(),
            toggles: vec![(Feature::RefreshAhead, false)],
        };
        let addr: SocketAddr = ([127, 0, 0, 1], 3000).into();
        let c = scenario_config(&p, &s, "sec", addr, "d".into()).unwrap();
        assert_eq!(c.cache.stale_while_revalidate_secs, 0, "not one second");
        assert_eq!(c.cache.refresh_ahead_factor, 0.0, "off in this scenario");
        assert_eq!(p.warm_from(), 1.8, "the misses are still split at 1.8");
        assert_eq!(plan("").warm_from(), 1.5);
        let c = scenario_config(&plan(""), &s, "sec", addr, "d".into()).unwrap();
        assert_eq!(c.cache.stale_while_revalidate_secs, 2, "30 s at speed 20");
    }

    #[test]
    fn a_feature_this_build_does_not_know_is_left_out_with_a_note() {
        let p = plan("");
        let (ok, notes) = available(&p, &Feature::ALL);
        assert!(ok.contains(&Feature::WaitingRoom) && ok.contains(&Feature::RefreshAhead));
        let grace_known = Config::parse("[backpressure]\nfunnel_grace_secs = 0\n").is_ok();
        assert_eq!(ok.contains(&Feature::FunnelGrace), grace_known);
        if !grace_known {
            assert_eq!(notes.len(), 1);
            assert!(
                notes[0].contains("backpressure.funnel_grace_secs"),
                "{notes:?}"
            );
        }
    }

    #[test]
    fn scenarios_are_all_on_then_each_off() {
        let s = scenarios(&[Feature::WaitingRoom, Feature::RefreshAhead]);
        let names: Vec<_> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["all on", "waiting-room off", "refresh-ahead off"]);
        assert_eq!(
            s[2].toggles,
            [(Feature::WaitingRoom, true), (Feature::RefreshAhead, false)]
        );
    }
}
