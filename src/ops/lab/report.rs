//! What the lab reports: per scenario, the figures of the list, as one
//! markdown table with the scenarios side by side. Pure.
//!
//! - **Offered load**: requests the visitors sent in a second (real seconds, on this
//!   machine), sheds and all; its peak is `--peak-rps` give or take the draw.
//! - **Origin load**: requests the origin served in a second, beside its capacity
//!   (`concurrency / latency`); refusals are its 503s above `concurrency`.
//! - **Lead**: launch seconds from the factor first going above `shed_factor` to
//!   the offered load first going above the origin's capacity (positive: the factor
//!   saw the wave coming).
//! - **Hit ratio**: HIT and STALE over HIT, STALE and MISS answers; "at peak" over
//!   the seconds whose offered load is at least 80% of the peak.
//! - **Funnel-page misses and stale copies in the ramp**: MISS and STALE answers to
//!   `/launch/` before the busiest second, all of them and those answered at a factor
//!   at or above the refresh-ahead threshold (the same threshold in every scenario,
//!   whether refresh-ahead is on there or not). Below the threshold refresh-ahead
//!   does nothing by design, so the misses there (a cold cache, a page that expired
//!   between two visitors at the start) are the same with it on and off; at or
//!   above it, they and the stale copies are what it is there to avoid.
//! - **Waiting room**: answers, the longest line (visitors holding a place, sampled
//!   each second), visitors let in by the room (the let-in cookie) and those who got
//!   through because shedding stopped; for those let in by the room, the wait the
//!   first answer showed beside the wait they then had (the share within ±30% of the
//!   wait had, and the median of had ÷ shown), and the same share over every later
//!   waiting answer (each refresh: the wait it showed beside the rest of the wait).
//! - **Conversions**: made (beacons answered), lost (would-be converters who did not
//!   convert: shed on pricing or the signup, gone from the line after their
//!   patience, or failed by an origin error), and funnel visitors shed (any shed or waiting answer on a funnel step,
//!   whether they got in after or not).

use super::drive::Run;
use super::origin::Capacity;

/// Every scenario of a lab run.
#[derive(Debug, Clone)]
pub struct Report {
    pub curve_name: String,
    pub speed: f64,
    pub capacity: Capacity,
    pub peak_rps: f64,
    /// Lab visitors per visitor of the curve.
    pub scale: f64,
    pub shed_factor: f64,
    /// The refresh-ahead threshold the funnel-page figures are split at.
    pub warm_from: f64,
    pub notes: Vec<String>,
    pub runs: Vec<Run>,
}

/// One scenario's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub peak_offered: u32,
    pub peak_origin: u64,
    pub origin_refused: u64,
    pub peak_factor: f64,
    pub lead_secs: Option<f64>,
    pub hit_ratio: Option<f64>,
    pub hit_ratio_at_peak: Option<f64>,
    pub funnel_misses_ramp: u64,
    /// Of those, at a factor at or above the refresh-ahead threshold.
    pub funnel_misses_ramp_warm: u64,
    pub funnel_stale_ramp: u64,
    pub funnel_stale_ramp_warm: u64,
    pub shed: [u64; 3],
    pub waiting_answers: u64,
    pub peak_waiting: u32,
    /// Visitors let in by the room.
    pub let_in: usize,
    /// Visitors who waited and got through because shedding stopped.
    pub let_in_unshed: usize,
    /// Of those let in by the room, the share whose wait shown at entry was within
    /// ±30% of the wait they had.
    pub wait_within_30: Option<f64>,
    /// The same over every later waiting answer (the wait shown at a refresh beside
    /// the rest of the wait from then).
    pub wait_within_30_refreshes: Option<f64>,
    /// The median of (wait had / wait shown at entry) over those let in by the room.
    pub wait_had_over_shown: Option<f64>,
    pub funnel_shed: u64,
    pub conversions: u64,
    pub lost: u64,
    pub would_convert: usize,
    pub errors: u64,
}

/// Whether a shown wait is within ±30% of the wait had.
pub fn within_30(shown: f64, had: f64) -> bool {
    (shown - had).abs() <= 0.3 * had
}

fn share(pairs: &[(f64, f64)]) -> Option<f64> {
    (!pairs.is_empty()).then(|| {
        pairs.iter().filter(|(s, h)| within_30(*s, *h)).count() as f64 / pairs.len() as f64
    })
}

fn ratio(hits: u64, misses: u64) -> Option<f64> {
    (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
}

/// The figures of one run. Pure.
pub fn summarize(run: &Run, capacity_rps: f64, shed_factor: f64, speed: f64) -> Summary {
    let s = &run.seconds;
    let peak_offered = s.iter().map(|x| x.offered_total()).max().unwrap_or(0);
    let peak_at = s
        .iter()
        .position(|x| x.offered_total() == peak_offered)
        .unwrap_or(0);
    let first_factor = s.iter().position(|x| x.factor > shed_factor);
    let first_over = s
        .iter()
        .position(|x| f64::from(x.offered_total()) > capacity_rps);
    let at_peak: Vec<_> = s
        .iter()
        .filter(|x| f64::from(x.offered_total()) >= 0.8 * f64::from(peak_offered))
        .collect();
    let sum = |f: &dyn Fn(&super::drive::Second) -> u64| s.iter().map(f).sum::<u64>();
    let ramp = |f: &dyn Fn(&super::drive::Second) -> u32| {
        s[..peak_at].iter().map(|x| u64::from(f(x))).sum::<u64>()
    };
    let by_room: Vec<_> = run.waits.iter().filter(|w| w.by_room).collect();
    let at_entry: Vec<(f64, f64)> = by_room.iter().map(|w| (w.shown, w.had)).collect();
    Summary {
        peak_offered,
        peak_origin: s.iter().map(|x| x.origin_served).max().unwrap_or(0),
        origin_refused: sum(&|x| x.origin_refused),
        peak_factor: s.iter().map(|x| x.factor).fold(1.0, f64::max),
        lead_secs: match (first_factor, first_over) {
            (Some(f), Some(o)) => Some((o as f64 - f as f64) * speed),
            _ => None,
        },
        hit_ratio: ratio(sum(&|x| u64::from(x.hits)), sum(&|x| u64::from(x.misses))),
        hit_ratio_at_peak: ratio(
            at_peak.iter().map(|x| u64::from(x.hits)).sum(),
            at_peak.iter().map(|x| u64::from(x.misses)).sum(),
        ),
        funnel_misses_ramp: ramp(&|x| x.funnel_misses),
        funnel_misses_ramp_warm: ramp(&|x| x.funnel_misses_warm),
        funnel_stale_ramp: ramp(&|x| x.funnel_stale),
        funnel_stale_ramp_warm: ramp(&|x| x.funnel_stale_warm),
        shed: [0, 1, 2].map(|c| sum(&|x| u64::from(x.shed[c]))),
        waiting_answers: sum(&|x| u64::from(x.waiting_answers)),
        peak_waiting: s.iter().map(|x| x.waiting_len).max().unwrap_or(0),
        let_in: by_room.len(),
        let_in_unshed: run.waits.len() - by_room.len(),
        wait_within_30: share(&at_entry),
        wait_within_30_refreshes: share(
            &by_room
                .iter()
                .flat_map(|w| w.refreshes.iter().copied())
                .collect::<Vec<_>>(),
        ),
        wait_had_over_shown: {
            let mut r: Vec<f64> = at_entry
                .iter()
                .filter(|(shown, _)| *shown > 0.0)
                .map(|(shown, had)| had / shown)
                .collect();
            r.sort_by(f64::total_cmp);
            r.get(r.len() / 2).copied()
        },
        funnel_shed: sum(&|x| u64::from(x.funnel_shed)),
        conversions: sum(&|x| u64::from(x.conversions)),
        lost: sum(&|x| u64::from(x.lost)),
        would_convert: run.would_convert,
        errors: sum(&|x| u64::from(x.errors)),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

impl Report {
    pub fn summaries(&self) -> Vec<Summary> {
        self.runs
            .iter()
            .map(|r| summarize(r, self.capacity.rps(), self.shed_factor, self.speed))
            .collect()
    }

    /// Every wait in the room, one CSV row per visitor who got in (`--waits`):
    /// scenario, when it entered (real seconds from the scenario's start), its place
    /// at entry, the wait shown then and the wait it had, whether the room let it in
    /// (not shedding stopping), and whether the shown wait was within ±30%.
    pub fn waits_csv(&self) -> String {
        let mut out =
            String::from("scenario,entered_secs,position,shown_secs,had_secs,by_room,within_30\n");
        for run in &self.runs {
            for w in &run.waits {
                out.push_str(&format!(
                    "{},{:.3},{},{},{:.3},{},{}\n",
                    run.name,
                    w.entered_secs,
                    w.position,
                    w.shown,
                    w.had,
                    w.by_room,
                    within_30(w.shown, w.had)
                ));
            }
        }
        out
    }

    /// The markdown table, scenarios side by side, with a heading that says what ran.
    pub fn table(&self) -> String {
        let sums = self.summaries();
        let cap = self.capacity.rps();
        let mut out = format!(
            "Lab: {} at {}x (one real second plays {} launch seconds); origin {} at once, {} ms each: {:.0} requests/s; offered load scaled to peak near {:.0} requests/s ({:.3} lab visitors per visitor of the curve).\n\n",
            self.curve_name,
            self.speed,
            self.speed,
            self.capacity.concurrency,
            self.capacity.latency.as_millis(),
            cap,
            self.peak_rps,
            self.scale,
        );
        for n in &self.notes {
            out.push_str(&format!("Note: {n}\n\n"));
        }
        let mut row = |label: &str, cells: Vec<String>| {
            out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
        };
        row("", self.runs.iter().map(|r| r.name.clone()).collect());
        row("---", self.runs.iter().map(|_| "---:".into()).collect());
        let col = |f: &dyn Fn(&Summary) -> String| sums.iter().map(f).collect::<Vec<_>>();
        row(
            "offered load, peak (requests/s)",
            col(&|s| s.peak_offered.to_string()),
        );
        row(
            &format!("origin load, peak (requests/s; capacity {cap:.0})"),
            col(&|s| s.peak_origin.to_string()),
        );
        row(
            "origin refusals (over capacity)",
            col(&|s| s.origin_refused.to_string()),
        );
        row(
            &format!("factor, peak (shed above {})", self.shed_factor),
            col(&|s| format!("{:.2}", s.peak_factor)),
        );
        row(
            "lead: factor over shed_factor → offered over capacity (launch s)",
            col(&|s| s.lead_secs.map_or("-".into(), |l| format!("{l:.0}"))),
        );
        row(
            "hit ratio, whole run / at peak",
            col(&|s| format!("{} / {}", pct(s.hit_ratio), pct(s.hit_ratio_at_peak))),
        );
        let warm_from = self.warm_from;
        row(
            &format!("funnel-page misses in the ramp: all / at factor ≥ {warm_from}"),
            col(&|s| format!("{} / {}", s.funnel_misses_ramp, s.funnel_misses_ramp_warm)),
        );
        row(
            &format!("funnel-page stale copies in the ramp: all / at factor ≥ {warm_from}"),
            col(&|s| format!("{} / {}", s.funnel_stale_ramp, s.funnel_stale_ramp_warm)),
        );
        row(
            &format!(
                "shed: {}",
                super::model::Class::ALL.map(|c| c.as_str()).join(" / ")
            ),
            col(&|s| format!("{} / {} / {}", s.shed[0], s.shed[1], s.shed[2])),
        );
        row(
            "waiting-room answers / longest line",
            col(&|s| format!("{} / {}", s.waiting_answers, s.peak_waiting)),
        );
        row(
            "let in from the line: by the room / as shedding stopped",
            col(&|s| format!("{} / {}", s.let_in, s.let_in_unshed)),
        );
        row(
            "shown wait within ±30% of the wait had: at entry / at each refresh (let in by the room)",
            col(&|s| {
                format!(
                    "{} / {}",
                    pct(s.wait_within_30),
                    pct(s.wait_within_30_refreshes)
                )
            }),
        );
        row(
            "median wait had ÷ shown at entry",
            col(&|s| {
                s.wait_had_over_shown
                    .map_or("-".into(), |r| format!("{r:.2}"))
            }),
        );
        row("funnel visitors shed", col(&|s| s.funnel_shed.to_string()));
        row(
            "conversions made / lost (of would-be)",
            col(&|s| format!("{} / {} ({})", s.conversions, s.lost, s.would_convert)),
        );
        row(
            "other failures (5xx passed on, timeouts)",
            col(&|s| s.errors.to_string()),
        );
        row(
            "visitors / webhooks accepted of sent",
            self.runs
                .iter()
                .map(|r| {
                    format!(
                        "{} / {} of {}",
                        r.visitors, r.webhooks_accepted, r.webhooks_sent
                    )
                })
                .collect(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::drive::{Second, Wait};
    use super::*;

    fn second(offered: u32, factor: f64) -> Second {
        Second {
            offered: [offered, 0, 0],
            factor,
            hits: offered,
            ..Second::default()
        }
    }

    #[test]
    fn the_lead_runs_from_the_factor_to_the_load_in_launch_seconds() {
        let mut seconds: Vec<Second> = [
            (10, 1.0),
            (20, 2.5),
            (50, 3.0),
            (120, 3.0),
            (300, 3.0),
            (200, 2.0),
        ]
        .iter()
        .map(|&(o, f)| second(o, f))
        .collect();
        seconds[1].funnel_misses = 2;
        seconds[1].funnel_misses_warm = 1;
        seconds[3].funnel_stale = 4;
        seconds[3].funnel_stale_warm = 3;
        seconds[5].funnel_stale = 9;
        seconds[4].misses = 100;
        seconds[5].funnel_misses = 7;
        let run = Run {
            name: "x".into(),
            seconds,
            waits: vec![
                Wait {
                    shown: 10.0,
                    had: 9.0,
                    refreshes: vec![(5.0, 4.0), (2.0, 1.0)],
                    by_room: true,
                    ..Wait::default()
                },
                Wait {
                    shown: 10.0,
                    had: 20.0,
                    refreshes: vec![(10.0, 11.0)],
                    by_room: true,
                    ..Wait::default()
                },
                // Got through as shedding stopped: counted apart.
                Wait {
                    shown: 60.0,
                    had: 2.0,
                    refreshes: vec![],
                    by_room: false,
                    ..Wait::default()
                },
            ],
            ..Run::default()
        };
        let s = summarize(&run, 100.0, 2.0, 20.0);
        assert_eq!(s.peak_offered, 300);
        assert_eq!(s.lead_secs, Some(40.0), "2 real seconds at 20x");
        assert_eq!(s.funnel_misses_ramp, 2, "before the peak only");
        assert_eq!(s.funnel_misses_ramp_warm, 1);
        assert_eq!((s.funnel_stale_ramp, s.funnel_stale_ramp_warm), (4, 3));
        assert_eq!(
            s.hit_ratio_at_peak,
            Some(0.75),
            "the busiest second alone: 300 hits, 100 misses"
        );
        assert_eq!((s.let_in, s.let_in_unshed), (2, 1));
        assert_eq!(s.wait_within_30, Some(0.5));
        assert_eq!(
            s.wait_within_30_refreshes,
            Some(2.0 / 3.0),
            "5 for 4 and 10 for 11 within, 2 for 1 not"
        );
        assert_eq!(
            s.wait_had_over_shown,
            Some(2.0),
            "0.9 and 2.0: the upper median"
        );
        assert_eq!(s.peak_factor, 3.0);
        let never = summarize(&run, 1000.0, 2.0, 20.0);
        assert_eq!(never.lead_secs, None);
    }
}
