//! Launch-day reports: the math (pure), the day in the launch time zone, the queries
//! behind `GET /api/analytics` and `GET /api/launches`, and the `report` renderings.
//!
//! - Visitors are unique visitors (one `lg_v` cookie, once a launch day), not page
//!   views, and a conversion counts once per visitor, goal and day (`visitor.rs`):
//!   `conv_rate = converting visitors / unique visitors` (at most 1),
//!   `spend = unique visitors * cost_per_visit_usd`,
//!   `CAC = cost_per_visit_usd / conv_rate` (= spend / converting visitors),
//!   `revenue = conversions * ltv_usd`, `ROI = (revenue - spend) / spend`.
//!   A ratio whose denominator is zero is `None` (JSON `null`), never NaN or a panic.
//! - A launch day runs from midnight to midnight in `conversions.timezone` (jiff, with
//!   its bundled tz database): 23 hours on the spring-forward day, 25 in the autumn.
//! - A batch belongs to the day its window started in.
//!
//! **Invariant:** the math and the report assembly do no I/O and read no clock; the
//! queries read the store and the live counters under the flush lock, so a report is
//! exact at the moment it is made.
//!
//! Files: `math` (pure: economics, days, report assembly), `query` (the store and the
//! live counters, read together), `http` (the admin handlers), `report` (the CLI
//! renderings).

mod http;
mod math;
mod query;
mod report;

pub use http::{analytics, list_launches, own_node, Reports};
pub use math::{day_bounds, day_of, economics, Economics, Pricing};
pub use report::{report, ReportArgs};
