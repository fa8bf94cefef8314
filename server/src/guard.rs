//! The guard in front of every evaluation endpoint, HTTP and gRPC alike: client tokens
//! ([`crate::access`]), shedding when the process is saturated, a per-process concurrency
//! limit that sheds instead of queueing, and a request timeout.
//!
//! Per request, in order:
//! 1. Open routes pass untouched: gRPC health and reflection, CORS preflights (`OPTIONS`).
//! 2. With `--client-tokens`, a request without a configured token is refused: HTTP 401
//!    (`WWW-Authenticate: Bearer`), gRPC `UNAUTHENTICATED`. The body never names a flag, key
//!    or token.
//! 3. Streams (`WatchConfig`, flagd `EventStream`) pass after the token check: they live for
//!    hours and must not hold a slot.
//! 4. While the runtime is saturated (see below), a share of the rest is shed at once: HTTP 503
//!    with `Retry-After: 1`, gRPC `RESOURCE_EXHAUSTED`. When it is not, this costs one relaxed
//!    atomic load.
//! 5. Anything else takes one of `--max-concurrency` slots (one atomic add, no queue, no
//!    allocation) or is shed the same way.
//! 6. While the last lag sample was above `--shed-lag`, the admission time is noted, and a
//!    request that then waits in the run queue longer than `--shed-lag` before it first runs
//!    is shed after all, unread (its handler never runs). Over HTTP/2 and gRPC, where hyper
//!    admits every stream as its HEADERS arrive and queues it as a task, this keeps the
//!    admitted requests' queueing under the target however long the queue grows; over HTTP/1
//!    a request runs as soon as it is admitted, so it never applies.
//! 7. It then runs under `--request-timeout` (gRPC: or the caller's shorter `grpc-timeout`);
//!    past it: HTTP 503 `TIMEOUT`, gRPC `DEADLINE_EXCEEDED`. 503 rather than 408, because the
//!    server, not the client, was too slow.
//!
//! Rejections are counted in `allot_requests_rejected_total{transport, reason}` (saturation and
//! the connection cap of [`crate::listen`] count as `reason="overload"`). The slot is released
//! when the response (headers and the already-buffered body) is handed back. Must not hold
//! evaluation logic or inspect bodies.
//!
//! Why saturation and not only the slot count: an evaluation finishes within one poll of its
//! future, so under CPU overload at most one request per worker is ever inside the guard and the
//! concurrency limit never fires; the queue forms before the server reads a request (kernel
//! socket buffers, client connection pools). What does grow is the runtime's scheduling lag: how
//! long a task that became ready waits before it runs, which is about how long a request that
//! just became readable waits. [`watch_saturation`] samples it every [`PROBE_EVERY`] (the time a
//! `yield_now` takes to come back) and drives a CoDel-like controller ([`Saturation`]): once the
//! lag has stayed above `--shed-lag` for a whole `--shed-interval` (a burst or a descheduled VM
//! does not count, a standing queue does), it sheds a share of new requests, raised by
//! [`STEP`] each sample the lag is still above the target and lowered by as much each sample it
//! is below, up to [`MAX_SHARE`] (a trickle is always served). Shed requests are answered before
//! their body is read or decoded, so they are cheaper than admitted ones and the lag falls; when
//! the load drops, the share is back at 0 within [`MAX_SHARE`]`/`[`STEP`] samples.

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use axum::response::IntoResponse;
use pin_project_lite::pin_project;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

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
    /// The share of guarded requests to shed now, in 1/[`SHARE_ONE`]; 0 unless saturated.
    /// Written by [`watch_saturation`] only.
    shed_share: AtomicU32,
    /// `--shed-lag` in µs while the last lag sample was above it, else 0: then a request
    /// admitted now is shed after all if it waits longer than that before it first runs (see
    /// [`GuardFuture`]). Written by [`watch_saturation`] only.
    age_limit_us: AtomicU64,
}

/// The share of requests to shed that means "all of them" (shares are in 1/1024).
pub const SHARE_ONE: u32 = 1024;

/// How much the shed share moves per lag sample (1/16).
pub const STEP: u32 = SHARE_ONE / 16;

/// The highest shed share (15/16): even deep in overload, one request in 16 is served, so the
/// service stays visible and the lag keeps being measured against real work.
pub const MAX_SHARE: u32 = SHARE_ONE - STEP;

/// How often [`watch_saturation`] samples the scheduling lag.
pub const PROBE_EVERY: Duration = Duration::from_millis(1);

/// When the guard sheds for saturation (`--shed-lag`, `--shed-interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaturationOptions {
    /// The scheduling lag above which the runtime counts as saturated.
    pub target: Duration,
    /// How long the lag must stay above `target` before shedding starts.
    pub interval: Duration,
}

/// The saturation controller: lag samples in, the share of requests to shed out. Pure (the
/// clock is an argument), so its behaviour is tested without a runtime.
#[derive(Debug, Clone)]
pub struct Saturation {
    options: SaturationOptions,
    /// Since when every sample has been above the target (none: the last one was not).
    above_since: Option<Instant>,
    /// When the share last fell back to 0 (a standing overload that returns within an
    /// interval is shed again at once, as CoDel re-enters its dropping state).
    last_shed: Option<Instant>,
    share: u32,
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
    /// A response of this transport as an axum response (for [`refusal`]).
    fn into_axum(res: Response<Self::Body>) -> axum::response::Response;
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
                shed_share: AtomicU32::new(0),
                age_limit_us: AtomicU64::new(0),
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

    /// The share of guarded requests shed now for saturation, in 1/[`SHARE_ONE`].
    pub fn shed_share(&self) -> u32 {
        self.shared.shed_share.load(Ordering::Relaxed)
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

/// The service of the connections of transport `F` past `--max-connections` (see
/// [`crate::listen`]): every request is answered [`ApiError::TooManyConnections`] in `F`'s shape
/// (HTTP 503 with `Retry-After: 1`, OFREP's error shape under `/ofrep/`, gRPC
/// `RESOURCE_EXHAUSTED`) without reading its body, and counted as an overload rejection.
pub fn refusal<F: Flavor>(metrics: Option<&Metrics>) -> axum::Router {
    let counters = metrics.map(|m| m.reject_counters(F::TRANSPORT));
    axum::Router::new().fallback(move |method: Method, uri: axum::http::Uri| {
        if let Some(c) = &counters {
            c.inc(Rejection::Overload);
        }
        let class = F::class(&method, uri.path());
        std::future::ready(F::into_axum(F::reject(class, ApiError::TooManyConnections)))
    })
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

/// Whether to shed this request when the share is `share` (in 1/[`SHARE_ONE`]): a per-thread
/// Weyl sequence spreads the shed ones evenly, with no shared state and no RNG.
fn shed_now(share: u32) -> bool {
    thread_local! {
        static SEQ: Cell<u32> = const { Cell::new(0) };
    }
    let x = SEQ.with(|s| {
        // The golden-ratio increment visits the 1024 top-bit buckets evenly.
        let x = s.get().wrapping_add(0x9E37_79B9);
        s.set(x);
        x
    });
    (x >> 22) < share
}

// === impl Saturation ===

impl Saturation {
    /// A controller that is not shedding.
    pub fn new(options: SaturationOptions) -> Self {
        Self {
            options,
            above_since: None,
            last_shed: None,
            share: 0,
        }
    }

    /// Takes one lag sample measured at `now`; returns the share to shed from now on.
    pub fn observe(&mut self, now: Instant, lag: Duration) -> u32 {
        if lag > self.options.target {
            let since = *self.above_since.get_or_insert(now);
            let standing = now.saturating_duration_since(since) >= self.options.interval;
            let recent = self
                .last_shed
                .is_some_and(|t| now.saturating_duration_since(t) < self.options.interval);
            if self.share > 0 || standing || recent {
                self.share = (self.share + STEP).min(MAX_SHARE);
            }
        } else {
            self.above_since = None;
            if self.share > 0 {
                self.share = self.share.saturating_sub(STEP);
                if self.share == 0 {
                    self.last_shed = Some(now);
                }
            }
        }
        self.share
    }
}

/// Samples the runtime's scheduling lag every [`PROBE_EVERY`] and sets the share `guard` sheds,
/// until `cancel`. Runs on the runtime it measures (spawn it there).
pub async fn watch_saturation(guard: Guard, options: SaturationOptions, cancel: CancellationToken) {
    let mut control = Saturation::new(options);
    let shared = &guard.shared;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
        // How long a task that just became ready waits to run again: every ready task (a
        // readable connection among them) ahead of it, and an I/O driver turn.
        let start = Instant::now();
        tokio::task::yield_now().await;
        let now = Instant::now();
        let lag = now.saturating_duration_since(start);
        let limit = if lag > options.target {
            u64::try_from(options.target.as_micros())
                .unwrap_or(u64::MAX)
                .max(1)
        } else {
            0
        };
        if limit != shared.age_limit_us.load(Ordering::Relaxed) {
            shared.age_limit_us.store(limit, Ordering::Relaxed);
        }
        let share = control.observe(now, lag);
        if share != shared.shed_share.load(Ordering::Relaxed) {
            if share == 0 {
                tracing::debug!("scheduling lag back under --shed-lag; no longer shedding");
            } else if shared.shed_share.load(Ordering::Relaxed) == 0 {
                tracing::debug!(target = ?options.target, "scheduling lag above --shed-lag; shedding load");
            }
            shared.shed_share.store(share, Ordering::Relaxed);
        }
    }
    shared.shed_share.store(0, Ordering::Relaxed);
    shared.age_limit_us.store(0, Ordering::Relaxed);
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
        // The whole cost of saturation shedding when not saturated: this load and a branch.
        let share = scope.guard.shared.shed_share.load(Ordering::Relaxed);
        if share != 0 && shed_now(share) {
            scope.count(Rejection::Overload);
            return GuardFuture::rejected(class, ApiError::Saturated);
        }
        let Some(permit) = try_acquire(scope) else {
            scope.count(Rejection::Overload);
            return GuardFuture::rejected(class, ApiError::Overloaded);
        };
        let deadline = F::deadline(req.headers(), scope.guard.shared.timeout);
        // While the runtime lags, note when the request was admitted: if it then waits in the
        // run queue past `--shed-lag` before it first runs, it is shed unread after all.
        let age_limit = scope.guard.shared.age_limit_us.load(Ordering::Relaxed);
        let admitted = (age_limit != 0).then(|| (Instant::now(), Duration::from_micros(age_limit)));
        GuardFuture {
            state: State::Limited {
                inner: tokio::time::timeout(deadline, self.inner.call(req)),
                permit,
                class,
                deadline,
                admitted,
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
            // When it was admitted and how long it may wait to first run (set while lagging;
            // cleared by the first poll).
            admitted: Option<(Instant, Duration)>,
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
                admitted,
            } => {
                if let Some((at, limit)) = admitted.take()
                    && at.elapsed() > limit
                {
                    // Queued behind other work for longer than `--shed-lag`: its caller has
                    // waited enough, and serving it would only make the queue behind it wait
                    // longer. The inner future has not run, so nothing was read or evaluated.
                    permit.0.count(Rejection::Overload);
                    return Poll::Ready(Ok(F::reject(*class, ApiError::Saturated)));
                }
                match inner.poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(result)) => Poll::Ready(result),
                    Poll::Ready(Err(_elapsed)) => {
                        permit.0.count(Rejection::Timeout);
                        let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
                        Poll::Ready(Ok(F::reject(*class, ApiError::Timeout { ms })))
                    }
                }
            }
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

    fn into_axum(res: Response<Self::Body>) -> axum::response::Response {
        res
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

    fn into_axum(res: Response<Self::Body>) -> axum::response::Response {
        res.map(axum::body::Body::new)
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
    fn saturation_sheds_only_a_standing_lag_and_stops_when_it_falls() {
        let options = SaturationOptions {
            target: Duration::from_millis(2),
            interval: Duration::from_millis(100),
        };
        let mut s = Saturation::new(options);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (low, high) = (Duration::from_micros(50), Duration::from_millis(5));
        // A burst or a stall shorter than the interval sheds nothing.
        for ms in 0..99 {
            assert_eq!(s.observe(at(ms), high), 0, "{ms} ms");
        }
        assert_eq!(s.observe(at(99), low), 0);
        for ms in 100..200 {
            assert_eq!(s.observe(at(ms), high), 0, "{ms} ms");
        }
        // A whole interval above the target: shedding starts and grows a step per sample,
        // up to the cap.
        assert_eq!(s.observe(at(200), high), STEP);
        assert_eq!(s.observe(at(201), high), 2 * STEP);
        for ms in 202..300 {
            s.observe(at(ms), high);
        }
        assert_eq!(s.observe(at(300), high), MAX_SHARE);
        // The lag falls: the share falls a step per sample, to 0.
        let mut shares = Vec::new();
        for ms in 301..400 {
            shares.push(s.observe(at(ms), low));
        }
        assert!(shares.windows(2).all(|w| w[1] < w[0] || w[1] == 0));
        assert_eq!(shares[usize::try_from(MAX_SHARE / STEP).unwrap() - 1], 0);
        // Back within an interval of the last shedding: shed again at once.
        let left = 300 + u64::from(MAX_SHARE / STEP);
        assert_eq!(s.observe(at(left + 50), high), STEP);
        assert_eq!(s.observe(at(left + 51), low), 0);
        // Later than that, a full interval is needed again.
        assert_eq!(s.observe(at(left + 500), high), 0);
        assert_eq!(s.observe(at(left + 599), high), 0);
        assert_eq!(s.observe(at(left + 600), high), STEP);
    }

    #[test]
    fn shed_share_is_spread_evenly() {
        for share in [0, 1, STEP, SHARE_ONE / 2, MAX_SHARE, SHARE_ONE] {
            let shed = (0..SHARE_ONE * 16).filter(|_| shed_now(share)).count();
            // A Weyl sequence hits each of the 1024 buckets 16 times in 16,384 steps, give or
            // take one per bucket.
            let want = usize::try_from(share * 16).unwrap();
            assert!(shed.abs_diff(want) <= 16, "share {share}: {shed} of {want}");
        }
    }

    /// While the runtime lags, a request that waits in the run queue past `--shed-lag` before
    /// it first runs is shed unread (its handler never runs); one that runs in time, or any
    /// request admitted while the runtime keeps up, is served.
    #[tokio::test]
    async fn requests_queued_past_the_lag_target_are_shed_unread() {
        use std::sync::atomic::AtomicUsize;
        use tower::Service as _;

        let guard = Guard::new(GuardOptions {
            tokens: None,
            max_concurrency: 100,
            request_timeout: Duration::from_secs(60),
            in_flight: Gauge::default(),
        });
        let ran = Arc::new(AtomicUsize::new(0));
        let handler = {
            let ran = ran.clone();
            tower::service_fn(move |_req: Request<axum::body::Body>| {
                let ran = ran.clone();
                async move {
                    ran.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::empty()))
                }
            })
        };
        let mut svc = tower::Layer::layer(&guard.layer::<Http>(None), handler);
        let request = || {
            Request::post("/v1/allocate")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let queued = Duration::from_millis(5);
        let cases = [
            // (age limit in µs: 0 = not lagging, queued before the first poll, served?)
            (1_000, queued, false),
            (60_000_000, Duration::ZERO, true),
            (0, queued, true),
        ];
        for (limit, wait, served) in cases {
            guard.shared.age_limit_us.store(limit, Ordering::Relaxed);
            let before = ran.load(Ordering::Relaxed);
            let fut = svc.call(request());
            // At least `wait` (sleep never returns early): more than the 1 ms limit.
            std::thread::sleep(wait);
            let res = fut.await.unwrap();
            let ran_now = ran.load(Ordering::Relaxed) - before;
            if served {
                assert_eq!(
                    (res.status().as_u16(), ran_now),
                    (200, 1),
                    "limit {limit} µs"
                );
            } else {
                assert_eq!(
                    (res.status().as_u16(), ran_now),
                    (503, 0),
                    "limit {limit} µs"
                );
                assert_eq!(res.headers()["retry-after"], "1");
            }
        }
        assert_eq!(guard.in_flight(), 0);
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
