//! HTTP (`POST /v1/allocate` through `router().oneshot()`) and gRPC (`Allocate` over a real
//! socket) give identical answers: allocations, holdouts, flag values, variants, reasons,
//! error codes, the stamp and the merged baggage, for 10,000 generated contexts, and the same
//! error for the same client mistake.

mod grpc_support;

use std::collections::BTreeMap;

use allot_proto::allot::v1::AllocateRequest;
use allot_proto::allot::v1::allocator_client::AllocatorClient;
use allot_proto::convert::json_to_prost_value;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use grpc_support::{Server, context, service, store, to_struct};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tower::ServiceExt;

const CONTEXTS: usize = 10_000;
/// gRPC calls in flight at once.
const CONCURRENCY: usize = 16;

/// One answer, in a transport-neutral shape.
#[derive(Debug, PartialEq)]
struct Outcome {
    revision: u64,
    allocations: Vec<(String, String, String, u32)>,
    holdouts: Vec<String>,
    flags: BTreeMap<String, Flag>,
    /// The `allot=` member of the body / message.
    member: String,
    /// The merged `baggage` header / metadata.
    header: String,
}

#[derive(Debug, PartialEq)]
struct Flag {
    value: prost_types::Value,
    variant: String,
    reason: String,
    experiment: String,
    cell: String,
    layer: String,
    error_code: String,
}

/// The incoming baggage of request `i`: a forged `allot` member and one of the caller's own.
fn incoming(i: usize) -> String {
    format!("allot=1.9.forged~cell,request={i}")
}

async fn over_http(router: &Router, map: &Map<String, Value>, i: usize) -> Outcome {
    let request = Request::post("/v1/allocate")
        .header("content-type", "application/json")
        .header("baggage", incoming(i))
        .body(Body::from(json!({ "context": map }).to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "context {i}");
    let header = response.headers()["baggage"].to_str().unwrap().to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Outcome {
        revision: body["revision"].as_u64().unwrap(),
        allocations: body["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    s(a, "layer"),
                    s(a, "experiment"),
                    s(a, "cell"),
                    a["bucket"].as_u64().unwrap() as u32,
                )
            })
            .collect(),
        holdouts: body["holdouts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_owned())
            .collect(),
        flags: body["flags"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, f)| {
                (
                    k.clone(),
                    Flag {
                        value: json_to_prost_value(&f["value"]),
                        variant: s(f, "variant"),
                        reason: s(f, "reason"),
                        experiment: s(f, "experiment"),
                        cell: s(f, "cell"),
                        layer: s(f, "layer"),
                        error_code: s(f, "errorCode"),
                    },
                )
            })
            .collect(),
        member: s(&body, "baggage"),
        header,
    }
}

async fn over_grpc(
    client: &mut AllocatorClient<Channel>,
    map: &Map<String, Value>,
    i: usize,
) -> Outcome {
    let mut request = tonic::Request::new(AllocateRequest {
        context: Some(to_struct(map)),
    });
    request.metadata_mut().insert(
        "baggage",
        MetadataValue::try_from(incoming(i).as_str()).unwrap(),
    );
    let response = client
        .allocate(request)
        .await
        .unwrap_or_else(|s| panic!("context {i}: {s:?}"));
    let header = response
        .metadata()
        .get("baggage")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let r = response.into_inner();
    Outcome {
        revision: r.revision,
        allocations: r
            .allocations
            .into_iter()
            .map(|a| (a.layer, a.experiment, a.cell, a.bucket))
            .collect(),
        holdouts: r.holdouts,
        flags: r
            .flags
            .into_iter()
            .map(|(k, f)| {
                (
                    k,
                    Flag {
                        value: f.value.expect("every flag has a value"),
                        variant: f.variant,
                        reason: f.reason,
                        experiment: f.experiment,
                        cell: f.cell,
                        layer: f.layer,
                        error_code: f.error_code,
                    },
                )
            })
            .collect(),
        member: r.baggage,
        header,
    }
}

/// What the comparison covered, so a generator regression cannot make the test vacuous.
#[derive(Debug, Default)]
struct Coverage {
    allocations: usize,
    held: usize,
    errors: usize,
    reasons: BTreeMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_agree_on_10k_contexts() {
    let store = store();
    let service = service(&store);
    let server = Server::start(service.clone()).await;
    let channel = server.channel().await;

    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..CONCURRENCY {
        let router = allot_server::http::router(service.clone());
        let mut client = AllocatorClient::new(channel.clone());
        tasks.spawn(async move {
            let mut seen = Coverage::default();
            for i in (lane..CONTEXTS).step_by(CONCURRENCY) {
                let map = context(i);
                let grpc = over_grpc(&mut client, &map, i).await;
                let http = over_http(&router, &map, i).await;
                assert_eq!(http, grpc, "context {i}: {map:?}");
                assert_eq!(grpc.header, format!("{},request={i}", grpc.member));
                assert!(!grpc.member.contains("forged"));
                seen.allocations += grpc.allocations.len();
                seen.held += usize::from(!grpc.holdouts.is_empty());
                for f in grpc.flags.values() {
                    seen.errors += usize::from(!f.error_code.is_empty());
                    *seen.reasons.entry(f.reason.clone()).or_default() += 1;
                }
            }
            seen
        });
    }
    let mut total = Coverage::default();
    while let Some(seen) = tasks.join_next().await {
        let seen = seen.unwrap();
        total.allocations += seen.allocations;
        total.held += seen.held;
        total.errors += seen.errors;
        for (reason, n) in seen.reasons {
            *total.reasons.entry(reason).or_default() += n;
        }
    }
    assert!(total.allocations > CONTEXTS, "{total:?}");
    assert!(total.held > 0 && total.errors > 0, "{total:?}");
    for reason in [
        "STATIC",
        "DEFAULT",
        "TARGETING_MATCH",
        "SPLIT",
        "DISABLED",
        "ERROR",
    ] {
        assert!(
            total.reasons.contains_key(reason),
            "{reason} never seen: {total:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn http_and_grpc_reject_the_same_mistakes_alike() {
    let store = store();
    let service = service(&store);
    let server = Server::start(service.clone()).await;
    let mut client = server.client().await;

    let mut no_unit = context(1);
    no_unit.remove("targetingKey");
    no_unit.remove("device_id");
    let mut bad_unit = context(1);
    bad_unit.insert("targetingKey".into(), json!(""));
    let mut huge = context(1);
    for k in 0..2_000 {
        huge.insert(format!("attr-{k}"), json!(k));
    }
    for (name, map) in [("no unit", no_unit), ("bad unit", bad_unit), ("huge", huge)] {
        let response = allot_server::http::router(service.clone())
            .oneshot(
                Request::post("/v1/allocate")
                    .header("content-type", "application/json")
                    .body(Body::from(json!({ "context": map }).to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();

        let status = client
            .allocate(AllocateRequest {
                context: Some(to_struct(&map)),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
        assert_eq!(status.message(), body["message"], "{name}");
    }
    server.stop().await;
}
