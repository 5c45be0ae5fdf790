//! Running it: the admin API, the durable queue of outbound calls and the alerts sent
//! through it, the night-before checklist, systemd's notifications, and the launch
//! replay.

pub(crate) mod admin;
pub(crate) mod alerts;
// The visitor model comes first; the command that uses it follows.
#[allow(dead_code)]
pub(crate) mod lab;
pub mod outbound;
pub(crate) mod preflight;
pub(crate) mod simulate;
pub(crate) mod systemd;
