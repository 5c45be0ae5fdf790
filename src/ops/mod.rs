//! Running it: the admin API, the durable queue of outbound calls and the alerts sent
//! through it, the night-before checklist, systemd's notifications, the launch
//! replay and the lab.

pub(crate) mod admin;
pub(crate) mod alerts;
pub(crate) mod cluster;
pub(crate) mod lab;
pub mod outbound;
pub(crate) mod preflight;
pub(crate) mod simulate;
pub(crate) mod systemd;
