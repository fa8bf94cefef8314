//! `allot-hello`: the hello-world floor for server benchmarks (issue 7).
//!
//! An axum server with one handler, `POST /v1/allocate`, that ignores its body and answers a
//! fixed `{"revision":1}`, built and served the way allot-server serves its evaluation port
//! (axum 0.8, TCP_NODELAY, multi-threaded tokio). Measured in the same run as allot-server, it
//! shows what HTTP and the runtime cost on this machine, so allot's own cost is the difference.
//!
//! With `--grpc-addr` it also serves the gRPC floor: `allot.v1.Allocator/Allocate` on tonic
//! (as allot-server serves gRPC, TCP_NODELAY), ignoring the request beyond decoding it and
//! answering `{revision: 1}`. It shows what tonic and HTTP/2 cost, and that the load
//! generator can drive a gRPC server at the rate (the floor's own latency is the generator's
//! plus the kernel's).

use std::net::SocketAddr;

/// The same allocator as allot-server's, so the floor's CPU per request and allot's differ
/// only by what allot does, not by which malloc serves the HTTP stack.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use allot_proto::allot::v1 as pb;
use allot_proto::allot::v1::allocator_server::{Allocator, AllocatorServer};
use anyhow::Context as _;
use axum::Router;
use axum::http::header;
use axum::routing::post;
use axum::serve::ListenerExt;
use clap::Parser;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Hello-world HTTP floor for allot server benchmarks")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8016")]
    addr: SocketAddr,

    /// Also serve the gRPC floor (`allot.v1.Allocator/Allocate`) on this address.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
}

/// `Allocate` answers `{revision: 1}`; the other methods are not served.
struct HelloAllocator;

#[tonic::async_trait]
impl Allocator for HelloAllocator {
    async fn allocate(
        &self,
        _: tonic::Request<pb::AllocateRequest>,
    ) -> Result<tonic::Response<pb::AllocateResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::AllocateResponse {
            revision: 1,
            ..pb::AllocateResponse::default()
        }))
    }

    async fn resolve_flags(
        &self,
        _: tonic::Request<pb::ResolveFlagsRequest>,
    ) -> Result<tonic::Response<pb::ResolveFlagsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("hello-world floor"))
    }

    type WatchConfigStream = tonic::codegen::BoxStream<pb::ConfigUpdate>;

    async fn watch_config(
        &self,
        _: tonic::Request<pb::WatchConfigRequest>,
    ) -> Result<tonic::Response<Self::WatchConfigStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("hello-world floor"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new().route(
        "/v1/allocate",
        post(|| async {
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"revision":1}"#,
            )
        }),
    );
    if let Some(addr) = args.grpc_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!("allot-hello gRPC listening on {addr}");
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AllocatorServer::new(HelloAllocator))
                .serve_with_incoming(incoming),
        );
    }
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    eprintln!("allot-hello listening on {}", args.addr);
    // Same as allot-server: Nagle off on every accepted connection.
    let listener = listener.tap_io(|s| {
        let _ = s.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
