//! The load generator's measurement properties, against fake servers on `127.0.0.1:0`:
//! open-loop latency counts queueing behind a stall (no coordinated omission), every gRPC
//! response's status is checked, and shed answers are counted and timed apart from admitted
//! ones. The only latency bounds are lower bounds the fakes cause by sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use allot_loadtest::{Config, Protocol, Report};
use allot_proto::allot::v1::allocator_server::{Allocator, AllocatorServer};
use allot_proto::allot::v1::{
    AllocateRequest, AllocateResponse, ConfigUpdate, ResolveFlagsRequest, ResolveFlagsResponse,
    WatchConfigRequest,
};
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// The request (counted from 1) that the stalling server holds.
const STALLED: u64 = 100;
const STALL: Duration = Duration::from_millis(50);

/// An HTTP server that answers `{"revision": 1}` at once, except that it sleeps [`STALL`] on
/// request number [`STALLED`].
async fn stalling_server() -> String {
    let seen = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/v1/allocate",
        post(move || {
            let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                if n == STALLED {
                    tokio::time::sleep(STALL).await;
                }
                axum::Json(serde_json::json!({ "revision": 1 }))
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn share_at_or_above(report: &Report, latency: Duration) -> f64 {
    report.count_at_or_above(latency) as f64 / report.total as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_queueing_behind_a_stall() {
    let config = Config {
        url: stalling_server().await,
        protocol: Protocol::Http,
        rate: Some(1000.0),
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        connections: 1,
        ..Config::default()
    };
    let open = allot_loadtest::run(config.clone()).await.unwrap();
    eprintln!("{open}");
    assert_eq!(open.errors, 0, "{:?}", open.errors_by_kind);
    assert!(
        open.latency_at(1.0) >= STALL,
        "max {:?}",
        open.latency_at(1.0)
    );
    // The stalled request itself waited 50 ms, and the one scheduled 1 ms after it about
    // 49 ms: with ~1,000 requests, p99.9 is the second slowest, so it is at least ~40 ms
    // whatever else the machine does.
    assert!(
        open.latency_us.p99_9 >= 40_000,
        "p99.9 {} µs: the stall is hidden",
        open.latency_us.p99_9
    );
    // About 50 requests were scheduled during the stall; measured from their scheduled times,
    // the first 40 of them waited at least 10 ms: that is 4% of the run, so p98 shows it.
    assert!(
        open.latency_at(0.98) >= Duration::from_millis(10),
        "p98 {:?}: the stall's queue is hidden",
        open.latency_at(0.98)
    );

    // Closed loop on a fresh server: only the stalled request itself is slow; the requests
    // that would have been sent meanwhile are simply not sent, so the stall nearly vanishes.
    let closed = allot_loadtest::run(Config {
        url: stalling_server().await,
        rate: None,
        duration: Duration::from_millis(500),
        ..config
    })
    .await
    .unwrap();
    eprintln!("{closed}");
    assert_eq!(closed.errors, 0, "{:?}", closed.errors_by_kind);
    assert!(closed.latency_at(1.0) >= STALL);
    let slow = Duration::from_millis(10);
    assert!(
        share_at_or_above(&closed, slow) < share_at_or_above(&open, slow),
        "closed loop {} vs open loop {} of requests >= 10 ms",
        share_at_or_above(&closed, slow),
        share_at_or_above(&open, slow)
    );
}

/// An `allot.v1.Allocator` that fails every 10th `Allocate` with `code`.
struct FlakyAllocator {
    calls: AtomicU64,
    code: tonic::Code,
}

#[tonic::async_trait]
impl Allocator for FlakyAllocator {
    async fn allocate(
        &self,
        _: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(10) {
            return Err(Status::new(self.code, "every tenth call fails"));
        }
        Ok(Response::new(AllocateResponse {
            revision: 1,
            ..AllocateResponse::default()
        }))
    }

    async fn resolve_flags(
        &self,
        _: Request<ResolveFlagsRequest>,
    ) -> Result<Response<ResolveFlagsResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type WatchConfigStream = tonic::codegen::BoxStream<ConfigUpdate>;

    async fn watch_config(
        &self,
        _: Request<WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

/// Runs 500 req/s of gRPC `Allocate` for a second against a [`FlakyAllocator`] failing with
/// `code`.
async fn run_flaky(code: tonic::Code) -> Report {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let allocator = FlakyAllocator {
        calls: AtomicU64::new(0),
        code,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AllocatorServer::new(allocator))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let report = allot_loadtest::run(Config {
        url,
        protocol: Protocol::Grpc,
        rate: Some(500.0),
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        connections: 2,
        ..Config::default()
    })
    .await
    .unwrap();
    eprintln!("{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_of_every_response_is_checked() {
    let report = run_flaky(tonic::Code::Internal).await;
    assert_eq!(report.shed, 0);
    let internal = report.errors_by_kind.get("grpc_Internal").copied();
    assert_eq!(
        report.errors_by_kind.len(),
        1,
        "only INTERNAL failures: {:?}",
        report.errors_by_kind
    );
    // The server fails calls 10, 20, ...: exactly a tenth of the calls it saw.
    let internal = internal.unwrap();
    assert!(
        internal.abs_diff(report.total / 10) <= 1,
        "{internal} INTERNAL of {}",
        report.total
    );
    assert_eq!(report.ok + internal, report.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_is_shed_not_an_error() {
    let report = run_flaky(tonic::Code::ResourceExhausted).await;
    assert_eq!(report.errors, 0, "{:?}", report.errors_by_kind);
    let shed = report.shed_by_kind.get("grpc_ResourceExhausted").copied();
    assert_eq!(report.shed_by_kind.len(), 1, "{:?}", report.shed_by_kind);
    let shed = shed.unwrap();
    assert_eq!(shed, report.shed);
    assert!(
        shed.abs_diff(report.total / 10) <= 1,
        "{shed} shed of {}",
        report.total
    );
    assert_eq!(report.ok + shed, report.total);
    assert!(report.shed_latency_us.is_some());
}

/// How long the shedding server takes over an admitted request.
const ADMITTED_WORK: Duration = Duration::from_millis(20);

/// An HTTP server that sheds three requests of every four at once (503 and 429 in turn) and
/// answers the fourth after [`ADMITTED_WORK`].
async fn shedding_server() -> String {
    let seen = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/v1/allocate",
        post(move || {
            let n = seen.fetch_add(1, Ordering::Relaxed);
            async move {
                match n % 4 {
                    0 => {
                        tokio::time::sleep(ADMITTED_WORK).await;
                        axum::Json(serde_json::json!({ "revision": 1 })).into_response()
                    }
                    1 => StatusCode::TOO_MANY_REQUESTS.into_response(),
                    _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_answers_have_their_own_latency() {
    let report = allot_loadtest::run(Config {
        url: shedding_server().await,
        rate: Some(200.0),
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        connections: 4,
        ..Config::default()
    })
    .await
    .unwrap();
    eprintln!("{report}");
    assert_eq!(report.errors, 0, "{:?}", report.errors_by_kind);
    let (s429, s503) = (
        report.shed_by_kind["http_status_429"],
        report.shed_by_kind["http_status_503"],
    );
    assert_eq!(report.shed, s429 + s503);
    assert_eq!(report.ok + report.shed, report.total);
    // The server counts requests in arrival order and the client sends them in scheduled
    // order, so the split is exact up to the last few in flight at the end.
    assert!(report.ok.abs_diff(report.total / 4) <= 4, "{report:?}");
    assert!(s503.abs_diff(report.total / 2) <= 4, "{report:?}");
    // Admitted requests all slept 20 ms. Were the (three times as many) shed answers mixed
    // into the same percentiles, the median would be a shed one.
    assert!(
        report.latency_us.p50 >= ADMITTED_WORK.as_micros() as u64,
        "admitted p50 {} µs",
        report.latency_us.p50
    );
    let shed = report.shed_latency_us.unwrap();
    assert!(shed.max >= shed.p50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_cannot_hang_the_run() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (duration, grace) = (Duration::from_millis(500), Duration::from_millis(500));
    let started = std::time::Instant::now();
    let report = allot_loadtest::run(Config {
        url,
        rate: Some(100.0),
        duration,
        warmup: Duration::ZERO,
        connections: 2,
        grace,
        ..Config::default()
    })
    .await
    .unwrap();
    eprintln!("{report}");
    // Bounded by the window plus the grace period (and the join slack), not by the timeout.
    assert!(
        started.elapsed() < duration + grace + Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.total, 50);
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors_by_kind.get("timeout"), Some(&50));
}
