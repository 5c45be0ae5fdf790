//! The service manager's side of the process: `READY=1` once both listeners are bound
//! and the store is open, `WATCHDOG=1` pings from the async runtime, `STOPPING=1` when
//! shutdown begins, and a `STATUS=` line an operator sees in `systemctl status`.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call here does nothing. The watchdog
//! ping runs as a task on the same runtime that serves requests, so a runtime that
//! stops making progress stops pinging, and systemd restarts the service after
//! `WatchdogSec=`.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells systemd the service is ready, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining in-flight requests"),
    ]);
}

/// Starts pinging the watchdog at half of `WATCHDOG_USEC` when systemd asked for it.
/// Returns the interval, or `None` when no watchdog is configured.
pub fn spawn_watchdog(shutdown: CancellationToken) -> Option<Duration> {
    let timeout = sd_notify::watchdog_enabled()?;
    let every = (timeout / 2).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = ticker.tick() => send(&[NotifyState::Watchdog]),
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Some(every)
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
