//! The queries: a day, or every day, read from the history and the live counters
//! together under the flush lock, so a report is exact at the moment it is made.

use jiff::civil::Date;

use super::math::{day_bounds, day_report, DayReport, Frame, Pricing};
use crate::config::ConversionsConfig;
use crate::ingest::store::StoreError;
use crate::insight::counters::Conversions;
use crate::insight::history::{DayTotals, MetricsBatch};

impl<'a> Frame<'a> {
    /// The frame of the running appliance's conversions.
    pub(super) fn of(conv: &'a Conversions, config: &'a ConversionsConfig) -> Frame<'a> {
        Frame {
            tz: conv.timezone(),
            tz_name: &config.timezone,
            goals: conv.goals(),
            pricing: Pricing::of(config),
        }
    }
}

fn live_batch(live: &crate::insight::counters::Live) -> Option<&MetricsBatch> {
    (!live.batch.tally.is_empty()).then_some(&live.batch)
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("day out of range: {0}")]
    Date(#[from] jiff::Error),
}

/// The report of `day`: stored totals, batches and the live window, read together.
pub fn query_day(
    conv: &Conversions,
    config: &ConversionsConfig,
    day: Date,
    now_ms: u64,
) -> Result<DayReport, QueryError> {
    let tz = conv.timezone().clone();
    let (start, end) = day_bounds(day, &tz)?;
    let (totals, batches, live) = conv.consistent(now_ms, |history, live| {
        let live = live_batch(live).filter(|b| (start..end).contains(&b.window_start_ms));
        Ok((
            history.day(&day.to_string())?,
            history.batches(start, end)?,
            live.cloned(),
        ))
    })?;
    let frame = Frame {
        tz: &tz,
        tz_name: &config.timezone,
        goals: conv.goals(),
        pricing: Pricing::of(config),
    };
    Ok(day_report(
        day,
        &frame,
        totals.as_ref(),
        &batches,
        live.as_ref(),
    )?)
}

pub(super) fn all_days(
    conv: &Conversions,
    now_ms: u64,
) -> Result<(Vec<DayTotals>, Option<MetricsBatch>), StoreError> {
    conv.consistent(now_ms, |history, live| {
        Ok((history.days()?, live_batch(live).cloned()))
    })
}
