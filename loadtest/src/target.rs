//! Clients for the system under test, each checking every response:
//!
//! - [`HttpConn`]: one HTTP/1.1 keep-alive connection, one request at a time;
//! - [`H2Conn`]: one HTTP/2 connection (h2c with prior knowledge), concurrent streams;
//! - [`GrpcConn`]: one gRPC channel (HTTP/2), concurrent calls.
//!
//! The [`Protocol`] decides the request and what counts as a correct answer: HTTP 200 with the
//! body the endpoint promises (an allocation with a `revision`, an OFREP evaluation with a
//! `value`, a bulk answer whose flags all evaluated), or a gRPC `OK` status (read from the
//! trailers, so a 200 with a failing `grpc-status` is a failure) with a message that is not
//! empty. Anything else is an [`ErrorKind`]; [`ErrorKind::is_shed`] tells load shedding (HTTP
//! 503 or 429, gRPC `RESOURCE_EXHAUSTED`) from other failures. Owns no timing: the caller
//! measures latency.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue, TE};
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::net::TcpStream;

use crate::Protocol;
use crate::population::Population;

/// Why a request did not count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A (re)connect or HTTP handshake failed.
    Connect,
    /// No answer within the request timeout, or the run's grace period ended first.
    Timeout,
    /// The connection failed while sending the request or reading the answer.
    Io,
    /// An HTTP status other than 200.
    HttpStatus(u16),
    /// A gRPC status other than `OK`, sent by the server.
    Grpc(tonic::Code),
    /// A gRPC call that failed below gRPC (an HTTP/2 stream or connection error, e.g. a reset
    /// or `GOAWAY`), which tonic reports as a status with the transport error as its source.
    GrpcTransport(tonic::Code),
    /// A 200 / `OK` answer whose body is not what the endpoint promises (no `revision`, no
    /// `value`, no flags).
    BadBody,
    /// A well-formed answer in which a flag failed to evaluate (an OFREP `errorCode`, a flagd
    /// `ERROR` reason or a missing value).
    FlagError,
    /// The request could not even be queued: too many requests already waiting or in flight.
    DroppedOverload,
}

/// The path of each HTTP protocol's endpoint, used when `--url` has none.
pub const DEFAULT_PATH: &str = "/v1/allocate";

/// The OFREP bulk evaluation path.
pub const OFREP_BULK_PATH: &str = "/ofrep/v1/evaluate/flags";

/// What to send and how to check the answer, for the HTTP protocols.
#[derive(Debug, Clone)]
struct HttpTarget {
    protocol: Protocol,
    addr: String,
    host: HeaderValue,
    path: Uri,
}

/// One HTTP/1.1 keep-alive connection; one request at a time. Reconnects (counting an
/// [`ErrorKind::Connect`] on failure) after any transport error.
#[derive(Debug)]
pub struct HttpConn {
    target: HttpTarget,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

/// One HTTP/2 connection, cleartext with prior knowledge (no upgrade); clones share it and
/// may have requests in flight concurrently, as separate streams. Reconnects once the
/// connection is closed.
#[derive(Debug, Clone)]
pub struct H2Conn {
    target: Arc<HttpTarget>,
    sender: Arc<tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>>,
}

/// One gRPC connection (HTTP/2, cleartext with prior knowledge); clones share it and may have
/// calls in flight concurrently, as separate streams. Speaks gRPC directly over the `h2`
/// crate with requests encoded by [`crate::wire`] (no tonic channel, buffer task or `Struct`
/// per call), so that one core of load drives well over 10,000 calls/s. Reconnects once the
/// connection is closed.
#[derive(Debug, Clone)]
pub struct GrpcConn {
    target: Arc<GrpcTarget>,
    conn: Arc<tokio::sync::Mutex<Option<H2Sender>>>,
}

/// What a [`GrpcConn`] calls.
#[derive(Debug)]
struct GrpcTarget {
    protocol: Protocol,
    /// The flag `ResolveBoolean` evaluates (protocol `flagd`).
    flag: Box<str>,
    addr: String,
    /// `http://authority/package.Service/Method`.
    uri: Uri,
}

/// One live h2 connection's handle, and whether its connection task has ended.
#[derive(Debug)]
struct H2Sender {
    sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// The gRPC status header (or trailer).
const GRPC_STATUS: &str = "grpc-status";

/// `/v1/allocate`: the answer has a `revision`.
#[derive(Deserialize)]
struct AllocateProbe {
    #[allow(dead_code)]
    revision: u64,
}

/// OFREP single flag, 200: a `value` (an error answer has none, and another status).
#[derive(Deserialize)]
struct OfrepProbe {
    #[allow(dead_code)]
    value: IgnoredAny,
}

/// OFREP bulk: `flags`, each entry either evaluated or carrying an `errorCode`.
#[derive(Deserialize)]
struct BulkProbe {
    flags: Vec<BulkEntry>,
}

#[derive(Deserialize)]
struct BulkEntry {
    #[serde(rename = "errorCode")]
    error_code: Option<IgnoredAny>,
}

// === impl ErrorKind ===

impl ErrorKind {
    /// Whether the server refused the request to protect itself (HTTP 503 or 429, gRPC
    /// `RESOURCE_EXHAUSTED`, which tonic's load shedding sends): reported apart from other
    /// failures, with its own latency distribution.
    pub fn is_shed(self) -> bool {
        matches!(
            self,
            ErrorKind::HttpStatus(503 | 429) | ErrorKind::Grpc(tonic::Code::ResourceExhausted)
        )
    }
}

impl fmt::Display for ErrorKind {
    /// The stable key used in reports: `connect`, `timeout`, `io`, `http_status_503`,
    /// `grpc_Internal`, `grpc_transport_Unknown`, `bad_body`, `flag_error`, `dropped_overload`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Io => f.write_str("io"),
            ErrorKind::HttpStatus(s) => write!(f, "http_status_{s}"),
            ErrorKind::Grpc(code) => write!(f, "grpc_{code:?}"),
            ErrorKind::GrpcTransport(code) => write!(f, "grpc_transport_{code:?}"),
            ErrorKind::BadBody => f.write_str("bad_body"),
            ErrorKind::FlagError => f.write_str("flag_error"),
            ErrorKind::DroppedOverload => f.write_str("dropped_overload"),
        }
    }
}

/// The authority of an `http://` URL and the `host:port` to connect to.
fn endpoint(url: &Uri) -> anyhow::Result<(&Authority, String)> {
    if url.scheme_str() != Some("http") {
        bail!("{url}: only http:// URLs are supported");
    }
    let authority = url.authority().with_context(|| format!("{url}: no host"))?;
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    Ok((authority, addr))
}

// === impl HttpTarget ===

impl HttpTarget {
    /// The endpoint of `protocol` at `url`; a path in `url` replaces the protocol's own.
    fn new(url: &Uri, protocol: Protocol, flag: &str) -> anyhow::Result<Self> {
        let (authority, addr) = endpoint(url)?;
        let host = HeaderValue::from_str(authority.as_str())?;
        let path = match url.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => match protocol {
                Protocol::Ofrep => format!("{OFREP_BULK_PATH}/{flag}")
                    .parse()
                    .with_context(|| format!("flag key `{flag}` does not fit in a URL path"))?,
                Protocol::OfrepBulk => Uri::from_static(OFREP_BULK_PATH),
                _ => Uri::from_static(DEFAULT_PATH),
            },
            Some(p) => p.parse()?,
        };
        Ok(Self {
            protocol,
            addr,
            host,
            path,
        })
    }

    async fn tcp(&self) -> anyhow::Result<TokioIo<TcpStream>> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(TokioIo::new(stream))
    }

    fn request(
        &self,
        population: &Population,
        unit: u64,
    ) -> Result<Request<Full<Bytes>>, ErrorKind> {
        Request::builder()
            .method(Method::POST)
            .uri(self.path.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(population.http_body(unit))))
            .map_err(|_| ErrorKind::Io)
    }

    /// Reads the whole answer (even on a bad status, so the connection stays usable) and
    /// checks it.
    async fn check(&self, response: Response<Incoming>) -> Result<(), ErrorKind> {
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|_| ErrorKind::Io)?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(ErrorKind::HttpStatus(status.as_u16()));
        }
        check_http_body(self.protocol, &bytes)
    }
}

/// Checks the body of a 200 answer of `protocol`.
fn check_http_body(protocol: Protocol, bytes: &[u8]) -> Result<(), ErrorKind> {
    match protocol {
        Protocol::Ofrep => serde_json::from_slice::<OfrepProbe>(bytes)
            .map(drop)
            .map_err(|_| ErrorKind::BadBody),
        Protocol::OfrepBulk => {
            let probe =
                serde_json::from_slice::<BulkProbe>(bytes).map_err(|_| ErrorKind::BadBody)?;
            if probe.flags.is_empty() {
                Err(ErrorKind::BadBody)
            } else if probe.flags.iter().any(|f| f.error_code.is_some()) {
                Err(ErrorKind::FlagError)
            } else {
                Ok(())
            }
        }
        _ => serde_json::from_slice::<AllocateProbe>(bytes)
            .map(drop)
            .map_err(|_| ErrorKind::BadBody),
    }
}

/// Whether `result` means the connection is unusable and must be replaced.
fn broken(result: &Result<(), ErrorKind>) -> bool {
    matches!(
        result,
        Err(ErrorKind::Timeout | ErrorKind::Io | ErrorKind::Connect)
    )
}

// === impl HttpConn ===

impl HttpConn {
    /// Opens a connection to the `protocol` endpoint at `url` (`http://host:port[/path]`; a
    /// path replaces the protocol's own), with `TCP_NODELAY`; `flag` is the OFREP single flag.
    pub async fn connect(url: &Uri, protocol: Protocol, flag: &str) -> anyhow::Result<Self> {
        let target = HttpTarget::new(url, protocol, flag)?;
        let mut conn = Self {
            target,
            sender: None,
        };
        conn.sender = Some(
            conn.open()
                .await
                .with_context(|| format!("connecting to {}", conn.target.addr))?,
        );
        Ok(conn)
    }

    async fn open(&self) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
        let (sender, connection) = http1::handshake(self.target.tcp().await?).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes; errors surface on the sender.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends one request and checks the answer. Must not be cancelled half-way by the caller
    /// without dropping the connection: [`HttpConn::call_timeout`] does that.
    async fn call(&mut self, population: &Population, unit: u64) -> Result<(), ErrorKind> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => {
                let s = self.open().await.map_err(|_| ErrorKind::Connect)?;
                self.sender.insert(s)
            }
        };
        sender.ready().await.map_err(|_| ErrorKind::Io)?;
        let request = self.target.request(population, unit)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| ErrorKind::Io)?;
        self.target.check(response).await
    }

    /// Sends the request for `unit` of `population`, waiting at most `timeout`. After a
    /// timeout or a transport error the connection is dropped and the next call reconnects.
    pub async fn call_timeout(
        &mut self,
        population: &Population,
        unit: u64,
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        let result = tokio::time::timeout(timeout, self.call(population, unit))
            .await
            .unwrap_or(Err(ErrorKind::Timeout));
        if broken(&result) {
            self.sender = None;
        }
        result
    }
}

// === impl H2Conn ===

impl H2Conn {
    /// Opens an HTTP/2 connection (h2c, prior knowledge) to the `protocol` endpoint at `url`,
    /// with `TCP_NODELAY`; `flag` is the OFREP single flag.
    pub async fn connect(url: &Uri, protocol: Protocol, flag: &str) -> anyhow::Result<Self> {
        let target = Arc::new(HttpTarget::new(url, protocol, flag)?);
        let sender = open_h2(&target)
            .await
            .with_context(|| format!("connecting to {} (HTTP/2)", target.addr))?;
        Ok(Self {
            target,
            sender: Arc::new(tokio::sync::Mutex::new(Some(sender))),
        })
    }

    /// The live connection's sender, reconnecting if it closed.
    async fn sender(&self) -> Result<http2::SendRequest<Full<Bytes>>, ErrorKind> {
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *slot = None;
        let s = open_h2(&self.target)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        Ok(slot.insert(s).clone())
    }

    async fn call(&self, population: &Population, unit: u64) -> Result<(), ErrorKind> {
        let mut sender = self.sender().await?;
        sender.ready().await.map_err(|_| ErrorKind::Io)?;
        let request = self.target.request(population, unit)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| ErrorKind::Io)?;
        self.target.check(response).await
    }

    /// Sends the request for `unit` of `population` as a new stream, waiting at most
    /// `timeout` (a timed-out stream is reset; the connection stays).
    pub async fn call_timeout(
        &self,
        population: &Population,
        unit: u64,
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        tokio::time::timeout(timeout, self.call(population, unit))
            .await
            .unwrap_or(Err(ErrorKind::Timeout))
    }
}

async fn open_h2(target: &HttpTarget) -> anyhow::Result<http2::SendRequest<Full<Bytes>>> {
    let (sender, connection) = http2::handshake(TokioExecutor::new(), target.tcp().await?).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// An HTTP/2 error as a failed call: an I/O error is [`ErrorKind::Io`]; a reset or `GOAWAY`
/// is a [`ErrorKind::GrpcTransport`] with the code tonic gives the same h2 reason.
fn h2_error(error: &h2::Error) -> ErrorKind {
    use h2::Reason;
    use tonic::Code;
    if error.is_io() {
        return ErrorKind::Io;
    }
    ErrorKind::GrpcTransport(match error.reason() {
        Some(Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(Reason::CANCEL) => Code::Cancelled,
        Some(Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(
            Reason::NO_ERROR
            | Reason::PROTOCOL_ERROR
            | Reason::INTERNAL_ERROR
            | Reason::FLOW_CONTROL_ERROR
            | Reason::SETTINGS_TIMEOUT
            | Reason::FRAME_SIZE_ERROR
            | Reason::COMPRESSION_ERROR
            | Reason::CONNECT_ERROR,
        ) => Code::Internal,
        _ => Code::Unknown,
    })
}

/// The `grpc-status` of an answer, from its trailers (or its headers, for a trailers-only
/// answer): `Ok(true)` for `OK`, `Ok(false)` if absent, the code as an error otherwise.
fn grpc_status(headers: &HeaderMap) -> Result<bool, ErrorKind> {
    match headers.get(GRPC_STATUS) {
        None => Ok(false),
        Some(v) => match tonic::Code::from_bytes(v.as_bytes()) {
            tonic::Code::Ok => Ok(true),
            code => Err(ErrorKind::Grpc(code)),
        },
    }
}

// === impl GrpcConn ===

impl GrpcConn {
    /// Connects one HTTP/2 connection (h2c, prior knowledge) to `url` (`http://host:port`),
    /// with `TCP_NODELAY`, for a gRPC `protocol`; `flag` is the flag `ResolveBoolean`
    /// evaluates.
    pub async fn connect(url: &Uri, protocol: Protocol, flag: &str) -> anyhow::Result<Self> {
        let (authority, addr) = endpoint(url)?;
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(crate::wire::path(protocol))
            .build()?;
        let target = Arc::new(GrpcTarget {
            protocol,
            flag: flag.into(),
            addr,
            uri,
        });
        let conn = open_grpc(&target)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            target,
            conn: Arc::new(tokio::sync::Mutex::new(Some(conn))),
        })
    }

    /// The live connection, reconnecting if it closed.
    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, ErrorKind> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.closed.load(Ordering::Relaxed)) {
            return Ok(c.sender.clone());
        }
        *slot = None;
        let c = open_grpc(&self.target)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        Ok(slot.insert(c).sender.clone())
    }

    async fn call(&self, population: &Population, unit: u64) -> Result<(), ErrorKind> {
        let h2 = |e: h2::Error| h2_error(&e);
        let mut sender = self.sender().await?.ready().await.map_err(h2)?;
        let target = &self.target;
        let body = crate::wire::request(target.protocol, &target.flag, population, unit);
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = target.uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let (response, mut stream) = sender.send_request(request, false).map_err(h2)?;
        stream.send_data(body, true).map_err(h2)?;
        let (head, mut body) = response.await.map_err(h2)?.into_parts();
        if head.status != StatusCode::OK {
            return Err(ErrorKind::HttpStatus(head.status.as_u16()));
        }
        // Trailers-only: the status is in the headers and there is no message.
        if grpc_status(&head.headers)? {
            return Err(ErrorKind::BadBody);
        }
        let is_grpc = head
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            return Err(ErrorKind::BadBody);
        }
        // Usually the whole message is one DATA frame.
        let mut message = Bytes::new();
        let mut parts = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if message.is_empty() {
                message = chunk;
            } else {
                if parts.is_empty() {
                    parts.extend_from_slice(&message);
                }
                parts.extend_from_slice(&chunk);
            }
        }
        let trailers = body.trailers().await.map_err(h2)?.unwrap_or_default();
        if !grpc_status(&trailers)? {
            // No status at all: the call did not finish as gRPC requires.
            return Err(ErrorKind::GrpcTransport(tonic::Code::Internal));
        }
        let message = if parts.is_empty() {
            &message[..]
        } else {
            &parts[..]
        };
        crate::wire::check_message(target.protocol, message)
    }

    /// Sends the call for `unit` of `population`, waiting at most `timeout`, and checks the
    /// HTTP status, the `grpc-status` (a 200 with a failing `grpc-status` is a failure) and
    /// the message. A timed-out call's stream is reset; the connection stays.
    pub async fn call_timeout(
        &self,
        population: &Population,
        unit: u64,
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        tokio::time::timeout(timeout, self.call(population, unit))
            .await
            .unwrap_or(Err(ErrorKind::Timeout))
    }
}

/// Opens one h2c connection for `target` and drives it in its own task, which marks it closed
/// when it ends.
async fn open_grpc(target: &GrpcTarget) -> anyhow::Result<H2Sender> {
    let stream = TcpStream::connect(&target.addr).await?;
    stream.set_nodelay(true)?;
    // Windows wide enough that flow control never throttles the small answers (h2's default
    // is 64 KiB for the whole connection).
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(stream)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        // Ends when every sender is dropped or the connection fails; calls see the error.
        let _ = connection.await;
        flag.store(true, Ordering::Relaxed);
    });
    Ok(H2Sender { sender, closed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_kinds() {
        assert!(ErrorKind::HttpStatus(503).is_shed());
        assert!(ErrorKind::HttpStatus(429).is_shed());
        assert!(ErrorKind::Grpc(tonic::Code::ResourceExhausted).is_shed());
        assert!(!ErrorKind::HttpStatus(500).is_shed());
        assert!(!ErrorKind::Grpc(tonic::Code::Unavailable).is_shed());
        assert!(!ErrorKind::Timeout.is_shed());
        assert!(!ErrorKind::GrpcTransport(tonic::Code::ResourceExhausted).is_shed());
    }

    #[test]
    fn h2_errors_are_transport_failures() {
        use tonic::Code;
        let reset = |r| h2_error(&h2::Error::from(r));
        assert_eq!(
            reset(h2::Reason::ENHANCE_YOUR_CALM),
            ErrorKind::GrpcTransport(Code::ResourceExhausted)
        );
        assert!(!reset(h2::Reason::ENHANCE_YOUR_CALM).is_shed());
        assert_eq!(
            reset(h2::Reason::REFUSED_STREAM),
            ErrorKind::GrpcTransport(Code::Unavailable)
        );
        assert_eq!(
            reset(h2::Reason::PROTOCOL_ERROR),
            ErrorKind::GrpcTransport(Code::Internal)
        );
        assert_eq!(
            ErrorKind::GrpcTransport(Code::Unknown).to_string(),
            "grpc_transport_Unknown"
        );
    }

    #[test]
    fn grpc_status_is_read_from_headers_or_trailers() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), Ok(false));
        h.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&h), Ok(true));
        h.insert(GRPC_STATUS, HeaderValue::from_static("13"));
        assert_eq!(grpc_status(&h), Err(ErrorKind::Grpc(tonic::Code::Internal)));
        h.insert(GRPC_STATUS, HeaderValue::from_static("8"));
        assert!(grpc_status(&h).unwrap_err().is_shed());
        h.insert(GRPC_STATUS, HeaderValue::from_static("nope"));
        assert_eq!(grpc_status(&h), Err(ErrorKind::Grpc(tonic::Code::Unknown)));
    }

    #[test]
    fn bodies_are_checked_per_protocol() {
        let check = check_http_body;
        assert_eq!(check(Protocol::Http, br#"{"revision":3}"#), Ok(()));
        assert_eq!(
            check(Protocol::Http, br#"{"flags":{}}"#),
            Err(ErrorKind::BadBody)
        );
        assert_eq!(
            check(
                Protocol::Ofrep,
                br#"{"key":"a","value":false,"variant":"off"}"#
            ),
            Ok(())
        );
        assert_eq!(
            check(Protocol::Ofrep, br#"{"key":"a","errorCode":"GENERAL"}"#),
            Err(ErrorKind::BadBody)
        );
        assert_eq!(
            check(Protocol::OfrepBulk, br#"{"flags":[{"key":"a","value":1}]}"#),
            Ok(())
        );
        assert_eq!(
            check(
                Protocol::OfrepBulk,
                br#"{"flags":[{"key":"a","value":1},{"key":"b","errorCode":"TARGETING_KEY_MISSING"}]}"#
            ),
            Err(ErrorKind::FlagError)
        );
        assert_eq!(
            check(Protocol::OfrepBulk, br#"{"flags":[]}"#),
            Err(ErrorKind::BadBody)
        );
        assert_eq!(check(Protocol::OfrepBulk, b"nope"), Err(ErrorKind::BadBody));
    }

    #[test]
    fn paths_follow_the_protocol_unless_the_url_has_one() {
        let path = |url: &str, p| {
            HttpTarget::new(&url.parse().unwrap(), p, "prefetch")
                .unwrap()
                .path
                .to_string()
        };
        assert_eq!(path("http://h:1", Protocol::Http), "/v1/allocate");
        assert_eq!(
            path("http://h:1/", Protocol::Ofrep),
            "/ofrep/v1/evaluate/flags/prefetch"
        );
        assert_eq!(
            path("http://h:1", Protocol::OfrepBulk),
            "/ofrep/v1/evaluate/flags"
        );
        assert_eq!(path("http://h:1/x?y=1", Protocol::Ofrep), "/x?y=1");
        assert!(HttpTarget::new(&"https://h:1".parse().unwrap(), Protocol::Http, "f").is_err());
    }
}
