//! The framing of every versioned record the crate keeps in sled: one version byte
//! (never 0), then the body. Two kinds of body exist, and each has one encoder here:
//! - bincode 2 (`config::standard()`: varints, no length prefix): `encode` /
//!   `decode`, for the event record, the metrics batch, the launch day and the
//!   outbound job;
//! - fixed-width big-endian words: `encode_words` / `decode_words`, for the pin, the
//!   dedup record, the poller's counts and the payload-sweep cursor; and raw bytes of a
//!   fixed length, `decode_bytes`, for the visitor key.
//!
//! The `events` batch entry (`[3][count]` then length-prefixed records) is a container
//! of records rather than a record, and keeps its own framing in `records.rs`.
//!
//! **Invariant:** a record of a version above what its reader knows is refused with
//! `StoreError::NewerRecord` naming the record, never misread; bincode's traps
//! (CRATES.md: no `serde_json::Value`, no `skip_serializing_if`, `untagged`, `flatten`)
//! are the record types' to avoid.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// Checks the version byte of `bytes` (a record called `what`) against `max`, the
/// newest this build reads; returns the version found.
pub fn check_version(what: &'static str, bytes: &[u8], max: u8) -> Result<u8, StoreError> {
    match bytes.first().copied() {
        None => Err(StoreError::Corrupt {
            what,
            detail: "empty record".into(),
        }),
        Some(found) if found > max => Err(StoreError::NewerRecord { what, found, max }),
        Some(0) => Err(StoreError::Corrupt {
            what,
            detail: "version 0".into(),
        }),
        Some(found) => Ok(found),
    }
}

/// `[version][bincode value]`.
pub fn encode<T: Serialize>(
    what: &'static str,
    version: u8,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    encode_with_capacity(what, version, value, 64)
}

/// `encode` into a buffer of `capacity` bytes to start with (the event record sizes
/// it by its payload, so the request path allocates once).
pub fn encode_with_capacity<T: Serialize>(
    what: &'static str,
    version: u8,
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(capacity);
    out.push(version);
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard()).map_err(
        |e| StoreError::Corrupt {
            what,
            detail: e.to_string(),
        },
    )?;
    Ok(out)
}

/// The value of a `[version][bincode value]` record of version at most `max`. A
/// reader of several versions checks the byte first and decodes each with its type.
pub fn decode<T: DeserializeOwned>(
    what: &'static str,
    max: u8,
    bytes: &[u8],
) -> Result<T, StoreError> {
    check_version(what, bytes, max)?;
    let (value, _) = bincode::serde::decode_from_slice(&bytes[1..], bincode::config::standard())
        .map_err(|e| StoreError::Corrupt {
            what,
            detail: e.to_string(),
        })?;
    Ok(value)
}

/// `[version][u64 BE]...`.
pub fn encode_words<const N: usize>(version: u8, words: [u64; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 * N);
    out.push(version);
    for w in words {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out
}

/// The words of a `[version][u64 BE]...` record of version at most `max`, exactly `N`.
pub fn decode_words<const N: usize>(
    what: &'static str,
    max: u8,
    bytes: &[u8],
) -> Result<[u64; N], StoreError> {
    let body = fixed_body(what, max, bytes, 8 * N)?;
    Ok(std::array::from_fn(|i| {
        u64::from_be_bytes(body[8 * i..8 * i + 8].try_into().expect("8 bytes"))
    }))
}

/// The body of a `[version][N bytes]` record of version at most `max`.
pub fn decode_bytes<const N: usize>(
    what: &'static str,
    max: u8,
    bytes: &[u8],
) -> Result<[u8; N], StoreError> {
    Ok(fixed_body(what, max, bytes, N)?
        .try_into()
        .expect("checked length"))
}

fn fixed_body<'a>(
    what: &'static str,
    max: u8,
    bytes: &'a [u8],
    len: usize,
) -> Result<&'a [u8], StoreError> {
    check_version(what, bytes, max)?;
    if bytes.len() != 1 + len {
        return Err(StoreError::Corrupt {
            what,
            detail: format!("{} bytes, expected {}", bytes.len(), 1 + len),
        });
    }
    Ok(&bytes[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Sample {
        n: u64,
        name: String,
    }

    #[test]
    fn the_bytes_are_the_version_then_standard_bincode() {
        let v = encode(
            "sample",
            2,
            &Sample {
                n: 300,
                name: "ab".into(),
            },
        )
        .unwrap();
        // 300 is a varint (251, then u16 LE); the string is its length, then bytes.
        assert_eq!(v, [2, 251, 44, 1, 2, b'a', b'b']);
        let back: Sample = decode("sample", 2, &v).unwrap();
        assert_eq!(back.n, 300);
        assert_eq!(
            encode_words(1, [1, 2]),
            [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
        );
        assert_eq!(
            decode_words::<2>("pair", 1, &encode_words(1, [7, 9])).unwrap(),
            [7, 9]
        );
        assert_eq!(decode_bytes::<2>("two", 1, &[1, 5, 6]).unwrap(), [5, 6]);
    }

    #[test]
    fn a_newer_version_is_refused_and_named() {
        let mut v = encode("outbound job", 1, &7u64).unwrap();
        v[0] = 2;
        let e = decode::<u64>("outbound job", 1, &v).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::NewerRecord {
                    what: "outbound job",
                    found: 2,
                    max: 1
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "record outbound job has version 2, newer than this build understands (1)"
        );
        let e = decode_words::<1>("meta.cursor", 1, &[2, 1, 2]).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::NewerRecord {
                    what: "meta.cursor",
                    ..
                }
            ),
            "a newer version is named even when its length changed: {e}"
        );
    }

    #[test]
    fn empty_version_0_and_cut_records_are_corrupt() {
        for (bytes, detail) in [
            (&[][..], "empty record"),
            (&[0, 1][..], "version 0"),
            (&[1, 0, 0][..], "3 bytes, expected 9"),
        ] {
            let e = decode_words::<1>("meta.cursor", 1, bytes).unwrap_err();
            assert!(
                matches!(&e, StoreError::Corrupt { what: "meta.cursor", detail: d } if d == detail),
                "{e}"
            );
        }
    }
}
