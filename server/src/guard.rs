//! The guard in front of every evaluation endpoint, HTTP and gRPC alike: client tokens
//! ([`crate::access`]), a per-process concurrency limit that sheds instead of queueing, and a
//! request timeout.
//!
//! Per request, in order:
//! 1. Open routes pass untouched: gRPC health and reflection, CORS preflights (`OPTIONS`).
//! 2. With `--client-tokens`, a request without a configured token is refused: HTTP 401
//!    (`WWW-Authenticate: Bearer`), gRPC `UNAUTHENTICATED`. The body never names a flag, key
//!    or token.
//! 3. Streams (`WatchConfig`, flagd `EventStream`) pass after the token check: they live for
//!    hours and must not hold a slot.
//! 4. Anything else takes one of `--max-concurrency` slots (one atomic add, no queue, no
//!    allocation) or is shed at once: HTTP 503 with `Retry-After: 1`, gRPC
//!    `RESOURCE_EXHAUSTED`.
//! 5. It then runs under `--request-timeout` (gRPC: or the caller's shorter `grpc-timeout`);
//!    past it: HTTP 503 `TIMEOUT`, gRPC `DEADLINE_EXCEEDED`. 503 rather than 408, because the
//!    server, not the client, was too slow.
//!
//! Rejections are counted in `allot_requests_rejected_total{transport, reason}`. The slot is
//! released when the response (headers and the already-buffered body) is handed back. Must not
//! hold evaluation logic or inspect bodies.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use axum::response::IntoResponse;
use pin_project_lite::pin_project;
use prometheus_client::metrics::gauge::Gauge;

use crate::access::{ClientTokens, Verdict};
use crate::error::ApiError;
use crate::metrics::{Metrics, RejectCounters, Rejection, Transport};

/// The `grpc-timeout` request header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Tokens, slots and the timeout, shared by every transport of a process (so the limit is per
/// process). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tokens: Option<ClientTokens>,
    /// Slots taken; the same atomic as the `allot_requests_in_flight` gauge when metrics are on.
    in_flight: Gauge,
    max: i64,
    timeout: Duration,
}

/// What a [`Guard`] enforces.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    /// Client tokens; `None` leaves the evaluation APIs open.
    pub tokens: Option<ClientTokens>,
    /// Most guarded requests in flight at once (at least 1).
    pub max_concurrency: usize,
    /// Longest a guarded request may run.
    pub request_timeout: Duration,
    /// Where slots are counted: [`Metrics::in_flight_gauge`] to export them, else a fresh gauge.
    pub in_flight: Gauge,
}

/// A tower layer applying a [`Guard`] with the responses of `F` ([`Http`] or [`Grpc`]).
#[derive(Debug, Clone)]
pub struct GuardLayer<F> {
    scope: Arc<Scope>,
    flavor: PhantomData<fn() -> F>,
}

/// The service of [`GuardLayer`].
#[derive(Debug, Clone)]
pub struct GuardService<S, F> {
    inner: S,
    scope: Arc<Scope>,
    flavor: PhantomData<fn() -> F>,
}

/// A guard as one transport sees it: with that transport's rejection counters.
#[derive(Debug)]
struct Scope {
    guard: Guard,
    counters: Option<RejectCounters>,
}

/// One in-flight slot, released on drop.
#[derive(Debug)]
struct Permit(Arc<Scope>);

/// How the guard treats a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Neither tokens nor limits (health, reflection, CORS preflight).
    Open,
    /// Token checked; no slot, no timeout (long-lived streams).
    Stream,
    /// Token, slot and timeout; rejections in the native JSON shape.
    Native,
    /// Token, slot and timeout; rejections in the OFREP shape.
    Ofrep,
}

/// The transport-specific part of a guard: which requests are which [`Class`], the deadline,
/// and what a rejection looks like.
pub trait Flavor: Send + Sync + 'static {
    /// The response body type.
    type Body;
    /// The transport, for metrics.
    const TRANSPORT: Transport;
    /// The class of a request.
    fn class(method: &Method, path: &str) -> Class;
    /// The deadline of a guarded request, given the configured one.
    fn deadline(_headers: &HeaderMap, configured: Duration) -> Duration {
        configured
    }
    /// The response of a refused request.
    fn reject(class: Class, error: ApiError) -> Response<Self::Body>;
}

/// The evaluation HTTP port: everything but CORS preflights is guarded; `/ofrep/` paths answer
/// in the OFREP error shape (`{errorCode: "GENERAL", errorDetails}`, CORS-readable).
#[derive(Debug, Clone, Copy)]
pub enum Http {}

/// The gRPC port: health and reflection are open, `WatchConfig` and `EventStream` are
/// streams, every other method is guarded; rejections are gRPC statuses.
#[derive(Debug, Clone, Copy)]
pub enum Grpc {}

// === impl Guard ===

impl Guard {
    /// A guard enforcing `options`.
    pub fn new(options: GuardOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                tokens: options.tokens,
                in_flight: options.in_flight,
                max: i64::try_from(options.max_concurrency.max(1)).unwrap_or(i64::MAX),
                timeout: options.request_timeout,
            }),
        }
    }

    /// A guard that checks nothing and never sheds (for embedding without limits).
    pub fn unlimited() -> Self {
        Self::new(GuardOptions {
            tokens: None,
            max_concurrency: usize::MAX,
            request_timeout: Duration::from_secs(u64::from(u32::MAX)),
            in_flight: Gauge::default(),
        })
    }

    /// Whether client tokens are configured.
    pub fn requires_tokens(&self) -> bool {
        self.shared.tokens.is_some()
    }

    /// Whether `headers` carry a configured client token (always, without `--client-tokens`).
    pub fn check(&self, headers: &HeaderMap) -> Verdict {
        match &self.shared.tokens {
            Some(tokens) => tokens.check(headers),
            None => Verdict::Allowed,
        }
    }

    /// Guarded requests in flight now.
    pub fn in_flight(&self) -> i64 {
        self.shared.in_flight.get()
    }

    /// The layer for transport `F`, counting rejections in `metrics`.
    pub fn layer<F: Flavor>(&self, metrics: Option<&Metrics>) -> GuardLayer<F> {
        GuardLayer {
            scope: Arc::new(Scope {
                guard: self.clone(),
                counters: metrics.map(|m| m.reject_counters(F::TRANSPORT)),
            }),
            flavor: PhantomData,
        }
    }
}

// === impl Scope ===

impl Scope {
    fn count(&self, why: Rejection) {
        if let Some(c) = &self.counters {
            c.inc(why);
        }
    }
}

fn try_acquire(scope: &Arc<Scope>) -> Option<Permit> {
    let shared = &scope.guard.shared;
    // Optimistic add: one atomic in the common case; an overshoot is undone at once, so the
    // count never stays above the limit.
    if shared.in_flight.inc() >= shared.max {
        shared.in_flight.dec();
        return None;
    }
    Some(Permit(scope.clone()))
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.guard.shared.in_flight.dec();
    }
}

// === impl GuardLayer ===

impl<S, F> tower::Layer<S> for GuardLayer<F> {
    type Service = GuardService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardService {
            inner,
            scope: self.scope.clone(),
            flavor: PhantomData,
        }
    }
}

// === impl GuardService ===

impl<S, F, B> tower::Service<Request<B>> for GuardService<S, F>
where
    S: tower::Service<Request<B>, Response = Response<F::Body>>,
    F: Flavor,
{
    type Response = Response<F::Body>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let class = F::class(req.method(), req.uri().path());
        if class == Class::Open {
            return GuardFuture::pass(self.inner.call(req));
        }
        let scope = &self.scope;
        if scope.guard.check(req.headers()) == Verdict::Denied {
            scope.count(Rejection::Unauthenticated);
            return GuardFuture::rejected(class, ApiError::ClientToken);
        }
        if class == Class::Stream {
            return GuardFuture::pass(self.inner.call(req));
        }
        let Some(permit) = try_acquire(scope) else {
            scope.count(Rejection::Overload);
            return GuardFuture::rejected(class, ApiError::Overloaded);
        };
        let deadline = F::deadline(req.headers(), scope.guard.shared.timeout);
        GuardFuture {
            state: State::Limited {
                inner: tokio::time::timeout(deadline, self.inner.call(req)),
                permit,
                class,
                deadline,
            },
        }
    }
}

pin_project! {
    /// The response future of [`GuardService`].
    pub struct GuardFuture<Fut, F: Flavor> {
        #[pin]
        state: State<Fut, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut, F: Flavor> {
        // Not limited.
        Pass { #[pin] inner: Fut },
        // Holding a slot, under a deadline.
        Limited {
            #[pin]
            inner: tokio::time::Timeout<Fut>,
            permit: Permit,
            class: Class,
            deadline: Duration,
        },
        // Refused before the inner service was called.
        Rejected { response: Option<Response<F::Body>> },
    }
}

impl<Fut, F: Flavor> GuardFuture<Fut, F> {
    fn pass(inner: Fut) -> Self {
        Self {
            state: State::Pass { inner },
        }
    }

    fn rejected(class: Class, error: ApiError) -> Self {
        Self {
            state: State::Rejected {
                response: Some(F::reject(class, error)),
            },
        }
    }
}

impl<Fut, F, E> Future for GuardFuture<Fut, F>
where
    Fut: Future<Output = Result<Response<F::Body>, E>>,
    F: Flavor,
{
    type Output = Result<Response<F::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Pass { inner } => inner.poll(cx),
            StateProj::Limited {
                inner,
                permit,
                class,
                deadline,
            } => match inner.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(_elapsed)) => {
                    permit.0.count(Rejection::Timeout);
                    let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
                    Poll::Ready(Ok(F::reject(*class, ApiError::Timeout { ms })))
                }
            },
            StateProj::Rejected { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled after completion: a caller bug; answer rather than panic.
                None => Poll::Ready(Ok(F::reject(
                    Class::Native,
                    ApiError::Internal("guard future polled after completion".into()),
                ))),
            },
        }
    }
}

// === impl Http ===

impl Flavor for Http {
    type Body = axum::body::Body;
    const TRANSPORT: Transport = Transport::Http;

    fn class(method: &Method, path: &str) -> Class {
        if method == Method::OPTIONS {
            Class::Open
        } else if path.starts_with("/ofrep/") {
            Class::Ofrep
        } else {
            Class::Native
        }
    }

    fn reject(class: Class, error: ApiError) -> Response<Self::Body> {
        if class == Class::Ofrep {
            let mut res = crate::ofrep::error_response(None, &error);
            // Browser providers must be able to read the refusal.
            res.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            res
        } else {
            error.into_response()
        }
    }
}

// === impl Grpc ===

impl Flavor for Grpc {
    type Body = tonic::body::Body;
    const TRANSPORT: Transport = Transport::Grpc;

    fn class(_method: &Method, path: &str) -> Class {
        if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
            Class::Open
        } else if path.ends_with("/WatchConfig") || path.ends_with("/EventStream") {
            Class::Stream
        } else {
            Class::Native
        }
    }

    fn deadline(headers: &HeaderMap, configured: Duration) -> Duration {
        headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| grpc_timeout(v.as_bytes()))
            .map_or(configured, |t| t.min(configured))
    }

    fn reject(_class: Class, error: ApiError) -> Response<Self::Body> {
        tonic::Status::from(error).into_http()
    }
}

/// A `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H M S m u n`); `None` if malformed
/// (then the configured timeout applies).
pub fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            &b""[..],
            b"S",
            b"5",
            b"5s",
            b"-5S",
            b"123456789S",
            b"1.5S",
            b"+5S",
        ] {
            assert_eq!(
                grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut h = HeaderMap::new();
        assert_eq!(
            Grpc::deadline(&h, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("100m"));
        assert_eq!(
            Grpc::deadline(&h, Duration::from_secs(2)),
            Duration::from_millis(100)
        );
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("10S"));
        assert_eq!(
            Grpc::deadline(&h, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn classes() {
        let (get, post, options) = (Method::GET, Method::POST, Method::OPTIONS);
        assert_eq!(Http::class(&post, "/v1/allocate"), Class::Native);
        assert_eq!(Http::class(&get, "/v1/config"), Class::Native);
        assert_eq!(Http::class(&post, "/ofrep/v1/evaluate/flags"), Class::Ofrep);
        assert_eq!(
            Http::class(&options, "/ofrep/v1/evaluate/flags"),
            Class::Open
        );
        assert_eq!(
            Grpc::class(&post, "/grpc.health.v1.Health/Check"),
            Class::Open
        );
        assert_eq!(
            Grpc::class(
                &post,
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            ),
            Class::Open
        );
        assert_eq!(
            Grpc::class(&post, "/allot.v1.Allocator/WatchConfig"),
            Class::Stream
        );
        assert_eq!(
            Grpc::class(&post, "/flagd.evaluation.v2.Service/EventStream"),
            Class::Stream
        );
        assert_eq!(
            Grpc::class(&post, "/allot.v1.Allocator/Allocate"),
            Class::Native
        );
        assert_eq!(
            Grpc::class(&post, "/flagd.evaluation.v1.Service/ResolveAll"),
            Class::Native
        );
    }

    #[test]
    fn slots_are_taken_and_released() {
        let guard = Guard::new(GuardOptions {
            tokens: None,
            max_concurrency: 2,
            request_timeout: Duration::from_secs(1),
            in_flight: Gauge::default(),
        });
        let layer = guard.layer::<Http>(None);
        let a = try_acquire(&layer.scope).unwrap();
        let b = try_acquire(&layer.scope).unwrap();
        assert!(try_acquire(&layer.scope).is_none());
        assert_eq!(guard.in_flight(), 2);
        drop(a);
        let c = try_acquire(&layer.scope).unwrap();
        drop((b, c));
        assert_eq!(guard.in_flight(), 0);
    }
}
