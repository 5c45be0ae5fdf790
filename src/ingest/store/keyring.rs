//! A cookie signing key that can change while the node runs: a cluster node that
//! started with NATS unreachable signs with its own key, and takes the cluster's
//! when NATS is back (`ops::cluster::keys`). The cookies it signed meanwhile still
//! verify: the key it leaves is kept as **retired** (verified, never signed with),
//! here and in the store (`meta.<key>_retired`, `Store::retire_key`), so a restart
//! verifies them too.
//!
//! A key is adopted at most once while running (the cluster's keys never change), so
//! the keys are two sets, the second set once: reading them on the request's path
//! is one atomic load, no lock.
//!
//! **Invariant:** exactly one key signs; a cookie verifies under the signing key or a
//! retired one.

use std::sync::OnceLock;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// At most this many retired keys are verified (the newest).
pub const MAX_RETIRED: usize = 4;

/// The signing key and the retired ones. Shared by reference (`Arc` it).
pub struct Keyring {
    first: Keys,
    /// The key adopted while running, with `first`'s keys retired.
    adopted: OnceLock<Keys>,
}

struct Keys {
    key: [u8; 32],
    /// HMAC-SHA256 keyed with `key`: cloned per cookie, so the key's two padded blocks
    /// are hashed once, not per request.
    signing: HmacSha256,
    retired: Vec<HmacSha256>,
}

fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

impl Keyring {
    /// Signs with `key`; verifies under it and every key of `retired` as well.
    pub fn new(key: &[u8; 32], retired: &[[u8; 32]]) -> Keyring {
        Keyring {
            first: Keys {
                key: *key,
                signing: keyed(key),
                retired: retired
                    .iter()
                    .filter(|r| *r != key)
                    .map(|r| keyed(r))
                    .collect(),
            },
            adopted: OnceLock::new(),
        }
    }

    fn keys(&self) -> &Keys {
        self.adopted.get().unwrap_or(&self.first)
    }

    /// HMAC-SHA256 of `signed` under the signing key.
    pub fn tag(&self, signed: &[u8]) -> [u8; 32] {
        let mut mac = self.keys().signing.clone();
        mac.update(signed);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the first bytes of the MAC of `signed` under the signing key
    /// or a retired one (compared in constant time).
    pub fn verify(&self, signed: &[u8], tag: &[u8]) -> bool {
        let keys = self.keys();
        std::iter::once(&keys.signing)
            .chain(&keys.retired)
            .any(|k| {
                let mut mac = k.clone();
                mac.update(signed);
                mac.verify_truncated_left(tag).is_ok()
            })
    }

    /// Signs with `key` from now on; the key signed with until now is retired (still
    /// verified). Returns the key it retired, or `None` if `key` signs already or a
    /// key was adopted already (once a run).
    pub fn adopt(&self, key: &[u8; 32]) -> Option<[u8; 32]> {
        let now = self.keys();
        if &now.key == key || self.adopted.get().is_some() {
            return None;
        }
        let retired = std::iter::once(now.signing.clone())
            .chain(now.retired.iter().cloned())
            .take(MAX_RETIRED)
            .collect();
        let old = now.key;
        self.adopted
            .set(Keys {
                key: *key,
                signing: keyed(key),
                retired,
            })
            .ok()?;
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_key_signs_and_the_one_before_still_verifies() {
        let ring = Keyring::new(&[1; 32], &[]);
        let before = ring.tag(b"text");
        assert!(ring.verify(b"text", &before[..16]));
        assert!(!ring.verify(b"other", &before[..16]));
        assert_eq!(ring.adopt(&[2; 32]), Some([1; 32]));
        assert_eq!(ring.adopt(&[2; 32]), None);
        assert_eq!(ring.adopt(&[4; 32]), None, "once a run");
        let after = ring.tag(b"text");
        assert_ne!(before, after);
        assert!(
            ring.verify(b"text", &before[..16]),
            "the retired key verifies"
        );
        assert!(ring.verify(b"text", &after[..16]));
        // A key that never signed here does not verify.
        let stranger = Keyring::new(&[3; 32], &[]).tag(b"text");
        assert!(!ring.verify(b"text", &stranger[..16]));
        // Retired keys given at start verify, and sign nothing.
        let again = Keyring::new(&[2; 32], &[[1; 32]]);
        assert!(again.verify(b"text", &before[..16]));
        assert_eq!(again.tag(b"text"), after);
    }
}
