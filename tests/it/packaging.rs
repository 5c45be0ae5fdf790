//! What ships beside the binary: the systemd unit stays hardened, and the Prometheus
//! alert rules stay valid. Each check needs its tool (`systemd-analyze` from systemd,
//! `promtool` from Debian's `prometheus` package): without it the check says so and
//! skips, except under CI (`CI=true`), where it fails (`support::tools::require_tool`).

use std::path::Path;
use std::process::Command;

use crate::support::tools::require_tool;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `tool args` (the tool from Debian's `package`): its success and its output,
/// or `None` when the tool is missing and the check is skipped.
fn run(tool: &str, package: &str, args: &[&str]) -> Option<(bool, String)> {
    let path = require_tool(&[tool], package)?;
    let out = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn systemd_unit_exposure_is_at_most_1_5() {
    let unit = repo("systemd/launchguard.service");
    let Some((_, out)) = run(
        "systemd-analyze",
        "systemd",
        &["security", "--offline=true", unit.to_str().unwrap()],
    ) else {
        return;
    };
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the level in {line:?}"));
    assert!(level <= 1.5, "exposure {level} > 1.5:\n{out}");
}

#[test]
fn systemd_unit_is_notify_with_watchdog_and_credentials() {
    let unit = std::fs::read_to_string(repo("systemd/launchguard.service")).unwrap();
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=launchguard",
        "LoadCredential=webhook_secret:",
        "LoadCredential=admin_token:",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}");
    }
    let watchdog: u64 = value(&unit, "WatchdogSec=").parse().unwrap();
    assert!(watchdog > 0);
    let nofile: u64 = value(&unit, "LimitNOFILE=").parse().unwrap();
    assert!(
        nofile >= 16_384,
        "LimitNOFILE={nofile} is too low for 15k connections"
    );
}

fn value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("the unit has no {key}"))
        .trim()
}

#[test]
fn prometheus_alert_rules_are_valid_and_fire_as_tested() {
    let rules = repo("data/prometheus/alerts.yml");
    let Some((ok, out)) = run(
        "promtool",
        "prometheus",
        &["check", "rules", rules.to_str().unwrap()],
    ) else {
        return;
    };
    assert!(ok, "promtool check rules:\n{out}");
    let tests = repo("data/prometheus/alerts_test.yml");
    let (ok, out) = run(
        "promtool",
        "prometheus",
        &["test", "rules", tests.to_str().unwrap()],
    )
    .expect("promtool ran a moment ago");
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn the_packaged_config_is_valid() {
    let path = repo("systemd/launchguard.toml");
    let c = launchguard::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.data_dir, Path::new("/var/lib/launchguard"));
    assert_eq!(
        c.origin.static_dir,
        Path::new("/usr/share/launchguard/site")
    );
}
