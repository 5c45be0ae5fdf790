//! Running it: the admin API, the durable queue of outbound calls and the alerts sent
//! through it, the night-before checklist, systemd's notifications, and the launch
//! replay.

pub mod admin;
pub mod alerts;
pub mod outbound;
pub mod preflight;
pub mod simulate;
pub mod systemd;
