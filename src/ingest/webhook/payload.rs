//! Webhook payload validation: `{"id": str, "event_type": str, "data": any,
//! "created_at"?: RFC 3339}`. Standard Webhooks senders may name the kind `type`
//! and carry the id in the `webhook-id` header instead. `created_at` is optional here;
//! the ingestor requires it of `X-ProductHunt-Signature` events, whose only signed time
//! it is (`signature::check_created_at`).
//!
//! Only the envelope is decoded; `data` is checked for syntax and kept as raw bytes
//! by the caller, so a large `data` costs one pass and no allocation per node.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// Longest accepted event id, bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted event type, bytes.
pub const MAX_TYPE_LEN: usize = 64;

/// A payload problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PayloadError {
    pub field: &'static str,
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> PayloadError {
    PayloadError {
        field,
        problem: problem.into(),
    }
}

/// The validated envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    pub event_type: String,
    /// `created_at`, when present and not null.
    pub created_at: Option<jiff::Timestamp>,
}

#[derive(Deserialize)]
struct Raw {
    id: Option<serde_json::Value>,
    event_type: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    created_at: Option<serde_json::Value>,
    #[allow(dead_code)]
    data: Option<IgnoredAny>,
}

/// Parses and validates `body`. With `header_id` (Standard Webhooks), that id is the
/// dedup id and the payload's own `id` is optional; `type` may stand for `event_type`.
pub fn parse(body: &[u8], header_id: Option<&str>) -> Result<Envelope, PayloadError> {
    let trimmed = body.trim_ascii_start();
    if trimmed.first() != Some(&b'{') {
        return Err(bad(
            "body",
            if trimmed.is_empty() {
                "empty; expected a JSON object".to_string()
            } else {
                match serde_json::from_slice::<IgnoredAny>(body) {
                    Ok(_) => "expected a JSON object".to_string(),
                    Err(e) => format!("not valid JSON: {e}"),
                }
            },
        ));
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde names duplicate fields itself; other errors are syntax.
        let field = ["id", "event_type", "type", "created_at", "data"]
            .into_iter()
            .find(|f| msg.contains(&format!("`{f}`")))
            .unwrap_or("body");
        if field == "body" {
            bad("body", format!("not valid JSON: {msg}"))
        } else {
            bad(field, msg)
        }
    })?;

    let id = match header_id {
        Some(h) => {
            if let Some(v) = &raw.id {
                string_field("id", v, MAX_ID_LEN)?;
            }
            check_text("webhook-id", h, MAX_ID_LEN)?;
            h.to_string()
        }
        None => match &raw.id {
            Some(v) => string_field("id", v, MAX_ID_LEN)?,
            None => return Err(bad("id", "missing; every event needs a unique string id")),
        },
    };

    let event_type = match (&raw.event_type, &raw.kind, header_id) {
        (Some(v), _, _) => string_field("event_type", v, MAX_TYPE_LEN)?,
        (None, Some(v), Some(_)) => string_field("type", v, MAX_TYPE_LEN)?,
        _ => {
            return Err(bad(
                "event_type",
                "missing; name the event, e.g. \"upvote\", \"comment\", \"maker_comment\"",
            ))
        }
    };

    let created_at = match &raw.created_at {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.parse::<jiff::Timestamp>().map_err(|_| {
            bad(
                "created_at",
                format!("expected an RFC 3339 time such as \"2026-11-25T08:01:00Z\", got {s:?}"),
            )
        })?),
        Some(other) => {
            return Err(bad(
                "created_at",
                format!("expected an RFC 3339 string, got {}", kind_of(other)),
            ))
        }
    };
    Ok(Envelope {
        id,
        event_type,
        created_at,
    })
}

/// The `created_at` a sender stamps on an event sent at `now_ms`: RFC 3339 in UTC, in
/// whole seconds (`2026-11-25T08:01:00Z`).
pub fn created_at(now_ms: u64) -> String {
    let secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

fn string_field(
    field: &'static str,
    v: &serde_json::Value,
    max: usize,
) -> Result<String, PayloadError> {
    match v {
        serde_json::Value::String(s) => {
            check_text(field, s, max)?;
            Ok(s.clone())
        }
        other => Err(bad(
            field,
            format!("expected a string, got {}", kind_of(other)),
        )),
    }
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), PayloadError> {
    if s.trim().is_empty() {
        return Err(bad(field, "empty"));
    }
    if s.len() > max {
        return Err(bad(
            field,
            format!("{} bytes, at most {max} allowed", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(bad(field, "contains control characters"));
    }
    Ok(())
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> &'static str {
        parse(body.as_bytes(), None).unwrap_err().field
    }

    #[test]
    fn accepts_the_documented_shape_in_any_order_and_spacing() {
        let e = parse(
            b" {\n \"data\" : {\"post\":1} ,\"event_type\":\"upvote\",\t\"id\" :\"evt-1\", \"created_at\":\"2026-11-25T08:00:00Z\"}\n",
            None,
        )
        .unwrap();
        assert_eq!(
            e,
            Envelope {
                id: "evt-1".into(),
                event_type: "upvote".into(),
                created_at: Some("2026-11-25T08:00:00Z".parse().unwrap()),
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of("not json"), "body");
        assert_eq!(field_of(""), "body");
        assert_eq!(field_of("[1,2]"), "body");
        assert_eq!(field_of("{\"id\": 1"), "body");
        assert_eq!(field_of(r#"{"event_type":"upvote"}"#), "id");
        assert_eq!(field_of(r#"{"id":5,"event_type":"upvote"}"#), "id");
        assert_eq!(field_of(r#"{"id":"","event_type":"upvote"}"#), "id");
        assert_eq!(field_of(r#"{"id":"a"}"#), "event_type");
        assert_eq!(field_of(r#"{"id":"a","event_type":["x"]}"#), "event_type");
        assert_eq!(
            field_of(r#"{"id":"a","event_type":"x","created_at":"yesterday"}"#),
            "created_at"
        );
        assert_eq!(field_of(r#"{"id":"a","id":"b","event_type":"x"}"#), "id");
        let long = format!(
            r#"{{"id":"{}","event_type":"x"}}"#,
            "a".repeat(MAX_ID_LEN + 1)
        );
        assert_eq!(field_of(&long), "id");
    }

    #[test]
    fn created_at_is_stamped_in_whole_seconds_and_reads_back() {
        let stamp = created_at(1_795_680_000_999);
        assert_eq!(stamp, "2026-11-26T08:00:00Z");
        let body = format!(r#"{{"id":"a","event_type":"x","created_at":"{stamp}"}}"#);
        let e = parse(body.as_bytes(), None).unwrap();
        assert_eq!(e.created_at.unwrap().as_millisecond(), 1_795_680_000_000);
        let e = parse(br#"{"id":"a","event_type":"x","created_at":null}"#, None).unwrap();
        assert_eq!(e.created_at, None);
        assert_eq!(
            field_of(r#"{"id":"a","event_type":"x","created_at":17956800}"#),
            "created_at"
        );
    }

    #[test]
    fn standard_webhooks_id_comes_from_the_header_and_type_is_allowed() {
        let e = parse(br#"{"type":"comment","data":{}}"#, Some("msg_1")).unwrap();
        assert_eq!(
            e,
            Envelope {
                id: "msg_1".into(),
                event_type: "comment".into(),
                created_at: None,
            }
        );
        // `type` alone is not enough without the Standard Webhooks headers.
        assert_eq!(field_of(r#"{"id":"a","type":"comment"}"#), "event_type");
    }
}
