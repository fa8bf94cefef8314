//! Fuzzing of the HTTP request path through the real router (`http::router`, driven by
//! `tower::ServiceExt::oneshot`): `POST /v1/allocate`, OFREP single and bulk, with arbitrary
//! bytes and structure-aware mutations of valid bodies (wrong types, huge numbers, deep nesting,
//! duplicate keys, unicode, NUL, lone surrogates), hostile headers (content types, baggage with
//! forged `allot` members, traceparents) and arbitrary OFREP flag keys in the path.
//!
//! Whatever comes in: never a 5xx, never a panic; every error is a JSON body with a specific
//! code (`{code, message}` natively, `{key?, errorCode, errorDetails}` with an OFREP error code
//! on OFREP); a successful answer carries our `allot` baggage member exactly once, first.
//!
//! Bounded for CI; `PROPTEST_CASES=20000 cargo test -p allot-server --test fuzz_requests`
//! runs longer (docs/fuzzing.md). The seed corpus `testdata/fuzz/requests/` (raw bodies, each
//! sent to every endpoint) is replayed first.

#[path = "../../sdk/tests/fuzz_support/mod.rs"]
mod fuzz_support;
mod http_support;

use std::cell::Cell;

use allot_server::trace::TraceParent;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_support::{CONFIG, Reply, send, service, store_with};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

/// Native error codes a client may see (never `INTERNAL`: that is a 500).
const NATIVE_CODES: &[&str] = &[
    "PARSE_ERROR",
    "INVALID_CONTEXT",
    "TARGETING_KEY_MISSING",
    "FLAG_NOT_FOUND",
    "TYPE_MISMATCH",
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
];

/// OFREP's `errorCode` values (open-feature/protocol `service/openapi.yaml`).
const OFREP_CODES: &[&str] = &[
    "PARSE_ERROR",
    "TARGETING_KEY_MISSING",
    "INVALID_CONTEXT",
    "GENERAL",
    "FLAG_NOT_FOUND",
    "TYPE_MISMATCH",
    "PROVIDER_NOT_READY",
];

/// Longer than any flag key may be (64 bytes).
const LONG_KEY: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// The flag keys of [`CONFIG`].
const FLAGS: &[&str] = &["prefetch", "theme", "ranker", "old"];

#[derive(Debug, Clone)]
enum Endpoint {
    Allocate,
    /// The path segment naming the flag, as sent (percent-encoded, possibly badly).
    Single(String),
    Bulk,
}

/// Everything one generated request is made of.
#[derive(Debug, Clone)]
struct Input {
    endpoint: Endpoint,
    body: Vec<u8>,
    content_type: Option<Vec<u8>>,
    baggage: Vec<Vec<u8>>,
    traceparent: Option<Vec<u8>>,
    if_none_match: Option<Vec<u8>>,
}

// === the check ===

fn request(input: &Input) -> Request<Body> {
    let path = match &input.endpoint {
        Endpoint::Allocate => "/v1/allocate".to_owned(),
        Endpoint::Bulk => "/ofrep/v1/evaluate/flags".to_owned(),
        Endpoint::Single(segment) => format!("/ofrep/v1/evaluate/flags/{segment}"),
    };
    let mut req = Request::post(path);
    let headers = req.headers_mut().unwrap();
    // Header bytes that `http` refuses (CR, LF, NUL) are not sendable at all: skip them.
    let mut put = |name: &'static str, value: &[u8]| {
        if let Ok(v) = axum::http::HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    };
    if let Some(ct) = &input.content_type {
        put("content-type", ct);
    }
    for b in &input.baggage {
        put("baggage", b);
    }
    if let Some(tp) = &input.traceparent {
        put("traceparent", tp);
    }
    if let Some(inm) = &input.if_none_match {
        put("if-none-match", inm);
    }
    req.body(Body::from(input.body.clone())).unwrap()
}

/// Percent-encodes everything but unreserved characters, byte by byte (so a key can carry
/// bytes that are not UTF-8 once decoded, like `%FF`).
fn percent_encode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (anything else, including a bad escape, as is).
fn percent_decode(segment: &str) -> Vec<u8> {
    let b = segment.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// What the request led to, for the sanity counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    ClientError,
    NotModified,
}

fn check(
    router: &Router,
    rt: &tokio::runtime::Runtime,
    input: &Input,
) -> Result<Outcome, TestCaseError> {
    let req = request(input);
    let sent_baggage: Vec<String> = req
        .headers()
        .get_all("baggage")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let sent_json = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let sent_inm = req.headers().contains_key("if-none-match");
    let reply = rt.block_on(send(router, req));
    let status = reply.status;
    prop_assert!(
        !status.is_server_error(),
        "{} for {:?}: {}",
        status,
        input,
        text(&reply)
    );
    if status == StatusCode::NOT_MODIFIED {
        prop_assert!(
            sent_inm && matches!(input.endpoint, Endpoint::Bulk),
            "304 for {:?}",
            input
        );
        return Ok(Outcome::NotModified);
    }
    let body: Value = serde_json::from_slice(&reply.body).map_err(|e| {
        TestCaseError::fail(format!(
            "{status}: not JSON ({e}): {} for {input:?}",
            text(&reply)
        ))
    })?;
    let content_type = reply.header("content-type");
    prop_assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{:?}",
        input
    );
    if status.is_success() {
        check_success(&input.endpoint, &body, &reply, &sent_baggage)?;
        return Ok(Outcome::Ok);
    }
    prop_assert!(status.is_client_error(), "{}", status);
    match &input.endpoint {
        Endpoint::Allocate => {
            let code = body["code"].as_str().unwrap_or_default();
            prop_assert!(NATIVE_CODES.contains(&code), "code {:?} in {}", code, body);
            prop_assert!(
                !body["message"].as_str().unwrap_or_default().is_empty(),
                "{}",
                body
            );
            // The oracle for the simple cases: JSON that is not even JSON is a parse error,
            // whatever the content type says, once the content type is right.
            if sent_json && serde_json::from_slice::<Value>(&input.body).is_err() {
                prop_assert_eq!(code, "PARSE_ERROR");
            }
        }
        Endpoint::Single(_) | Endpoint::Bulk => {
            let code = body["errorCode"].as_str().unwrap_or_default();
            prop_assert!(
                OFREP_CODES.contains(&code),
                "errorCode {:?} in {}",
                code,
                body
            );
            prop_assert!(
                !body["errorDetails"].as_str().unwrap_or_default().is_empty(),
                "{}",
                body
            );
            if let Endpoint::Single(segment) = &input.endpoint {
                match String::from_utf8(percent_decode(segment)) {
                    Ok(key) => {
                        prop_assert_eq!(body["key"].as_str(), Some(key.as_str()), "{}", body)
                    }
                    // Regression: this was axum's plain-text rejection.
                    Err(_) => prop_assert_eq!(code, "PARSE_ERROR", "{}", body),
                }
            }
        }
    }
    Ok(Outcome::ClientError)
}

fn check_success(
    endpoint: &Endpoint,
    body: &Value,
    reply: &Reply,
    sent_baggage: &[String],
) -> Result<(), TestCaseError> {
    let baggage = reply.header("baggage").unwrap_or_default();
    let members: Vec<&str> = baggage.split(',').collect();
    prop_assert!(members[0].starts_with("allot=1.1"), "{}", baggage);
    prop_assert_eq!(
        members
            .iter()
            .filter(|m| m.trim().starts_with("allot"))
            .count(),
        1,
        "{}",
        baggage
    );
    // Whatever the caller forged is not echoed.
    for sent in sent_baggage {
        for m in sent.split(',') {
            let m = m.trim_matches([' ', '\t']);
            if m.split('=').next().map(|k| k.trim_matches([' ', '\t'])) == Some("allot")
                && !m.is_empty()
            {
                prop_assert!(!members[1..].contains(&m), "echoed forged {:?}", m);
            }
        }
    }
    match endpoint {
        Endpoint::Allocate => {
            prop_assert_eq!(body["revision"].as_u64(), Some(1));
            prop_assert_eq!(body["baggage"].as_str(), Some(members[0]));
            let flags = body["flags"].as_object().map(|f| f.len());
            prop_assert_eq!(flags, Some(FLAGS.len()), "{}", body);
        }
        Endpoint::Bulk => {
            let flags = body["flags"].as_array().map(Vec::len);
            prop_assert_eq!(flags, Some(FLAGS.len()), "{}", body);
            prop_assert!(reply.header("etag").is_some());
        }
        Endpoint::Single(segment) => {
            let key = String::from_utf8(percent_decode(segment)).unwrap_or_default();
            prop_assert_eq!(body["key"].as_str(), Some(key.as_str()));
            prop_assert!(FLAGS.contains(&key.as_str()));
            prop_assert!(
                body.get("value").is_some() && body["variant"].is_string(),
                "{}",
                body
            );
        }
    }
    Ok(())
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body[..reply.body.len().min(400)]).into_owned()
}

// === generators ===

fn endpoint() -> impl Strategy<Value = Endpoint> {
    let key = prop_oneof![
        6 => prop::sample::select(FLAGS).prop_map(str::to_owned),
        1 => "\\PC{1,16}".prop_map(|k| percent_encode(&k)),
        1 => prop::sample::select(vec![
            "%FF", "%C3%28", "%00", "%2F", "a%2Fb", "%E2%82", "%25", "%", "%zz", "..", "%C3%BCn",
            LONG_KEY,
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        3 => Just(Endpoint::Allocate),
        2 => key.prop_map(Endpoint::Single),
        2 => Just(Endpoint::Bulk),
    ]
}

fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        8 => Just(Some(b"application/json".to_vec())),
        1 => Just(None),
        2 => prop::sample::select(vec![
            &b"application/json; charset=utf-8"[..],
            b"APPLICATION/JSON",
            b"application/cloudevents+json",
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"application/grpc",
            b"application/\xff\xfejson",
            b"",
            b"+json",
        ])
        .prop_map(|b| Some(b.to_vec())),
    ]
}

fn baggage() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let one = prop_oneof![
        Just(b"userId=alice,allot=1.999.forged~cell".to_vec()),
        Just(b" allot = 1.2.x~y ;p=1, sessionId=42".to_vec()),
        (1usize..10_000).prop_map(|n| format!("big={}", "x".repeat(n)).into_bytes()),
        (1usize..120).prop_map(|n| (0..n)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
        "[a-z=,;. allot0-9\u{e9}]{0,64}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(one, 0..3)
}

fn traceparent() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec())),
        1 => Just(Some(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_vec())),
        1 => "[0-9a-fA-F-]{50,60}".prop_map(|s| Some(s.into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Some),
    ]
}

/// JSON values to plant in a body: wrong types, edge numbers, unicode, deep nesting.
fn planted() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "null",
            "true",
            "0",
            "-0",
            "1e400",
            "-1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "1.7976931348623157e309",
            "0.0000000000000000000000001",
            "\"\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"\\udc00\\ud800\"",
            "\"\u{10ffff}é\u{200b}\"",
            "[]",
            "{}",
            "[null]",
            "{\"\":null}",
            "\"member-1\"",
            "\"SE\"",
        ])
        .prop_map(str::to_owned),
        (1usize..300).prop_map(|n| format!("\"{}\"", "u".repeat(n))),
        (1usize..200).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (1usize..200).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
        "\\PC{0,12}".prop_map(|s| Value::from(s).to_string()),
    ]
}

/// A valid body with planted values and textual damage: built as text so that duplicate keys
/// and values `serde_json::Value` cannot hold (`1e400`) can be written.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let attr_key = prop_oneof![
        prop::sample::select(vec![
            "targetingKey",
            "device_id",
            "country",
            "context",
            "",
            "\u{0}"
        ])
        .prop_map(str::to_owned),
        "\\PC{0,8}",
    ];
    let attrs = prop::collection::vec((attr_key, planted()), 0..6);
    let edit = (
        any::<Index>(),
        prop_oneof![Just(None), "[{}\\[\\]\",:\\\\ 0-9a-z]{1,3}".prop_map(Some)],
    );
    // Most bodies stay syntactically valid so that the answers are exercised too.
    let damage = prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(edit, 1..3)];
    (
        prop_oneof![Just("member-1".to_owned()), "\\PC{1,20}"],
        attrs,
        prop::sample::select(vec![0u8, 1, 2, 3, 4, 5]),
        planted(),
        damage,
    )
        .prop_map(|(unit, attrs, shape, planted, damage)| {
            let mut context = format!("{{\"targetingKey\":{}", Value::from(unit));
            for (k, v) in &attrs {
                context.push_str(&format!(",{}:{v}", Value::from(k.as_str())));
            }
            context.push('}');
            let mut body = match shape {
                0 => format!("{{\"context\":{context}}}"),
                1 => format!("{{\"context\":{context},\"context\":{planted}}}"),
                2 => format!("{{\"context\":{planted}}}"),
                3 => format!("{{\"other\":{planted},\"context\":{context}}}"),
                4 => planted.clone(),
                _ => format!("{{\"context\":{{\"targetingKey\":{planted}}}}}"),
            }
            .into_bytes();
            for (i, edit) in damage {
                let at = i.index(body.len() + 1);
                match edit {
                    None => body.truncate(at),
                    Some(s) => {
                        body.splice(at..at, s.into_bytes());
                    }
                }
            }
            body
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => json_body(),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => Just(Vec::new()),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    (
        endpoint(),
        body(),
        content_type(),
        baggage(),
        traceparent(),
        prop_oneof![3 => Just(None), 1 => Just(Some(b"*".to_vec())), 1 => Just(Some(b"W/\"1-0\", \xff".to_vec()))],
    )
        .prop_map(|(endpoint, body, content_type, baggage, traceparent, if_none_match)| Input {
            endpoint,
            body,
            content_type,
            baggage,
            traceparent,
            if_none_match,
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// === targets ===

/// Replays the seed corpus; every generated run starts with it.
fn replay_corpus() {
    let rt = runtime();
    let router = allot_server::http::router(service(&store_with(CONFIG)));
    let mut outcomes = Vec::new();
    for (name, body) in fuzz_support::corpus("requests") {
        for endpoint in [
            Endpoint::Allocate,
            Endpoint::Single("prefetch".into()),
            Endpoint::Single("%FF".into()),
            Endpoint::Bulk,
        ] {
            let input = Input {
                endpoint,
                body: body.clone(),
                content_type: Some(b"application/json".to_vec()),
                baggage: vec![b"userId=alice,allot=1.999.forged~cell".to_vec()],
                traceparent: None,
                if_none_match: None,
            };
            outcomes.push(check(&router, &rt, &input).unwrap_or_else(|e| panic!("{name}: {e}")));
        }
    }
    assert!(outcomes.contains(&Outcome::Ok) && outcomes.contains(&Outcome::ClientError));
}

#[test]
fn requests_never_fail_the_server() {
    replay_corpus();
    let rt = runtime();
    let router = allot_server::http::router(service(&store_with(CONFIG)));
    let mut runner = fuzz_support::runner(4_000, file!());
    let counts = [Cell::new(0u32), Cell::new(0u32), Cell::new(0u32)];
    runner
        .run(&input(), |input| {
            let outcome = check(&router, &rt, &input)?;
            counts[outcome as usize].set(counts[outcome as usize].get() + 1);
            Ok(())
        })
        .unwrap();
    let [ok, rejected, _] = counts.each_ref().map(Cell::get);
    let n = runner.config().cases;
    eprintln!("{n} requests: {ok} answered, {rejected} rejected");
    // Both sides must be common, or the generator only tests one of them.
    assert!(ok > n / 10, "{ok} answered");
    assert!(rejected > n / 10, "{rejected} rejected");
}

#[test]
fn traceparent_parse_never_panics_and_reads_valid_headers() {
    let mut runner = fuzz_support::runner(4_000, file!());
    let strategy = prop_oneof![
        "\\PC{0,80}",
        "[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[ -~]{0,8})?",
        "[0-9a-fA-F\u{e9}-]{53,57}",
    ];
    runner
        .run(&strategy, |s| {
            let parsed = TraceParent::parse(&s);
            let b = s.as_bytes();
            let canonical = b.len() == 55
                && s.starts_with("00-")
                && s.bytes()
                    .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
                && b[35] == b'-'
                && b[52] == b'-'
                && s[3..35].bytes().any(|c| c != b'0')
                && s[36..52].bytes().any(|c| c != b'0');
            if canonical {
                let p = parsed.ok_or_else(|| TestCaseError::fail(format!("rejected {s}")))?;
                prop_assert_eq!(p.trace_id_hex(), &s[3..35]);
                prop_assert_eq!(p.span_id_hex(), &s[36..52]);
            }
            Ok(())
        })
        .unwrap();
    // A regression for the boundary: a non-ASCII character straddling a field separator.
    assert!(
        TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é").is_none()
    );
}
