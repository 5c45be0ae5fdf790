//! Single-flight: concurrent misses for one key make one origin fetch.
//!
//! The first request for a key becomes the leader; it registers a `watch` channel
//! under the key and the fetch itself runs in a spawned task, so a leader whose
//! client disconnects does not cancel the fetch the others wait for. Followers clone
//! the receiver and wait for the outcome. The registration is removed when the
//! leader's handle drops, whether it finished, failed or panicked; followers then
//! see the channel close and treat it as a failed fetch.
//!
//! The map's mutex is taken only on the miss path, for a hash-map operation, never
//! across an `.await`; a cache hit does not touch it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

/// What a flight's followers receive.
pub type Shared<T> = Arc<T>;

type Waiting<T> = watch::Receiver<Option<Shared<T>>>;

/// The flights in progress, by key. A clone is cheap and shares the map.
pub struct Flights<T> {
    map: Arc<Mutex<HashMap<Arc<str>, Waiting<T>>>>,
}

impl<T> Clone for Flights<T> {
    fn clone(&self) -> Self {
        Flights {
            map: self.map.clone(),
        }
    }
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Either lead the fetch or wait for it.
pub enum Role<T> {
    Leader(Leader<T>),
    Follower(Follower<T>),
}

/// The one fetcher for a key. Dropping it unregisters the flight.
pub struct Leader<T> {
    key: Arc<str>,
    tx: watch::Sender<Option<Shared<T>>>,
    flights: Flights<T>,
}

pub struct Follower<T> {
    rx: watch::Receiver<Option<Shared<T>>>,
}

impl<T> Flights<T> {
    pub fn new() -> Flights<T> {
        Flights::default()
    }

    /// Joins the flight for `key`, or starts it.
    pub fn join(&self, key: &str) -> Role<T> {
        let mut map = self.map.lock();
        if let Some(rx) = map.get(key) {
            return Role::Follower(Follower { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        let key: Arc<str> = Arc::from(key);
        map.insert(key.clone(), rx);
        Role::Leader(Leader {
            key,
            tx,
            flights: self.clone(),
        })
    }

    /// Starts the flight for `key` only if none is running.
    pub fn lead(&self, key: &str) -> Option<Leader<T>> {
        match self.join(key) {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }

    /// Unregisters the flights whose key `covered` matches (a purge of them): they
    /// finish for the requests already waiting, and later requests start anew.
    pub fn forget(&self, covered: impl Fn(&str) -> bool) {
        self.map.lock().retain(|k, _| !covered(k));
    }

    /// Flights registered now (the tests' view).
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.map.lock().len()
    }
}

impl<T> Leader<T> {
    /// Publishes the outcome to every follower and ends the flight.
    pub fn finish(self, outcome: Shared<T>) {
        // Unregister first, so a request arriving now looks at the store again
        // (where the outcome already is) instead of joining a finished flight.
        self.unregister();
        let _ = self.tx.send(Some(outcome));
    }

    /// A receiver for the leader's own request, which waits like a follower.
    pub fn follower(&self) -> Follower<T> {
        Follower {
            rx: self.tx.subscribe(),
        }
    }

    fn unregister(&self) {
        let mut map = self.flights.map.lock();
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl<T> Follower<T> {
    /// The outcome, or `None` if the leader went away without one.
    pub async fn wait(mut self) -> Option<Shared<T>> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_many_followers() {
        let f: Flights<u32> = Flights::new();
        let Role::Leader(leader) = f.join("/a") else {
            panic!("first is the leader")
        };
        let followers: Vec<_> = (0..10)
            .map(|_| match f.join("/a") {
                Role::Follower(w) => tokio::spawn(w.wait()),
                Role::Leader(_) => panic!("second leader"),
            })
            .collect();
        assert!(f.lead("/a").is_none());
        assert!(f.lead("/b").is_some());
        leader.finish(Arc::new(7));
        for w in followers {
            assert_eq!(*w.await.unwrap().unwrap(), 7);
        }
        assert_eq!(f.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_forgotten_flight_serves_its_waiters_but_no_one_new() {
        let f: Flights<u32> = Flights::new();
        let Role::Leader(old) = f.join("/a") else {
            panic!()
        };
        let Role::Follower(w) = f.join("/a") else {
            panic!()
        };
        f.forget(|k| k.starts_with("/a"));
        let Role::Leader(new) = f.join("/a") else {
            panic!("a request after the purge starts its own fetch")
        };
        old.finish(Arc::new(1));
        assert_eq!(*w.wait().await.unwrap(), 1);
        assert!(
            matches!(f.join("/a"), Role::Follower(_)),
            "the new flight is still registered"
        );
        new.finish(Arc::new(2));
        assert_eq!(f.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_vanished_leader_releases_its_followers() {
        let f: Flights<u32> = Flights::new();
        let Role::Leader(leader) = f.join("/a") else {
            panic!()
        };
        let Role::Follower(w) = f.join("/a") else {
            panic!()
        };
        drop(leader);
        assert!(w.wait().await.is_none());
        assert!(matches!(f.join("/a"), Role::Leader(_)));
    }
}
