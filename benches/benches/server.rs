//! Criterion benches of the server's handler path (issue 3, "Speed": decode → allocate → encode,
//! in-process, no socket, ≤ 5 µs for the demo config; issue 4: OFREP single flag ≤ 5 µs, bulk
//! ≤ 15 µs; issue 7: OFREP bulk over 100 flags ≤ 40 µs of server CPU); numbers in BENCHMARKS.md.
//!
//! Every request is built outside the timed region (`iter_batched`), from one of [`N`]
//! precomputed bodies, so the caches and branch predictor see many distinct units. The service
//! is assembled as `allot_server::app::start` assembles it: a [`ConfigStore`] serving the
//! embedded demo config, [`Limits::default`], and a [`Metrics`] registry (the `track` middleware
//! and the per-cell counters run); no assignment log (off by default). `server/http_hello_floor`
//! drives a one-route axum router the same way, so the ratio to it is what allot adds over axum.

use std::hint::black_box;
use std::sync::Arc;

use allot::{Config, Context};
use allot_proto::allot::v1 as pb;
use allot_proto::allot::v1::allocator_server::Allocator;
use allot_proto::convert::json_map_to_struct;
use allot_server::grpc::{AllocatorService, allocator_routes, allocator_server};
use allot_server::http::router;
use allot_server::metrics::Metrics;
use allot_server::service::{Limits, Service};
use allot_server::source;
use allot_server::state::ConfigStore;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::routing::post;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use prost::Message;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

/// The server binary's global allocator (`server/src/main.rs`), so the handler path is measured
/// as it runs; the floor runs on it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Distinct request bodies rotated per iteration (a power of two so the index is a mask).
const N: usize = 1024;
const MASK: usize = N - 1;

/// Countries of the demo's conditions (`in [US, CA, SE]`, the `nordics` segment) and others.
const COUNTRIES: [&str; 8] = ["SE", "US", "DE", "CA", "GB", "NO", "SE", "FR"];
/// `tv` with `app_version >= 5.0.0` is the demo's `modern-tv` segment.
const PLATFORMS: [&str; 4] = ["ios", "android", "web", "tv"];

/// An incoming `baggage` header of 3 members (one with a property).
const BAGGAGE: &str = "userId=alice,tenant=acme;priority=high,sentry-environment=production";
/// A valid W3C `traceparent` (sampled).
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The OFREP bulk route.
const BULK: &str = "/ofrep/v1/evaluate/flags";

/// The fixed body of the floor's handler.
const HELLO: &str = r#"{"hello":"world"}"#;

/// Context `i`: units `member-{i}` and `device-{i}`, a country, a platform, an app version.
fn context(i: usize) -> Map<String, Value> {
    let json = json!({
        "targetingKey": format!("member-{i}"),
        "device_id": format!("device-{i}"),
        "country": COUNTRIES[i % COUNTRIES.len()],
        "platform": PLATFORMS[i % PLATFORMS.len()],
        "app_version": format!("{}.{}.{}", 4 + i % 3, i % 7, i % 5),
    });
    match json {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// [`N`] `{"context": {...}}` bodies.
fn http_bodies() -> Vec<Bytes> {
    (0..N)
        .map(|i| {
            let body = json!({ "context": Value::Object(context(i)) });
            Bytes::from(serde_json::to_vec(&body).expect("serializable"))
        })
        .collect()
}

/// [`N`] encoded `AllocateRequest` messages with the same contexts.
fn grpc_messages() -> Vec<Bytes> {
    (0..N)
        .map(|i| {
            let msg = pb::AllocateRequest {
                context: Some(json_map_to_struct(&context(i))),
            };
            Bytes::from(msg.encode_to_vec())
        })
        .collect()
}

/// [`N`] engine contexts with the same attributes.
fn contexts() -> Vec<Context> {
    (0..N).map(|i| Context::from(context(i))).collect()
}

/// The service as `app::start` builds it over the embedded demo config.
fn demo_service(metrics: bool) -> Service {
    service_over(
        &source::embedded().expect("the demo config parses"),
        metrics,
    )
}

/// [`demo_service`] with the assignment log on, written to `/dev/null` by its thread.
fn logged_service() -> Service {
    let options = allot_server::log::Options {
        target: allot_server::log::Target::File("/dev/null".into()),
        ttl: std::time::Duration::from_secs(3600),
        capacity: 1_000_000,
        queue: 65_536,
    };
    let metrics = Metrics::new();
    let (log, writer) = allot_server::log::open(&options, Some(metrics.clone())).expect("opens");
    // The writer runs until the process exits.
    std::mem::forget(writer);
    demo_service(false)
        .with_metrics(metrics)
        .with_assignment_log(log)
}

/// The 100-flag config of the load-test suite, from `scripts/gen-config.py flags` (so the
/// bench and `scripts/bench-server.sh` serve the same document).
fn hundred_flags_config() -> Config {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/gen-config.py");
    let out = std::process::Command::new("python3")
        .args([script, "flags"])
        .output()
        .expect("python3 runs scripts/gen-config.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = String::from_utf8(out.stdout).expect("UTF-8 JSON");
    Config::parse(&doc).expect("the 100-flag config parses")
}

/// The service as `app::start` builds it over `config`.
fn service_over(config: &Config, metrics: bool) -> Service {
    let store = Arc::new(ConfigStore::new());
    store
        .apply(config, None, None)
        .expect("the demo config compiles");
    let service = Service::new(store, Limits::default());
    if metrics {
        service.with_metrics(Metrics::new())
    } else {
        service
    }
}

/// `POST uri` with a JSON body and, if `traced`, a `baggage` and a `traceparent` header.
fn post_json(uri: &str, body: &Bytes, traced: bool) -> Request<Body> {
    let mut req = Request::builder().method("POST").uri(uri).header(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if traced {
        req = req
            .header("baggage", HeaderValue::from_static(BAGGAGE))
            .header("traceparent", HeaderValue::from_static(TRACEPARENT));
    }
    req.body(Body::from(body.clone())).expect("valid request")
}

/// One request through `router`: the status and the buffered response body.
async fn oneshot(router: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let res = router.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("in-memory body")
        .to_bytes();
    (status, body)
}

/// The floor: axum alone, one `POST /` route that buffers the body and answers fixed JSON.
fn hello_router() -> Router {
    Router::new().route(
        "/",
        post(|body: Bytes| async move {
            black_box(body);
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                HELLO,
            )
        }),
    )
}

/// The gRPC length-prefixed frame of `msg` (uncompressed).
fn grpc_frame(msg: &[u8]) -> Bytes {
    let len = u32::try_from(msg.len()).expect("small message");
    let mut framed = Vec::with_capacity(5 + msg.len());
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    Bytes::from(framed)
}

/// A unary `allot.v1.Allocator/Allocate` HTTP/2 request as tonic's server sees it.
/// One unary gRPC call per iteration through `svc` (the next of `frames`), its answer read to
/// the trailers.
fn unary_calls<S>(
    b: &mut criterion::Bencher<'_>,
    rt: &tokio::runtime::Runtime,
    frames: &[Bytes],
    svc: &S,
) where
    S: tower::Service<
            axum::http::Request<Full<Bytes>>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone,
{
    let mut i = 0usize;
    b.to_async(rt).iter_batched(
        || {
            i = i.wrapping_add(1);
            grpc_request(&frames[i & MASK])
        },
        |req| {
            let svc = svc.clone();
            async move {
                let res = svc.oneshot(black_box(req)).await.expect("infallible");
                res.into_body().collect().await.expect("in-memory body")
            }
        },
        BatchSize::SmallInput,
    );
}

fn grpc_request(framed: &Bytes) -> axum::http::Request<Full<Bytes>> {
    axum::http::Request::builder()
        .method("POST")
        .uri("/allot.v1.Allocator/Allocate")
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        )
        .header("te", HeaderValue::from_static("trailers"))
        .body(Full::new(framed.clone()))
        .expect("valid request")
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bodies = http_bodies();
    let messages = grpc_messages();
    let ctxs = contexts();

    let service = demo_service(true);
    let app = router(service.clone());
    // One single-flag OFREP URI per flag of the demo config, rotated per iteration.
    let single_uris: Vec<String> = service
        .store()
        .load_full()
        .expect("a config is loaded")
        .flag_keys()
        .map(|k| format!("/ofrep/v1/evaluate/flags/{k}"))
        .collect();
    let bare_app = router(demo_service(false));
    let hundred = router(service_over(&hundred_flags_config(), true));
    let hello = hello_router();

    // Every path answers successfully before anything is timed.
    rt.block_on(async {
        for traced in [false, true] {
            let (status, body) = oneshot(&app, post_json("/v1/allocate", &bodies[0], traced)).await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            let v: Value = serde_json::from_slice(&body).expect("JSON response");
            assert!(v["flags"]["prefetch"].is_object(), "{v}");
            if !traced {
                eprintln!(
                    "server/http_allocate_demo: response body {} bytes",
                    body.len()
                );
            }
        }
        let (status, body) = oneshot(&hello, post_json("/", &bodies[0], false)).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, HELLO.as_bytes()));
        // OFREP: every flag of the demo evaluates for the bench contexts (they carry both
        // units), and the bulk answer lists them all.
        for (i, uri) in single_uris.iter().enumerate() {
            let (status, body) = oneshot(&app, post_json(uri, &bodies[i], false)).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{uri}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let (status, body) = oneshot(&app, post_json(BULK, &bodies[0], false)).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).expect("JSON response");
        assert_eq!(v["flags"].as_array().map(Vec::len), Some(single_uris.len()));
        assert!(v["flags"][0]["value"].is_boolean(), "{v}");
        eprintln!("server/ofrep_bulk_demo: response body {} bytes", body.len());
        let (status, body) = oneshot(&hundred, post_json(BULK, &bodies[0], false)).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).expect("JSON response");
        assert_eq!(v["flags"].as_array().map(Vec::len), Some(100));
        assert!(v["flags"][99]["value"].is_boolean(), "{v}");
        eprintln!(
            "server/ofrep_bulk_100_flags: response body {} bytes",
            body.len()
        );
    });

    let mut g = c.benchmark_group("server");
    g.bench_function("http_hello_floor", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter_batched(
            || {
                i = i.wrapping_add(1);
                post_json("/", &bodies[i & MASK], false)
            },
            |req| oneshot(&hello, black_box(req)),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("http_allocate_demo", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter_batched(
            || {
                i = i.wrapping_add(1);
                post_json("/v1/allocate", &bodies[i & MASK], false)
            },
            |req| oneshot(&app, black_box(req)),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("http_allocate_demo_with_baggage", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter_batched(
            || {
                i = i.wrapping_add(1);
                post_json("/v1/allocate", &bodies[i & MASK], true)
            },
            |req| oneshot(&app, black_box(req)),
            BatchSize::SmallInput,
        );
    });

    // OFREP on the same router: one flag (keys and contexts rotating), and the bulk answer.
    g.bench_function("ofrep_single_demo", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter_batched(
            || {
                i = i.wrapping_add(1);
                post_json(
                    &single_uris[i % single_uris.len()],
                    &bodies[i & MASK],
                    false,
                )
            },
            |req| oneshot(&app, black_box(req)),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("ofrep_bulk_demo", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter_batched(
            || {
                i = i.wrapping_add(1);
                post_json(BULK, &bodies[i & MASK], false)
            },
            |req| oneshot(&app, black_box(req)),
            BatchSize::SmallInput,
        );
    });

    // Issue 7's bulk target: OFREP bulk over the 100-flag config of the load-test suite.
    g.bench_function("ofrep_bulk_100_flags", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter_batched(
            || {
                i = i.wrapping_add(1);
                post_json(BULK, &bodies[i & MASK], false)
            },
            |req| oneshot(&hundred, black_box(req)),
            BatchSize::SmallInput,
        );
    });

    // gRPC without a socket, including protobuf: decode the request message with prost, call the
    // `Allocator::allocate` trait method, encode the response message. Excluded: tonic's
    // framing, compression checks and HTTP/2 (see `grpc_allocate_demo_tonic`). This is the
    // reference path (prost messages built per call); the port serves `Allocate` through
    // `grpc::allocator_routes` (`grpc_allocate_demo_tonic`).
    let (_stop, stop_rx) = watch::channel(false);
    let grpc = AllocatorService::new(service.clone(), stop_rx.clone());
    g.bench_function("grpc_allocate_demo_service", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter_batched(
            || {
                i = i.wrapping_add(1);
                messages[i & MASK].clone()
            },
            |bytes| {
                let grpc = &grpc;
                async move {
                    let msg = pb::AllocateRequest::decode(black_box(bytes)).expect("valid");
                    let res = grpc
                        .allocate(tonic::Request::new(msg))
                        .await
                        .expect("allocates");
                    res.into_inner().encode_to_vec()
                }
            },
            BatchSize::SmallInput,
        );
    });

    // The served `Allocate` minus the socket and HTTP/2: `grpc::allocator_routes` (what the gRPC
    // port serves) as a tower service given a framed unary request; the response is read to its
    // trailers. tonic's unary path with allot's codec: the context decoded from the request
    // bytes, the answer written from the per-revision protobuf fragments (`allot_server::protobuf`).
    let tonic_svc = allocator_routes(service.clone(), stop_rx.clone());
    // The generated `AllocatorServer` over the same service: tonic's unary path, prost
    // messages built per call (the reference the served path is tested against).
    let generated_svc = allocator_server(service.clone(), stop_rx);
    rt.block_on(async {
        for res in [
            tonic_svc
                .clone()
                .oneshot(grpc_request(&grpc_frame(&messages[0])))
                .await
                .expect("infallible"),
            generated_svc
                .clone()
                .oneshot(grpc_request(&grpc_frame(&messages[0])))
                .await
                .expect("infallible"),
        ] {
            let collected = res.into_body().collect().await.expect("in-memory body");
            let status = collected.trailers().and_then(|t| t.get("grpc-status"));
            assert_eq!(status.map(HeaderValue::as_bytes), Some(&b"0"[..]));
            let body = collected.to_bytes();
            let answer = pb::AllocateResponse::decode(&body[5..]).expect("an answer");
            assert_eq!(answer.flags.len(), 11);
        }
    });
    let frames: Vec<Bytes> = messages.iter().map(|m| grpc_frame(m)).collect();
    g.bench_function("grpc_allocate_demo_tonic", |b| {
        unary_calls(b, &rt, &frames, &tonic_svc);
    });

    // The service alone: no transport, the view serialized as the HTTP handler does.
    g.bench_function("service_allocate_demo", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            service
                .allocate(black_box(ctx), &[], &[], |view| serde_json::to_vec(view))
                .expect("allocates")
                .expect("serializes")
        });
    });
    // The assignment log's cost on the request path (issue 7: p99 with the log within 1.1× of
    // without): the same service call with the log on, for a unit never seen before on every
    // call (a fresh server: each call queues a line) and for units seen already (each call only
    // checks the dedup cache). The writer thread writes to /dev/null on the other core.
    // `service_allocate_demo_fresh_units` is the same call with the log off, the baseline.
    let fresh = |b: &mut criterion::Bencher<'_>, service: &Service| {
        let mut i = 1usize << 40;
        b.iter_batched(
            || {
                i = i.wrapping_add(1);
                Context::from(context(i))
            },
            |ctx| {
                service
                    .allocate(black_box(&ctx), &[], &[], |view| view.flags.len())
                    .expect("allocates")
            },
            BatchSize::SmallInput,
        );
    };
    let logged = logged_service();
    g.bench_function("service_allocate_demo_fresh_units", |b| fresh(b, &service));
    g.bench_function("service_allocate_demo_log_new_units", |b| fresh(b, &logged));
    g.bench_function("service_allocate_demo_log_seen_units", |b| {
        let mut i = 0usize;
        b.iter_batched(
            || {
                i = i.wrapping_add(1);
                ctxs[i & MASK].clone()
            },
            |ctx| {
                logged
                    .allocate(black_box(&ctx), &[], &[], |view| view.flags.len())
                    .expect("allocates")
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();

    // Diagnostics, not targets.
    let mut g = c.benchmark_group("server_diag");
    // The HTTP path with no `Metrics` attached (no `track` timing, no per-cell counters): the
    // gap to `server/http_allocate_demo` is what metrics cost per request.
    g.bench_function("http_allocate_demo_no_metrics", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter_batched(
            || {
                i = i.wrapping_add(1);
                post_json("/v1/allocate", &bodies[i & MASK], false)
            },
            |req| oneshot(&bare_app, black_box(req)),
            BatchSize::SmallInput,
        );
    });
    // `Allocate` through the generated `AllocatorServer` (tonic's unary path, prost messages
    // built per call), as the gRPC port served it before `grpc::allocator_routes`: the gap to
    // `server/grpc_allocate_demo_tonic` is what the codec and the dispatch save.
    g.bench_function("grpc_allocate_demo_generated", |b| {
        unary_calls(b, &rt, &frames, &generated_svc);
    });
    // JSON decode of the body into a `Context` alone (what the handler does before allocating).
    g.bench_function("json_decode_context", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let body = &bodies[i & MASK];
            i = i.wrapping_add(1);
            let v: Value = serde_json::from_slice(black_box(body)).expect("JSON");
            allot_server::http::context_of(v).expect("a context")
        });
    });
    // The same decode as the handler does it now: straight into the `Context`.
    g.bench_function("json_decode_context_typed", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let body = &bodies[i & MASK];
            i = i.wrapping_add(1);
            allot_server::http::allocate_context(black_box(body)).expect("a context")
        });
    });
    // Allocation + flag resolution + stamp, without serializing the view.
    g.bench_function("service_allocate_demo_no_encode", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            service
                .allocate(black_box(ctx), &[], &[], |view| view.flags.len())
                .expect("allocates")
        });
    });
    // The same with the JSON written into a buffer sized for the whole response: the gap to
    // `server/service_allocate_demo` is `serde_json::to_vec` growing its 128-byte start.
    g.bench_function("service_allocate_demo_presized", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            service
                .allocate(black_box(ctx), &[], &[], |view| {
                    let mut out = Vec::with_capacity(4096);
                    serde_json::to_writer(&mut out, view).map(|()| out)
                })
                .expect("allocates")
                .expect("serializes")
        });
    });
    // The view written as the handler writes it now: `Service::encode`, from the fragments
    // rendered once per revision (`allot_server::render`).
    g.bench_function("service_allocate_demo_render", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            service
                .allocate(black_box(ctx), &[], &[], |view| service.encode(view))
                .expect("allocates")
                .expect("serializes")
        });
    });
    g.finish();
}

criterion_group!(server, benches);
criterion_main!(server);
