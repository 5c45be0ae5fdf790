//! The HTTP side: `GET /api/analytics` and `GET /api/launches` on the admin listener,
//! their query parsing and their errors.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::civil::Date;
use serde::Deserialize;

use super::math::{day_of, launches, range_report, Frame};
use super::query::{all_days, query_day};
use crate::error::{ApiError, Code};
use crate::insight::counters::Conversions;
use crate::insight::history::{DayTotals, MetricsBatch};

/// Longest span `?from=&to=` may cover, days.
pub const MAX_RANGE_DAYS: i32 = 3660;

/// Parses `YYYY-MM-DD`, naming `key` when it is not one.
pub fn parse_day(key: &'static str, text: &str) -> Result<Date, ApiError> {
    let bad = || {
        ApiError::bad_request(
            Code::InvalidRequest,
            format!("{key}: expected a date YYYY-MM-DD, got {text:?}"),
        )
        .field(key)
    };
    if text.len() != 10 {
        return Err(bad());
    }
    text.parse::<Date>().map_err(|_| bad())
}

/// Every recorded day and the live window, read off the async workers.
async fn all_days_blocking(
    conv: &Conversions,
    now: u64,
    retry_after_secs: u64,
) -> Result<(Vec<DayTotals>, Option<MetricsBatch>), ApiError> {
    let conv = conv.clone();
    tokio::task::spawn_blocking(move || all_days(&conv, now))
        .await
        .map_err(storage_error(retry_after_secs))?
        .map_err(storage_error(retry_after_secs))
}

/// The query string of `GET /api/analytics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    pub day: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// 503 for a history that could not be read, retried after `retry_after_secs`
/// (`backpressure.retry_after_secs`).
fn storage_error<E: std::fmt::Display>(retry_after_secs: u64) -> impl Fn(E) -> ApiError {
    move |e| {
        ApiError::unavailable(
            Code::StorageUnavailable,
            format!("the history could not be read ({e}); retry"),
            retry_after_secs,
        )
    }
}

/// This node's name in a per-node breakdown: its cluster node id, or "this node".
pub fn own_node(config: &crate::config::Config) -> String {
    if config.cluster.enabled() {
        config.cluster.node()
    } else {
        "this node".into()
    }
}

/// What the report handlers read: the counters and their history, the config, the
/// clock. `app` builds it from its state.
#[derive(Clone)]
pub struct Reports {
    pub conversions: Conversions,
    pub config: std::sync::Arc<crate::config::Config>,
    pub clock: crate::clock::Clock,
}

/// `GET /api/analytics?day=YYYY-MM-DD` (default today in the launch time zone), or
/// `?from=YYYY-MM-DD&to=YYYY-MM-DD` for a range of days, both ends included.
pub async fn analytics(
    State(state): State<Reports>,
    query: Result<Query<AnalyticsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(
            Code::InvalidRequest,
            format!(
                "{}; expected ?day=YYYY-MM-DD or ?from=YYYY-MM-DD&to=YYYY-MM-DD",
                e.body_text()
            ),
        )
    })?;
    let now = state.clock.now_ms();
    let conv = state.conversions.clone();
    let config = state.config.clone();
    let retry_after_secs = config.backpressure.retry_after_secs;
    match (q.day, q.from, q.to) {
        (day, None, None) => {
            let day = match day {
                Some(d) => parse_day("day", &d)?,
                None => day_of(now, conv.timezone()),
            };
            let report = tokio::task::spawn_blocking(move || {
                query_day(&conv, &config.conversions, day, now, &own_node(&config))
            })
            .await
            .map_err(storage_error(retry_after_secs))?
            .map_err(storage_error(retry_after_secs))?;
            Ok(Json(report).into_response())
        }
        (None, Some(from), Some(to)) => {
            let from = parse_day("from", &from)?;
            let to = parse_day("to", &to)?;
            if from > to {
                return Err(ApiError::bad_request(
                    Code::InvalidRequest,
                    format!("from: {from} is after to ({to}); swap them"),
                )
                .field("from"));
            }
            let span = from.until(to).map(|s| s.get_days()).unwrap_or(i32::MAX);
            if span >= MAX_RANGE_DAYS {
                return Err(ApiError::bad_request(
                    Code::InvalidRequest,
                    format!("to: a range covers at most {MAX_RANGE_DAYS} days"),
                )
                .field("to"));
            }
            let (days, live) = all_days_blocking(&conv, now, retry_after_secs).await?;
            let frame = Frame::of(&conv, &config.conversions);
            Ok(Json(range_report(from, to, &frame, days, live.as_ref())).into_response())
        }
        (Some(_), _, _) => Err(ApiError::bad_request(
            Code::InvalidRequest,
            "day: give either day, or from and to, not both",
        )
        .field("day")),
        (None, from, _) => Err(ApiError::bad_request(
            Code::InvalidRequest,
            format!(
                "{}: a range needs both from and to (YYYY-MM-DD)",
                if from.is_none() { "from" } else { "to" }
            ),
        )
        .field(if from.is_none() { "from" } else { "to" })),
    }
}

/// `GET /api/launches`: every recorded day with its totals, newest first.
pub async fn list_launches(State(state): State<Reports>) -> Result<Response, ApiError> {
    let now = state.clock.now_ms();
    let conv = state.conversions.clone();
    let (days, live) =
        all_days_blocking(&conv, now, state.config.backpressure.retry_after_secs).await?;
    let frame = Frame::of(&conv, &state.config.conversions);
    Ok(Json(serde_json::json!({
        "timezone": state.config.conversions.timezone,
        "launches": launches(&frame, days, live.as_ref()),
    }))
    .into_response())
}
