//! `launchguard report`: the binary against a fixture store built here, read while no
//! server runs, and refused clearly while one does.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::TestServer;
use launchguard::clock::Clock;
use launchguard::ingest::store::Store;
use launchguard::insight::history::{History, MetricsBatch, Tally};

fn ms(rfc3339: &str) -> u64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64
}

fn batch(
    at: &str,
    visits: u64,
    signups: u64,
    waitlist: u64,
    requests: u64,
    factor: f64,
) -> MetricsBatch {
    let mut tally = Tally {
        visits,
        requests,
        cache_hits: requests / 2,
        cache_misses: requests / 4,
        rejections: 1,
        webhooks_accepted: 2,
        // Two page views a visitor; every waitlister also signed up.
        unique_visitors: visits / 2,
        converting_visitors: signups.min(visits / 2),
        ..Tally::default()
    };
    tally.add_conversions("signup", signups);
    tally.add_conversions("waitlist", waitlist);
    MetricsBatch {
        window_start_ms: ms(at),
        window_ms: 5000,
        tally,
        peak_factor: factor,
        velocity: 1.0,
        earlier: Vec::new(),
    }
}

/// The fall-back day 2026-11-01 in Los Angeles (25 hours), with batches in both
/// 01:00 hours, and one batch on the day before.
fn fixture(dir: &Path) {
    let store = Store::open(&dir.join("state")).unwrap();
    let h = History::open(&store).unwrap();
    let day = [
        batch("2026-11-01T07:10:00Z", 100, 4, 1, 500, 1.5), // 00:10 PDT
        batch("2026-11-01T08:30:00Z", 200, 6, 0, 1000, 3.25), // 01:30 PDT
        batch("2026-11-01T09:30:00Z", 100, 0, 0, 250, 2.0), // 01:30 PST
    ];
    for b in &day {
        h.record(b, "2026-11-01").unwrap();
    }
    h.record(
        &batch("2026-11-01T06:00:00Z", 9, 9, 0, 9, 1.0),
        "2026-10-31",
    )
    .unwrap();
    store.flush_durable(true).unwrap();
    std::fs::write(
        dir.join("launchguard.toml"),
        format!(
            "[server]\ndata_dir = {:?}\n\n[conversions]\ngoals = [\"signup\", \"waitlist\"]\n",
            dir.join("state").display().to_string()
        ),
    )
    .unwrap();
}

fn report(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_launchguard"))
        .arg("report")
        .arg("--config")
        .arg(dir.join("launchguard.toml"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn the_table_shows_totals_money_and_25_hours() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let out = stdout(&report(dir.path(), &["--day", "2026-11-01"]));
    // 200 visitors (400 page views), 10 of them converting 11 times: 5 %, spend
    // 2500, CAC 250, revenue 528.
    for want in [
        "launch day 2026-11-01 (America/Los_Angeles, 25 h: 2026-11-01T00:00:00-07:00 to 2026-11-02T00:00:00-08:00)",
        "  unique visitors      200\n",
        "  page views           400\n",
        "  converting visitors  10\n",
        "  conversions          11 (signup 10, waitlist 1)\n",
        "  conversion rate      5.00 %\n",
        "  spend                $2500.00\n",
        "  CAC                  $250.00\n",
        "  revenue              $528.00\n",
        "  ROI                  -78.88 %\n",
        "  peak requests/s      200.0\n",
        "  peak scale factor    3.25\n",
        "  requests             1750\n",
        "  webhooks accepted    6\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let hours: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(" P"))
        .collect();
    assert_eq!(hours.len(), 25, "{out}");
    assert!(
        hours[1].trim_start().starts_with("01:00 PDT") && hours[1].contains(" 200 "),
        "{}",
        hours[1]
    );
    assert!(
        hours[2].trim_start().starts_with("01:00 PST") && hours[2].contains(" 100 "),
        "{}",
        hours[2]
    );
}

#[test]
fn json_and_csv_carry_the_same_day() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let json: serde_json::Value = serde_json::from_str(&stdout(&report(
        dir.path(),
        &["--day", "2026-11-01", "--json"],
    )))
    .unwrap();
    assert_eq!(json["day"], "2026-11-01");
    assert_eq!(json["visits"], 400);
    assert_eq!(
        json["conversions"],
        serde_json::json!({"signup": 10, "waitlist": 1})
    );
    assert_eq!(json["unique_visitors"], 200);
    assert_eq!(json["converting_visitors"], 10);
    assert_eq!(json["conv_rate"], 10.0 / 200.0);
    assert_eq!(json["hourly"].as_array().unwrap().len(), 25);
    assert_eq!(json["series"].as_array().unwrap().len(), 3);

    let csv = stdout(&report(dir.path(), &["--day", "2026-11-01", "--csv"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 25 + 1);
    assert!(lines[0].starts_with(
        "hour_start,hour,visits,unique_visitors,converting_visitors,conversions_signup,conversions_waitlist,conversions_total"
    ));
    assert!(
        lines[2].starts_with("2026-11-01T01:00:00-07:00,01:00 PDT,200,100,6,6,0,6,"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("2026-11-01T01:00:00-08:00,01:00 PST,100,50,0,0,0,0,"),
        "{}",
        lines[3]
    );
    assert!(
        lines[26]
            .starts_with("2026-11-01T00:00:00-07:00,total,400,200,10,10,1,11,0.050000,2500.00,"),
        "{}",
        lines[26]
    );

    // The day before is its own day; a day without data is zeros and n/a.
    let before = stdout(&report(dir.path(), &["--day", "2026-10-31", "--json"]));
    assert!(before.contains("\"visits\": 9"), "{before}");
    let empty = stdout(&report(dir.path(), &["--day", "2025-01-01"]));
    assert!(empty.contains("conversion rate      n/a"), "{empty}");
}

#[test]
fn bad_input_and_a_missing_store_are_named() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let o = report(dir.path(), &["--day", "01/11/2026"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--day: expected a date YYYY-MM-DD"));

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(
        empty.path().join("launchguard.toml"),
        format!(
            "[server]\ndata_dir = {:?}\n",
            empty.path().join("none").display().to_string()
        ),
    )
    .unwrap();
    let o = report(empty.path(), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no store in") && err.contains("server.data_dir"),
        "{err}"
    );
    assert!(
        !empty.path().join("none").exists(),
        "report creates nothing"
    );
}

#[tokio::test]
async fn a_running_server_holds_the_store_and_report_says_so() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let s = TestServer::start(&dir.path().join("state"), Clock::system(), |_| {}).await;
    let path = dir.path().to_path_buf();
    let o = tokio::task::spawn_blocking(move || report(&path, &["--day", "2026-11-01"]))
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is in use: a running launchguard holds its lock"),
        "{err}"
    );
    assert!(err.contains("stop the server first"), "{err}");
    s.stop().await;
    // Stopped: the same command reads the store.
    let path = dir.path().to_path_buf();
    let o = tokio::task::spawn_blocking(move || report(&path, &["--day", "2026-11-01"]))
        .await
        .unwrap();
    assert!(stdout(&o).contains("page views           400"));
}

#[test]
fn an_unknown_time_zone_is_named_by_its_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("launchguard.toml"),
        "[conversions]\ntimezone = \"Mars/Olympus_Mons\"\n",
    )
    .unwrap();
    for command in ["report", "serve"] {
        let o = Command::new(env!("CARGO_BIN_EXE_launchguard"))
            .arg(command)
            .arg("--config")
            .arg(dir.path().join("launchguard.toml"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{command}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("conversions.timezone: unknown time zone \"Mars/Olympus_Mons\""),
            "{command}: {err}"
        );
    }
}
