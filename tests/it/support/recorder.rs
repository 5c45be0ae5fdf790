//! The metrics recorder is one per process (`launchguard::telemetry::recorder`): every
//! server a test starts records into the same counters and gauges, and each server's
//! `/metrics` renders all of them. A test that asserts an exact value of one (a
//! counter's delta, a gauge) takes `alone()` first: it waits until no other test has
//! a server running, and no other test starts one until it is done. Every
//! `TestServer` holds a `share()` while it runs, so this costs the other tests
//! nothing but the wait.
//!
//! A test is told apart by its Tokio runtime (each `#[tokio::test]` builds its own):
//! the test that is alone may start as many servers as it likes, and a test already
//! running a server may start another even while a test waits to be alone (it would
//! otherwise wait on itself).

use std::sync::LazyLock;

use parking_lot::Mutex;
use tokio::runtime::{Handle, Id};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    /// The test that is alone.
    alone: Option<Id>,
    /// Tests waiting to be alone: while any waits, no test starts its first server.
    waiting: usize,
    /// Servers running, by test.
    shares: Vec<(Id, usize)>,
}

#[derive(Default)]
struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

static GATE: LazyLock<Gate> = LazyLock::new(Gate::default);

/// Waits until `ready` holds for the gate's state, then lets `take` change it.
async fn wait_until(mut ready: impl FnMut(&State) -> bool, take: impl FnOnce(&mut State)) {
    loop {
        let changed = GATE.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let mut state = GATE.state.lock();
            if ready(&state) {
                take(&mut state);
                return;
            }
        }
        changed.await;
    }
}

fn release(change: impl FnOnce(&mut State)) {
    change(&mut GATE.state.lock());
    GATE.changed.notify_waiters();
}

/// Held by a test that reads the recorder exactly, until it is dropped.
#[must_use = "the test is alone only while this is held"]
pub struct Alone(());

/// Waits until this test is the only one with a server running, and keeps it so
/// while the returned guard lives.
pub async fn alone() -> Alone {
    let me = Handle::current().id();
    // Counted as waiting from here, and no longer if this future is dropped.
    struct Waiting;
    impl Drop for Waiting {
        fn drop(&mut self) {
            release(|s| s.waiting -= 1);
        }
    }
    GATE.state.lock().waiting += 1;
    let waiting = Waiting;
    wait_until(
        |s| s.alone.is_none() && s.shares.iter().all(|(id, _)| *id == me),
        |s| s.alone = Some(me),
    )
    .await;
    drop(waiting);
    Alone(())
}

impl Drop for Alone {
    fn drop(&mut self) {
        release(|s| s.alone = None);
    }
}

/// A running server's share of the recorder.
pub struct Share {
    id: Id,
}

/// Waits while another test is alone (or waits to be), unless this test already
/// runs a server or is the one alone.
pub async fn share() -> Share {
    let me = Handle::current().id();
    wait_until(
        |s| {
            let mine = s.shares.iter().any(|(id, _)| *id == me);
            match s.alone {
                Some(id) => id == me,
                None => mine || s.waiting == 0,
            }
        },
        |s| match s.shares.iter_mut().find(|(id, _)| *id == me) {
            Some((_, n)) => *n += 1,
            None => s.shares.push((me, 1)),
        },
    )
    .await;
    Share { id: me }
}

impl Drop for Share {
    fn drop(&mut self) {
        let id = self.id;
        release(|s| {
            if let Some(i) = s.shares.iter().position(|(x, _)| *x == id) {
                s.shares[i].1 -= 1;
                if s.shares[i].1 == 0 {
                    s.shares.swap_remove(i);
                }
            }
        });
    }
}
