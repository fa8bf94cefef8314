//! `allot::tower::StampLayer` on a tonic client: the stamp in a `tonic::Request`'s extensions
//! reaches the server as the first member of the `baggage` metadata, the caller's members kept
//! and a forged `allot` member replaced; the layer's default covers requests without one.

use std::time::Duration;

use allot::tower::{Stamp, StampLayer};
use allot_proto::allot::v1::allocator_client::AllocatorClient;
use allot_proto::allot::v1::allocator_server::{Allocator, AllocatorServer};
use allot_proto::allot::v1::{
    AllocateRequest, AllocateResponse, ConfigUpdate, ResolveFlagsRequest, ResolveFlagsResponse,
    WatchConfigRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tower::ServiceBuilder;

/// Answers every `Allocate` with an error whose message is the `baggage` metadata it received.
struct Echo;

#[tonic::async_trait]
impl Allocator for Echo {
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let all: Vec<&str> = request
            .metadata()
            .get_all("baggage")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Err(Status::failed_precondition(all.join("|")))
    }

    async fn resolve_flags(
        &self,
        _: Request<ResolveFlagsRequest>,
    ) -> Result<Response<ResolveFlagsResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    type WatchConfigStream = ReceiverStream<Result<ConfigUpdate, Status>>;

    async fn watch_config(
        &self,
        _: Request<WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

#[tokio::test]
async fn stamp_layer_sets_baggage_metadata_on_tonic_calls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AllocatorServer::new(Echo))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(StampLayer::with_default("1.1.fallback~x"))
        .service(channel);
    let mut client = AllocatorClient::new(stack);

    let call = |stamp: Option<&str>, baggage: Option<&str>| {
        let mut request = Request::new(AllocateRequest { context: None });
        if let Some(s) = stamp {
            request.extensions_mut().insert(Stamp(s.to_owned()));
        }
        if let Some(b) = baggage {
            request
                .metadata_mut()
                .insert("baggage", MetadataValue::try_from(b).unwrap());
        }
        request
    };
    let echoed = |result: Result<Response<AllocateResponse>, Status>| {
        let status = result.expect_err("the echo server answers with a status");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        status.message().to_owned()
    };

    let got = echoed(
        client
            .allocate(call(
                Some("1.42.prefetch~treatment.ranker~b"),
                Some("userId=alice,allot=1.9.forged~x"),
            ))
            .await,
    );
    assert_eq!(got, "allot=1.42.prefetch~treatment.ranker~b,userId=alice");
    let got = echoed(client.allocate(call(None, None)).await);
    assert_eq!(got, "allot=1.1.fallback~x");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
