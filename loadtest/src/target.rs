//! Clients for the system under test: one HTTP/1.1 keep-alive connection ([`HttpConn`]) or one
//! gRPC channel over HTTP/2 ([`GrpcConn`]), each checking every response.
//!
//! A call returns `Ok(())` only for a correct answer: HTTP 200 with a JSON body that has a
//! `revision`, or a gRPC `OK` status with a non-zero `revision`. Anything else is an
//! [`ErrorKind`]. Owns no timing: the caller measures latency.

use std::fmt;
use std::time::Duration;

use allot_proto::allot::v1::AllocateRequest;
use allot_proto::allot::v1::allocator_client::AllocatorClient;
use allot_proto::convert::json_map_to_struct;
use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

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
    /// A gRPC status other than `OK`.
    Grpc(tonic::Code),
    /// A 200 / `OK` answer whose body is not an allocation (no `revision`).
    BadBody,
    /// The request could not even be queued: too many requests already waiting or in flight.
    DroppedOverload,
}

/// The path used when `--url` has none.
pub const DEFAULT_PATH: &str = "/v1/allocate";

/// One HTTP/1.1 keep-alive connection to the native `POST /v1/allocate` endpoint; one request
/// at a time. Reconnects (counting a [`ErrorKind::Connect`] on failure) after any error.
#[derive(Debug)]
pub struct HttpConn {
    addr: String,
    host: HeaderValue,
    path: Uri,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// One gRPC channel (one HTTP/2 connection) to `allot.v1.Allocator`; clones share it and may
/// have calls in flight concurrently, as separate streams.
#[derive(Debug, Clone)]
pub struct GrpcConn {
    client: AllocatorClient<Channel>,
}

/// The fields of the answer that are checked; the rest is skipped without being built.
#[derive(Deserialize)]
struct Probe {
    #[allow(dead_code)]
    revision: u64,
}

// === impl ErrorKind ===

impl fmt::Display for ErrorKind {
    /// The stable key used in reports: `connect`, `timeout`, `io`, `http_status_503`,
    /// `grpc_Internal`, `bad_body`, `dropped_overload`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Io => f.write_str("io"),
            ErrorKind::HttpStatus(s) => write!(f, "http_status_{s}"),
            ErrorKind::Grpc(code) => write!(f, "grpc_{code:?}"),
            ErrorKind::BadBody => f.write_str("bad_body"),
            ErrorKind::DroppedOverload => f.write_str("dropped_overload"),
        }
    }
}

// === impl HttpConn ===

impl HttpConn {
    /// Opens a connection to `url` (`http://host:port[/path]`; the path defaults to
    /// [`DEFAULT_PATH`]), with `TCP_NODELAY`.
    pub async fn connect(url: &Uri) -> anyhow::Result<Self> {
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
            None | Some("" | "/") => Uri::from_static(DEFAULT_PATH),
            Some(p) => p.parse()?,
        };
        let mut conn = Self {
            addr,
            host,
            path,
            sender: None,
        };
        conn.sender = Some(
            conn.open()
                .await
                .with_context(|| format!("connecting to {}", conn.addr))?,
        );
        Ok(conn)
    }

    async fn open(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes; errors surface on the sender.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends `POST` with `body` and checks the answer. Must not be cancelled half-way by the
    /// caller without dropping the connection: [`HttpConn::call_timeout`] does that.
    async fn call(&mut self, body: Bytes) -> Result<(), ErrorKind> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => {
                let s = self.open().await.map_err(|_| ErrorKind::Connect)?;
                self.sender.insert(s)
            }
        };
        sender.ready().await.map_err(|_| ErrorKind::Io)?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.path.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(|_| ErrorKind::Io)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| ErrorKind::Io)?;
        let status = response.status();
        // The body is read even on a bad status, so the connection stays usable.
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|_| ErrorKind::Io)?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(ErrorKind::HttpStatus(status.as_u16()));
        }
        serde_json::from_slice::<Probe>(&bytes).map_err(|_| ErrorKind::BadBody)?;
        Ok(())
    }

    /// Allocates `unit` of `population`, waiting at most `timeout`. After a timeout or a
    /// transport error the connection is dropped and the next call reconnects.
    pub async fn call_timeout(
        &mut self,
        population: &Population,
        unit: u64,
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        let body = Bytes::from(population.http_body(unit));
        let result = match tokio::time::timeout(timeout, self.call(body)).await {
            Ok(r) => r,
            Err(_) => Err(ErrorKind::Timeout),
        };
        if matches!(
            result,
            Err(ErrorKind::Timeout | ErrorKind::Io | ErrorKind::Connect)
        ) {
            self.sender = None;
        }
        result
    }
}

// === impl GrpcConn ===

impl GrpcConn {
    /// Connects one channel to `url` (`http://host:port`), with `TCP_NODELAY`.
    pub async fn connect(url: &Uri) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            client: AllocatorClient::new(channel),
        })
    }

    /// Allocates `unit` of `population`, waiting at most `timeout`, and checks the gRPC
    /// status (tonic surfaces a non-`OK` `grpc-status`, even in an HTTP 200, as `Err`).
    pub async fn call_timeout(
        &mut self,
        population: &Population,
        unit: u64,
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        let request = AllocateRequest {
            context: Some(json_map_to_struct(&population.context(unit))),
        };
        match tokio::time::timeout(timeout, self.client.allocate(request)).await {
            Err(_) => Err(ErrorKind::Timeout),
            Ok(Err(status)) => Err(ErrorKind::Grpc(status.code())),
            // proto3 leaves an unset field at 0, and revisions start at 1.
            Ok(Ok(response)) if response.get_ref().revision == 0 => Err(ErrorKind::BadBody),
            Ok(Ok(_)) => Ok(()),
        }
    }
}
