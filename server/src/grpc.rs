//! gRPC transport (tonic) on the evaluation port: `allot.v1.Allocator`, the flagd evaluation
//! API ([`crate::flagd`], v1 and v2), `grpc.health.v1` and server reflection.
//!
//! This module only maps messages and metadata to [`Service`] calls and the views it returns
//! back to messages; it holds no allocation logic. Errors reach clients through
//! `From<ApiError> for tonic::Status`.
//!
//! `Allocate`, the hot method, is served by [`allocator_routes`]: `Dispatch` hands its calls
//! to it past axum's routing, and tonic's unary path runs it with a codec of our own
//! (`AllocateCodec`): the context is decoded straight from the request bytes and the answer
//! written from per-revision protobuf fragments ([`crate::protobuf`]), the same messages prost
//! would decode and encode (tests compare both).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::{Context, Resolution, Snapshot};
use allot_proto::allot::v1 as pb;
use allot_proto::allot::v1::allocator_server::{Allocator, AllocatorServer};
use allot_proto::convert::{json_to_prost_value, struct_to_json_map};
use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tower::Layer as _;

use crate::guard::{self, Guard};
use crate::listen::{self, HttpLimits, Listener};
use crate::metrics::Transport;
use crate::service::{AllocateView, RequestMeta, Service};

/// The metadata key of the W3C Baggage header.
pub const BAGGAGE: &str = "baggage";

/// The gRPC metadata key of the W3C Trace Context header.
pub const TRACEPARENT: &str = "traceparent";

/// Request metadata of `WatchConfig`: the content hash (16 lower-case hex digits) of the
/// config the caller holds. With it, the initial send is skipped only when both the revision
/// and the content match, so a caller is never left on a different config that happens to
/// carry the same revision number (an upstream restarted without its state).
pub const KNOWN_CONTENT_HASH: &str = "allot-known-content-hash";

/// Largest `allot.v1.Allocator` request accepted: 1 MiB, as on HTTP. Larger ones fail with
/// `OUT_OF_RANGE` before any decoding.
pub const MAX_MESSAGE: usize = 1 << 20;

/// How long a shutdown waits for in-flight calls and streams before `serve` returns anyway
/// (a client can hold a bidirectional reflection stream open indefinitely).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The `allot.v1.Allocator` implementation: a thin mapping onto [`Service`].
#[derive(Debug, Clone)]
pub struct AllocatorService {
    service: Service,
    /// Flips to `true` on server shutdown so that `WatchConfig` streams end and the graceful
    /// shutdown is not held open by them.
    shutdown: watch::Receiver<bool>,
}

/// Serves `allot.v1.Allocator`, `grpc.health.v1.Health` and reflection (v1 and v1alpha) on
/// `listener` (plaintext, with `TCP_NODELAY`, the default `--header-read-timeout` of 5 s and
/// header list limit of 32 KiB) until `shutdown` completes, then stops accepting and drains
/// in-flight calls for at most [`DRAIN_TIMEOUT`].
///
/// Health reports `NOT_SERVING` for the server (`""`) and `allot.v1.Allocator` until the
/// service's store holds a config, `SERVING` from then on, and `NOT_SERVING` again once
/// shutdown has begun. Open `WatchConfig` and health `Watch` streams end cleanly on shutdown,
/// so they do not hold the drain open.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = HttpLimits {
        header_read_timeout: Duration::from_secs(5),
        max_header_bytes: 32 * 1024,
        drain_timeout: DRAIN_TIMEOUT,
    };
    // No TLS, so no handshake to time out.
    let listener = Listener::new(listener, None, Duration::ZERO);
    serve_with(listener, service, &Guard::unlimited(), limits, shutdown).await
}

/// [`serve`] on `listener` (plain or TLS) with `limits`, every evaluation method behind `guard`
/// (client tokens, concurrency limit, deadline; health and reflection stay open, see
/// [`crate::guard`]).
///
/// Connections are served by [`listen::serve_grpc`] (hyper's HTTP/2 server over tonic's
/// routes) rather than by `tonic::transport::Server`, so that, as on the HTTP port, an HTTP/2
/// connection with no call in flight for `--header-read-timeout` (one that trickles its first
/// HEADERS, or stays idle between calls) is closed with a GOAWAY, while streams stay open as
/// long as they like. What tonic's server would add per connection is not needed here: the
/// guard enforces `grpc-timeout` on the evaluation methods (health checks and reflection
/// answer at once), every route is infallible, and no handler reads the peer's address.
pub async fn serve_with(
    listener: Listener,
    service: Service,
    guard: &Guard,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);

    let (reporter, _) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let health = HealthServer::new(DrainingHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        shutdown: stop_rx.clone(),
    });
    let readiness = tokio::spawn(report_readiness(
        reporter.clone(),
        service.clone(),
        stop_rx.clone(),
    ));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(allot_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the gRPC reflection service (v1)")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(allot_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the gRPC reflection service (v1alpha)")?;

    let signal = async move {
        shutdown.await;
        // Health first, so watchers see NOT_SERVING before their streams end.
        set_health(&reporter, ServingStatus::NotServing).await;
        let _ = stop_tx.send(true);
    };
    let allocator = allocator_routes(service.clone(), stop_rx.clone());
    let routes = Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(crate::flagd::v1_server(service.clone(), stop_rx.clone()))
        .add_service(crate::flagd::v2_server(service.clone(), stop_rx))
        .add_service(allocator.clone())
        .prepare();
    let routes = guard
        .layer::<guard::Grpc>(service.metrics().map(|m| &**m))
        .layer(Dispatch { allocator, routes });
    let result = listen::serve_grpc(listener, routes, limits, signal)
        .await
        .context("serving gRPC");
    readiness.abort();
    result
}

/// The `allot.v1.Allocator` service over `service`, for callers that assemble their own tonic
/// server. `shutdown` flipping to `true` ends open `WatchConfig` streams.
pub fn allocator_server(
    service: Service,
    shutdown: watch::Receiver<bool>,
) -> AllocatorServer<AllocatorService> {
    AllocatorServer::new(AllocatorService::new(service, shutdown))
        .max_decoding_message_size(MAX_MESSAGE)
}

/// The path of `allot.v1.Allocator/Allocate`.
pub const ALLOCATE_PATH: &str = "/allot.v1.Allocator/Allocate";

/// `allot.v1.Allocator` as [`serve_with`] serves it: [`allocator_server`], except that
/// `Allocate` decodes its context straight from the request bytes and writes its answer from
/// the per-revision fragments of [`crate::protobuf`] (the same message, see there), with the
/// same limits, compression settings and errors as the generated service.
pub fn allocator_routes(service: Service, shutdown: watch::Receiver<bool>) -> AllocatorRoutes {
    let service = Arc::new(AllocatorService::new(service, shutdown));
    AllocatorRoutes {
        inner: AllocatorServer::from_arc(service.clone()).max_decoding_message_size(MAX_MESSAGE),
        service,
    }
}

/// See [`allocator_routes`].
#[derive(Debug, Clone)]
pub struct AllocatorRoutes {
    service: Arc<AllocatorService>,
    inner: AllocatorServer<AllocatorService>,
}

impl tonic::server::NamedService for AllocatorRoutes {
    const NAME: &'static str =
        <AllocatorServer<AllocatorService> as tonic::server::NamedService>::NAME;
}

impl AllocatorRoutes {
    /// Answers one `Allocate` call (any other request: as the generated service would).
    pub async fn allocate<B>(
        self,
        req: axum::http::Request<B>,
    ) -> axum::http::Response<tonic::body::Body>
    where
        B: hyper::body::Body<Data = prost::bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        // As the generated service configures it: no compression either way, requests up to
        // `MAX_MESSAGE`.
        let mut grpc = tonic::server::Grpc::new(AllocateCodec)
            .apply_compression_config(Default::default(), Default::default())
            .apply_max_message_size_config(Some(MAX_MESSAGE), None);
        grpc.unary(AllocateMethod(self.service), req).await
    }
}

impl<B> tower::Service<axum::http::Request<B>> for AllocatorRoutes
where
    B: hyper::body::Body<Data = prost::bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        if req.uri().path() == ALLOCATE_PATH {
            let this = self.clone();
            Box::pin(async move { Ok(this.allocate(req).await) })
        } else {
            self.inner.call(req)
        }
    }
}

/// tonic's routes, with `Allocate` calls (`POST` to [`ALLOCATE_PATH`]) handed straight to
/// [`AllocatorRoutes::allocate`], without axum's routing (which would route them to the same
/// service): one route match, two extension inserts and two body boxings fewer per call. The
/// answer gets a `content-length` exactly when axum's route would add one (an empty,
/// trailers-only error answer: `0`).
#[derive(Debug, Clone)]
pub(crate) struct Dispatch<R> {
    allocator: AllocatorRoutes,
    routes: R,
}

impl<R, B> tower::Service<axum::http::Request<B>> for Dispatch<R>
where
    R: tower::Service<
            axum::http::Request<B>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        >,
    B: hyper::body::Body<Data = prost::bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = DispatchFuture<R::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.routes.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        if req.method() == axum::http::Method::POST && req.uri().path() == ALLOCATE_PATH {
            DispatchFuture::Allocate {
                fut: Box::pin(self.allocator.clone().allocate(req)),
            }
        } else {
            DispatchFuture::Routes {
                fut: self.routes.call(req),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Dispatch`].
    #[project = DispatchProj]
    pub(crate) enum DispatchFuture<F> {
        /// An `Allocate` call.
        Allocate {
            fut: std::pin::Pin<Box<dyn Future<Output = axum::http::Response<tonic::body::Body>> + Send>>,
        },
        /// Anything else, through tonic's routes.
        Routes {
            #[pin]
            fut: F,
        },
    }
}

impl<F> Future for DispatchFuture<F>
where
    F: Future<Output = Result<axum::http::Response<tonic::body::Body>, std::convert::Infallible>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            DispatchProj::Allocate { fut } => {
                let mut res = std::task::ready!(fut.as_mut().poll(cx));
                // As axum's `RouteFuture` does for every response of a route.
                let headers = res.headers_mut();
                if !headers.contains_key(axum::http::header::CONTENT_LENGTH)
                    && let Some(len) = hyper::body::Body::size_hint(res.body()).exact()
                {
                    res.headers_mut()
                        .insert(axum::http::header::CONTENT_LENGTH, len.into());
                }
                std::task::Poll::Ready(Ok(res))
            }
            DispatchProj::Routes { fut } => fut.poll(cx),
        }
    }
}

/// `Allocate` as a unary method of [`AllocateCodec`] messages.
struct AllocateMethod(Arc<AllocatorService>);

impl tonic::server::UnaryService<Context> for AllocateMethod {
    type Response = Vec<u8>;
    type Future = std::future::Ready<Result<Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: Request<Context>) -> Self::Future {
        std::future::ready(self.0.allocate_encoded(request))
    }
}

/// The codec of `Allocate` as [`allocator_routes`] serves it: requests decode to their
/// context ([`crate::protobuf::decode_allocate_context`]; errors as prost's codec reports
/// them), answers are already encoded `AllocateResponse`s.
#[derive(Debug, Clone, Copy, Default)]
struct AllocateCodec;

impl tonic::codec::Codec for AllocateCodec {
    type Encode = Vec<u8>;
    type Decode = Context;
    type Encoder = AllocateCodec;
    type Decoder = AllocateCodec;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl tonic::codec::Encoder for AllocateCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for AllocateCodec {
    type Item = Context;
    type Error = Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Context>, Status> {
        use prost::bytes::Buf as _;
        let len = buf.remaining();
        let decoded = if buf.chunk().len() == len {
            crate::protobuf::decode_allocate_context(buf.chunk())
        } else {
            crate::protobuf::decode_allocate_context(&buf.copy_to_bytes(len))
        };
        buf.advance(buf.remaining());
        // As tonic-prost reports a decode error.
        decoded
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Every `baggage` value of the request metadata, in order. Values that are not visible
/// ASCII are skipped (W3C Baggage is ASCII-only).
pub fn incoming_baggage(metadata: &MetadataMap) -> Vec<&str> {
    metadata
        .get_all(BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// Sets the response's `baggage` metadata to `header` (the merged header from
/// [`allot::stamp::merge`], which only emits baggage-safe ASCII).
pub fn set_baggage(metadata: &mut MetadataMap, header: &str) {
    match MetadataValue::try_from(header) {
        Ok(value) => {
            metadata.insert(BAGGAGE, value);
        }
        Err(_) => tracing::warn!(header, "merged baggage is not valid metadata; not sent"),
    }
}

/// The `ConfigUpdate` message announcing `snapshot`.
pub fn config_update(snapshot: &Snapshot) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        revision: snapshot.revision(),
        content_hash: format!("{:016x}", snapshot.content_hash()),
        config_json: snapshot.config().to_canonical_json(),
    }
}

// === impl AllocatorService ===

impl AllocatorService {
    /// The service; `shutdown` flipping to `true` ends open `WatchConfig` streams.
    pub fn new(service: Service, shutdown: watch::Receiver<bool>) -> Self {
        Self { service, shutdown }
    }

    /// Runs one evaluation: decodes the context, baggage and trace context, calls the service,
    /// and hands the view to `f`; the merged baggage header goes into the response metadata.
    /// Counts the call as `method` when the service has metrics.
    fn evaluate<T>(
        &self,
        method: &'static str,
        metadata: &MetadataMap,
        context: Option<prost_types::Struct>,
        keys: &[String],
        f: impl FnOnce(&AllocateView<'_>) -> T,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        // A missing context is an empty one: the service then names the missing unit.
        let ctx = Context::from(context.as_ref().map(struct_to_json_map).unwrap_or_default());
        self.evaluate_context(start, method, metadata, &ctx, keys, f)
    }

    /// `Allocate` as [`allocator_routes`] serves it: the context already decoded, the answer
    /// encoded from the render cache ([`crate::protobuf::encode_allocate`]).
    fn allocate_encoded(&self, request: Request<Context>) -> Result<Response<Vec<u8>>, Status> {
        let start = Instant::now();
        let (metadata, _, ctx) = request.into_parts();
        let service = &self.service;
        self.evaluate_context(start, "Allocate", &metadata, &ctx, &[], |view| {
            service
                .with_render(view.snapshot, |cache| {
                    crate::protobuf::encode_allocate(view, Some(cache))
                })
                .unwrap_or_else(|_| crate::protobuf::encode_allocate(view, None))
        })
    }

    fn evaluate_context<T>(
        &self,
        start: Instant,
        method: &'static str,
        metadata: &MetadataMap,
        ctx: &Context,
        keys: &[String],
        f: impl FnOnce(&AllocateView<'_>) -> T,
    ) -> Result<Response<T>, Status> {
        let incoming = incoming_baggage(metadata);
        let traceparent = metadata.get(TRACEPARENT).and_then(|v| v.to_str().ok());
        let result = self.service.allocate_with(
            ctx,
            keys,
            &incoming,
            RequestMeta::grpc(traceparent),
            |view| (f(view), view.baggage.clone()),
        );
        let result = result.map_err(Status::from).map(|(message, baggage)| {
            let mut response = Response::new(message);
            set_baggage(response.metadata_mut(), &baggage);
            response
        });
        if let Some(metrics) = self.service.metrics() {
            let code = result
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok);
            metrics.observe_request(Transport::Grpc, method, code as u16, start.elapsed());
        }
        result
    }
}

#[tonic::async_trait]
impl Allocator for AllocatorService {
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.evaluate(
            "Allocate",
            &metadata,
            message.context,
            &[],
            allocate_response,
        )
    }

    async fn resolve_flags(
        &self,
        request: Request<pb::ResolveFlagsRequest>,
    ) -> Result<Response<pb::ResolveFlagsResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.evaluate(
            "ResolveFlags",
            &metadata,
            message.context,
            &message.flag_keys,
            |view| pb::ResolveFlagsResponse {
                revision: view.snapshot.revision(),
                flags: flag_map(&view.flags),
                baggage: view.member(),
            },
        )
    }

    type WatchConfigStream = ReceiverStream<Result<pb::ConfigUpdate, Status>>;

    async fn watch_config(
        &self,
        request: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let known = Known {
            revision: request.get_ref().known_revision,
            content_hash: request
                .metadata()
                .get(KNOWN_CONTENT_HASH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let updates = self.service.store().subscribe();
        // Small: the watch channel coalesces, so a slow reader only ever misses superseded
        // configs, never the latest one.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(stream_updates(updates, known, tx, self.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Feeds one `WatchConfig` stream: the current config (unless the caller holds its revision),
/// then every accepted config, until the client goes away or the server shuts down.
async fn stream_updates(
    mut updates: watch::Receiver<Option<Arc<Snapshot>>>,
    known: Known,
    tx: mpsc::Sender<Result<pb::ConfigUpdate, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut initial = true;
    loop {
        let current = updates.borrow_and_update().clone();
        if let Some(snapshot) = current {
            let update = config_update(&snapshot);
            if !(initial && known.matches(&update)) {
                tokio::select! {
                    sent = tx.send(Ok(update)) => if sent.is_err() { return },
                    () = stopped(&mut shutdown) => return,
                }
            }
        }
        initial = false;
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// `grpc.health.v1.Health` whose `Watch` streams end on server shutdown (tonic-health's own
/// never end, which would hold a graceful shutdown open).
struct DrainingHealth {
    inner: HealthService,
    shutdown: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(until_shutdown(stream, self.shutdown.clone())))
    }
}

/// Forwards `stream` until it ends, the client goes away, or the server shuts down.
fn until_shutdown<S>(stream: S, mut shutdown: watch::Receiver<bool>) -> ReceiverStream<S::Item>
where
    S: Stream + Send + 'static,
    S::Item: Send,
{
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        tokio::pin!(stream);
        loop {
            tokio::select! {
                // Items already produced (NOT_SERVING on shutdown) go out before the stream ends.
                biased;
                item = stream.next() => match item {
                    Some(item) => if tx.send(item).await.is_err() { return },
                    None => return,
                },
                () = tx.closed() => return,
                () = stopped(&mut shutdown) => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// What a `WatchConfig` caller says it holds.
struct Known {
    revision: u64,
    content_hash: Option<String>,
}

impl Known {
    /// Whether the caller already holds `update` (no hash given: the revision decides).
    fn matches(&self, update: &pb::ConfigUpdate) -> bool {
        self.revision == update.revision
            && self
                .content_hash
                .as_deref()
                .is_none_or(|h| h == update.content_hash)
    }
}

/// Completes once `shutdown` is `true`, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Reports `SERVING` once the store holds a config (it never becomes empty again).
async fn report_readiness(
    reporter: HealthReporter,
    service: Service,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut updates = service.store().subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if updates.borrow_and_update().is_some() {
            set_health(&reporter, ServingStatus::Serving).await;
            return;
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            () = stopped(&mut shutdown) => return,
        }
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <AllocatorServer<AllocatorService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// The `AllocateResponse` of `view`, built message by message: the reference of
/// [`crate::protobuf::encode_allocate`], which [`allocator_routes`] serves.
pub fn allocate_response(view: &AllocateView<'_>) -> pb::AllocateResponse {
    pb::AllocateResponse {
        revision: view.snapshot.revision(),
        allocations: view
            .allocation
            .assignments()
            .iter()
            .map(|a| pb::Allocation {
                layer: a.layer.to_owned(),
                experiment: a.experiment.to_owned(),
                cell: a.cell.to_owned(),
                bucket: a.bucket,
            })
            .collect(),
        holdouts: view
            .allocation
            .holdouts()
            .iter()
            .map(|h| (*h).to_owned())
            .collect(),
        flags: flag_map(&view.flags),
        baggage: view.member(),
    }
}

fn flag_map(flags: &[Resolution<'_>]) -> std::collections::HashMap<String, pb::FlagResolution> {
    flags
        .iter()
        .map(|r| (r.key.to_owned(), flag_resolution(r)))
        .collect()
}

/// One flag as on HTTP: the value is always the served one (the default variant's on error).
pub(crate) fn flag_resolution(r: &Resolution<'_>) -> pb::FlagResolution {
    let (experiment, cell, layer) = r.assignment.map_or_else(Default::default, |a| {
        (
            a.experiment.to_owned(),
            a.cell.to_owned(),
            a.layer.to_owned(),
        )
    });
    pb::FlagResolution {
        value: Some(json_to_prost_value(r.value)),
        variant: r.variant.to_owned(),
        reason: r.reason.as_str().to_owned(),
        experiment,
        cell,
        layer,
        error_code: match (r.reason, r.error) {
            (allot::Reason::Error, Some(code)) => code.as_str().to_owned(),
            _ => String::new(),
        },
    }
}
