//! `launchguard lab` end to end, as a process: a short curve (five launch minutes at
//! 60x) played against the launchguard and origin the lab starts on 127.0.0.1, the
//! waiting room off and on; the table and the chart come out, and what the lab
//! promises holds (critical pages never shed, conversions made, the factor above
//! `shed_factor`). And a curve that keeps a line in the waiting room: visitors are let
//! in by the room and the wait each was shown is put beside the wait it had.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::binary::BIN;

/// The cells of the table row whose label starts with `label`.
fn row<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {label}")))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{table}"));
    line.trim_matches('|')
        .split('|')
        .skip(1)
        .map(str::trim)
        .collect()
}

#[test]
fn a_short_lab_run_reports_each_scenario_and_draws_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let curve = dir.path().join("short.csv");
    std::fs::write(
        &curve,
        "# a short, steep launch\n# lab.burst minute=2 visitors=100 spread_secs=60\n\
         minute,upvotes,comments,maker_comments\n0,20,2,0\n1,200,20,1\n2,220,25,0\n3,200,20,0\n4,150,15,0\n",
    )
    .unwrap();
    let chart = dir.path().join("lab.svg");
    let mut child = Command::new(BIN)
        .args([
            "lab",
            "--speed",
            "60",
            "--peak-rps",
            "250",
            "--patience-secs",
            "60",
        ])
        .args(["--features", "waiting-room,funnel-grace", "--curve"])
        .arg(&curve)
        .arg("--chart")
        .arg(&chart)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The lab ends each scenario by its own deadline; this one only guards the test.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the lab ran past two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");

    let names = row(&stdout, " |");
    assert_eq!(names[0], "all on", "{stdout}");
    assert!(names.contains(&"waiting-room off"), "{stdout}");
    // The grace is a config key on one branch and not yet on another: either it is
    // compared, or the lab says it left it out.
    assert!(
        names.contains(&"funnel-grace off")
            || stderr.contains("funnel-grace: not in this build (backpressure.funnel_grace_secs"),
        "{stderr}"
    );
    for cell in row(&stdout, "shed: critical") {
        assert!(
            cell.starts_with("0 /"),
            "a critical page was shed: {stdout}"
        );
    }
    for cell in row(&stdout, "factor, peak") {
        assert!(cell.parse::<f64>().unwrap() > 2.0, "{stdout}");
    }
    for cell in row(&stdout, "offered load, peak") {
        assert!(cell.parse::<u32>().unwrap() > 0, "{stdout}");
    }
    // Every would-be conversion is made or lost; with every feature on, some are made.
    let conversions = row(&stdout, "conversions made");
    for cell in &conversions {
        let n: Vec<u32> = cell
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(n[0] + n[1], n[2], "{stdout}");
    }
    assert!(!conversions[0].starts_with("0 /"), "{stdout}");
    for cell in row(&stdout, "visitors / webhooks") {
        let (_, hooks) = cell.split_once(" / ").unwrap();
        let (accepted, sent) = hooks.split_once(" of ").unwrap();
        assert_eq!(accepted, sent, "every webhook accepted: {stdout}");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"));
    for text in ["load (all on)", "scale factor", "waiting-room off"] {
        assert!(svg.contains(text), "{text}");
    }
}

/// Runs `launchguard lab` with `args`, at most `limit`; returns (stdout, stderr).
fn lab(args: &[&std::ffi::OsStr], limit: Duration) -> (String, String) {
    let mut child = Command::new(BIN)
        .arg("lab")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the lab ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn a_line_forms_and_the_wait_shown_is_measured_against_the_wait_had() {
    // Three minutes of votes that hold the factor near 3.1, then seven of comments that
    // keep it there while the last visitors and the line drain (as data/curves/waiting-line.csv,
    // shorter); an origin of 2 at once, so the room lets about 3 in a (real) second
    // while about 8 page views a second are shed; the funnel grace off, or every
    // visitor (all land on a funnel page) would be spared.
    let dir = tempfile::tempdir().unwrap();
    let curve = dir.path().join("line.csv");
    let mut text = String::from("minute,upvotes,comments,maker_comments\n");
    for m in 0..10 {
        text.push_str(&if m < 3 {
            format!("{m},240,30,0\n")
        } else {
            format!("{m},0,318,0\n")
        });
    }
    std::fs::write(&curve, text).unwrap();
    let config = dir.path().join("lab.toml");
    std::fs::write(&config, "[backpressure]\nfunnel_grace_secs = 0\n").unwrap();
    let chart = dir.path().join("lab.svg");
    let waits = dir.path().join("waits.csv");
    let (stdout, _) = lab(
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--curve".as_ref(),
            curve.as_os_str(),
            "--waits".as_ref(),
            waits.as_os_str(),
            "--chart".as_ref(),
            chart.as_os_str(),
            "--speed".as_ref(),
            "30".as_ref(),
            "--peak-rps".as_ref(),
            "80".as_ref(),
            "--origin-concurrency".as_ref(),
            "2".as_ref(),
            "--features".as_ref(),
            "waiting-room".as_ref(),
        ],
        Duration::from_secs(150),
    );
    let let_in = row(&stdout, "let in from the line");
    let (by_room, _) = let_in[0].split_once(" / ").unwrap();
    let by_room: u32 = by_room.parse().unwrap();
    assert!(by_room >= 15, "a line formed and drained: {stdout}");
    assert_eq!(let_in[1], "0 / 0", "no room, no line: {stdout}");
    // --waits: a row per visitor let in from the line, all from the run with the room.
    let waits = std::fs::read_to_string(&waits).unwrap();
    let mut rows = waits.lines();
    assert_eq!(
        rows.next(),
        Some("scenario,entered_secs,position,shown_secs,had_secs,by_room,within_30")
    );
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    let (room_rows, _): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r[5] == "true");
    assert_eq!(room_rows.len() as u32, by_room, "{waits}");
    assert!(
        rows.iter().all(|r| r[0] == "all on" && r.len() == 7),
        "{waits}"
    );
    assert!(
        rows.iter().all(|r| r[2].parse::<u32>().unwrap() >= 1),
        "places start at 1: {waits}"
    );
    // The share within ±30%, at entry and at each refresh, is measured, and not far
    // off. At 30x a refresh period is 30 launch seconds and the factor (so the origin
    // permits the room lets in by) moves within it, so this short run is rougher than
    // the README's at 10x (60% to 85% within at entry here); the ±30% goal itself is
    // asserted on an injected clock in edge/waiting.rs.
    let within = row(&stdout, "shown wait within ±30%");
    let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().unwrap();
    let (entry, refresh) = within[0].split_once(" / ").unwrap();
    assert!(pct(entry) >= 40.0, "{stdout}");
    assert!(pct(refresh) >= 30.0, "{stdout}");
    let median: f64 = row(&stdout, "median wait had")[0].parse().unwrap();
    assert!((0.5..=2.0).contains(&median), "{stdout}");
    // Without the room, the shed pricing page loses the funnel's conversions.
    let made = |cell: &str| cell.split(" / ").next().unwrap().parse::<u32>().unwrap();
    let conversions = row(&stdout, "conversions made");
    assert!(made(conversions[0]) > made(conversions[1]), "{stdout}");
}

#[test]
fn a_lab_option_error_names_the_option() {
    for (args, option) in [
        (&["--speed", "0"][..], "--speed"),
        (&["--features", "warp-drive"][..], "--features"),
        (&["--curve", "/nonexistent/curve.csv"][..], "--curve"),
    ] {
        let out = Command::new(BIN).arg("lab").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(option), "{args:?}: {stderr}");
    }
}
