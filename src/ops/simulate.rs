//! `launchguard simulate`: replays a launch curve (webhooks per minute) against a
//! running launchguard, signed like a real sender, so an operator can watch the factor,
//! the dashboard and shedding move before the real day.
//!
//! A curve is CSV, one row per minute: `minute,upvotes,comments,maker_comments`
//! (`#` comments and a header line allowed); `data/curves/launch-hour.csv` ships with
//! the demo. `--speed S` plays a curve minute in `60 / S` seconds: at 1 the webhooks
//! arrive at the curve's own rates; at 10 the hour takes six minutes and the rates are
//! ten times higher, enough to drive the factor to its cap and show shedding.
//! Parsing is pure; the replay is the only I/O.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::clock::Clock;
use crate::ingest::webhook::signature::{sign_producthunt, Key, PRODUCTHUNT_HEADER};

/// One minute of a curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    pub minute: u32,
    pub upvotes: u32,
    pub comments: u32,
    pub maker_comments: u32,
}

impl Minute {
    pub fn total(&self) -> u32 {
        self.upvotes + self.comments + self.maker_comments
    }

    /// The minute's events, interleaved so each kind is spread over the minute: at each
    /// step, the kind furthest behind its share of the events so far goes next.
    pub fn kinds(&self) -> Vec<&'static str> {
        let counts = [
            ("upvote", self.upvotes),
            ("comment", self.comments),
            ("maker_comment", self.maker_comments),
        ];
        let total = self.total();
        let mut sent = [0u32; 3];
        let mut out = Vec::with_capacity(total as usize);
        for i in 1..=total {
            let behind = |k: usize| {
                f64::from(counts[k].1) * f64::from(i) / f64::from(total) - f64::from(sent[k])
            };
            let k = (0..3)
                .filter(|&k| sent[k] < counts[k].1)
                .max_by(|&a, &b| behind(a).total_cmp(&behind(b)))
                .expect("fewer events sent than the minute holds");
            sent[k] += 1;
            out.push(counts[k].0);
        }
        out
    }
}

/// Why a curve could not be read, with the line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("curve line {line}: {problem}")]
pub struct CurveError {
    pub line: usize,
    pub problem: String,
}

/// Parses a curve. Pure.
pub fn parse_curve(text: &str) -> Result<Vec<Minute>, CurveError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("minute") {
            continue;
        }
        let err = |problem: String| CurveError {
            line: i + 1,
            problem,
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 4 {
            return Err(err(format!(
                "expected minute,upvotes,comments,maker_comments, got {} fields",
                fields.len()
            )));
        }
        let num = |name: &str, v: &str| {
            v.parse::<u32>()
                .map_err(|_| err(format!("{name}: expected a whole number, got {v:?}")))
        };
        let m = Minute {
            minute: num("minute", fields[0])?,
            upvotes: num("upvotes", fields[1])?,
            comments: num("comments", fields[2])?,
            maker_comments: num("maker_comments", fields[3])?,
        };
        if out.last().is_some_and(|p: &Minute| p.minute >= m.minute) {
            return Err(err(format!(
                "minute {} does not follow minute {}",
                m.minute,
                out.last().map_or(0, |p: &Minute| p.minute)
            )));
        }
        out.push(m);
    }
    if out.is_empty() {
        return Err(CurveError {
            line: 0,
            problem: "no minutes in the curve".into(),
        });
    }
    Ok(out)
}

/// Reads a curve file.
pub fn load_curve(path: &Path) -> Result<Vec<Minute>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the curve {}: {e}", path.display()))?;
    parse_curve(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub sent: u64,
    pub accepted: u64,
    pub other: u64,
    /// The `X-Edge-Scale-Factor` of the last answer.
    pub last_factor: Option<String>,
    pub peak_factor: f64,
}

/// Plays `curve` against the webhook URL, signing each body with `key`; `report` gets
/// one line per curve minute. `run_id` keeps the ids of two replays apart.
pub async fn play(
    url: &str,
    key: &Key,
    curve: &[Minute],
    speed: f64,
    run_id: &str,
    mut report: impl FnMut(&str),
) -> Result<Summary, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("--url {url:?} is not a URL: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let minute_len = Duration::from_secs_f64(60.0 / speed);
    let start = tokio::time::Instant::now();
    let mut s = Summary::default();
    let mut n = 0u64;
    for (i, m) in curve.iter().enumerate() {
        let begins = start + minute_len.mul_f64(i as f64);
        let kinds = m.kinds();
        let step = minute_len.div_f64(kinds.len().max(1) as f64);
        let (before_accepted, before_other) = (s.accepted, s.other);
        for (j, kind) in kinds.iter().enumerate() {
            tokio::time::sleep_until(begins + step.mul_f64(j as f64)).await;
            n += 1;
            // Stamped as it is sent: launchguard refuses a Product Hunt-signed body
            // whose created_at is not within webhook.tolerance_secs of its clock.
            let created_at = crate::ingest::webhook::payload::created_at(Clock::system().now_ms());
            let body = format!(
                r#"{{"id":"sim-{run_id}-{n}","event_type":"{kind}","created_at":"{created_at}","data":{{"simulated":true,"minute":{}}}}}"#,
                m.minute
            );
            let sig = sign_producthunt(key, body.as_bytes());
            let req = hyper::Request::post(uri.clone())
                .header(PRODUCTHUNT_HEADER, sig)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            s.sent += 1;
            let res = client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach {url}: {e}; is launchguard running?"))?;
            if res.status() == hyper::StatusCode::ACCEPTED {
                s.accepted += 1;
            } else {
                s.other += 1;
            }
            if let Some(f) = res
                .headers()
                .get(crate::ingest::factor::SCALE_FACTOR_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                if let Ok(v) = f.parse::<f64>() {
                    s.peak_factor = s.peak_factor.max(v);
                }
                s.last_factor = Some(f.to_string());
            }
        }
        report(&format!(
            "minute {:>3}: {:>4} upvotes {:>3} comments {:>2} maker comments -> {} accepted{}, factor {}",
            m.minute,
            m.upvotes,
            m.comments,
            m.maker_comments,
            s.accepted - before_accepted,
            match s.other - before_other {
                0 => String::new(),
                k => format!(", {k} refused"),
            },
            s.last_factor.as_deref().unwrap_or("-"),
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curve_parses_with_comments_and_a_header() {
        let c =
            parse_curve("# a launch\nminute,upvotes,comments,maker_comments\n0, 3,1,0\n1,5,0,1\n")
                .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].total(), 6);
    }

    #[test]
    fn curve_errors_name_the_line_and_the_field() {
        let e = parse_curve("minute,upvotes,comments,maker_comments\n0,1,2,x\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.problem.starts_with("maker_comments:"), "{e}");
        let e = parse_curve("1,1,1,1\n1,1,1,1\n").unwrap_err();
        assert!(e.problem.contains("does not follow"), "{e}");
        assert!(parse_curve("# nothing\n").is_err());
        assert!(parse_curve("1,2,3\n")
            .unwrap_err()
            .problem
            .contains("3 fields"));
    }

    #[test]
    fn a_minute_interleaves_every_event_once() {
        let m = Minute {
            minute: 0,
            upvotes: 6,
            comments: 3,
            maker_comments: 1,
        };
        let k = m.kinds();
        assert_eq!(k.len(), 10);
        assert_eq!(k.iter().filter(|k| **k == "upvote").count(), 6);
        assert_eq!(k.iter().filter(|k| **k == "comment").count(), 3);
        assert_eq!(k.iter().filter(|k| **k == "maker_comment").count(), 1);
        // Spread out: no three comments in a row at the start.
        assert_ne!(&k[..3], &["comment", "comment", "comment"]);
    }

    #[test]
    fn the_shipped_curve_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/curves/launch-hour.csv");
        let c = load_curve(&path).unwrap();
        assert_eq!(c.len(), 60);
    }
}
