//! OFREP on the evaluation router (`router().oneshot()`): every flag of the demo config for
//! several units equals the native `/v1/allocate` answer; per-flag targeting-key handling;
//! every error body; bulk `ETag`/304; CORS; the `baggage` header.

mod http_support;

use std::sync::Arc;

use allot::Config;
use allot_server::http::router;
use allot_server::service::{Limits, Service};
use allot_server::state::ConfigStore;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_support::{Reply, allocate_req, send, service, store_with};
use serde_json::{Value, json};

const DEMO: &str = include_str!("../src/demo.yaml");

fn demo() -> (Arc<ConfigStore>, Router) {
    let store = store_with(DEMO);
    let app = router(service(&store));
    (store, app)
}

fn ofrep_req(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

async fn single(app: &Router, key: &str, body: Value) -> Reply {
    send(
        app,
        ofrep_req(&format!("/ofrep/v1/evaluate/flags/{key}"), body.to_string()),
    )
    .await
}

async fn bulk(app: &Router, body: Value) -> Reply {
    send(app, ofrep_req("/ofrep/v1/evaluate/flags", body.to_string())).await
}

/// Contexts of several units, across countries, platforms and devices.
fn contexts() -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..40 {
        let country = ["US", "SE", "CA", "DE"][i % 4];
        let mut ctx = json!({"targetingKey": format!("m-{i}"), "country": country});
        if i % 3 == 0 {
            ctx["platform"] = json!("tv");
            ctx["app_version"] = json!("5.1.0");
            ctx["device_id"] = json!(format!("d-{i}"));
        }
        if i % 5 == 0 {
            ctx["tenure_months"] = json!(30);
        }
        out.push(ctx);
    }
    out
}

/// The OFREP entry the native flag `native` of `key` corresponds to.
fn expected_entry(key: &str, native: &Value, revision: u64) -> Value {
    if let Some(code) = native.get("errorCode") {
        return json!({"key": key, "errorCode": code});
    }
    let mut metadata = json!({"revision": revision});
    for f in ["experiment", "cell", "layer"] {
        if let Some(v) = native.get(f) {
            metadata[f] = v.clone();
        }
    }
    json!({
        "key": key,
        "value": native["value"],
        "variant": native["variant"],
        "reason": native["reason"],
        "metadata": metadata,
    })
}

fn strip_details(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("errorDetails");
    }
    v
}

#[tokio::test]
async fn single_and_bulk_match_native_allocate() {
    let (_store, app) = demo();
    let mut experiments = 0;
    for ctx in contexts() {
        let body = json!({"context": ctx});
        let native = send(&app, allocate_req(body.to_string())).await;
        assert_eq!(native.status, StatusCode::OK);
        let native_json = native.json();
        let revision = native_json["revision"].as_u64().unwrap();
        let flags = native_json["flags"].as_object().unwrap();

        let b = bulk(&app, body.clone()).await;
        assert_eq!(b.status, StatusCode::OK);
        assert_eq!(b.header("baggage"), native.header("baggage"));
        let bj = b.json();
        assert_eq!(bj["metadata"], json!({"revision": revision}));
        let entries = bj["flags"].as_array().unwrap();
        assert_eq!(entries.len(), flags.len());

        for (key, native_flag) in flags {
            let want = expected_entry(key, native_flag, revision);
            if want
                .get("metadata")
                .and_then(|m| m.get("experiment"))
                .is_some()
            {
                experiments += 1;
            }
            let one = single(&app, key, body.clone()).await;
            let status = if native_flag.get("errorCode").is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            assert_eq!(one.status, status, "{key} {ctx}");
            assert_eq!(one.header("baggage"), native.header("baggage"));
            assert_eq!(strip_details(one.json()), want, "{key} {ctx}");
            let entry = entries.iter().find(|e| e["key"] == json!(key)).unwrap();
            assert_eq!(strip_details(entry.clone()), want, "bulk {key} {ctx}");
        }
    }
    assert!(
        experiments > 20,
        "too few experiment-decided flags: {experiments}"
    );
}

#[tokio::test]
async fn integers_and_floats_keep_their_json_types() {
    let (_store, app) = demo();
    let ctx = json!({"context": {"targetingKey": "m-1"}});
    let float = single(&app, "buffer-ratio", ctx.clone()).await;
    let text = String::from_utf8(float.body.clone()).unwrap();
    assert!(
        text.contains("\"value\":1.0") || text.contains("\"value\":1.5"),
        "{text}"
    );
    let zero = single(&app, "discount-rate", ctx.clone()).await;
    assert!(
        String::from_utf8(zero.body)
            .unwrap()
            .contains("\"value\":0.0")
    );
    let int = single(&app, "checkout.retry-limit", ctx.clone()).await;
    assert!(
        String::from_utf8(int.body)
            .unwrap()
            .contains("\"value\":3,")
    );
    let obj = single(&app, "abr", ctx).await;
    assert!(obj.json()["value"].is_object());
}

#[tokio::test]
async fn targeting_key_is_checked_per_flag() {
    let (_store, app) = demo();
    // No body at all: an empty context.
    let empty = send(
        &app,
        Request::post("/ofrep/v1/evaluate/flags/checkout.retry-limit")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json()["reason"], "STATIC");
    assert_eq!(empty.json()["value"], 3);

    // A rule-only flag evaluates, a rule that matches needs no unit.
    let rule = single(
        &app,
        "discount-rate",
        json!({"context": {"tenure_months": 30}}),
    )
    .await;
    assert_eq!(rule.status, StatusCode::OK);
    assert_eq!(rule.json()["reason"], "TARGETING_MATCH");
    let nordic = single(
        &app,
        "search.new-ranker",
        json!({"context": {"country": "SE"}}),
    )
    .await;
    assert_eq!(nordic.status, StatusCode::OK);
    assert_eq!(nordic.json()["value"], true);

    // A rollout without a unit: 400 TARGETING_KEY_MISSING.
    let missing = single(&app, "search.new-ranker", json!({})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["key"], "search.new-ranker");
    assert_eq!(missing.json()["errorCode"], "TARGETING_KEY_MISSING");
    assert!(
        missing.json()["errorDetails"]
            .as_str()
            .unwrap()
            .contains("unit")
    );

    // A unit that is not a string: INVALID_CONTEXT for that flag only.
    let bad = single(
        &app,
        "search.new-ranker",
        json!({"context": {"targetingKey": 7}}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["errorCode"], "INVALID_CONTEXT");

    // Bulk: the failing flags carry errorCode, the others evaluate.
    let all = bulk(&app, json!({"context": null})).await;
    assert_eq!(all.status, StatusCode::OK);
    let flags = all.json()["flags"].as_array().unwrap().clone();
    let by_key = |k: &str| flags.iter().find(|f| f["key"] == json!(k)).unwrap().clone();
    assert_eq!(
        by_key("search.new-ranker")["errorCode"],
        "TARGETING_KEY_MISSING"
    );
    assert_eq!(
        by_key("player.engine")["errorCode"],
        "TARGETING_KEY_MISSING"
    );
    assert_eq!(by_key("checkout.retry-limit")["value"], 3);
    assert_eq!(by_key("legacy-player")["reason"], "DISABLED");
    assert!(by_key("prefetch").get("errorCode").is_none());
}

#[tokio::test]
async fn error_bodies_follow_the_spec() {
    let (_store, app) = demo();
    let nf = single(&app, "nope", json!({"context": {"targetingKey": "u"}})).await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    assert_eq!(nf.json()["key"], "nope");
    assert_eq!(nf.json()["errorCode"], "FLAG_NOT_FOUND");
    assert!(nf.json()["errorDetails"].is_string());

    let parse = send(
        &app,
        ofrep_req("/ofrep/v1/evaluate/flags/prefetch", "{\"context\":"),
    )
    .await;
    assert_eq!(parse.status, StatusCode::BAD_REQUEST);
    assert_eq!(parse.json()["errorCode"], "PARSE_ERROR");
    assert_eq!(parse.json()["key"], "prefetch");

    let not_object = send(&app, ofrep_req("/ofrep/v1/evaluate/flags", "[1]")).await;
    assert_eq!(not_object.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_object.json()["errorCode"], "PARSE_ERROR");
    assert!(not_object.json().get("key").is_none());

    let ctx_array = single(&app, "prefetch", json!({"context": [1]})).await;
    assert_eq!(ctx_array.status, StatusCode::BAD_REQUEST);
    assert_eq!(ctx_array.json()["errorCode"], "INVALID_CONTEXT");

    let big = "x".repeat(allot_server::http::MAX_BODY + 10);
    let oversize = send(
        &app,
        ofrep_req(
            "/ofrep/v1/evaluate/flags",
            format!("{{\"context\":{{\"a\":\"{big}\"}}}}"),
        ),
    )
    .await;
    assert_eq!(oversize.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(oversize.json()["errorCode"], "GENERAL");

    let store = store_with(DEMO);
    let limited = router(Service::new(
        store,
        Limits {
            max_context_keys: 2,
            ..Limits::default()
        },
    ));
    let many = single(
        &limited,
        "prefetch",
        json!({"context": {"a": 1, "b": 2, "c": 3}}),
    )
    .await;
    assert_eq!(many.status, StatusCode::BAD_REQUEST);
    assert_eq!(many.json()["errorCode"], "INVALID_CONTEXT");

    let empty = router(Service::new(
        Arc::new(ConfigStore::new()),
        Limits::default(),
    ));
    let not_ready = bulk(&empty, json!({})).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["errorCode"], "PROVIDER_NOT_READY");
}

#[tokio::test]
async fn bulk_etag_hashes_revision_and_canonical_context() {
    let (store, app) = demo();
    let a = bulk(
        &app,
        json!({"context": {"targetingKey": "u1", "country": "SE"}}),
    )
    .await;
    let etag = a.header("etag").unwrap();
    assert!(etag.starts_with("\"1-"), "{etag}");
    // Same context, other key order: same tag.
    let a2 = send(
        &app,
        ofrep_req(
            "/ofrep/v1/evaluate/flags",
            r#"{"context": {"country": "SE", "targetingKey": "u1"}}"#,
        ),
    )
    .await;
    assert_eq!(a2.header("etag").unwrap(), etag);
    let b = bulk(
        &app,
        json!({"context": {"targetingKey": "u2", "country": "SE"}}),
    )
    .await;
    assert_ne!(b.header("etag").unwrap(), etag);

    let conditional = |tag: String| {
        Request::post("/ofrep/v1/evaluate/flags")
            .header("content-type", "application/json")
            .header("if-none-match", tag)
            .body(Body::from(
                json!({"context": {"targetingKey": "u1", "country": "SE"}}).to_string(),
            ))
            .unwrap()
    };
    let not_modified = send(&app, conditional(etag.clone())).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag").unwrap(), etag);
    let other = send(&app, conditional("\"1-0000000000000000\"".into())).await;
    assert_eq!(other.status, StatusCode::OK);

    // A new config: a new tag, and the old one no longer matches.
    let changed = DEMO.replace("variants: { three: 3 }", "variants: { three: 4 }");
    store
        .apply(&Config::parse(&changed).unwrap(), None, None)
        .unwrap();
    let after = send(&app, conditional(etag.clone())).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(after.header("etag").unwrap().starts_with("\"2-"));
}

#[tokio::test]
async fn cors_allows_browser_clients() {
    let (_store, app) = demo();
    let preflight = send(
        &app,
        Request::options("/ofrep/v1/evaluate/flags")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,if-none-match",
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(preflight.status.is_success(), "{:?}", preflight.status);
    assert_eq!(
        preflight.header("access-control-allow-origin").unwrap(),
        "*"
    );
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );

    let res = send(
        &app,
        Request::post("/ofrep/v1/evaluate/flags")
            .header("origin", "https://app.example")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(res.header("access-control-allow-origin").unwrap(), "*");
    let exposed = res.header("access-control-expose-headers").unwrap();
    assert!(
        exposed.contains("etag") && exposed.contains("baggage"),
        "{exposed}"
    );
    assert!(res.header("vary").unwrap().contains("origin"));

    // Server-side providers send no `Origin`: the same answer, without CORS headers.
    let plain = send(
        &app,
        Request::post("/ofrep/v1/evaluate/flags")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!((plain.status, &plain.body), (res.status, &res.body));
    assert_eq!(plain.header("etag"), res.header("etag"));
    for h in [
        "access-control-allow-origin",
        "access-control-expose-headers",
        "vary",
    ] {
        assert_eq!(plain.header(h), None, "{h}");
    }
}

/// The typed fast path and the `Value` path agree on every body shape OFREP accepts, and
/// what the fast path rejects still gets its precise error.
#[test]
fn context_bodies() {
    use allot_server::ofrep::context_of;
    let ctx = |json: &str| Value::Object(context_of(json.as_bytes()).unwrap().into_map());
    let empty = json!({});
    assert_eq!(ctx(""), empty);
    assert_eq!(ctx("  \n"), empty);
    assert_eq!(ctx("{}"), empty);
    assert_eq!(ctx(r#"{"context": null}"#), empty);
    assert_eq!(ctx(r#"{"other": 1}"#), empty);
    let want = json!({"a": 2, "targetingKey": "m-1"});
    let got = ctx(r#" {"context": {"targetingKey": "m-1", "a": 1, "a": 2}, "x": [1]}"#);
    assert_eq!(got, want);
    for (body, code) in [
        (r#"{"context": "m-1"}"#, "INVALID_CONTEXT"),
        (r#"{"context": [1]}"#, "INVALID_CONTEXT"),
        (r#"[{"targetingKey": "m-1"}]"#, "PARSE_ERROR"),
        (r#"{"context": {"a": 1}"#, "PARSE_ERROR"),
        ("null", "PARSE_ERROR"),
    ] {
        let err = context_of(body.as_bytes()).unwrap_err();
        assert_eq!(allot_server::ofrep::error_code(&err), code, "{body}");
    }
}

#[tokio::test]
async fn incoming_baggage_is_merged() {
    let (_store, app) = demo();
    let res = send(
        &app,
        Request::post("/ofrep/v1/evaluate/flags/prefetch")
            .header("content-type", "application/json")
            .header("baggage", "allot=forged,team=red")
            .body(Body::from(
                json!({"context": {"targetingKey": "m-1", "country": "US"}}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    let baggage = res.header("baggage").unwrap();
    assert!(baggage.starts_with("allot=1.1"), "{baggage}");
    assert!(baggage.ends_with(",team=red"), "{baggage}");
    assert!(!baggage.contains("forged"));
}
