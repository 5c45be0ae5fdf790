//! Where a webhook goes: a signed event is checked, made durable in the store, queued
//! on the ring and pumped into the velocity window, whose factor every visitor request
//! reads. The Product Hunt poller feeds the same path with synthetic events.

pub(crate) mod commit;
pub mod factor;
pub(crate) mod producthunt;
pub mod pump;
pub mod ring;
pub mod store;
pub mod velocity;
pub mod webhook;
