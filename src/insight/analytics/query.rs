//! The queries: a day, or every day, read from the history and the live counters
//! together under the flush lock, so a report is exact at the moment it is made.

use jiff::civil::Date;

use super::math::{day_bounds, day_report, node_lines, DayReport, Frame, Pricing};
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
/// In a cluster (other nodes' rows stored), the totals and batches are the cluster's
/// and the report has a line per node, this one called `own_node`.
pub fn query_day(
    conv: &Conversions,
    config: &ConversionsConfig,
    day: Date,
    now_ms: u64,
    own_node: &str,
) -> Result<DayReport, QueryError> {
    let tz = conv.timezone().clone();
    let (start, end) = day_bounds(day, &tz)?;
    let key = day.to_string();
    let (mut totals, batches, live, own, peers) = conv.consistent(now_ms, |history, live| {
        let live = live_batch(live).filter(|b| (start..end).contains(&b.window_start_ms));
        Ok((
            history.day(&key)?,
            history.batches(start, end)?,
            live.cloned(),
            history.own_day(&key)?,
            history.node_days(&key)?,
        ))
    })?;
    // The cluster's peak rate is its busiest slot, which no single node's peak shows.
    if let Some(t) = &mut totals {
        for b in &batches {
            t.peak_rps = t.peak_rps.max(b.rps());
        }
    }
    let frame = Frame {
        tz: &tz,
        tz_name: &config.timezone,
        goals: conv.goals(),
        pricing: Pricing::of(config),
    };
    let mut report = day_report(day, &frame, totals.as_ref(), &batches, live.as_ref())?;
    if !peers.is_empty() {
        report.nodes = node_lines(own_node, own.as_ref(), live.as_ref(), &peers, &frame);
    }
    Ok(report)
}

pub(super) fn all_days(
    conv: &Conversions,
    now_ms: u64,
) -> Result<(Vec<DayTotals>, Option<MetricsBatch>), StoreError> {
    conv.consistent(now_ms, |history, live| {
        Ok((history.days()?, live_batch(live).cloned()))
    })
}
