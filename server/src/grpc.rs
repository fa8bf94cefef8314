//! gRPC transport (tonic) on the evaluation port: `allot.v1.Allocator`, the flagd evaluation
//! API ([`crate::flagd`], v1 and v2), `grpc.health.v1` and server reflection.
//!
//! This module only maps messages and metadata to [`Service`] calls and the views it returns
//! back to messages; it holds no allocation logic. Errors reach clients through
//! `From<ApiError> for tonic::Status`.
//!
//! `Allocate`, the hot method, is served by [`allocator_routes`]: `Dispatch` hands its calls
//! to it past axum's routing, a plain call (one uncompressed message, no `grpc-encoding`, no
//! trailers) is answered without tonic's streaming codec, the context is decoded straight from
//! the request bytes and the answer written from per-revision protobuf fragments
//! ([`crate::protobuf`]). The answer is tonic's to the byte (tests compare both paths); every
//! other call, and every odd request, takes tonic's own path.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::{Context, Resolution, Snapshot};
use allot_proto::allot::v1 as pb;
use allot_proto::allot::v1::allocator_server::{Allocator, AllocatorServer};
use allot_proto::convert::{json_to_prost_value, struct_to_json_map};
use anyhow::Context as _;
use hyper::body::Frame;
use prost::bytes::Bytes;
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
    /// Answers one `Allocate` call as the generated service would, byte for byte. A plain
    /// call (no `grpc-encoding`, a body of exactly one uncompressed message of at most
    /// [`MAX_MESSAGE`] bytes, no trailers) is answered here: its one message decoded, the
    /// answer as one DATA frame and the `grpc-status: 0` trailers, as tonic's unary path writes
    /// them. Anything else (and every error from the body) goes through tonic's unary path, the
    /// body frames already read replayed first.
    pub async fn allocate<B>(
        self,
        req: axum::http::Request<B>,
    ) -> axum::http::Response<tonic::body::Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        if req.headers().contains_key(GRPC_ENCODING) {
            return self.allocate_with_tonic(req).await;
        }
        let (parts, mut body) = req.into_parts();
        let mut frames: Vec<Frame<Bytes>> = Vec::new();
        let mut read = 0;
        let mut error = None;
        let mut ended = false;
        loop {
            match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
                None => {
                    ended = true;
                    break;
                }
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    frames.push(frame);
                    if read > crate::protobuf::FRAME_HEADER + MAX_MESSAGE {
                        break;
                    }
                }
                Some(Err(e)) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let message = if ended { plain_message(&frames) } else { None };
        let Some(message) = message else {
            let body = Replay {
                frames: frames.into(),
                error,
                inner: (!ended).then_some(body),
            };
            return self
                .allocate_with_tonic(axum::http::Request::from_parts(parts, body))
                .await;
        };
        let context = match crate::protobuf::decode_allocate_context(&message) {
            Ok(context) => context,
            // As tonic-prost reports a decode error.
            Err(e) => return Status::internal(e.to_string()).into_http(),
        };
        let metadata = MetadataMap::from_headers(parts.headers);
        let request = Request::from_parts(metadata, parts.extensions, context);
        match self.service.allocate_encoded(request) {
            Ok(response) => {
                // As tonic's `Response::into_http`, then `Grpc::map_response`.
                let (metadata, framed, extensions) = response.into_parts();
                let mut res = axum::http::Response::new(tonic::body::Body::new(Unary {
                    data: Some(Bytes::from(framed)),
                    trailers: true,
                }));
                *res.version_mut() = axum::http::Version::HTTP_2;
                *res.headers_mut() = metadata.into_headers();
                *res.extensions_mut() = extensions;
                res.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/grpc"),
                );
                res
            }
            Err(status) => status.into_http(),
        }
    }

    /// [`AllocatorRoutes::allocate`] through tonic's unary path.
    async fn allocate_with_tonic<B>(
        self,
        req: axum::http::Request<B>,
    ) -> axum::http::Response<tonic::body::Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
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

/// The `grpc-encoding` request header.
const GRPC_ENCODING: &str = "grpc-encoding";

/// The one message of a plain unary request body (see [`AllocatorRoutes::allocate`]): only
/// DATA frames, together exactly one uncompressed length-prefixed message of at most
/// [`MAX_MESSAGE`] bytes.
fn plain_message(frames: &[Frame<Bytes>]) -> Option<Bytes> {
    let header = crate::protobuf::FRAME_HEADER;
    let body = match frames {
        [one] => one.data_ref()?.clone(),
        _ => {
            let mut all = Vec::new();
            for frame in frames {
                all.extend_from_slice(frame.data_ref()?);
            }
            Bytes::from(all)
        }
    };
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..header - 1)?.try_into().ok()?) as usize;
    (flag == 0 && len <= MAX_MESSAGE && body.len() == header + len).then(|| body.slice(header..))
}

pin_project_lite::pin_project! {
    /// A request body whose frames (and error) already read are replayed before the rest.
    struct Replay<B: hyper::body::Body> {
        frames: std::collections::VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        // `None` once it has ended.
        #[pin]
        inner: Option<B>,
    }
}

impl<B> hyper::body::Body for Replay<B>
where
    B: hyper::body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(frame) = this.frames.pop_front() {
            return std::task::Poll::Ready(Some(Ok(frame)));
        }
        if let Some(e) = this.error.take() {
            return std::task::Poll::Ready(Some(Err(e)));
        }
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self
                .inner
                .as_ref()
                .is_none_or(hyper::body::Body::is_end_stream)
    }
}

/// The body of a unary answer as tonic's `EncodeBody` yields it: the framed message, then the
/// trailers of `Status::ok("")`; no size hint, at its end only after the trailers.
struct Unary {
    data: Option<Bytes>,
    trailers: bool,
}

impl hyper::body::Body for Unary {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if std::mem::take(&mut self.trailers) {
            // As tonic's `Status::to_header_map`.
            let mut trailers = axum::http::HeaderMap::with_capacity(3);
            let ok = Status::ok("").add_header(&mut trailers);
            return std::task::Poll::Ready(Some(ok.map(|()| Frame::trailers(trailers))));
        }
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !self.trailers
    }
}

impl<B> tower::Service<axum::http::Request<B>> for AllocatorRoutes
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
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
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
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
        // The handler's answer is already framed; tonic writes the prefix itself.
        prost::bytes::BufMut::put_slice(
            buf,
            item.get(crate::protobuf::FRAME_HEADER..)
                .unwrap_or_default(),
        );
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
    if let Some(value) = baggage_metadata(header) {
        metadata.insert(BAGGAGE, value);
    }
}

/// The `baggage` metadata value of `header`; `None` (logged) if it is not valid metadata.
fn baggage_metadata(header: &str) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    match MetadataValue::try_from(header) {
        Ok(value) => Some(value),
        Err(_) => {
            tracing::warn!(header, "merged baggage is not valid metadata; not sent");
            None
        }
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
    /// encoded from the render cache as one length-prefixed gRPC message
    /// ([`crate::protobuf::encode_allocate_framed`]).
    fn allocate_encoded(&self, request: Request<Context>) -> Result<Response<Vec<u8>>, Status> {
        let start = Instant::now();
        let (metadata, _, ctx) = request.into_parts();
        let service = &self.service;
        self.evaluate_context(start, "Allocate", &metadata, &ctx, &[], |view| {
            service
                .with_render(view.snapshot, |cache| {
                    crate::protobuf::encode_allocate_framed(view, Some(cache))
                })
                .unwrap_or_else(|_| crate::protobuf::encode_allocate_framed(view, None))
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
            // The header's value straight from the view, without a copy of the string first.
            |view| (f(view), baggage_metadata(&view.baggage)),
        );
        let result = result.map_err(Status::from).map(|(message, baggage)| {
            let mut response = Response::new(message);
            if let Some(value) = baggage {
                response.metadata_mut().insert(BAGGAGE, value);
            }
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use allot_proto::convert::json_map_to_struct;
    use http_body_util::{BodyExt, StreamBody};
    use prost::Message as _;
    use serde_json::json;

    use super::*;
    use crate::service::Limits;
    use crate::state::ConfigStore;

    /// Everything a client could see of an answer: status, version, headers in order, the
    /// body's frames in order (trailers included), and what the body says of its size and end.
    #[derive(Debug, PartialEq)]
    struct Seen {
        status: u16,
        version: axum::http::Version,
        headers: Vec<(String, Vec<u8>)>,
        ended_at_once: bool,
        size_hint: (u64, Option<u64>),
        frames: Vec<Result<(bool, Vec<u8>), String>>,
    }

    async fn seen(res: axum::http::Response<tonic::body::Body>) -> Seen {
        let (parts, mut body) = res.into_parts();
        let hint = hyper::body::Body::size_hint(&body);
        let ended_at_once = hyper::body::Body::is_end_stream(&body);
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(match frame {
                Ok(f) => Ok(match f.into_data() {
                    Ok(data) => (true, data.to_vec()),
                    Err(f) => {
                        let trailers = f.into_trailers().unwrap();
                        (false, format!("{trailers:?}").into_bytes())
                    }
                }),
                Err(e) => Err(e.to_string()),
            });
        }
        Seen {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            ended_at_once,
            size_hint: (hint.lower(), hint.upper()),
            frames,
        }
    }

    type Chunks =
        StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn request(
        frames: &[Frame<Bytes>],
        headers: &[(&'static str, &'static str)],
    ) -> axum::http::Request<Chunks> {
        let frames: Vec<_> = frames
            .iter()
            .map(|f| {
                Ok(match f.data_ref() {
                    Some(d) => Frame::data(d.clone()),
                    None => Frame::trailers(f.trailers_ref().unwrap().clone()),
                })
            })
            .collect();
        let mut req = axum::http::Request::builder()
            .method("POST")
            .uri(ALLOCATE_PATH)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(StreamBody::new(tokio_stream::iter(frames)))
            .unwrap()
    }

    fn framed(message: &[u8]) -> Bytes {
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        out.extend_from_slice(message);
        Bytes::from(out)
    }

    fn allocate_request(i: usize) -> Vec<u8> {
        let country = ["SE", "US", "CA", "DE"][i % 4];
        let platform = ["ios", "android", "web", "tv"][i % 4];
        let context = json!({
            "targetingKey": format!("member-{i}"),
            "device_id": format!("device-{i}"),
            "country": country,
            "platform": platform,
            "app_version": format!("{}.{}.0", 4 + i % 3, i % 7),
        });
        pb::AllocateRequest {
            context: Some(json_map_to_struct(context.as_object().unwrap())),
        }
        .encode_to_vec()
    }

    /// The answers of `allocate` (plain calls answered directly, the rest through tonic with
    /// the body replayed) and of tonic's unary path alone are the same, to the byte, for plain
    /// calls, client mistakes and every request the direct path leaves to tonic.
    #[tokio::test]
    async fn direct_answers_are_tonics_to_the_byte() {
        let store = Arc::new(ConfigStore::new());
        store
            .apply(&crate::source::embedded().unwrap(), None, None)
            .unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        let routes = allocator_routes(Service::new(store, Limits::default()), stop_rx);

        let plain = framed(&allocate_request(1));
        type Headers = Vec<(&'static str, &'static str)>;
        let mut cases: Vec<(Vec<Frame<Bytes>>, Headers)> = Vec::new();
        for i in 0..50 {
            cases.push((vec![Frame::data(framed(&allocate_request(i)))], vec![]));
        }
        let traced = vec![
            ("baggage", "userId=alice,allot=forged"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ];
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("baggage", "late=1".parse().unwrap());
        let mut compressed = plain.to_vec();
        compressed[0] = 1;
        let too_long = {
            let mut out = vec![0];
            out.extend_from_slice(&u32::try_from(MAX_MESSAGE + 1).unwrap().to_be_bytes());
            Bytes::from(out)
        };
        cases.extend([
            (vec![Frame::data(plain.clone())], traced.clone()),
            // Split over frames, empty frames among them.
            (
                vec![
                    Frame::data(plain.slice(..3)),
                    Frame::data(Bytes::new()),
                    Frame::data(plain.slice(3..)),
                ],
                vec![],
            ),
            // No message, an empty message (no context: no unit), garbage.
            (vec![], vec![]),
            (vec![Frame::data(framed(&[]))], vec![]),
            (vec![Frame::data(framed(&[0x0a, 0x05, 1]))], vec![]),
            (vec![Frame::data(plain.slice(..4))], vec![]),
            (vec![Frame::data(plain.slice(..plain.len() - 1))], vec![]),
            // Two messages; trailing bytes; request trailers.
            (
                vec![Frame::data(plain.clone()), Frame::data(plain.clone())],
                vec![],
            ),
            (
                vec![Frame::data([&plain[..], &[0]].concat().into())],
                vec![],
            ),
            (
                vec![Frame::data(plain.clone()), Frame::trailers(trailers)],
                vec![],
            ),
            // Compressed, with and without `grpc-encoding`; too long.
            (vec![Frame::data(compressed.clone().into())], vec![]),
            (
                vec![Frame::data(plain.clone())],
                vec![("grpc-encoding", "gzip")],
            ),
            (
                vec![Frame::data(plain.clone())],
                vec![("grpc-encoding", "identity")],
            ),
            (vec![Frame::data(too_long)], vec![]),
        ]);
        for (i, (frames, headers)) in cases.iter().enumerate() {
            let direct = seen(routes.clone().allocate(request(frames, headers)).await).await;
            let tonic = seen(
                routes
                    .clone()
                    .allocate_with_tonic(request(frames, headers))
                    .await,
            )
            .await;
            assert_eq!(direct, tonic, "case {i}");
        }
    }
}
