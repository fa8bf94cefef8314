//! The listeners of all three ports: accepts TCP (with `TCP_NODELAY`), optionally terminates
//! TLS (rustls with the `ring` provider), and serves HTTP/1.1 and HTTP/2 connections with hyper
//! for the axum routers ([`serve_http`]) and HTTP/2 connections for tonic's gRPC routes
//! ([`serve_grpc`]).
//!
//! Slow clients never hold the accept loop: every connection's TLS handshake and protocol
//! detection (HTTP/2 preface or not; on the gRPC port the preface is required) run in its own
//! task, each under a deadline (`--tls-handshake-timeout`, `--header-read-timeout`). On HTTP/1,
//! hyper closes a connection whose request head has not arrived within `--header-read-timeout`
//! (no response is written; this also bounds how long an idle keep-alive connection stays open)
//! and answers a head larger than `--max-header-bytes` (or with more than [`MAX_HEADERS`]
//! headers) with `431 Request Header Fields Too Large`.
//!
//! HTTP/2 has no such bound in hyper: past the preface, a client could trickle a HEADERS frame
//! a byte a second, or just stay idle, and hold its connection (and its `--max-connections`
//! slot) forever. So each HTTP/2 connection, on every port, counts the requests it has in
//! flight, from the moment a request's head has arrived until its response, body included, is
//! finished or dropped (a per-connection `Arc` of atomics, updated by a service wrapper; HTTP/1
//! connections do not pay for it). Once a connection has had none for `--header-read-timeout`
//! (counting from its preface, then from the end of its last response), it gets a graceful
//! GOAWAY (hyper's `graceful_shutdown`: requests that crossed it are still served), and if it
//! is still open and idle `--header-read-timeout` later (a client that never answers the
//! GOAWAY's PING, or never sent its SETTINGS), it is dropped. A request in flight is never cut
//! for this: a `WatchConfig` or flagd `EventStream` stream stays open for as long as it likes,
//! and a slow request body is bounded by `--request-timeout` alone.
//!
//! The gRPC port is served here too, rather than by `tonic::transport::Server` (which drives
//! its connections itself and offers no idle timeout that spares long streams): tonic's routes,
//! behind the guard, are the service of the same HTTP/2 connections as the HTTP ports', so both
//! get the same idle semantics, with a GOAWAY that clients (tonic, grpc-go, ...) take as a
//! signal to reconnect for their next call. (An I/O-level wrapper under tonic could only have
//! cut connections without a GOAWAY, failing a call that raced the close.)
//!
//! With `--max-connections`, each evaluation port counts its open connections. A connection
//! past the cap is accepted and answered cheaply instead of being left in the kernel's backlog
//! (where its client would see a hang, not a refusal, and a load balancer could not tell it from
//! a dead server): its first request gets the listener's refusal router (HTTP 503 with
//! `Retry-After: 1` and `Connection: close`, or over HTTP/2 and gRPC that answer followed by a
//! GOAWAY), without the request's body being read, and the connection is closed. Refusals in
//! progress are capped at the same number (each lasts at most `--header-read-timeout`); past
//! both caps a connection is closed at once, unanswered. The cap bounds the work a burst of
//! clients can queue inside the process and keeps file descriptors for the management port.
//!
//! Shutdown: stop accepting, close connections that are still handshaking, let in-flight
//! requests finish (keep-alive connections close after their current request, HTTP/2 ones get a
//! GOAWAY and, once idle, are dropped after `--header-read-timeout` if the client does not
//! close them), and give up on the stragglers after [`crate::grpc::DRAIN_TIMEOUT`]. Must not
//! know about routes or tokens.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Most headers an HTTP/1 request may carry (hyper's default, stated here so it is documented).
pub const MAX_HEADERS: usize = 100;

/// The error type hyper accepts from services and bodies.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service the listeners can hand every connection to (an axum router, tonic's routes behind
/// the guard): the bounds [`serve_http`], [`serve_grpc`] and each connection share, stated once.
pub trait ServedBy<B>:
    tower::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> ServedBy<B> for S
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
}

/// A response body hyper can send on those connections.
pub trait ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
}

/// ALPN protocols offered on the HTTP ports: HTTP/2 first, then HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// ALPN protocols offered on the gRPC port (gRPC is HTTP/2 only).
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];

/// The HTTP/2 connection preface; a plaintext connection starting with it is served as h2c.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A bound port, how its connections are secured, and its connection cap.
pub struct Listener {
    tcp: TcpListener,
    handshake: Handshake,
    cap: Option<Arc<Cap>>,
}

/// The open-connection cap of one listener (`--max-connections`).
#[derive(Debug)]
struct Cap {
    max: usize,
    /// Admitted connections still open.
    open: AtomicUsize,
    /// Refused connections still being answered.
    refusing: AtomicUsize,
    /// What refused connections are answered with.
    refusal: Router,
}

/// One counted connection (admitted or being refused); uncounted when dropped.
#[derive(Debug)]
pub struct Counted {
    cap: Arc<Cap>,
    admitted: bool,
}

/// What the cap says about a new connection.
enum Admission {
    /// Serve it (holding its count, if there is a cap).
    Serve(Option<Counted>),
    /// Answer its first request with the refusal router, then close it.
    Refuse(Counted, Router),
    /// Close it at once.
    Close,
}

/// How an accepted connection is secured; cloned into each connection's task (never the
/// listener itself, so dropping the listener closes the port at once).
#[derive(Clone)]
struct Handshake {
    tls: Option<TlsAcceptor>,
    timeout: Duration,
}

/// Per-connection HTTP limits of [`serve_http`] and [`serve_grpc`].
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// How long a client may take to send a request head (HTTP/1) or the first bytes of a
    /// connection (protocol detection, both versions), and how long an HTTP/2 connection may
    /// have no request in flight before it gets a GOAWAY (and then before it is dropped).
    pub header_read_timeout: Duration,
    /// Largest HTTP/1 request head, and the HTTP/2 header list limit, in bytes (at least 8192,
    /// hyper's minimum buffer).
    pub max_header_bytes: usize,
    /// How long a shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

/// An accepted connection: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Conn {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, after a completed handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Loads a certificate chain and its private key (PEM) into a rustls server config using the
/// `ring` provider. Errors name the flag and file at fault.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        bail!(
            "--tls-cert {}: no PEM `CERTIFICATE` block found",
            cert.display()
        );
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .with_context(|| {
            format!(
                "--tls-key {} does not match --tls-cert {} or is unsupported",
                key.display(),
                cert.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// A TLS acceptor over `base` offering `alpn`.
pub fn acceptor(base: &rustls::ServerConfig, alpn: &[&[u8]]) -> TlsAcceptor {
    let mut config = base.clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}

/// Serves `router` on `listener` (HTTP/1.1, and HTTP/2 by ALPN or prior knowledge) until
/// `shutdown` completes, then drains as the module docs say.
pub async fn serve_http(
    listener: Listener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(listener, router, limits, Port::Http, shutdown).await
}

/// Serves `service` (tonic's routes behind the guard, see [`crate::grpc::serve_with`]) on
/// `listener` over HTTP/2 only (a connection must start with the preface; anything else is
/// closed unanswered) until `shutdown` completes, then drains as the module docs say.
pub async fn serve_grpc<S, B>(
    listener: Listener,
    service: S,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    S: ServedBy<B>,
    B: ResponseBody,
{
    serve(listener, service, limits, Port::Grpc, shutdown).await
}

/// What a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// HTTP/1.1 and HTTP/2 (the evaluation and management APIs).
    Http,
    /// HTTP/2 only (gRPC).
    Grpc,
}

/// The accept loop of [`serve_http`] and [`serve_grpc`].
async fn serve<S, B>(
    listener: Listener,
    service: S,
    limits: HttpLimits,
    port: Port,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    S: ServedBy<B>,
    B: ResponseBody,
{
    let graceful = GracefulShutdown::new();
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            tcp = listener.accept() => tcp,
        };
        // Subscribed before the task starts, so a shutdown that begins while it handshakes is
        // still seen by the connection.
        let (handshake, closing) = (listener.handshake.clone(), closing.clone());
        let counted = match listener.admit() {
            Admission::Serve(counted) => counted,
            Admission::Refuse(counted, refusal) => {
                tokio::spawn(async move {
                    let _counted = counted;
                    let timeout = limits.header_read_timeout;
                    let conn = tokio::select! {
                        conn = handshake.run(tcp) => conn,
                        () = closing.cancelled() => return,
                    };
                    if let Some(conn) = conn {
                        refuse(conn, refusal, timeout, port == Port::Grpc, closing).await;
                    }
                });
                continue;
            }
            Admission::Close => continue,
        };
        let watcher = graceful.watcher();
        let service = service.clone();
        tokio::spawn(async move {
            let _counted = counted;
            let conn = tokio::select! {
                conn = handshake.run(tcp) => conn,
                () = closing.cancelled() => return,
            };
            if let Some(conn) = conn {
                serve_connection(conn, service, limits, port, watcher, closing).await;
            }
        });
    }
    // Stop accepting now: new clients are refused instead of left waiting.
    drop(listener);
    closing.cancel();
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?port, timeout = ?limits.drain_timeout, "drain timed out; closing remaining connections");
    }
    Ok(())
}

// === impl Listener ===

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.tcp.local_addr().ok())
            .field("tls", &self.handshake.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// `tcp`, secured by `tls` when given; a handshake longer than `handshake_timeout` drops
    /// the connection.
    pub fn new(tcp: TcpListener, tls: Option<TlsAcceptor>, handshake_timeout: Duration) -> Self {
        Self {
            tcp,
            handshake: Handshake {
                tls,
                timeout: handshake_timeout,
            },
            cap: None,
        }
    }

    /// Caps the open connections at `max` (at least 1); connections past it are answered by
    /// `refusal` and closed, as the module docs say.
    pub fn with_max_connections(mut self, max: usize, refusal: Router) -> Self {
        self.cap = Some(Arc::new(Cap {
            max: max.max(1),
            open: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            refusal,
        }));
        self
    }

    /// Counts a new connection against the cap.
    fn admit(&self) -> Admission {
        let Some(cap) = &self.cap else {
            return Admission::Serve(None);
        };
        // Only the accept loop adds, so a check-then-add cannot overshoot.
        if cap.open.load(Ordering::Acquire) < cap.max {
            cap.open.fetch_add(1, Ordering::AcqRel);
            return Admission::Serve(Some(Counted {
                cap: cap.clone(),
                admitted: true,
            }));
        }
        if cap.refusing.load(Ordering::Acquire) < cap.max {
            cap.refusing.fetch_add(1, Ordering::AcqRel);
            let counted = Counted {
                cap: cap.clone(),
                admitted: false,
            };
            return Admission::Refuse(counted, cap.refusal.clone());
        }
        tracing::debug!(
            max = cap.max,
            "connection and refusal caps reached; closing"
        );
        Admission::Close
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next TCP connection, with `TCP_NODELAY` (responses are small, latency matters).
    /// Accept errors (out of file descriptors, a connection reset before accept) are logged
    /// and retried after a pause instead of ending the server.
    async fn accept(&self) -> TcpStream {
        loop {
            match self.tcp.accept().await {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::trace!(error = %e, "cannot set TCP_NODELAY");
                    }
                    return stream;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

// === impl Handshake ===

impl Handshake {
    /// The connection after its TLS handshake (when TLS is on); `None` when the handshake
    /// fails or times out (logged at debug: a port scan or a plaintext client is not an
    /// error of ours).
    async fn run(&self, tcp: TcpStream) -> Option<Conn> {
        let Some(tls) = &self.tls else {
            return Some(Conn::Plain(tcp));
        };
        let peer = tcp.peer_addr().ok();
        match tokio::time::timeout(self.timeout, tls.accept(tcp)).await {
            Ok(Ok(stream)) => Some(Conn::Tls(Box::new(stream))),
            Ok(Err(e)) => {
                tracing::debug!(?peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(?peer, timeout = ?self.timeout, "TLS handshake timed out");
                None
            }
        }
    }
}

// === impl Counted ===

impl Drop for Counted {
    fn drop(&mut self) {
        let count = if self.admitted {
            &self.cap.open
        } else {
            &self.cap.refusing
        };
        count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers the first request of a connection past the cap with `refusal` and closes it, all
/// within `timeout`: HTTP/1 without keep-alive (hyper adds `Connection: close`), HTTP/2 with a
/// GOAWAY once the first request is answered. `h2_only` (the gRPC port) closes anything else
/// unanswered.
async fn refuse(
    mut conn: Conn,
    refusal: Router,
    timeout: Duration,
    h2_only: bool,
    closing: CancellationToken,
) {
    let refused = async move {
        let (h2, prefix) = read_preface(&mut conn).await.ok()?;
        if h2_only && !h2 {
            return None;
        }
        let io = TokioIo::new(Prefixed::new(prefix, conn));
        if h2 {
            let first = Arc::new(Notify::new());
            let seen = first.clone();
            let service = hyper::service::service_fn(move |req| {
                seen.notify_one();
                refusal.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return Some(()),
                () = first.notified() => {}
            }
            conn.as_mut().graceful_shutdown();
            conn.await.ok()
        } else {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .keep_alive(false)
                .max_headers(MAX_HEADERS);
            builder
                .serve_connection(io, TowerToHyperService::new(refusal))
                .await
                .ok()
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(timeout, refused) => {}
        () = closing.cancelled() => {}
    }
}

/// Serves one connection: detects HTTP/2 (its preface) or HTTP/1 from the first bytes within
/// the header read timeout, then hands it to hyper under `watcher` (HTTP/2: under
/// [`drive_h2`], which also closes it once idle).
async fn serve_connection<S, B>(
    mut conn: Conn,
    service: S,
    limits: HttpLimits,
    port: Port,
    watcher: Watcher,
    closing: CancellationToken,
) where
    S: ServedBy<B>,
    B: ResponseBody,
{
    let detected = tokio::select! {
        d = tokio::time::timeout(limits.header_read_timeout, read_preface(&mut conn)) => d,
        () = closing.cancelled() => return,
    };
    let (h2, prefix) = match detected {
        Ok(Ok(detected)) => detected,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection closed before a request");
            return;
        }
        Err(_) => {
            tracing::debug!(timeout = ?limits.header_read_timeout, "no request bytes in time; closing the connection");
            return;
        }
    };
    if port == Port::Grpc && !h2 {
        tracing::debug!("not HTTP/2 on the gRPC port; closing");
        return;
    }
    let io = Prefixed::new(prefix, conn);
    let io = TokioIo::new(if port == Port::Grpc { io.flat() } else { io });
    let result = if h2 {
        // Only HTTP/2 pays for the in-flight tracking (see `Activity`).
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: TowerToHyperService::new(service),
            activity: activity.clone(),
        };
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        if port == Port::Grpc {
            // No cap on concurrent streams, as under `tonic::transport::Server`: a gRPC client
            // multiplexes all its calls over one connection.
            builder.max_concurrent_streams(None);
        }
        let conn = builder.serve_connection(io, service);
        drive_h2(
            conn,
            &activity,
            limits.header_read_timeout,
            watcher,
            closing,
        )
        .await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(MAX_HEADERS);
        watcher
            .watch(builder.serve_connection(io, TowerToHyperService::new(service)))
            .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Runs an HTTP/2 connection to its end, closing it once idle: when no request has been in
/// flight (see [`Activity`]) for `timeout` (counting from the preface, then from the end of the
/// last response), it is shut down gracefully (GOAWAY; hyper closes it once its streams are
/// done and the client acknowledged the GOAWAY's PING). If it is still open and idle `timeout`
/// after that (a client that never answers the PING, or never even sends its SETTINGS), it is
/// dropped. A request in flight (a stream of hours, a slow request body) is never cut.
///
/// Server shutdown (`closing`) starts the same graceful shutdown; `watcher` is held until the
/// connection ends, so [`GracefulShutdown::shutdown`] waits for it (`Watcher::watch` would
/// drive the connection itself, leaving no room for this loop).
async fn drive_h2<C>(
    conn: C,
    activity: &Activity,
    timeout: Duration,
    watcher: Watcher,
    closing: CancellationToken,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let _watcher = watcher;
    // Polled at every wake of this task: its own token, not the lock all connections share.
    let closing = closing.child_token();
    tokio::pin!(conn);
    // When the GOAWAY went out (idle, or server shutdown).
    let mut goaway: Option<Instant> = None;
    // When to act, if idle: `timeout` after it became idle (or after the GOAWAY, if later).
    let due = |goaway: Option<Instant>| {
        activity
            .idle_since()
            .map(|since| goaway.map_or(since, |g| g.max(since)) + timeout)
    };
    loop {
        let mut at = due(goaway);
        if at.is_none() {
            // Busy: ask to be told when it is not, then look again (an end in between would
            // not be told).
            activity.watching.store(true, Ordering::SeqCst);
            at = due(goaway);
            if at.is_some() {
                activity.watching.store(false, Ordering::SeqCst);
            }
        }
        tokio::select! {
            // Most wakes are the connection's.
            biased;
            result = conn.as_mut() => return result,
            () = closing.cancelled(), if goaway.is_none() => {
                conn.as_mut().graceful_shutdown();
                goaway = Some(Instant::now());
            }
            () = activity.ended.notified(), if at.is_none() => {
                activity.watching.store(false, Ordering::SeqCst);
            }
            () = sleep_until(at) => {
                // Requests may have started (and ended) since the sleep began.
                if due(goaway).is_none_or(|at| Instant::now() < at) {
                    continue;
                }
                if goaway.is_some() {
                    tracing::debug!(?timeout, "idle HTTP/2 connection still open after its GOAWAY; dropping it");
                    return Ok(());
                }
                tracing::debug!(?timeout, "HTTP/2 connection idle; closing it (GOAWAY)");
                conn.as_mut().graceful_shutdown();
                goaway = Some(Instant::now());
            }
        }
    }
}

/// Sleeps until `at`, or forever if `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The requests in flight on one HTTP/2 connection, and since when there have been none. A
/// request is in flight from the moment its head has arrived (the service is called) until its
/// response, body included, is finished or dropped (see [`Tracked`]).
///
/// [`drive_h2`] reads it when a deadline is due, so a busy connection costs each request an
/// atomic add, and a clock read, an atomic max, a subtraction and a load when it ends; the
/// connection's task is only woken (`ended`) when it asked to be (`watching`), which it does
/// when a deadline found requests in flight.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// When `in_flight` last fell to 0, in nanoseconds since `epoch`.
    idle_since: AtomicU64,
    /// The connection's start (its preface has arrived).
    epoch: Instant,
    /// Whether `ended` is to be notified when `in_flight` falls to 0. Sequentially consistent
    /// with `in_flight`: either the driver, after setting it, sees the count at 0, or the last
    /// request, after its subtraction, sees it set.
    watching: AtomicBool,
    /// Notified when `in_flight` falls to 0 while `watching`.
    ended: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            epoch: Instant::now(),
            watching: AtomicBool::new(false),
            ended: Notify::new(),
        }
    }

    /// Since when the connection has had no request in flight; `None` while it has one.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let nanos = self.idle_since.load(Ordering::Acquire);
        Some(self.epoch + Duration::from_nanos(nanos))
    }
}

/// One request in flight on an HTTP/2 connection: counted in [`Activity`] until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &*self.0;
        // Stamped before the count falls, so whoever sees 0 also sees the new stamp.
        let nanos = u64::try_from(activity.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        activity.idle_since.fetch_max(nanos, Ordering::AcqRel);
        if activity.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && activity.watching.load(Ordering::SeqCst)
        {
            activity.ended.notify_one();
        }
    }
}

/// An HTTP/2 connection's service: counts each request in [`Activity`] from its call until its
/// response body is finished or dropped.
#[derive(Debug, Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity);
        TrackedFuture {
            inner: self.inner.call(req),
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// The response future of [`Tracked`]: hands its count on to the response body.
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            _in_flight: in_flight,
        })))
    }
}

pin_project! {
    /// A response body of [`Tracked`]: its request stays in flight until it is dropped.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads until the bytes read either are the HTTP/2 preface (`true`) or stop matching it
/// (`false`, HTTP/1); returns them so they can be replayed. EOF before any decision is an error.
async fn read_preface<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(bool, Vec<u8>)> {
    let mut buf = vec![0; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < H2_PREFACE.len() {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let matches = buf[filled..filled + n] == H2_PREFACE[filled..filled + n];
        filled += n;
        if !matches {
            buf.truncate(filled);
            return Ok((false, buf));
        }
    }
    Ok((true, buf))
}

/// An I/O stream whose first reads replay the bytes protocol detection consumed.
#[derive(Debug)]
struct Prefixed<I> {
    prefix: Vec<u8>,
    read: usize,
    inner: I,
    /// Whether to offer vectored writes when `inner` does (see [`Prefixed::flat`]).
    vectored: bool,
}

impl<I> Prefixed<I> {
    fn new(prefix: Vec<u8>, inner: I) -> Self {
        Self {
            prefix,
            read: 0,
            inner,
            vectored: true,
        }
    }

    /// Writes without vectored I/O, for gRPC's HTTP/2 connections. h2 then copies a DATA frame
    /// of up to 1 KiB into its write buffer instead of chaining it (256 bytes with vectored
    /// I/O), and a chained frame must be written out before the next frame is buffered. So a
    /// unary answer (HEADERS, a DATA frame of a few hundred bytes, the trailers' HEADERS)
    /// leaves in one `write` instead of a `writev` and a second write for the trailers: one
    /// syscall, and one loopback or network segment, fewer per call. The bytes are the same.
    fn flat(mut self) -> Self {
        self.vectored = false;
        self
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this.prefix.get(this.read..)
            && !rest.is_empty()
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored && self.inner.is_write_vectored()
    }
}

// === impl Conn ===

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn preface_detection_and_replay() {
        let check = |input: &'static [u8], h2: bool, consumed: &'static [u8]| async move {
            let mut io = input;
            let (is_h2, prefix) = read_preface(&mut io).await.unwrap();
            assert_eq!(is_h2, h2);
            // A slice reader hands over up to the preface's length at once.
            assert_eq!(prefix, &input[..input.len().min(H2_PREFACE.len())]);
            assert!(prefix.starts_with(consumed));
            // Replayed prefix, then the rest, byte for byte.
            let mut replay = Prefixed::new(prefix, io);
            let mut all = Vec::new();
            replay.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, input);
        };
        check(b"GET / HTTP/1.1\r\n\r\n", false, b"G").await;
        check(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0", true, H2_PREFACE).await;
        check(b"PRI * HTTP/1.1\r\n", false, b"PRI * HTTP/1.1\r\n").await;
        let mut empty: &[u8] = b"";
        assert!(read_preface(&mut empty).await.is_err());
        let mut partial: &[u8] = b"PRI";
        assert!(read_preface(&mut partial).await.is_err());
    }
}
