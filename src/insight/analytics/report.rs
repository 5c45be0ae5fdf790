//! `launchguard report`: one day read from a stopped server's store, rendered as a
//! table, CSV or JSON.

use std::fmt::Write as _;

use jiff::tz::TimeZone;

use super::http::parse_day;
use super::math::{day_of, DayReport, Summary};
use super::query::{query_day, QueryError};
use crate::ingest::store::StoreError;
use crate::insight::counters::Conversions;

/// `launchguard report [--day D] [--json|--csv]`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The launch day, YYYY-MM-DD in conversions.timezone (default: today there).
    #[arg(long)]
    pub day: Option<String>,
    /// Print JSON, the same fields as GET /api/analytics.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV: one line per hour, then the day's total.
    #[arg(long)]
    pub csv: bool,
}

/// Why `launchguard report` could not print.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("--day: expected a date YYYY-MM-DD, got {0:?}")]
    Day(String),
    #[error("no store in {0}: nothing was recorded there yet; check server.data_dir in the config given with --config")]
    NoStore(std::path::PathBuf),
    #[error("the store in {0} is in use: a running launchguard holds its lock, and sled lets one process open it at a time; stop the server first (systemctl stop launchguard), or ask the running one with GET /api/analytics?day=YYYY-MM-DD on the admin listener")]
    Locked(std::path::PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Query(#[from] QueryError),
}

impl ReportError {
    /// A mistake in the command line or the config (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, ReportError::Config(_) | ReportError::Day(_))
    }
}

/// Reads one day from the store of a stopped server and renders it.
pub fn report(
    config_path: Option<std::path::PathBuf>,
    args: &ReportArgs,
) -> Result<String, ReportError> {
    let config = match config_path {
        Some(path) => crate::config::Config::load(&path)?,
        None => crate::config::Config::parse("")?,
    };
    let tz = TimeZone::get(&config.conversions.timezone)
        .map_err(|e| crate::config::ConfigError::invalid("conversions.timezone", e.to_string()))?;
    let now = crate::clock::Clock::system().now_ms();
    let day = match &args.day {
        Some(d) => parse_day("day", d).map_err(|_| ReportError::Day(d.clone()))?,
        None => day_of(now, &tz),
    };
    let dir = &config.server.data_dir;
    if !dir.join("db").is_file() {
        return Err(ReportError::NoStore(dir.clone()));
    }
    // `Store::open` waits a moment for a server that has just stopped.
    let store = crate::ingest::store::Store::open(dir).map_err(|e| match &e {
        StoreError::Open { detail, .. } if detail.contains("lock") => {
            ReportError::Locked(dir.clone())
        }
        _ => ReportError::Store(e),
    })?;
    let conv = Conversions::new(
        &config.conversions,
        crate::insight::history::History::open(&store)?,
        crate::ingest::factor::Factor::new(),
        now,
    )?;
    let r = query_day(
        &conv,
        &config.conversions,
        day,
        now,
        &super::http::own_node(&config),
    )?;
    Ok(if args.json {
        let mut s = serde_json::to_string_pretty(&r).expect("reports serialize");
        s.push('\n');
        s
    } else if args.csv {
        render_csv(&r)
    } else {
        render_table(&r)
    })
}

fn opt(v: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".to_string(), fmt)
}

fn pct(v: f64) -> String {
    format!("{:.2} %", v * 100.0)
}

fn usd(v: f64) -> String {
    if v < 0.0 {
        format!("-${:.2}", -v)
    } else {
        format!("${v:.2}")
    }
}

/// The readable table `launchguard report` prints.
pub fn render_table(r: &DayReport) -> String {
    let s = &r.summary;
    let e = &s.economics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "launch day {} ({}, {} h: {} to {})\n",
        r.day, r.timezone, r.hours_in_day, r.start, r.end
    );
    let goals: Vec<String> = s
        .conversions
        .iter()
        .map(|(g, n)| format!("{g} {n}"))
        .collect();
    let rows = [
        ("unique visitors", s.unique_visitors.to_string()),
        ("page views", s.visits.to_string()),
        ("converting visitors", s.converting_visitors.to_string()),
        (
            "conversions",
            format!("{} ({})", s.conversions_total, goals.join(", ")),
        ),
        ("conversion rate", opt(e.conv_rate, pct)),
        ("spend", usd(e.spend_usd)),
        ("CAC", opt(e.cac_usd, usd)),
        ("revenue", usd(e.revenue_usd)),
        ("ROI", opt(e.roi, pct)),
        ("peak requests/s", format!("{:.1}", s.peak_rps)),
        ("peak scale factor", format!("{:.2}", s.peak_factor)),
        ("requests", s.requests.to_string()),
        (
            "cache hits / misses",
            format!("{} / {}", s.cache_hits, s.cache_misses),
        ),
        ("rejections (503)", s.rejections.to_string()),
        ("webhooks accepted", s.webhooks_accepted.to_string()),
        (
            "funnel grace",
            format!(
                "{} requests let through, {} conversions protected",
                s.grace_admitted_requests, s.grace_protected_conversions
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<20} {v}");
    }
    let _ = writeln!(
        out,
        "\n  {:<10} {:>8} {:>8} {:>11} {:>10} {:>9} {:>9} {:>7}",
        "hour", "visitors", "views", "conversions", "conv rate", "requests", "peak rps", "factor"
    );
    for h in &r.hourly {
        let s = &h.summary;
        let _ = writeln!(
            out,
            "  {:<10} {:>8} {:>8} {:>11} {:>10} {:>9} {:>9.1} {:>7.2}",
            h.hour,
            s.unique_visitors,
            s.visits,
            s.conversions_total,
            opt(s.economics.conv_rate, pct),
            s.requests,
            s.peak_rps,
            s.peak_factor
        );
    }
    if r.hourly
        .iter()
        .all(|h| h.summary.requests == 0 && h.summary.visits == 0)
        && (s.requests > 0 || s.visits > 0)
    {
        let _ = writeln!(
            out,
            "\n  (hourly detail is gone: rows older than conversions.retention_days are swept; the totals remain)"
        );
    }
    if !r.nodes.is_empty() {
        let _ = writeln!(
            out,
            "\n  {:<20} {:>8} {:>8} {:>11} {:>9} {:>9}",
            "node", "visitors", "views", "conversions", "requests", "webhooks"
        );
        for n in &r.nodes {
            let s = &n.summary;
            let _ = writeln!(
                out,
                "  {:<20} {:>8} {:>8} {:>11} {:>9} {:>9}",
                n.node,
                s.unique_visitors,
                s.visits,
                s.conversions_total,
                s.requests,
                s.webhooks_accepted
            );
        }
    }
    out
}

/// CSV: one line per hour, then a `total` line.
pub fn render_csv(r: &DayReport) -> String {
    let goals: Vec<&String> = r.summary.conversions.keys().collect();
    let mut out = String::from("hour_start,hour,visits,unique_visitors,converting_visitors");
    for g in &goals {
        let _ = write!(out, ",conversions_{g}");
    }
    out.push_str(",conversions_total,conv_rate,spend_usd,cac_usd,revenue_usd,roi,requests,peak_rps,peak_factor\n");
    let row = |out: &mut String, start: &str, label: &str, s: &Summary| {
        let _ = write!(
            out,
            "{start},{label},{},{},{}",
            s.visits, s.unique_visitors, s.converting_visitors
        );
        for g in &goals {
            let _ = write!(out, ",{}", s.conversions.get(*g).copied().unwrap_or(0));
        }
        let e = &s.economics;
        let o = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        let _ = writeln!(
            out,
            ",{},{},{:.2},{},{:.2},{},{},{:.3},{:.3}",
            s.conversions_total,
            o(e.conv_rate),
            e.spend_usd,
            o(e.cac_usd),
            e.revenue_usd,
            o(e.roi),
            s.requests,
            s.peak_rps,
            s.peak_factor
        );
    };
    for h in &r.hourly {
        row(&mut out, &h.start, &h.hour, &h.summary);
    }
    row(&mut out, &r.start, "total", &r.summary);
    out
}

#[cfg(test)]
mod tests {
    use super::super::math::{day_report, Frame, Pricing};
    use super::*;
    use jiff::tz::TimeZone;

    const P: Pricing = Pricing {
        cost_per_visit_usd: 12.5,
        ltv_usd: 48.0,
    };

    #[test]
    fn table_and_csv_show_nulls_as_such() {
        let tz = TimeZone::UTC;
        let goals = vec!["signup".to_string()];
        let frame = Frame {
            tz: &tz,
            tz_name: "UTC",
            goals: &goals,
            pricing: P,
        };
        let r = day_report("2026-11-26".parse().unwrap(), &frame, None, &[], None).unwrap();
        let t = render_table(&r);
        assert!(t.contains("conversion rate      n/a"), "{t}");
        assert!(t.contains("CAC                  n/a"), "{t}");
        let csv = render_csv(&r);
        assert_eq!(csv.lines().count(), 1 + 24 + 1);
        assert!(
            csv.lines()
                .last()
                .unwrap()
                .contains(",total,0,0,0,0,0,,0.00,,0.00,,0,"),
            "{csv}"
        );
    }
}
