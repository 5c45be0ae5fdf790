//! The lab's chart: one SVG, five panels over launch minutes, drawn with plotters'
//! SVG backend (no font feature: text goes out as SVG `<text>` for the viewer to set,
//! so no system font is read; plotters then only estimates text widths for layout).
//!
//! 1. Load in the first scenario: offered requests/s, the origin's served requests/s,
//!    its capacity, and shed or waiting answers/s.
//! 2. The factor in each scenario, with `backpressure.shed_factor`.
//! 3. The hit ratio in each scenario.
//! 4. The waiting room's line in each scenario.
//! 5. Conversions made (solid) and lost (dashed), cumulative, in each scenario.

use plotters::prelude::*;

use super::drive::Run;
use super::report::Report;

const SCENARIO_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn color(i: usize) -> RGBColor {
    SCENARIO_COLORS[i % SCENARIO_COLORS.len()]
}

fn e<E: std::fmt::Debug>(e: E) -> String {
    format!("cannot draw the chart: {e:?}")
}

/// `f` of each second, against launch minutes.
fn series(
    run: &Run,
    speed: f64,
    mut f: impl FnMut(&super::drive::Second) -> Option<f64>,
) -> Vec<(f64, f64)> {
    run.seconds
        .iter()
        .enumerate()
        .filter_map(|(i, s)| f(s).map(|y| (i as f64 * speed / 60.0, y)))
        .collect()
}

fn cumulative(run: &Run, speed: f64, f: impl Fn(&super::drive::Second) -> u32) -> Vec<(f64, f64)> {
    let mut total = 0.0;
    series(run, speed, |s| {
        total += f64::from(f(s));
        Some(total)
    })
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A line of a panel: its label, color, whether dashed, and its points.
type Line = (String, RGBColor, bool, Vec<(f64, f64)>);

/// One panel.
fn panel(
    area: &Area,
    title: &str,
    y_desc: &str,
    x_max: f64,
    y_max: f64,
    legend: SeriesLabelPosition,
    lines: Vec<Line>,
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15))
        .margin(6)
        .x_label_area_size(26)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max.max(1e-9))
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("launch minute")
        .y_desc(y_desc)
        .light_line_style(RGBColor(240, 240, 240))
        .max_light_lines(1)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 11))
        .draw()
        .map_err(e)?;
    for (label, c, dashed, points) in lines {
        let style = c.stroke_width(if dashed { 1 } else { 2 });
        let drawn = if dashed {
            chart
                .draw_series(DashedLineSeries::new(points, 6, 4, style))
                .map_err(e)?
        } else {
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(e)?
        };
        drawn
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font(("sans-serif", 11))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// The chart of `report`, as SVG text.
pub fn svg(report: &Report) -> Result<String, String> {
    let speed = report.speed;
    let Some(first) = report.runs.first() else {
        return Err("cannot draw the chart: no scenario ran".into());
    };
    let x_max = report
        .runs
        .iter()
        .map(|r| r.seconds.len() as f64 * speed / 60.0)
        .fold(1.0, f64::max);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 1320)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let (head, body) = root.split_vertically(34);
        head.draw(&Text::new(
            format!(
                "launchguard lab: {} at {}x, origin {} at once x {} ms ({:.0} requests/s)",
                report.curve_name,
                report.speed,
                report.capacity.concurrency,
                report.capacity.latency.as_millis(),
                report.capacity.rps()
            ),
            (12, 10),
            ("sans-serif", 17),
        ))
        .map_err(e)?;
        let areas = body.split_evenly((5, 1));
        let cap = report.capacity.rps();

        let offered = series(first, speed, |s| Some(f64::from(s.offered_total())));
        let load_max = offered.iter().map(|p| p.1).fold(cap, f64::max) * 1.1;
        let end = x_max;
        panel(
            &areas[0],
            &format!("load ({})", first.name),
            "requests/s",
            x_max,
            load_max,
            SeriesLabelPosition::UpperRight,
            vec![
                ("offered".into(), RGBColor(31, 119, 180), false, offered),
                (
                    "origin served".into(),
                    RGBColor(44, 160, 44),
                    false,
                    series(first, speed, |s| Some(s.origin_served as f64)),
                ),
                (
                    "shed + waiting answers".into(),
                    RGBColor(255, 127, 14),
                    false,
                    series(first, speed, |s| {
                        Some(f64::from(s.shed.iter().sum::<u32>() + s.waiting_answers))
                    }),
                ),
                (
                    "origin capacity".into(),
                    RGBColor(214, 39, 40),
                    true,
                    vec![(0.0, cap), (end, cap)],
                ),
            ],
        )?;

        let mut lines: Vec<_> = report
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let pts = series(r, speed, |s| (s.factor > 0.0).then_some(s.factor));
                (r.name.clone(), color(i), false, pts)
            })
            .collect();
        let f_max = report
            .runs
            .iter()
            .flat_map(|r| r.seconds.iter().map(|s| s.factor))
            .fold(report.shed_factor, f64::max)
            * 1.15;
        lines.push((
            "shed_factor".into(),
            RGBColor(120, 120, 120),
            true,
            vec![(0.0, report.shed_factor), (end, report.shed_factor)],
        ));
        panel(
            &areas[1],
            "scale factor",
            "factor",
            x_max,
            f_max,
            SeriesLabelPosition::UpperRight,
            lines,
        )?;

        let lines = report
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let pts = series(r, speed, |s| {
                    let n = s.hits + s.misses;
                    (n > 0).then(|| 100.0 * f64::from(s.hits) / f64::from(n))
                });
                (r.name.clone(), color(i), false, pts)
            })
            .collect();
        panel(
            &areas[2],
            "cache hit ratio",
            "%",
            x_max,
            105.0,
            SeriesLabelPosition::LowerRight,
            lines,
        )?;

        let w_max = report
            .runs
            .iter()
            .flat_map(|r| r.seconds.iter().map(|s| f64::from(s.waiting_len)))
            .fold(1.0, f64::max)
            * 1.15;
        let lines = report
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let pts = series(r, speed, |s| Some(f64::from(s.waiting_len)));
                (r.name.clone(), color(i), false, pts)
            })
            .collect();
        panel(
            &areas[3],
            "waiting-room line",
            "visitors",
            x_max,
            w_max,
            SeriesLabelPosition::UpperRight,
            lines,
        )?;

        let mut lines = Vec::new();
        let mut c_max: f64 = 1.0;
        for (i, r) in report.runs.iter().enumerate() {
            let made = cumulative(r, speed, |s| s.conversions);
            let lost = cumulative(r, speed, |s| s.lost);
            c_max = c_max.max(made.last().map_or(0.0, |p| p.1));
            lines.push((format!("{}: made", r.name), color(i), false, made));
            lines.push((format!("{}: lost", r.name), color(i), true, lost));
        }
        panel(
            &areas[4],
            "conversions, cumulative",
            "conversions",
            x_max,
            c_max * 1.15,
            SeriesLabelPosition::UpperLeft,
            lines,
        )?;
        root.present().map_err(e)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::drive::{Run, Second};
    use super::super::origin::Capacity;
    use super::*;

    #[test]
    fn the_chart_is_one_svg_with_every_panel() {
        let run = |name: &str| Run {
            name: name.into(),
            seconds: (0..30)
                .map(|i| Second {
                    offered: [i, i * 2, 3],
                    factor: 1.0 + f64::from(i) / 10.0,
                    hits: 9,
                    misses: 1,
                    conversions: i % 2,
                    waiting_len: i / 3,
                    origin_served: 5,
                    ..Second::default()
                })
                .collect(),
            ..Run::default()
        };
        let report = Report {
            curve_name: "t.csv".into(),
            speed: 30.0,
            capacity: Capacity {
                concurrency: 10,
                latency: std::time::Duration::from_millis(40),
            },
            peak_rps: 100.0,
            scale: 1.0,
            shed_factor: 2.0,
            warm_from: 1.5,
            notes: Vec::new(),
            runs: vec![run("all on"), run("waiting-room off")],
        };
        let svg = svg(&report).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for text in [
            "scale factor",
            "cache hit ratio",
            "waiting-room line",
            "conversions, cumulative",
            "origin capacity",
            "waiting-room off: lost",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        assert!(svg.matches("<polyline").count() >= 10);
    }
}
