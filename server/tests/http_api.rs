//! `router().oneshot()` tests of the evaluation port: the native allocate response (checked
//! against the engine's own answers), the baggage header (read back by the OpenTelemetry
//! propagator), every bad-input case, and `/v1/config` with ETag/304.

mod http_support;

use std::collections::HashMap;

use allot::{Context, Reason, stamp};
use allot_server::http::router;
use allot_server::service::{Limits, Service};
use allot_server::state::ConfigStore;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_support::{CONFIG, allocate_req, send, service, store_with};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::BaggagePropagator;
use serde_json::{Value, json};

/// The response the engine says `ctx` should get, built field by field from the snapshot.
fn expected(store: &ConfigStore, ctx: &Context) -> Value {
    let snap = store.load_full().unwrap();
    let alloc = snap.allocate(ctx);
    let allocations: Vec<Value> = alloc
        .assignments()
        .iter()
        .map(|a| json!({"layer": a.layer, "experiment": a.experiment, "cell": a.cell, "bucket": a.bucket}))
        .collect();
    let mut flags = serde_json::Map::new();
    for r in snap.resolve_all(ctx) {
        let mut f = json!({"value": r.value, "variant": r.variant, "reason": r.reason.as_str()});
        if let Some(a) = r.assignment {
            f["experiment"] = json!(a.experiment);
            f["cell"] = json!(a.cell);
            f["layer"] = json!(a.layer);
        }
        if r.reason == Reason::Error {
            f["errorCode"] = json!(r.error.unwrap().as_str());
        }
        flags.insert(r.key.to_owned(), f);
    }
    json!({
        "revision": snap.revision(),
        "allocations": allocations,
        "holdouts": alloc.holdouts(),
        "flags": flags,
        "baggage": format!("allot={}", stamp::stamp(snap.revision(), &alloc, stamp::DEFAULT_BUDGET)),
    })
}

#[tokio::test]
async fn allocate_matches_the_engine_for_many_contexts() {
    let store = store_with(CONFIG);
    let app = router(service(&store));
    let mut held = 0;
    let mut both_layers = 0;
    for i in 0..300 {
        let mut ctx = Context::with_targeting_key(format!("member-{i}"));
        if i % 2 == 0 {
            ctx.insert("device_id", format!("dev-{i}"));
        }
        if i % 7 == 0 {
            ctx.insert("country", "SE");
        }
        let body = json!({ "context": ctx }).to_string();
        let reply = send(&app, allocate_req(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        assert_eq!(reply.header("content-type").unwrap(), "application/json");
        let got = reply.json();
        assert_eq!(got, expected(&store, &ctx), "context {ctx:?}");
        // With no incoming baggage, the header is our member alone, as in the body.
        assert_eq!(reply.header("baggage").unwrap(), got["baggage"]);
        held += usize::from(!got["holdouts"].as_array().unwrap().is_empty());
        both_layers += usize::from(got["allocations"].as_array().unwrap().len() == 2);
    }
    // The config was built so both outcomes occur; make sure the sample exercised them.
    assert!(
        held > 0 && both_layers > 0,
        "held {held}, both {both_layers}"
    );
}

#[tokio::test]
async fn baggage_header_reads_back_in_opentelemetry() {
    let store = store_with(CONFIG);
    let app = router(service(&store));
    let ctx = Context::with_targeting_key("member-7").with("device_id", "dev-7");
    let req = Request::post("/v1/allocate")
        .header("content-type", "application/json")
        .header("baggage", "userId=alice,allot=1.999.forged~cell")
        .header("baggage", "session=s1;ttl=30")
        .body(Body::from(json!({ "context": ctx }).to_string()))
        .unwrap();
    let reply = send(&app, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let header = reply.header("baggage").unwrap();
    let snap = store.load_full().unwrap();
    let our = stamp::stamp(snap.revision(), &snap.allocate(&ctx), stamp::DEFAULT_BUDGET);
    // Ours first, the caller's members kept in order, the forged one gone.
    assert_eq!(
        header,
        format!("allot={our},userId=alice,session=s1;ttl=30")
    );

    let carrier: HashMap<String, String> = [("baggage".to_owned(), header)].into();
    let cx = BaggagePropagator::new().extract(&carrier);
    let baggage = cx.baggage();
    assert_eq!(
        baggage.get("allot").map(|v| v.as_str().to_owned()),
        Some(our.clone())
    );
    assert_eq!(
        baggage.get("userId").map(|v| v.as_str().to_owned()),
        Some("alice".into())
    );
    assert_eq!(
        baggage.get("session").map(|v| v.as_str().to_owned()),
        Some("s1".into())
    );
    assert_eq!(baggage.len(), 3);
    let parsed = stamp::parse(&our).unwrap();
    assert_eq!(parsed.revision, snap.revision());
    assert_eq!(parsed.entries.len(), 2, "{our}");
}

#[tokio::test]
async fn bad_input_gets_a_specific_4xx() {
    let store = store_with(CONFIG);
    let app = router(Service::new(
        store.clone(),
        Limits {
            max_context_keys: 10,
            ..Limits::default()
        },
    ));
    let check = |status: StatusCode, code: &'static str, needle: &'static str| {
        move |reply: http_support::Reply| {
            assert_eq!(
                reply.status,
                status,
                "{:?}",
                String::from_utf8_lossy(&reply.body)
            );
            let body = reply.json();
            assert_eq!(body["code"], code, "{body}");
            let msg = body["message"].as_str().unwrap();
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
    };
    let bad = StatusCode::BAD_REQUEST;

    check(bad, "PARSE_ERROR", "line 1 column")(send(&app, allocate_req("{\"context\": {")).await);
    check(bad, "PARSE_ERROR", "line 2 column")(
        send(&app, allocate_req("{\n  \"context\": x}")).await,
    );
    check(bad, "PARSE_ERROR", "empty")(send(&app, allocate_req("")).await);
    check(bad, "PARSE_ERROR", "not an array")(send(&app, allocate_req("[1,2]")).await);
    check(bad, "INVALID_CONTEXT", "not a number")(
        send(&app, allocate_req(r#"{"context": 5}"#)).await,
    );
    check(bad, "INVALID_CONTEXT", "no `context`")(send(&app, allocate_req("{}")).await);
    check(bad, "INVALID_CONTEXT", "no `context`")(
        send(&app, allocate_req(r#"{"context": null}"#)).await,
    );
    check(bad, "TARGETING_KEY_MISSING", "targetingKey")(
        send(&app, allocate_req(r#"{"context": {"country": "SE"}}"#)).await,
    );
    check(bad, "INVALID_CONTEXT", "targetingKey")(
        send(&app, allocate_req(r#"{"context": {"targetingKey": 42}}"#)).await,
    );
    let many: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("k{i}"), json!(i))).collect();
    check(bad, "INVALID_CONTEXT", "limit of 10")(
        send(&app, allocate_req(json!({ "context": many }).to_string())).await,
    );

    let unsupported = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    let no_type = Request::post("/v1/allocate")
        .body(Body::from(r#"{"context":{"targetingKey":"u"}}"#))
        .unwrap();
    check(unsupported, "UNSUPPORTED_MEDIA_TYPE", "missing")(send(&app, no_type).await);
    let text = Request::post("/v1/allocate")
        .header("content-type", "text/plain")
        .body(Body::from(r#"{"context":{"targetingKey":"u"}}"#))
        .unwrap();
    check(unsupported, "UNSUPPORTED_MEDIA_TYPE", "text/plain")(send(&app, text).await);
    for ok_type in [
        "application/json; charset=utf-8",
        "application/vnd.allot+json",
    ] {
        let req = Request::post("/v1/allocate")
            .header("content-type", ok_type)
            .body(Body::from(r#"{"context":{"targetingKey":"u"}}"#))
            .unwrap();
        assert_eq!(send(&app, req).await.status, StatusCode::OK, "{ok_type}");
    }

    let big = format!(
        r#"{{"context":{{"targetingKey":"u","pad":"{}"}}}}"#,
        "x".repeat(1 << 20)
    );
    check(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        "1048576",
    )(send(&app, allocate_req(big)).await);

    // Not ready: a store with no config yet.
    let empty = router(service(&std::sync::Arc::new(ConfigStore::new())));
    check(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", "no config")(
        send(&empty, allocate_req(r#"{"context":{"targetingKey":"u"}}"#)).await,
    );
    let r = send(
        &empty,
        Request::get("/v1/config").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // Wrong method and unknown path are axum's 405/404, never 500.
    let r = send(
        &app,
        Request::get("/v1/allocate").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn garbage_bodies_never_panic_or_500() {
    let store = store_with(CONFIG);
    let app = router(service(&store));
    // A fixed-seed xorshift so failures reproduce.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds: [&[u8]; 6] = [
        br#"{"context":{"targetingKey":"u","device_id":"d"}}"#,
        br#"{"context":{"targetingKey":["a"],"x":{"y":[1,2,{"z":null}]}}}"#,
        b"\xff\xfe\x00{",
        br#"{"context":{"targetingKey":""}}"#,
        &[b'['; 4096],
        br#"{"context":{"targetingKey":"u"},"context":{}}"#,
    ];
    for i in 0..2_000 {
        let mut body = seeds[i % seeds.len()].to_vec();
        // Flip, cut or splice a few bytes.
        for _ in 0..(next() % 4) {
            let r = next();
            if body.is_empty() {
                break;
            }
            let at = (r as usize / 7) % body.len();
            match r % 3 {
                0 => body[at] = (r >> 8) as u8,
                1 => body.truncate(at),
                _ => body.insert(at, b"{}[]\",:\\u0"[(r as usize >> 16) % 10]),
            }
        }
        let reply = send(&app, allocate_req(body.clone())).await;
        assert!(
            reply.status == StatusCode::OK || reply.status.is_client_error(),
            "{} for {:?}",
            reply.status,
            String::from_utf8_lossy(&body)
        );
        if reply.status != StatusCode::OK {
            assert!(!reply.code().is_empty());
        }
    }
}

#[tokio::test]
async fn config_has_etag_and_answers_304() {
    let store = store_with(CONFIG);
    let app = router(service(&store));
    let get = |inm: Option<&str>| {
        let mut b = Request::get("/v1/config");
        if let Some(v) = inm {
            b = b.header("if-none-match", v);
        }
        b.body(Body::empty()).unwrap()
    };
    let reply = send(&app, get(None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let snap = store.load_full().unwrap();
    let hash = format!("{:016x}", snap.content_hash());
    let etag = format!("\"{}-{hash}\"", snap.revision());
    assert_eq!(reply.header("etag").unwrap(), etag);
    let body = reply.json();
    assert_eq!(body["revision"], 1);
    assert_eq!(body["content_hash"], hash);
    let canonical: Value = serde_json::from_str(&snap.config().to_canonical_json()).unwrap();
    assert_eq!(body["config"], canonical);
    // The document round-trips to the same content hash, as an SDK computing it would.
    let again = allot::Config::from_json(&body["config"].to_string()).unwrap();
    assert_eq!(again.content_hash(), snap.content_hash());

    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"0-x\", {etag}"),
        "*".into(),
    ] {
        let r = send(&app, get(Some(&inm))).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{inm}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag").unwrap(), etag);
    }
    let r = send(&app, get(Some("\"1-0000000000000000\""))).await;
    assert_eq!(r.status, StatusCode::OK);

    // A new revision changes the ETag.
    store
        .apply(
            &allot::Config::parse("layers: [{id: x}]").unwrap(),
            None,
            None,
        )
        .unwrap();
    let r = send(&app, get(Some(&etag))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("etag").unwrap().starts_with("\"2-"));
}

/// Unknown paths and wrong methods get the same JSON error shape as every other failure,
/// on the evaluation router (OFREP routes included) and on the management router.
#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let store = store_with(CONFIG);
    let app = router(service(&store));
    let req = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap()
    };
    for (method, path, status, code) in [
        ("GET", "/nope", StatusCode::NOT_FOUND, "NOT_FOUND"),
        ("POST", "/v1/allocat", StatusCode::NOT_FOUND, "NOT_FOUND"),
        (
            "GET",
            "/ofrep/v1/evaluate/flags/",
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            "GET",
            "/v1/allocate",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            "DELETE",
            "/v1/config",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            "GET",
            "/ofrep/v1/evaluate/flags",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
    ] {
        let reply = send(&app, req(method, path)).await;
        assert_eq!(reply.status, status, "{method} {path}");
        assert_eq!(reply.code(), code, "{method} {path}");
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(path.trim_end_matches('/')),
            "{method} {path}: {body}"
        );
    }

    let admin = allot_server::admin::router(allot_server::admin::AdminState {
        service: service(&store),
        token: None,
        metrics: allot_server::metrics::Metrics::new(),
        private_reads: false,
    });
    let reply = send(&admin, req("GET", "/admin/nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "NOT_FOUND");
    let reply = send(&admin, req("POST", "/healthz")).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.code(), "METHOD_NOT_ALLOWED");
}
