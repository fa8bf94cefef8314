//! The server span: a request with a `traceparent` gets an OpenTelemetry `SERVER` span that
//! continues the caller's trace and carries `allot.revision` and `allot.allocations`; the
//! assignment log names that span. A request without one starts no span.
//!
//! Its own test binary: it installs the global tracer provider.

mod http_support;

use allot::Context;
use allot_server::http::router;
use allot_server::log::{self, Options, Target};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_support::{CONFIG, send, service, store_with};
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn server_span_continues_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.jsonl");
    let (log, writer) = log::open(
        &Options {
            target: Target::File(path.clone()),
            ttl: std::time::Duration::from_secs(60),
            capacity: 1000,
            queue: 100,
        },
        None,
    )
    .unwrap();
    let store = store_with(CONFIG);
    let app = router(service(&store).with_assignment_log(log));
    let ctx = Context::with_targeting_key("member-1").with("device_id", "dev-1");
    let body = json!({ "context": ctx }).to_string();

    // Untraced: no span.
    let req = Request::post("/v1/allocate")
        .header("content-type", "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    assert_eq!(send(&app, req).await.status, StatusCode::OK);
    assert!(exporter.get_finished_spans().unwrap().is_empty());

    let req = Request::post("/v1/allocate")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(Body::from(body))
        .unwrap();
    let reply = send(&app, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let allocations = reply.json()["allocations"].as_array().unwrap().len();

    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "allot.allocate");
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    assert_eq!(format!("{}", span.parent_span_id), PARENT);
    assert!(span.parent_span_is_remote);
    let attr = |k: &str| {
        span.attributes
            .iter()
            .find(|kv: &&KeyValue| kv.key.as_str() == k)
            .map(|kv| kv.value.clone())
    };
    assert_eq!(attr("allot.revision"), Some(Value::I64(1)));
    assert_eq!(
        attr("allot.allocations"),
        Some(Value::I64(allocations as i64))
    );

    // The assignment log names the server span (the untraced request logged the unit first,
    // so use a new unit).
    let req = Request::post("/v1/allocate")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(Body::from(
            json!({"context": {"targetingKey": "member-2"}}).to_string(),
        ))
        .unwrap();
    assert_eq!(send(&app, req).await.status, StatusCode::OK);
    writer.close().await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let own = format!("{}", spans[1].span_context.span_id());
    let text = std::fs::read_to_string(&path).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["unit"], "member-2");
    assert_eq!(last["trace_id"], TRACE);
    assert_eq!(last["span_id"], own);
    assert_ne!(own, PARENT);
    let _ = provider.shutdown();
}
