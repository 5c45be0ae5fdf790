//! Bad input never panics the server and never leaves partial state: random bodies
//! and headers, signed and unsigned, always get a 2xx or 4xx, and the server keeps
//! answering. Whatever was accepted is stored whole; nothing else is.

use crate::support::*;
use hyper::Method;
use launchguard::clock::Clock;
use launchguard::ingest::webhook::signature::{sign_producthunt, sign_standard, Key};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};

#[derive(Debug, Clone)]
enum Sig {
    None,
    Valid,
    Garbage(String),
    Standard {
        ts_offset: i64,
        valid: bool,
        id: String,
    },
}

/// Random bodies; the well-formed ones carry no `created_at`, an impossible one, or
/// one up to 400 s either side of `now_ms` (the tolerance is 300 s).
fn body(now_ms: u64) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // JSON-shaped text with the envelope's field names in random places.
        prop::collection::vec(
            prop_oneof![
                Just("{".to_string()),
                Just("}".to_string()),
                Just("\"id\"".to_string()),
                Just("\"event_type\"".to_string()),
                Just("\"type\"".to_string()),
                Just("\"created_at\"".to_string()),
                Just("\"data\"".to_string()),
                Just(":".to_string()),
                Just(",".to_string()),
                Just("[".to_string()),
                Just("]".to_string()),
                Just("null".to_string()),
                Just("1e999".to_string()),
                "\"[a-z\\\\\\u{0}-\\u{7f}]{0,12}\"",
                "[ \t\r\n]{0,3}",
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat().into_bytes()),
        // Well-formed envelopes with odd values.
        (
            "[^\"\\\\]{0,300}",
            "[a-z_]{0,70}",
            prop_oneof![
                Just(String::new()),
                Just(r#","created_at":"2026-02-30T25:00:00Z""#.to_string()),
                (-400i64..400).prop_map(move |offset_secs| format!(
                    r#","created_at":"{}""#,
                    launchguard::ingest::webhook::payload::created_at(
                        now_ms.saturating_add_signed(offset_secs * 1000)
                    )
                )),
            ]
        )
            .prop_map(|(id, kind, date)| {
                format!(r#"{{"id":"{id}","event_type":"{kind}"{date},"data":{{}}}}"#).into_bytes()
            }),
    ]
}

fn sig() -> impl Strategy<Value = Sig> {
    prop_oneof![
        Just(Sig::None),
        Just(Sig::Valid),
        "[ -~]{0,80}".prop_map(Sig::Garbage),
        (-400i64..400, any::<bool>(), "[ -~]{0,40}").prop_map(|(ts_offset, valid, id)| {
            Sig::Standard {
                ts_offset,
                valid,
                id,
            }
        }),
    ]
}

#[test]
fn random_bodies_and_headers_get_2xx_or_4xx_and_leave_no_partial_state() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now_ms = 1_795_680_000_000u64;
    let server = rt.block_on(TestServer::start(dir.path(), Clock::manual(now_ms), |_| {}));
    let accepted = std::cell::Cell::new(0u64);

    let mut runner = TestRunner::new(PropConfig {
        cases: 400,
        ..PropConfig::default()
    });
    runner
        .run(
            &(body(now_ms), sig(), any::<bool>()),
            |(body, sig, chunked_ct)| {
                let key = Key::parse(SECRET).unwrap();
                let mut headers: Vec<(String, String)> = Vec::new();
                match &sig {
                    Sig::None => {}
                    Sig::Valid => headers.push((
                        "x-producthunt-signature".into(),
                        sign_producthunt(&key, &body),
                    )),
                    Sig::Garbage(g) => headers.push(("x-producthunt-signature".into(), g.clone())),
                    Sig::Standard {
                        ts_offset,
                        valid,
                        id,
                    } => {
                        let ts = (now_ms / 1000).saturating_add_signed(*ts_offset);
                        let s = if *valid {
                            sign_standard(&key, id, ts, &body)
                        } else {
                            "v1,AAAA".into()
                        };
                        headers.push(("webhook-id".into(), id.clone()));
                        headers.push(("webhook-timestamp".into(), ts.to_string()));
                        headers.push(("webhook-signature".into(), s));
                    }
                }
                if chunked_ct {
                    headers.push(("content-type".into(), "text/plain; charset=weird".into()));
                }
                let refs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let r = rt.block_on(server.client.try_send(
                    Method::POST,
                    &server.url("/webhooks/producthunt"),
                    &refs,
                    body.clone(),
                ));
                let r = match r {
                    Ok(r) => r,
                    // A header value hyper itself refuses to send never reached the server.
                    Err(e) if e.contains("InvalidHeaderValue") || e.contains("invalid") => {
                        return Ok(())
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("request failed: {e}"))),
                };
                let code = r.status.as_u16();
                prop_assert!((200..500).contains(&code), "{code}: {}", r.text());
                if code == 202 {
                    accepted.set(accepted.get() + 1);
                    let seq = r.json()["seq"].as_u64().unwrap();
                    let stored = server
                        .state()
                        .store
                        .event(seq)
                        .unwrap()
                        .expect("an accepted event is stored");
                    if matches!(sig, Sig::Valid) {
                        // Product Hunt-signed: accepted only with a created_at in tolerance.
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let at: jiff::Timestamp =
                            v["created_at"].as_str().unwrap().parse().unwrap();
                        let skew_ms = at.as_millisecond() - now_ms as i64;
                        prop_assert!(skew_ms.abs() <= 300_000, "accepted {skew_ms} ms off");
                    }
                    prop_assert_eq!(stored.payload, body);
                } else if code >= 400 {
                    prop_assert!(
                        r.json()["error"].is_string(),
                        "4xx bodies are JSON errors: {}",
                        r.text()
                    );
                }
                prop_assert_eq!(
                    server.state().store.next_seq(),
                    accepted.get() + 1,
                    "nothing stored beyond what was accepted"
                );
                Ok(())
            },
        )
        .unwrap();

    let health = rt.block_on(server.client.get(&server.admin_url("/healthz")));
    assert_eq!(health.status.as_u16(), 200);
    rt.block_on(server.stop());
}
