//! `ApiError`: the one place errors become HTTP responses. Every error body is JSON
//! `{"error": code, "message": text, "field"?: name}`, the code one of [`Code`]; the message says what was
//! wrong and what to do. Client faults are 4xx and logged at debug; our faults are
//! 5xx, logged with their cause, and carry `Retry-After` when a retry will help.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every error code an answer can carry: the `error` field of its JSON body, and the
/// `code` of its log line. One variant a code; [`Code::as_str`] is the wire string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// A `Host` missing, repeated or malformed (the front door).
    BadHost,
    /// A path that does not canonicalize (the front door).
    BadPath,
    /// A webhook signature missing, malformed, wrong or stale.
    BadSignature,
    /// A body that did not arrive within `server.body_timeout_ms`.
    BodyTimeout,
    /// A body over its limit.
    BodyTooLarge,
    /// A body the connection broke off.
    BodyUnreadable,
    /// A beacon from another site.
    CrossSite,
    /// An admin request a page on another site could have sent.
    Forbidden,
    /// A beacon with a visitor cookie this site did not issue.
    ForgedVisitor,
    /// A request head over the server's limit.
    HeadTooLarge,
    /// A beacon body that is not the expected JSON.
    InvalidBody,
    /// A dead-letter id that is not a number.
    InvalidId,
    /// A webhook envelope that is not valid.
    InvalidPayload,
    /// An admin or report request whose query or body is not valid.
    InvalidRequest,
    /// A host this server does not serve (421).
    Misdirected,
    /// A beacon without a visitor cookie.
    NoVisitor,
    /// No dead letter under that id.
    NotFound,
    /// No origin slot came free in time.
    OriginBusy,
    /// The origin did not answer in time.
    OriginTimeout,
    /// The origin could not be reached.
    OriginUnreachable,
    /// Past a client's beacon budget.
    RateLimited,
    /// Shed under load.
    Shed,
    /// A beacon's conversion could not be recorded.
    Storage,
    /// A store could not be read or written.
    StorageUnavailable,
    /// No or a wrong admin token.
    Unauthorized,
    /// A beacon for a goal that is not configured.
    UnknownGoal,
    /// A body of a content type the endpoint does not take.
    UnsupportedMediaType,
}

impl Code {
    /// Every code, for the tests and for documentation.
    pub const ALL: [Code; 27] = [
        Code::BadHost,
        Code::BadPath,
        Code::BadSignature,
        Code::BodyTimeout,
        Code::BodyTooLarge,
        Code::BodyUnreadable,
        Code::CrossSite,
        Code::Forbidden,
        Code::ForgedVisitor,
        Code::HeadTooLarge,
        Code::InvalidBody,
        Code::InvalidId,
        Code::InvalidPayload,
        Code::InvalidRequest,
        Code::Misdirected,
        Code::NoVisitor,
        Code::NotFound,
        Code::OriginBusy,
        Code::OriginTimeout,
        Code::OriginUnreachable,
        Code::RateLimited,
        Code::Shed,
        Code::Storage,
        Code::StorageUnavailable,
        Code::Unauthorized,
        Code::UnknownGoal,
        Code::UnsupportedMediaType,
    ];

    /// The code as it goes on the wire (`{"error": ...}`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::BadHost => "bad_host",
            Code::BadPath => "bad_path",
            Code::BadSignature => "bad_signature",
            Code::BodyTimeout => "body_timeout",
            Code::BodyTooLarge => "body_too_large",
            Code::BodyUnreadable => "body_unreadable",
            Code::CrossSite => "cross_site",
            Code::Forbidden => "forbidden",
            Code::ForgedVisitor => "forged_visitor",
            Code::HeadTooLarge => "head_too_large",
            Code::InvalidBody => "invalid_body",
            Code::InvalidId => "invalid_id",
            Code::InvalidPayload => "invalid_payload",
            Code::InvalidRequest => "invalid_request",
            Code::Misdirected => "misdirected",
            Code::NoVisitor => "no_visitor",
            Code::NotFound => "not_found",
            Code::OriginBusy => "origin_busy",
            Code::OriginTimeout => "origin_timeout",
            Code::OriginUnreachable => "origin_unreachable",
            Code::RateLimited => "rate_limited",
            Code::Shed => "shed",
            Code::Storage => "storage",
            Code::StorageUnavailable => "storage_unavailable",
            Code::Unauthorized => "unauthorized",
            Code::UnknownGoal => "unknown_goal",
            Code::UnsupportedMediaType => "unsupported_media_type",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub field: Option<&'static str>,
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    pub fn field(mut self, field: &'static str) -> ApiError {
        self.field = Some(field);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn bad_request(code: Code, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503, to be retried after `retry_after_secs`: the configured
    /// `backpressure.retry_after_secs`, which every caller threads in.
    pub fn unavailable(code: Code, message: impl Into<String>, retry_after_secs: u64) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(retry_after_secs)
    }
}

impl ApiError {
    /// The response, carrying `mark` in its extensions for the layers outside.
    pub fn into_response_with<T: Clone + Send + Sync + 'static>(self, mark: T) -> Response {
        let mut res = self.into_response();
        res.extensions_mut().insert(mark);
        res
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                code = self.code.as_str(),
                "{}",
                self.message
            );
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                code = self.code.as_str(),
                "{}",
                self.message
            );
        }
        let body = serde_json::to_vec(&Body {
            error: self.code.as_str(),
            message: &self.message,
            field: self.field,
        })
        .expect("error bodies serialize");
        let mut res = (self.status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_is_its_variant_in_snake_case_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            let camel: String = s
                .split('_')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect();
            assert_eq!(format!("{code:?}"), camel);
            assert_eq!(code.to_string(), s);
        }
    }

    #[tokio::test]
    async fn the_body_carries_the_code_string() {
        let res = ApiError::unavailable(Code::StorageUnavailable, "retry later", 7)
            .field("body")
            .into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "7");
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(
            &body[..],
            br#"{"error":"storage_unavailable","message":"retry later","field":"body"}"#
        );
    }
}
