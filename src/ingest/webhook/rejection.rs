//! Why a webhook (or a poller's event) was not taken: [`Rejection`], typed, so the
//! poller (no HTTP) reads a reason and the handler one answer. `From<Rejection> for
//! ApiError` is the one place a rejection becomes a status, an error code, a field and
//! a `Retry-After`; [`Rejection::label`] reads its `result` label of
//! `launchguard_webhooks_total` from the same table.

use std::time::Duration;

use axum::http::StatusCode;

use super::payload::PayloadError;
use super::signature::SignatureError;
use crate::error::{ApiError, Code};
use crate::ingest::commit::CommitError;
use crate::ingest::store::StoreError;

/// Why a webhook was refused. The message (`Display`) is safe to send to the client
/// and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Larger than `webhook.max_body_bytes`, declared or read: 413.
    #[error("the body is larger than webhook.max_body_bytes ({max} bytes); send smaller events")]
    TooLarge { max: usize },
    /// Not all there within `server.body_timeout_ms`: 408.
    #[error("the body did not arrive within {} ms; send it in one go", .timeout.as_millis())]
    BodyTimeout { timeout: Duration },
    /// The body could not be read (the connection broke): 400.
    #[error("the body could not be read: {0}")]
    BodyUnreadable(axum::Error),
    /// A signature missing, malformed or wrong, or a signed time out of the tolerance:
    /// 401.
    #[error(transparent)]
    Signature(SignatureError),
    /// The envelope is not valid: 400 naming the field.
    #[error(transparent)]
    Payload(PayloadError),
    /// An `X-ProductHunt-Signature` event without `created_at`, its signed time: 400.
    #[error(
        "created_at: missing; an event signed with X-ProductHunt-Signature must carry \
         the RFC 3339 time it was sent (e.g. \"2026-11-25T08:01:00Z\"), within \
         webhook.tolerance_secs ({tolerance_secs} s) of this server's clock, so that a \
         captured body cannot be replayed"
    )]
    MissingCreatedAt { tolerance_secs: u64 },
    /// A verified `webhook-id` that is not ASCII: 400.
    #[error("webhook-id: not ASCII")]
    IdNotAscii,
    /// The store refused the event; nothing was kept: 503, retry after
    /// `backpressure.retry_after_secs`.
    #[error("the event could not be stored ({error}); nothing was kept, retry later")]
    Storage {
        error: StoreError,
        retry_after_secs: u64,
    },
    /// Stored, but not known to be durable (fsync mode): 503, retry after
    /// `backpressure.retry_after_secs` (a retry is a duplicate once it is).
    #[error("{error}")]
    NotDurable {
        error: CommitError,
        retry_after_secs: u64,
    },
}

impl Rejection {
    /// The answer's status and error code, and the `result` label it is counted under.
    fn kind(&self) -> (StatusCode, Code, &'static str) {
        match self {
            Rejection::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::BodyTooLarge,
                "too_large",
            ),
            Rejection::BodyTimeout { .. } => {
                (StatusCode::REQUEST_TIMEOUT, Code::BodyTimeout, "timeout")
            }
            Rejection::BodyUnreadable(_) => {
                (StatusCode::BAD_REQUEST, Code::BodyUnreadable, "invalid")
            }
            Rejection::Signature(_) => {
                (StatusCode::UNAUTHORIZED, Code::BadSignature, "unauthorized")
            }
            Rejection::Payload(_) | Rejection::MissingCreatedAt { .. } | Rejection::IdNotAscii => {
                (StatusCode::BAD_REQUEST, Code::InvalidPayload, "invalid")
            }
            Rejection::Storage { .. } | Rejection::NotDurable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Code::StorageUnavailable,
                "error",
            ),
        }
    }

    /// The `result` label of `launchguard_webhooks_total`.
    pub fn label(&self) -> &'static str {
        self.kind().2
    }

    /// The field the client should fix, when there is one.
    fn field(&self) -> Option<&'static str> {
        match self {
            Rejection::TooLarge { .. } | Rejection::BodyUnreadable(_) => Some("body"),
            Rejection::Signature(SignatureError::Stale { what, .. }) => Some(what),
            Rejection::Payload(e) => Some(e.field),
            Rejection::MissingCreatedAt { .. } => Some("created_at"),
            Rejection::IdNotAscii => Some("webhook-id"),
            _ => None,
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Rejection::Storage {
                retry_after_secs, ..
            }
            | Rejection::NotDurable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        let (status, code, _) = r.kind();
        let mut e = ApiError::new(status, code, r.to_string());
        e.field = r.field();
        e.retry_after_secs = r.retry_after_secs();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_status_as_before() {
        // The label the handler used to derive from the status: 401, 413 and 408 by
        // name, any other 4xx `invalid`, the rest `error`.
        let before = |s: StatusCode| match s {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::REQUEST_TIMEOUT => "timeout",
            s if s.is_client_error() => "invalid",
            _ => "error",
        };
        for r in [
            Rejection::TooLarge { max: 1 },
            Rejection::BodyTimeout {
                timeout: Duration::from_millis(5),
            },
            Rejection::Signature(SignatureError::Missing),
            Rejection::MissingCreatedAt {
                tolerance_secs: 300,
            },
            Rejection::IdNotAscii,
            Rejection::NotDurable {
                error: CommitError::Stopped,
                retry_after_secs: 7,
            },
        ] {
            let label = r.label();
            let e = ApiError::from(r);
            assert_eq!(label, before(e.status), "{}", e.code.as_str());
        }
    }

    #[test]
    fn unavailable_carries_the_configured_retry_after() {
        let e = ApiError::from(Rejection::NotDurable {
            error: CommitError::StoppedBeforeFlush,
            retry_after_secs: 7,
        });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, Code::StorageUnavailable);
        assert_eq!(e.retry_after_secs, Some(7));
        assert_eq!(e.message, "the committer stopped before the flush finished");
        let stale = ApiError::from(Rejection::Signature(SignatureError::Stale {
            what: "created_at",
            skew_secs: -301,
            tolerance_secs: 300,
        }));
        assert_eq!(stale.field, Some("created_at"));
        assert_eq!(stale.retry_after_secs, None);
    }
}
