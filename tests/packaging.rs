//! What ships beside the binary: the systemd unit stays hardened, and the Prometheus
//! alert rules stay valid. Each check runs where its tool exists (`systemd-analyze`
//! from systemd, `promtool` from Debian's `prometheus` package) and says so when not.

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `tool args`, or returns `None` (with a note on stderr) when it is not installed.
fn run(tool: &str, args: &[&str]) -> Option<(bool, String)> {
    match Command::new(tool).args(args).output() {
        Ok(out) => Some((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{tool} is not installed; check skipped");
            None
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

#[test]
fn systemd_unit_exposure_is_at_most_1_5() {
    let unit = repo("systemd/launchguard.service");
    let Some((_, out)) = run(
        "systemd-analyze",
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
    let Some((ok, out)) = run("promtool", &["check", "rules", rules.to_str().unwrap()]) else {
        return;
    };
    assert!(ok, "promtool check rules:\n{out}");
    let tests = repo("data/prometheus/alerts_test.yml");
    let (ok, out) = run("promtool", &["test", "rules", tests.to_str().unwrap()])
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
