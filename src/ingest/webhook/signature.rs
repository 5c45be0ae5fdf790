//! The two signature schemes, verified over the raw body bytes.
//!
//! - Product Hunt style: `X-ProductHunt-Signature: sha256=<lowercase hex HMAC-SHA256(key, body)>`.
//!   The header carries no time, so the signed body must: its `created_at` has to be
//!   within the tolerance of now (`check_created_at`, called once the body is parsed).
//! - Standard Webhooks (Svix-style): `webhook-signature: v1,<base64>` (several, space
//!   separated) over `"{webhook-id}.{webhook-timestamp}.{body}"`, with the timestamp
//!   within a tolerance of now.
//!
//! Either way a captured request stops being accepted `tolerance_secs` after its signed
//! time, and the dedup TTL (more than twice the tolerance, `config.rs`) outlasts every
//! moment at which it could still be: a replay is a duplicate or refused, never counted.
//!
//! Every configured key is tried (rotation). Comparison is `Mac::verify_slice`, which is
//! constant time and rejects wrong lengths; hex or base64 strings are never compared.
//! Keys never appear in `Debug` output or logs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const PRODUCTHUNT_HEADER: &str = "x-producthunt-signature";
pub const STD_ID_HEADER: &str = "webhook-id";
pub const STD_TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const STD_SIGNATURE_HEADER: &str = "webhook-signature";

/// Why a signature was refused. The message is safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature: send X-ProductHunt-Signature: sha256=<hex HMAC-SHA256 of the raw body>, or the Standard Webhooks headers webhook-id, webhook-timestamp and webhook-signature")]
    Missing,
    #[error("malformed {header} header: {problem}")]
    Malformed {
        header: &'static str,
        problem: &'static str,
    },
    #[error("signature does not match the body under any configured secret; sign the exact bytes you send, with the current secret")]
    Mismatch,
    #[error(
        "{what} is {} s {} this server's clock, more than the {tolerance_secs} s webhook.tolerance_secs allows, so it is refused as a possible replay; sign and send a fresh timestamp (and check the sender's clock)",
        .skew_secs.unsigned_abs(),
        if *.skew_secs < 0 { "behind" } else { "ahead of" }
    )]
    Stale {
        /// The signed time that is out of range: `webhook-timestamp` or `created_at`.
        what: &'static str,
        /// Signed time minus now, seconds (rounded away from zero).
        skew_secs: i64,
        tolerance_secs: u64,
    },
}

/// A signing secret's key bytes; parsed (and kept) by `secrets`, where the secret
/// material comes from. Re-exported here, where it signs and verifies.
pub use crate::secrets::Key;

/// The HMAC of `key`, ready for the bytes it covers.
fn hmac_of(key: &Key) -> HmacSha256 {
    HmacSha256::new_from_slice(key.bytes()).expect("HMAC accepts keys of any length")
}

/// The configured keys, built from the secrets' `Key`s; all are accepted.
#[derive(Clone, Debug, Default)]
pub struct Keys(Vec<Key>);

impl Keys {
    pub fn new(keys: Vec<Key>) -> Keys {
        Keys(keys)
    }

    /// The first key, the one a local sender (`launchguard simulate`) signs with.
    pub fn first(&self) -> Option<&Key> {
        self.0.first()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Verifies an `X-ProductHunt-Signature` header value against `body`.
    pub fn verify_producthunt(&self, header: &[u8], body: &[u8]) -> Result<(), SignatureError> {
        const HEADER: &str = "X-ProductHunt-Signature";
        let header = std::str::from_utf8(header).map_err(|_| SignatureError::Malformed {
            header: HEADER,
            problem: "not ASCII",
        })?;
        let hex_sig = header
            .trim()
            .strip_prefix("sha256=")
            .ok_or(SignatureError::Malformed {
                header: HEADER,
                problem: "expected sha256=<64 hex digits>",
            })?;
        let mut sig = [0u8; 32];
        hex::decode_to_slice(hex_sig, &mut sig).map_err(|_| SignatureError::Malformed {
            header: HEADER,
            problem: "expected sha256=<64 hex digits>",
        })?;
        for key in &self.0 {
            let mut mac = hmac_of(key);
            mac.update(body);
            if mac.verify_slice(&sig).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }

    /// Verifies Standard Webhooks headers against `body` at `now_secs`.
    pub fn verify_standard(
        &self,
        id: &[u8],
        timestamp: &[u8],
        signatures: &[u8],
        body: &[u8],
        now_secs: u64,
        tolerance_secs: u64,
    ) -> Result<(), SignatureError> {
        let ts: i64 = std::str::from_utf8(timestamp)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(SignatureError::Malformed {
                header: "webhook-timestamp",
                problem: "expected whole Unix seconds",
            })?;
        if id.is_empty() {
            return Err(SignatureError::Malformed {
                header: "webhook-id",
                problem: "empty",
            });
        }
        let skew = ts.saturating_sub(now_secs as i64);
        if skew.unsigned_abs() > tolerance_secs {
            return Err(SignatureError::Stale {
                what: "webhook-timestamp",
                skew_secs: skew,
                tolerance_secs,
            });
        }
        let signatures =
            std::str::from_utf8(signatures).map_err(|_| SignatureError::Malformed {
                header: "webhook-signature",
                problem: "not ASCII",
            })?;
        let mut candidates = Vec::new();
        for entry in signatures.split_ascii_whitespace() {
            if let Some(b64) = entry.strip_prefix("v1,") {
                // A signature that does not decode cannot match; skip it rather than
                // fail, since other entries may be valid.
                if let Ok(sig) = B64.decode(b64) {
                    candidates.push(sig);
                }
            }
        }
        if candidates.is_empty() {
            return Err(SignatureError::Malformed {
                header: "webhook-signature",
                problem: "expected one or more space-separated v1,<base64> entries",
            });
        }
        for key in &self.0 {
            let mut mac = hmac_of(key);
            mac.update(id);
            mac.update(b".");
            mac.update(timestamp);
            mac.update(b".");
            mac.update(body);
            for sig in &candidates {
                if mac.clone().verify_slice(sig).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Checks the signed `created_at` of an `X-ProductHunt-Signature` body (Unix ms) against
/// `now_ms`: at most `tolerance_secs` either way, the edge included.
pub fn check_created_at(
    created_ms: i64,
    now_ms: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let skew_ms = i128::from(created_ms) - i128::from(now_ms);
    if skew_ms.unsigned_abs() <= u128::from(tolerance_secs) * 1000 {
        return Ok(());
    }
    // Whole seconds, rounded away from zero, so 300.2 s past a 300 s tolerance reads 301.
    let secs = skew_ms.unsigned_abs().div_ceil(1000);
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    Err(SignatureError::Stale {
        what: "created_at",
        skew_secs: if skew_ms < 0 { -secs } else { secs },
        tolerance_secs,
    })
}

/// `sha256=<hex>` for the Product Hunt header.
pub fn sign_producthunt(key: &Key, body: &[u8]) -> String {
    let mut mac = hmac_of(key);
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `v1,<base64>` for the Standard Webhooks `webhook-signature` header.
pub fn sign_standard(key: &Key, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = hmac_of(key);
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = Key::parse("Jefe").unwrap();
        assert_eq!(
            sign_producthunt(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        // The reference vector published with the Standard Webhooks libraries.
        let keys = Keys::new(vec![
            Key::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
        ]);
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let ok = keys.verify_standard(
            b"msg_p5jXN8AQM9LWM0D4loKWxJek",
            b"1614265330",
            sig.as_bytes(),
            body,
            1614265330,
            300,
        );
        assert_eq!(ok, Ok(()));
        let stale = keys.verify_standard(
            b"msg_p5jXN8AQM9LWM0D4loKWxJek",
            b"1614265330",
            sig.as_bytes(),
            body,
            1614265330 + 301,
            300,
        );
        assert!(matches!(
            stale,
            Err(SignatureError::Stale {
                skew_secs: -301,
                ..
            })
        ));
    }

    #[test]
    fn created_at_is_accepted_up_to_the_tolerance_either_way() {
        let now = 1_795_680_000_000u64;
        let at = |d: i64| check_created_at(now as i64 + d, now, 300);
        for ok in [0, -300_000, 300_000, -299_999, 1] {
            assert_eq!(at(ok), Ok(()), "{ok}");
        }
        for (d, secs) in [
            (-300_001, -301),
            (300_001, 301),
            (-301_000, -301),
            (-86_400_000, -86_400),
        ] {
            assert!(
                matches!(at(d), Err(SignatureError::Stale { what: "created_at", skew_secs, .. }) if skew_secs == secs),
                "{d}: {:?}",
                at(d)
            );
        }
        let msg = at(-301_000).unwrap_err().to_string();
        assert!(
            msg.starts_with("created_at is 301 s behind this server's clock"),
            "{msg}"
        );
        assert!(msg.contains("webhook.tolerance_secs"), "{msg}");
        assert!(at(-i64::MAX).is_err());
    }

    #[test]
    fn any_configured_key_verifies() {
        let old = Key::parse("old-secret").unwrap();
        let new = Key::parse("new-secret").unwrap();
        let keys = Keys::new(vec![new.clone(), old.clone()]);
        let body = b"{\"id\":\"1\"}";
        for k in [&old, &new] {
            assert_eq!(
                keys.verify_producthunt(sign_producthunt(k, body).as_bytes(), body),
                Ok(())
            );
        }
        let stranger = Key::parse("other").unwrap();
        assert_eq!(
            keys.verify_producthunt(sign_producthunt(&stranger, body).as_bytes(), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        let keys = Keys::new(vec![Key::parse("s").unwrap()]);
        for bad in ["", "sha1=abcd", "sha256=zz", "sha256=abcd"] {
            assert!(matches!(
                keys.verify_producthunt(bad.as_bytes(), b""),
                Err(SignatureError::Malformed { .. })
            ));
        }
    }
}
