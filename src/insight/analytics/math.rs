//! The report math: economics, the launch day in its time zone, and the assembly of
//! day, range and launches reports from stored totals, batches and the live window.
//!
//! **Invariant:** nothing here does I/O or reads a clock; every instant is passed in.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Serialize;

use crate::config::ConversionsConfig;
use crate::insight::history::{DayTotals, MetricsBatch, Tally};

/// What a visit costs and a conversion is worth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pricing {
    pub cost_per_visit_usd: f64,
    pub ltv_usd: f64,
}

impl Pricing {
    pub fn of(config: &ConversionsConfig) -> Pricing {
        Pricing {
            cost_per_visit_usd: config.cost_per_visit_usd,
            ltv_usd: config.ltv_usd,
        }
    }
}

/// The money side of a set of counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Economics {
    /// `converting visitors / unique visitors`; `None` without visitors.
    pub conv_rate: Option<f64>,
    pub spend_usd: f64,
    /// `cost_per_visit_usd / conv_rate`; `None` without converting visitors.
    pub cac_usd: Option<f64>,
    pub revenue_usd: f64,
    /// `(revenue - spend) / spend`; `None` without spend.
    pub roi: Option<f64>,
}

/// `visitors` are unique visitors, `converting` the visitors who converted (any
/// goal), `conversions` every goal's conversions.
pub fn economics(visitors: u64, converting: u64, conversions: u64, pricing: &Pricing) -> Economics {
    let spend = visitors as f64 * pricing.cost_per_visit_usd;
    let revenue = conversions as f64 * pricing.ltv_usd;
    let conv_rate = (visitors > 0).then(|| converting as f64 / visitors as f64);
    // cost / (converting / visitors) = spend / converting, without the rounding of
    // the intermediate rate.
    let cac = (converting > 0).then(|| spend / converting as f64);
    let roi = (spend > 0.0).then(|| (revenue - spend) / spend);
    Economics {
        conv_rate,
        spend_usd: spend,
        cac_usd: cac,
        revenue_usd: revenue,
        roi,
    }
}

/// The launch day that `ms` falls in.
pub fn day_of(ms: u64, tz: &TimeZone) -> Date {
    Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
        .date()
}

/// Start and end (exclusive) of `day` in Unix ms: its two midnights in `tz`.
pub fn day_bounds(day: Date, tz: &TimeZone) -> Result<(u64, u64), jiff::Error> {
    let start = day.to_zoned(tz.clone())?.timestamp().as_millisecond();
    let end = day
        .tomorrow()?
        .to_zoned(tz.clone())?
        .timestamp()
        .as_millisecond();
    Ok((start.max(0) as u64, end.max(0) as u64))
}

/// `YYYY-MM-DDTHH:MM:SS±HH:MM` in `tz`.
pub fn local_time(ms: u64, tz: &TimeZone) -> String {
    Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

fn hour_label(ms: u64, tz: &TimeZone) -> String {
    Timestamp::from_millisecond(ms as i64)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
        .strftime("%H:%M %Z")
        .to_string()
}

/// Counts and their economics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// HTML page views under the funnel paths.
    pub visits: u64,
    /// Visitors by their cookie, once a launch day.
    pub unique_visitors: u64,
    /// Visitors who converted (any goal), once a launch day.
    pub converting_visitors: u64,
    pub conversions: BTreeMap<String, u64>,
    pub conversions_total: u64,
    #[serde(flatten)]
    pub economics: Economics,
    pub peak_rps: f64,
    pub peak_factor: f64,
    pub requests: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub rejections: u64,
    pub webhooks_accepted: u64,
    /// Requests the funnel grace admitted that shedding would have refused.
    pub grace_admitted_requests: u64,
    /// Conversions by visitors the funnel grace admitted within
    /// `backpressure.funnel_grace_secs` before converting.
    pub grace_protected_conversions: u64,
}

impl Summary {
    pub fn of(
        tally: &Tally,
        peak_rps: f64,
        peak_factor: f64,
        goals: &[String],
        pricing: &Pricing,
    ) -> Summary {
        // What another node of the cluster counted first is counted there.
        let tally = &tally.net();
        let mut conversions: BTreeMap<String, u64> = goals.iter().map(|g| (g.clone(), 0)).collect();
        for (g, n) in &tally.conversions {
            *conversions.entry(g.clone()).or_default() += n;
        }
        let total = tally.conversions_total();
        Summary {
            visits: tally.visits,
            unique_visitors: tally.unique_visitors,
            converting_visitors: tally.converting_visitors,
            conversions,
            conversions_total: total,
            economics: economics(
                tally.unique_visitors,
                tally.converting_visitors,
                total,
                pricing,
            ),
            peak_rps,
            peak_factor,
            requests: tally.requests,
            cache_hits: tally.cache_hits,
            cache_misses: tally.cache_misses,
            rejections: tally.rejections,
            webhooks_accepted: tally.webhooks_accepted,
            grace_admitted_requests: tally.grace_admitted,
            grace_protected_conversions: tally.grace_conversions,
        }
    }
}

/// One hour of a launch day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourRow {
    /// Local wall-clock start with the zone abbreviation: `"01:00 PDT"`, `"01:00 PST"`.
    pub hour: String,
    pub start: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// One flushed batch (or the live window) for charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    pub t: String,
    pub start_ms: u64,
    pub window_ms: u64,
    pub visits: u64,
    pub unique_visitors: u64,
    pub conversions: BTreeMap<String, u64>,
    pub requests: u64,
    pub rps: f64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub rejections: u64,
    pub webhooks_accepted: u64,
    pub grace_admitted_requests: u64,
    pub grace_protected_conversions: u64,
    pub peak_factor: f64,
    pub velocity: f64,
    /// The live window, not yet flushed.
    pub live: bool,
}

/// `GET /api/analytics?day=…`, and what `launchguard report` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayReport {
    pub day: String,
    pub timezone: String,
    pub start: String,
    pub end: String,
    pub hours_in_day: u64,
    #[serde(flatten)]
    pub summary: Summary,
    pub hourly: Vec<HourRow>,
    pub series: Vec<SeriesPoint>,
    /// In a cluster, each node's share of the day (this node's with its live
    /// window); absent on one box.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeLine>,
}

/// One node's line of a cluster's day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeLine {
    pub node: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// The per-node lines of a day: this node's totals (`own`, its live window added)
/// and the others'. Pure.
pub fn node_lines(
    own_node: &str,
    own: Option<&DayTotals>,
    live: Option<&MetricsBatch>,
    peers: &[(String, DayTotals)],
    frame: &Frame,
) -> Vec<NodeLine> {
    let mut mine = own.cloned().unwrap_or_else(|| DayTotals::empty(""));
    if let Some(l) = live {
        mine.add_batch(l);
    }
    std::iter::once((own_node.to_string(), mine))
        .chain(peers.iter().cloned())
        .map(|(node, t)| NodeLine {
            node,
            summary: Summary::of(
                &t.tally,
                t.peak_rps,
                t.peak_factor,
                frame.goals,
                &frame.pricing,
            ),
        })
        .collect()
}

/// One day's line in a range or the launches list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayLine {
    pub day: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// `GET /api/analytics?from=…&to=…`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeReport {
    pub from: String,
    pub to: String,
    pub timezone: String,
    #[serde(flatten)]
    pub summary: Summary,
    pub days: Vec<DayLine>,
}

/// What the report math needs besides the data.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    pub tz: &'a TimeZone,
    pub tz_name: &'a str,
    pub goals: &'a [String],
    pub pricing: Pricing,
}

fn point(b: &MetricsBatch, live: bool, tz: &TimeZone) -> SeriesPoint {
    let net = b.tally.net();
    SeriesPoint {
        t: local_time(b.window_start_ms, tz),
        start_ms: b.window_start_ms,
        window_ms: b.window_ms,
        visits: b.tally.visits,
        unique_visitors: net.unique_visitors,
        conversions: net.conversions.into_iter().collect(),
        requests: b.tally.requests,
        rps: b.rps(),
        cache_hits: b.tally.cache_hits,
        cache_misses: b.tally.cache_misses,
        rejections: b.tally.rejections,
        webhooks_accepted: b.tally.webhooks_accepted,
        grace_admitted_requests: b.tally.grace_admitted,
        grace_protected_conversions: b.tally.grace_conversions,
        peak_factor: b.peak_factor,
        velocity: b.velocity,
        live,
    }
}

/// Assembles a day from its stored totals, its batches and the live window (pass the
/// live window only when it started on this day and holds counts). Pure.
pub fn day_report(
    day: Date,
    frame: &Frame,
    totals: Option<&DayTotals>,
    batches: &[MetricsBatch],
    live: Option<&MetricsBatch>,
) -> Result<DayReport, jiff::Error> {
    let (start, end) = day_bounds(day, frame.tz)?;
    let mut all = totals
        .cloned()
        .unwrap_or_else(|| DayTotals::empty(&day.to_string()));
    if let Some(l) = live {
        all.add_batch(l);
    }
    let mut hours: Vec<(u64, DayTotals)> = (start..end)
        .step_by(3_600_000)
        .map(|h| (h, DayTotals::empty("")))
        .collect();
    for b in batches.iter().chain(live) {
        if (start..end).contains(&b.window_start_ms) {
            let i = ((b.window_start_ms - start) / 3_600_000) as usize;
            if let Some((_, h)) = hours.get_mut(i) {
                h.add_batch(b);
            }
        }
    }
    let summary = |t: &DayTotals| {
        Summary::of(
            &t.tally,
            t.peak_rps,
            t.peak_factor,
            frame.goals,
            &frame.pricing,
        )
    };
    Ok(DayReport {
        day: day.to_string(),
        timezone: frame.tz_name.to_string(),
        start: local_time(start, frame.tz),
        end: local_time(end, frame.tz),
        hours_in_day: (end - start) / 3_600_000,
        summary: summary(&all),
        hourly: hours
            .iter()
            .map(|(h, t)| HourRow {
                hour: hour_label(*h, frame.tz),
                start: local_time(*h, frame.tz),
                summary: summary(t),
            })
            .collect(),
        series: batches
            .iter()
            .map(|b| point(b, false, frame.tz))
            .chain(live.map(|l| point(l, true, frame.tz)))
            .collect(),
        nodes: Vec::new(),
    })
}

fn line(t: &DayTotals, frame: &Frame) -> DayLine {
    DayLine {
        day: t.day.clone(),
        summary: Summary::of(
            &t.tally,
            t.peak_rps,
            t.peak_factor,
            frame.goals,
            &frame.pricing,
        ),
    }
}

/// Adds the live window to the day it belongs to, creating the day if needed.
fn with_live(
    mut days: Vec<DayTotals>,
    live: Option<&MetricsBatch>,
    tz: &TimeZone,
) -> Vec<DayTotals> {
    if let Some(l) = live {
        let day = day_of(l.window_start_ms, tz).to_string();
        match days.iter_mut().find(|d| d.day == day) {
            Some(d) => d.add_batch(l),
            None => {
                let mut d = DayTotals::empty(&day);
                d.add_batch(l);
                days.push(d);
                days.sort_by(|a, b| a.day.cmp(&b.day));
            }
        }
    }
    days
}

/// Assembles a range of days (inclusive) from their stored totals and the live window.
pub fn range_report(
    from: Date,
    to: Date,
    frame: &Frame,
    days: Vec<DayTotals>,
    live: Option<&MetricsBatch>,
) -> RangeReport {
    let (lo, hi) = (from.to_string(), to.to_string());
    let days: Vec<DayTotals> = with_live(days, live, frame.tz)
        .into_iter()
        .filter(|d| d.day >= lo && d.day <= hi)
        .collect();
    let mut total = DayTotals::empty("");
    for d in &days {
        total.tally.merge(&d.tally);
        total.peak_factor = total.peak_factor.max(d.peak_factor);
        total.peak_rps = total.peak_rps.max(d.peak_rps);
    }
    RangeReport {
        from: lo,
        to: hi,
        timezone: frame.tz_name.to_string(),
        summary: Summary::of(
            &total.tally,
            total.peak_rps,
            total.peak_factor,
            frame.goals,
            &frame.pricing,
        ),
        days: days.iter().map(|d| line(d, frame)).collect(),
    }
}

/// Every recorded day with its totals, newest first.
pub fn launches(frame: &Frame, days: Vec<DayTotals>, live: Option<&MetricsBatch>) -> Vec<DayLine> {
    let mut out: Vec<DayLine> = with_live(days, live, frame.tz)
        .iter()
        .map(|d| line(d, frame))
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: Pricing = Pricing {
        cost_per_visit_usd: 12.5,
        ltv_usd: 48.0,
    };

    fn la() -> TimeZone {
        TimeZone::get("America/Los_Angeles").unwrap()
    }

    fn ms(rfc3339: &str) -> u64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn the_design_example() {
        // 1000 visitors, 40 of them signed up: 4 %, spend 12,500, CAC 312.50,
        // revenue 1,920.
        let e = economics(1000, 40, 40, &P);
        assert_eq!(e.conv_rate, Some(0.04));
        assert_eq!(e.spend_usd, 12_500.0);
        assert_eq!(e.cac_usd, Some(312.5));
        assert_eq!(e.revenue_usd, 1920.0);
        assert_eq!(e.roi, Some((1920.0 - 12_500.0) / 12_500.0));
        // CAC is cost_per_visit / conv_rate.
        assert!((e.cac_usd.unwrap() - 12.5 / 0.04).abs() < 1e-9);
    }

    #[test]
    fn zero_visits_and_zero_conversions_give_null_not_nan() {
        let e = economics(0, 0, 0, &P);
        assert_eq!(e.conv_rate, None);
        assert_eq!(e.cac_usd, None);
        assert_eq!(e.roi, None);
        assert_eq!(e.spend_usd, 0.0);
        let e = economics(10, 0, 0, &P);
        assert_eq!(e.conv_rate, Some(0.0));
        assert_eq!(e.cac_usd, None);
        assert_eq!(e.roi, Some(-1.0));
        // Conversions counted on rows written before visitors were (schema-1 rows
        // read back, or a day's visitors swept): no rate, no spend.
        let e = economics(0, 3, 3, &P);
        assert_eq!(e.conv_rate, None);
        assert_eq!(e.cac_usd, Some(0.0));
        assert_eq!(e.roi, None);
        // Two goals by one visitor: two conversions, one converting visitor.
        let e = economics(10, 1, 2, &P);
        assert_eq!(e.conv_rate, Some(0.1));
        assert_eq!(e.cac_usd, Some(125.0));
        assert_eq!(e.revenue_usd, 96.0);
        // Free traffic: no spend, no ROI.
        let free = Pricing {
            cost_per_visit_usd: 0.0,
            ltv_usd: 48.0,
        };
        assert_eq!(economics(10, 1, 1, &free).roi, None);
        let json = serde_json::to_value(economics(0, 0, 0, &P)).unwrap();
        assert!(json["conv_rate"].is_null() && json["cac_usd"].is_null() && json["roi"].is_null());
    }

    proptest! {
        #[test]
        fn economics_are_finite_and_consistent(visits in 0u64..1_000_000_000, share in 0.0f64..=1.0,
                                               per in 1u64..8, cost in 0.0f64..1000.0, ltv in 0.0f64..10_000.0) {
            // Converting visitors are some of the visitors, each with a few conversions.
            let conv = (visits as f64 * share) as u64;
            let e = economics(visits, conv, conv * per, &Pricing { cost_per_visit_usd: cost, ltv_usd: ltv });
            for v in [Some(e.spend_usd), Some(e.revenue_usd), e.conv_rate, e.cac_usd, e.roi].into_iter().flatten() {
                prop_assert!(v.is_finite());
            }
            prop_assert_eq!(e.conv_rate.is_some(), visits > 0);
            prop_assert!(e.conv_rate.is_none_or(|r| (0.0..=1.0).contains(&r)));
            prop_assert_eq!(e.cac_usd.is_some(), conv > 0);
            if let (Some(rate), Some(cac)) = (e.conv_rate, e.cac_usd) {
                if rate > 0.0 {
                    prop_assert!((cac - cost / rate).abs() <= 1e-6 * cac.max(1.0));
                }
            }
        }
    }

    #[test]
    fn dst_days_have_23_and_25_hours_in_los_angeles() {
        let tz = la();
        let hours = |d: &str| {
            let (s, e) = day_bounds(d.parse().unwrap(), &tz).unwrap();
            (e - s) / 3_600_000
        };
        assert_eq!(hours("2026-03-08"), 23);
        assert_eq!(hours("2026-11-01"), 25);
        assert_eq!(hours("2026-11-26"), 24);
        let (s, e) = day_bounds("2026-03-08".parse().unwrap(), &tz).unwrap();
        assert_eq!(s, ms("2026-03-08T08:00:00Z"));
        assert_eq!(e, ms("2026-03-09T07:00:00Z"));
    }

    #[test]
    fn instants_fall_in_the_right_launch_day() {
        let tz = la();
        let d = |t: &str| day_of(ms(t), &tz).to_string();
        assert_eq!(d("2026-03-08T07:59:59.999Z"), "2026-03-07");
        assert_eq!(d("2026-03-08T08:00:00Z"), "2026-03-08");
        assert_eq!(d("2026-03-09T06:59:59.999Z"), "2026-03-08");
        assert_eq!(d("2026-03-09T07:00:00Z"), "2026-03-09");
        assert_eq!(d("2026-11-01T07:00:00Z"), "2026-11-01");
        assert_eq!(d("2026-11-02T07:59:59.999Z"), "2026-11-01");
        assert_eq!(d("2026-11-02T08:00:00Z"), "2026-11-02");
    }

    fn batch(at: u64, visits: u64, signups: u64) -> MetricsBatch {
        let mut tally = Tally {
            visits,
            requests: visits * 2,
            ..Tally::default()
        };
        tally.add_conversions("signup", signups);
        MetricsBatch {
            window_start_ms: at,
            window_ms: 5000,
            tally,
            peak_factor: 1.0,
            velocity: 0.0,
            earlier: Vec::new(),
        }
    }

    fn totals(day: &str, batches: &[MetricsBatch]) -> DayTotals {
        let mut t = DayTotals::empty(day);
        batches.iter().for_each(|b| t.add_batch(b));
        t
    }

    #[test]
    fn the_fall_back_day_buckets_into_25_hours() {
        let tz = la();
        let goals = vec!["signup".to_string()];
        let frame = Frame {
            tz: &tz,
            tz_name: "America/Los_Angeles",
            goals: &goals,
            pricing: P,
        };
        // 01:30 PDT and 01:30 PST are an hour apart and both exist on 2026-11-01.
        let b = [
            batch(ms("2026-11-01T08:30:00Z"), 3, 1),
            batch(ms("2026-11-01T09:30:00Z"), 5, 0),
            batch(ms("2026-11-02T07:59:00Z"), 7, 2),
        ];
        let r = day_report(
            "2026-11-01".parse().unwrap(),
            &frame,
            Some(&totals("2026-11-01", &b)),
            &b,
            None,
        )
        .unwrap();
        assert_eq!(r.hours_in_day, 25);
        assert_eq!(r.hourly.len(), 25);
        assert_eq!(r.hourly[1].hour, "01:00 PDT");
        assert_eq!(r.hourly[1].summary.visits, 3);
        assert_eq!(r.hourly[2].hour, "01:00 PST");
        assert_eq!(r.hourly[2].summary.visits, 5);
        assert_eq!(r.hourly[24].hour, "23:00 PST");
        assert_eq!(r.hourly[24].summary.visits, 7);
        assert_eq!(r.summary.visits, 15);
        assert_eq!(r.summary.conversions_total, 3);
        assert_eq!(r.start, "2026-11-01T00:00:00-07:00");
        assert_eq!(r.end, "2026-11-02T00:00:00-08:00");
        assert_eq!(r.series.len(), 3);

        let r = day_report("2026-03-08".parse().unwrap(), &frame, None, &[], None).unwrap();
        assert_eq!(r.hourly.len(), 23);
        assert_eq!(r.hourly[2].hour, "03:00 PDT");
    }

    #[test]
    fn live_window_adds_to_its_day_and_range() {
        let tz = la();
        let goals = vec!["signup".to_string()];
        let frame = Frame {
            tz: &tz,
            tz_name: "America/Los_Angeles",
            goals: &goals,
            pricing: P,
        };
        let stored = [batch(ms("2026-11-26T17:00:00Z"), 10, 1)];
        let live = batch(ms("2026-11-26T17:00:05Z"), 4, 1);
        let r = day_report(
            "2026-11-26".parse().unwrap(),
            &frame,
            Some(&totals("2026-11-26", &stored)),
            &stored,
            Some(&live),
        )
        .unwrap();
        assert_eq!(r.summary.visits, 14);
        assert_eq!(r.summary.conversions["signup"], 2);
        assert!(r.series.last().unwrap().live);

        let days = vec![totals(
            "2026-11-25",
            &[batch(ms("2026-11-25T17:00:00Z"), 1, 0)],
        )];
        let range = range_report(
            "2026-11-25".parse().unwrap(),
            "2026-11-26".parse().unwrap(),
            &frame,
            days.clone(),
            Some(&live),
        );
        assert_eq!(range.days.len(), 2);
        assert_eq!(range.summary.visits, 5);
        let l = launches(&frame, days, Some(&live));
        assert_eq!(l[0].day, "2026-11-26");
        assert_eq!(l[1].day, "2026-11-25");
    }
}
