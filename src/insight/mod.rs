//! What the launch did: counters on the hot path, visitors and conversions counted
//! once, their history in the store, the launch-day reports and the live dashboard.

pub(crate) mod analytics;
pub mod claims;
pub mod counters;
pub mod grace;
pub mod history;
pub(crate) mod live;
pub mod visitor;
