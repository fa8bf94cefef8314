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
use std::time::Duration;

use allot_proto::allot::v1::AllocateRequest;
use allot_proto::allot::v1::allocator_client::AllocatorClient;
use allot_proto::convert::json_map_to_struct;
use allot_proto::flagd::evaluation::{v1 as flagd_v1, v2 as flagd_v2};
use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

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

/// One gRPC channel (one HTTP/2 connection); clones share it and may have calls in flight
/// concurrently, as separate streams.
#[derive(Debug, Clone)]
pub struct GrpcConn {
    protocol: Protocol,
    /// The flag `ResolveBoolean` evaluates (protocol `flagd`).
    flag: Arc<str>,
    channel: Channel,
}

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

// === impl HttpTarget ===

impl HttpTarget {
    /// The endpoint of `protocol` at `url`; a path in `url` replaces the protocol's own.
    fn new(url: &Uri, protocol: Protocol, flag: &str) -> anyhow::Result<Self> {
        if url.scheme_str() != Some("http") {
            bail!("{url}: only http:// URLs are supported");
        }
        let authority = url.authority().with_context(|| format!("{url}: no host"))?;
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
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

/// The kind of a failed gRPC call. A status the server sent (from the `grpc-status` trailer
/// or header) has no source; one tonic made from an HTTP/2 error has it as its source. The
/// difference matters for shedding: h2's `ENHANCE_YOUR_CALM` also becomes
/// `RESOURCE_EXHAUSTED`, but it is a connection-level defence, not the server shedding.
fn grpc_error(status: &tonic::Status) -> ErrorKind {
    if std::error::Error::source(status).is_some() {
        ErrorKind::GrpcTransport(status.code())
    } else {
        ErrorKind::Grpc(status.code())
    }
}

// === impl GrpcConn ===

impl GrpcConn {
    /// Connects one channel to `url` (`http://host:port`), with `TCP_NODELAY`, for a gRPC
    /// `protocol`; `flag` is the flag `ResolveBoolean` evaluates.
    pub async fn connect(url: &Uri, protocol: Protocol, flag: &str) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            protocol,
            flag: flag.into(),
            channel,
        })
    }

    async fn call(&self, population: &Population, unit: u64) -> Result<(), ErrorKind> {
        let context = Some(json_map_to_struct(&population.context(unit)));
        let channel = self.channel.clone();
        let grpc = |s: tonic::Status| grpc_error(&s);
        match self.protocol {
            Protocol::Flagd => {
                let request = flagd_v2::ResolveBooleanRequest {
                    flag_key: self.flag.to_string(),
                    context,
                };
                let r = flagd_v2::service_client::ServiceClient::new(channel)
                    .resolve_boolean(request)
                    .await
                    .map_err(grpc)?
                    .into_inner();
                if r.value.is_none() || r.reason == "ERROR" {
                    return Err(ErrorKind::FlagError);
                }
            }
            Protocol::FlagdAll => {
                let r = flagd_v1::service_client::ServiceClient::new(channel)
                    .resolve_all(flagd_v1::ResolveAllRequest { context })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                if r.flags.is_empty() {
                    return Err(ErrorKind::BadBody);
                }
            }
            _ => {
                let r = AllocatorClient::new(channel)
                    .allocate(AllocateRequest { context })
                    .await
                    .map_err(grpc)?
                    .into_inner();
                // proto3 leaves an unset field at 0, and revisions start at 1.
                if r.revision == 0 {
                    return Err(ErrorKind::BadBody);
                }
            }
        }
        Ok(())
    }

    /// Sends the call for `unit` of `population`, waiting at most `timeout`, and checks the
    /// gRPC status (tonic surfaces a non-`OK` `grpc-status`, even in an HTTP 200, as `Err`).
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
    fn grpc_statuses_from_the_transport_are_told_apart() {
        let sent = tonic::Status::resource_exhausted("Too many active requests");
        assert_eq!(
            grpc_error(&sent),
            ErrorKind::Grpc(tonic::Code::ResourceExhausted)
        );
        let mut h2 = tonic::Status::resource_exhausted("h2 protocol error: ENHANCE_YOUR_CALM");
        h2.set_source(Arc::new(std::io::Error::other("connection error")));
        assert_eq!(
            grpc_error(&h2),
            ErrorKind::GrpcTransport(tonic::Code::ResourceExhausted)
        );
        assert_eq!(
            ErrorKind::GrpcTransport(tonic::Code::Unknown).to_string(),
            "grpc_transport_Unknown"
        );
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
