//! The server span over gRPC: a call with `traceparent` metadata gets an OpenTelemetry `SERVER`
//! span continuing the caller's trace, as HTTP requests do; a call without one starts none.
//!
//! Its own test binary: it installs the global tracer provider.

mod grpc_support;

use allot_proto::allot::v1::AllocateRequest;
use grpc_support::{Server, context, service, store, to_struct};
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tonic::metadata::MetadataValue;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn grpc_calls_continue_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let store = store();
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;
    let request = || AllocateRequest {
        context: Some(to_struct(&context(7))),
    };

    let reply = client.allocate(request()).await.unwrap().into_inner();
    assert_eq!(reply.revision, 1);
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "untraced call made a span"
    );

    let mut traced = tonic::Request::new(request());
    let header = format!("00-{TRACE}-{PARENT}-01");
    traced.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(header.as_str()).unwrap(),
    );
    let reply = client.allocate(traced).await.unwrap().into_inner();

    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
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
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attr("allot.revision").as_deref(), Some("1"));
    assert_eq!(
        attr("allot.allocations"),
        Some(reply.allocations.len().to_string())
    );
    let _ = provider.shutdown();
}
