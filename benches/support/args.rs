//! What the harness-less bench programs share when they read their arguments
//! (each includes this file with `#[path]`; `benches/support/` holds no target).

use std::time::Duration;

/// A duration argument: `10s`, `500ms`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?}: use e.g. 10s, 500ms, 1m");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs_f64(secs))
}
