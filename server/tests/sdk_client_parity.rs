//! The embedded SDK client (`allot::Client`, following a real gRPC server) and the server give
//! identical answers for 100,000 generated contexts: revision, allocations, holdouts, every
//! flag's value, variant, reason, experiment/cell/layer and error code, and the stamp;
//! `Client::resolve` of one flag agrees with the same flag of the server's answer.
//!
//! The server side is its `Service::allocate` rendered as the `/v1/allocate` JSON body (the
//! handler's exact encoding) for all contexts, and the HTTP route itself
//! (`router().oneshot()`) for the first 10,000: the full route for 100,000 takes ~50 s in a
//! debug build, and the route adds only decoding and encoding, which `http_api`/`parity` test.

mod grpc_support;

use std::time::{Duration, Instant};

use allot::client::{Allocated, Resolved};
use allot::{Client, Context, Reason};
use allot_server::service::Service;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use grpc_support::{Server, context, service, store};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

const CONTEXTS: usize = 100_000;
/// Contexts also sent through the HTTP route.
const OVER_HTTP: usize = 10_000;

/// The client's answer in the shape of the server's JSON body.
fn client_body(allocated: &Allocated, flags: &[Resolved]) -> Value {
    let mut flag_map = Map::new();
    for r in flags {
        flag_map.insert(r.key().to_owned(), flag_json(r));
    }
    json!({
        "revision": allocated.revision,
        "allocations": allocated.assignments.iter().map(|a| json!({
            "layer": a.layer, "experiment": a.experiment, "cell": a.cell, "bucket": a.bucket,
        })).collect::<Vec<_>>(),
        "holdouts": allocated.holdouts,
        "flags": flag_map,
        "baggage": format!("allot={}", allocated.stamp),
    })
}

fn flag_json(r: &Resolved) -> Value {
    let mut f =
        json!({ "value": r.value(), "variant": r.variant(), "reason": r.reason().as_str() });
    if let Some(a) = r.assignment() {
        f["experiment"] = json!(a.experiment);
        f["cell"] = json!(a.cell);
        f["layer"] = json!(a.layer);
    }
    if let (Reason::Error, Some(code)) = (r.reason(), r.error()) {
        f["errorCode"] = json!(code.as_str());
    }
    f
}

/// The server's answer: `Service::allocate` rendered exactly as the `/v1/allocate` handler does.
fn server_body(svc: &Service, ctx: &Context) -> Value {
    svc.allocate(ctx, &[], &[], |view| serde_json::to_value(view).unwrap())
        .unwrap()
}

#[tokio::test]
async fn client_and_server_agree_on_100k_contexts() {
    let store = store();
    let server = Server::start(service(&store)).await;
    let client = Client::builder(server.url()).connect().unwrap();
    assert!(client.wait_ready(Duration::from_secs(5)).await);
    assert_eq!(client.revision(), store.revision());
    let svc = service(&store);
    let router = allot_server::http::router(service(&store));
    let keys: Vec<String> = store
        .load_full()
        .unwrap()
        .flag_keys()
        .map(str::to_owned)
        .collect();

    let started = Instant::now();
    // The HTTP route agrees with `Service::allocate` rendered as its body.
    for i in 0..OVER_HTTP {
        let map = context(i);
        let request = Request::post("/v1/allocate")
            .header("content-type", "application/json")
            .body(Body::from(json!({ "context": map }).to_string()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "context {i}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let http_body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            http_body,
            server_body(&svc, &Context::from(map)),
            "context {i}"
        );
    }
    // The client agrees with the server on every context (two threads: the answers are pure).
    let in_experiments: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (client, svc, keys) = (&client, &svc, &keys);
                scope.spawn(move || {
                    let mut in_experiments = 0usize;
                    for i in (t..CONTEXTS).step_by(2) {
                        let ctx = Context::from(context(i));
                        let server_body = server_body(svc, &ctx);
                        let allocated = client.allocate(&ctx).unwrap();
                        let flags = client.resolve_all(&ctx).unwrap();
                        assert_eq!(client_body(&allocated, &flags), server_body, "context {i}");
                        let key = &keys[i % keys.len()];
                        let one = client.resolve(key, &ctx).unwrap();
                        assert_eq!(
                            flag_json(&one),
                            server_body["flags"][key],
                            "context {i} flag {key}"
                        );
                        in_experiments += usize::from(!allocated.assignments.is_empty());
                    }
                    in_experiments
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    // The generator exercises the config: most contexts are in some experiment, not all.
    assert!(in_experiments > CONTEXTS / 2 && in_experiments < CONTEXTS);
    eprintln!(
        "parity: {CONTEXTS} contexts ({OVER_HTTP} also over HTTP) compared in {:?}",
        started.elapsed()
    );
    drop(client);
    server.stop().await;
}
