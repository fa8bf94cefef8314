//! The load generator's measurement properties, against fake servers on `127.0.0.1:0`:
//! open-loop latency counts queueing behind a stall (no coordinated omission), and every gRPC
//! response's status is checked.

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

/// An `allot.v1.Allocator` that fails every 10th `Allocate` with `INTERNAL`.
#[derive(Default)]
struct FlakyAllocator {
    calls: AtomicU64,
}

#[tonic::async_trait]
impl Allocator for FlakyAllocator {
    async fn allocate(
        &self,
        _: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(10) {
            return Err(Status::internal("every tenth call fails"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_of_every_response_is_checked() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AllocatorServer::new(FlakyAllocator::default()))
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
