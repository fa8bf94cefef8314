//! Overload and slow clients, through real sockets: requests past `--max-concurrency` are shed
//! (HTTP 503 + `Retry-After: 1`, gRPC `RESOURCE_EXHAUSTED`) while admitted ones stay correct,
//! and everything succeeds again once the burst is over; `--request-timeout` and an incoming
//! `grpc-timeout` cut slow requests; slow header senders are disconnected after
//! `--header-read-timeout` while others are served (HTTP/2 too: a connection trickling its
//! HEADERS, or idle after a request, is closed, while streams and slow bodies are never cut);
//! oversized heads get 431.
//!
//! Saturation (`--shed-lag`): a runtime kept busy by CPU-bound tasks sheds new requests on every
//! API and serves them again once the load stops. The connection cap (`--max-connections`):
//! connections past it are answered 503 / `RESOURCE_EXHAUSTED` and closed, past twice it closed
//! unanswered, and a freed connection slot serves again.
//!
//! Requests are held in flight for real: a request whose body has not fully arrived holds its
//! slot until the rest comes (or the timeout fires). No assertion depends on wall-clock time.

mod http_support;
mod net_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use allot_proto::allot::v1::allocator_client::AllocatorClient;
use allot_proto::allot::v1::{AllocateRequest, AllocateResponse, WatchConfigRequest};
use allot_proto::flagd::evaluation::v2;
use allot_server::app::Server;
use axum::body::Bytes;
use http_body_util::StreamBody;
use http_support::CONFIG;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use net_support::{Client, HANG, metric, start, until};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const BODY: &str = r#"{"context": {"targetingKey": "m-1", "device_id": "d-1"}}"#;

/// The allocations the server must answer for [`BODY`].
fn expected(server: &Server) -> Vec<(String, String)> {
    let ctx = allot::Context::from(
        json!({"targetingKey": "m-1", "device_id": "d-1"})
            .as_object()
            .unwrap()
            .clone(),
    );
    let snapshot = server.store().load_full().unwrap();
    snapshot
        .allocate(&ctx)
        .assignments()
        .iter()
        .map(|a| (a.experiment.to_owned(), a.cell.to_owned()))
        .collect()
}

fn cells(body: &Value) -> Vec<(String, String)> {
    body["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["experiment"].as_str().unwrap().to_owned(),
                a["cell"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn context() -> prost_types::Struct {
    allot_proto::convert::json_map_to_struct(
        json!({"targetingKey": "m-1", "device_id": "d-1"})
            .as_object()
            .unwrap(),
    )
}

/// One `allot.v1.Allocator/Allocate` call with [`context`].
async fn allocate(
    client: &mut AllocatorClient<tonic::transport::Channel>,
) -> Result<AllocateResponse, tonic::Status> {
    let req = AllocateRequest {
        context: Some(context()),
    };
    client.allocate(req).await.map(tonic::Response::into_inner)
}

/// Asserts `r` is a shed answer: 503, `Retry-After: 1`, in OFREP's shape under `/ofrep/` and
/// the native one (code `OVERLOADED`, a message containing `why`) elsewhere.
fn assert_shed(r: &net_support::Reply, path: &str, why: &str) {
    assert_eq!(r.status, 503, "{path}: {}", r.text());
    assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{path}");
    let json = r.json();
    if path.starts_with("/ofrep/") {
        assert_eq!(json["errorCode"], "GENERAL", "{json}");
    } else {
        assert_eq!(json["code"], "OVERLOADED", "{json}");
    }
    let message = json["message"].as_str().or(json["errorDetails"].as_str());
    assert!(message.unwrap().contains(why), "{json}");
}

/// An HTTP/1.1 `POST /v1/allocate` whose body stops halfway: it holds its slot until
/// [`Held::finish`] sends the rest (or the server times it out).
struct Held {
    tcp: TcpStream,
}

impl Held {
    async fn open(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/allocate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            BODY.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&BODY.as_bytes()[..10]).await.unwrap();
        Self { tcp }
    }

    /// Sends the rest of the body; returns the raw response.
    async fn finish(mut self) -> String {
        self.tcp.write_all(&BODY.as_bytes()[10..]).await.unwrap();
        self.response().await
    }

    /// Reads the response until the server closes.
    async fn response(&mut self) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(HANG, self.tcp.read_to_end(&mut out))
            .await
            .expect("response in time")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The status and JSON body of a raw HTTP/1.1 response (`connection: close`, no chunking).
fn parse_raw(raw: &str) -> (u16, Value) {
    let status = raw
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A server with `args` and saturation shedding off: the tests of the other guards send
/// debug-build bursts that can saturate a busy machine's runtime for real (and run beside the
/// saturation test's CPU hogs), and must see their own guard alone.
async fn start_steady(dir: &std::path::Path, args: &[&str]) -> Server {
    let mut all = vec!["--shed-lag", "0"];
    all.extend_from_slice(args);
    start(dir, CONFIG, &all).await
}

async fn in_flight(mgmt: &Client) -> f64 {
    metric(mgmt, "allot_requests_in_flight ").await
}

#[tokio::test]
async fn excess_requests_are_shed_and_the_server_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_steady(
        dir.path(),
        &["--max-concurrency", "2", "--request-timeout", "60s"],
    )
    .await;
    let want = expected(&server);
    let http = Client::plain(server.http_addr);
    let mgmt = Client::plain(server.mgmt_addr);
    let ch = net_support::grpc_channel(&server).await;
    let mut native = AllocatorClient::new(ch.clone());
    let mut flagd = v2::service_client::ServiceClient::new(ch.clone());

    // Both slots held by slow bodies.
    let a = Held::open(server.http_addr).await;
    let b = Held::open(server.http_addr).await;
    until("two requests in flight", || async {
        in_flight(&mgmt).await == 2.0
    })
    .await;

    // Everything else that needs a slot is shed at once, on every API.
    let mut shed = 0;
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move {
                let path = if i % 2 == 0 {
                    "/v1/allocate"
                } else {
                    "/ofrep/v1/evaluate/flags"
                };
                (path, http.post(path, &[], BODY).await)
            })
        })
        .collect();
    for task in burst {
        let (path, r) = task.await.unwrap();
        assert_shed(&r, path, "concurrency limit");
        shed += 1;
    }
    let status = allocate(&mut native).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let status = flagd
        .resolve_all(v2::ResolveAllRequest {
            context: Some(context()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Streams hold no slot: WatchConfig still opens; health and management still answer.
    let mut watch = native
        .watch_config(WatchConfigRequest { known_revision: 0 })
        .await
        .expect("WatchConfig needs no slot")
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().revision, 1);
    assert_eq!(mgmt.get("/readyz", &[]).await.status, 200);

    // The held requests were admitted and complete correctly.
    let (status, body) = parse_raw(&a.finish().await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(cells(&body), want);

    // One slot free, a concurrent burst: every answer is a correct 200 or a clean 503.
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { http.post("/v1/allocate", &[], BODY).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in burst {
        let r = task.await.unwrap();
        match r.status.as_u16() {
            200 => {
                assert_eq!(cells(&r.json()), want);
                ok += 1;
            }
            503 => {
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
                assert_eq!(r.json()["code"], "OVERLOADED");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {}", r.text()),
        }
    }
    assert_eq!(ok + refused, 40);
    assert!(ok >= 1, "a free slot serves");
    shed += refused;

    let (status, body) = parse_raw(&b.finish().await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(cells(&body), want);

    // Recovery: with the burst over, every request succeeds again.
    until("no request in flight", || async {
        in_flight(&mgmt).await == 0.0
    })
    .await;
    for _ in 0..10 {
        let r = http.post("/v1/allocate", &[], BODY).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(cells(&r.json()), want);
        let reply = allocate(&mut native).await.expect("gRPC recovers");
        assert_eq!(reply.allocations.len(), want.len());
    }

    // Every refusal was counted, by transport.
    let http_shed = metric(
        &mgmt,
        r#"allot_requests_rejected_total{transport="http",reason="overload"}"#,
    )
    .await;
    assert_eq!(http_shed, f64::from(shed));
    let grpc_shed = metric(
        &mgmt,
        r#"allot_requests_rejected_total{transport="grpc",reason="overload"}"#,
    )
    .await;
    assert_eq!(grpc_shed, 2.0);
    drop(watch);
    server.shutdown().await.unwrap();
}

/// A request body sent a frame at a time through the returned sender.
type Streamed = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

fn streamed_body() -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, Streamed) {
    let (tx, rx) = mpsc::channel(1);
    (tx, StreamBody::new(ReceiverStream::new(rx)))
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, driven by a task of its own whose
/// handle ends when the connection does.
async fn h2_connect<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

/// A gRPC `Allocate` over raw HTTP/2 whose message never completes; returns the
/// `grpc-status` the server answers with.
async fn stalled_grpc_call(addr: SocketAddr, grpc_timeout: Option<&str>) -> String {
    let mut sender = h2_connect(addr).await.0;
    let (tx, body) = streamed_body();
    let mut req = hyper::Request::post(format!("http://{addr}/allot.v1.Allocator/Allocate"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        req = req.header("grpc-timeout", t);
    }
    let req = req.body(body).unwrap();
    // A frame header announcing 50 bytes, then nothing.
    tx.send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 50]))))
        .await
        .unwrap();
    let res = tokio::time::timeout(HANG, sender.send_request(req))
        .await
        .expect("an answer before the hang limit")
        .unwrap();
    let status = res
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    drop(tx);
    status.expect("a trailers-only gRPC status")
}

#[tokio::test]
async fn slow_requests_time_out_and_grpc_timeout_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_steady(dir.path(), &["--request-timeout", "300ms"]).await;
    let mgmt = Client::plain(server.mgmt_addr);

    // HTTP: a body that never completes gets 503 TIMEOUT and frees its slot.
    let mut held = Held::open(server.http_addr).await;
    let (status, body) = parse_raw(&held.response().await);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "TIMEOUT", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("300 ms"),
        "{body}"
    );
    // gRPC: the server's timeout gives DEADLINE_EXCEEDED (4).
    assert_eq!(stalled_grpc_call(server.grpc_addr, None).await, "4");
    until("slots released", || async { in_flight(&mgmt).await == 0.0 }).await;
    assert_eq!(
        metric(
            &mgmt,
            r#"allot_requests_rejected_total{transport="http",reason="timeout"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &mgmt,
            r#"allot_requests_rejected_total{transport="grpc",reason="timeout"}"#
        )
        .await,
        1.0
    );
    // Fast requests are unaffected.
    let r = Client::plain(server.http_addr)
        .post("/v1/allocate", &[], BODY)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    server.shutdown().await.unwrap();

    // With a long server timeout, the caller's shorter grpc-timeout decides.
    let dir = tempfile::tempdir().unwrap();
    let server = start_steady(dir.path(), &["--request-timeout", "1h"]).await;
    assert_eq!(stalled_grpc_call(server.grpc_addr, Some("200m")).await, "4");
    let mut native = AllocatorClient::new(net_support::grpc_channel(&server).await);
    let mut req = tonic::Request::new(AllocateRequest {
        context: Some(context()),
    });
    req.set_timeout(Duration::from_secs(30));
    assert!(native.allocate(req).await.is_ok());
    server.shutdown().await.unwrap();
}

/// A connection that sends a request head one header line at a time, every 100 ms, and
/// reports what it read once the server closes it.
async fn dribble(addr: SocketAddr, start: &'static [u8], lines: bool) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(start).await.is_err() {
            return;
        }
        if lines {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if wr.write_all(b"x-pad: 1\r\n").await.is_err() {
                    return;
                }
            }
        }
        // Silent: keep the write half open.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(HANG, rd.read_to_end(&mut got)).await;
    writer.abort();
    assert!(read.is_ok(), "a slow client must be disconnected");
    got
}

#[tokio::test]
async fn slow_header_senders_are_disconnected_and_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_steady(
        dir.path(),
        &[
            "--header-read-timeout",
            "500ms",
            "--max-header-bytes",
            "16384",
        ],
    )
    .await;
    let want = expected(&server);
    let addr = server.http_addr;

    let mut slow = Vec::new();
    for i in 0..24 {
        let (start, lines): (&'static [u8], bool) = match i % 4 {
            // Dribbles header lines forever.
            0 | 1 => (b"POST /v1/allocate HTTP/1.1\r\nhost: localhost\r\n", true),
            // Connects and says nothing.
            2 => (b"", false),
            // Starts what could be the HTTP/2 preface, then stalls.
            _ => (b"PRI * HTTP/2", false),
        };
        slow.push(tokio::spawn(dribble(addr, start, lines)));
    }
    // The gRPC port too: silent, or a preface that stalls, or not HTTP/2 at all.
    let grpc_addr = server.grpc_addr;
    for start in [&b""[..], b"PRI * HTTP/2.0\r\n", b"GET / HTTP/1.1\r\n\r\n"] {
        slow.push(tokio::spawn(dribble(grpc_addr, start, false)));
    }
    // Meanwhile, normal clients are served (HTTP/2 with prior knowledge, the management and
    // gRPC ports too).
    let tcp = TcpStream::connect(addr).await.unwrap();
    let req = net_support::request("POST", &format!("http://{addr}/v1/allocate"), &[], BODY);
    let r = net_support::send_h2(tcp, req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cells(&r.json()), want);
    let mut native = AllocatorClient::new(net_support::grpc_channel(&server).await);
    for _ in 0..5 {
        let reply = allocate(&mut native)
            .await
            .expect("gRPC is served while slow clients hang on");
        assert_eq!(reply.allocations.len(), want.len());
    }
    let http = Client::plain(addr);
    for _ in 0..10 {
        let r = http.post("/v1/allocate", &[], BODY).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(cells(&r.json()), want);
    }
    assert_eq!(
        Client::plain(server.mgmt_addr)
            .get("/healthz", &[])
            .await
            .status,
        200
    );
    for task in slow {
        let got = task.await.unwrap();
        // Closed without serving the request.
        assert!(
            !got.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }

    // A request head past --max-header-bytes, or with too many headers: 431.
    let raw = |head: String| async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(HANG, tcp.read_to_end(&mut got))
            .await
            .expect("answered in time");
        String::from_utf8_lossy(&got).into_owned()
    };
    let big = format!(
        "GET /v1/config HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let got = raw(big).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let got = raw(format!(
        "GET /v1/config HTTP/1.1\r\nhost: localhost\r\n{many}\r\n"
    ))
    .await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
    // Just under the limit is fine.
    let r = http
        .get("/v1/config", &[("x-big", &"a".repeat(12_000))])
        .await;
    assert_eq!(r.status, 200);
    server.shutdown().await.unwrap();
}

/// An HTTP/2 frame: its 9-byte header (`length`, `kind`, `flags`, `stream`), then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, length: usize, payload: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(length).unwrap().to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The types of the HTTP/2 frames in `bytes` (what a server sent on a connection).
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

/// The HTTP/2 GOAWAY frame type.
const GOAWAY: u8 = 7;

/// A raw h2c connection that sends the preface and its SETTINGS, then a HEADERS frame one byte
/// every 100 ms (it announces 16000 bytes, so it never completes); returns the frame types the
/// server sent once it closed the connection.
async fn trickle_h2_headers(addr: SocketAddr) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        start.extend(h2_frame(4, 0, 0, 0, &[])); // SETTINGS, defaults
        start.extend(h2_frame(1, 0x4, 1, 16_000, &[])); // HEADERS, END_HEADERS, stream 1
        if wr.write_all(&start).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // `:method: GET`, over and over.
            if wr.write_all(&[0x82]).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(HANG, rd.read_to_end(&mut got)).await;
    writer.abort();
    assert!(
        read.is_ok(),
        "an HTTP/2 client trickling its HEADERS must be disconnected"
    );
    h2_frame_types(&got)
}

/// Sends `req` on a new HTTP/2 connection (hyper's client, which answers the server's PINGs);
/// returns the response's status and `grpc-status` (in its headers or trailers) once the
/// server has closed the then idle connection.
async fn h2_once_then_idle(
    addr: SocketAddr,
    req: hyper::Request<http_body_util::Full<Bytes>>,
) -> (u16, Option<String>) {
    use http_body_util::BodyExt;
    let (mut sender, conn) = h2_connect(addr).await;
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let mut grpc_status = res.headers().get("grpc-status").cloned();
    let body = res.into_body().collect().await.unwrap();
    if let Some(trailers) = body.trailers() {
        grpc_status = grpc_status.or_else(|| trailers.get("grpc-status").cloned());
    }
    let closed = tokio::time::timeout(HANG, conn).await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/2 connection must be closed by the server"
    );
    (status, grpc_status.map(|v| v.to_str().unwrap().to_owned()))
}

#[tokio::test]
async fn slow_and_idle_http2_connections_are_closed_and_streams_kept() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(500);
    let server = start_steady(
        dir.path(),
        &["--header-read-timeout", "500ms", "--request-timeout", "1h"],
    )
    .await;
    let want = expected(&server);
    let (addr, grpc_addr) = (server.http_addr, server.grpc_addr);

    // HEADERS trickled byte by byte after a complete preface, on both ports: a GOAWAY, then
    // (the client never answers its PING) the connection is dropped.
    let trickled = [
        tokio::spawn(trickle_h2_headers(addr)),
        tokio::spawn(trickle_h2_headers(grpc_addr)),
    ];
    // One request, then idle: closed (hyper's client answers the GOAWAY's PING, so gracefully).
    let idle_http = tokio::spawn(h2_once_then_idle(
        addr,
        net_support::request("POST", &format!("http://{addr}/v1/allocate"), &[], BODY),
    ));
    let health = hyper::Request::post(format!("http://{grpc_addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    let idle_grpc = tokio::spawn(h2_once_then_idle(grpc_addr, health));

    // Long-lived requests are never cut: a WatchConfig stream...
    let channel = net_support::grpc_channel(&server).await;
    let mut native = AllocatorClient::new(channel);
    let mut watch = native
        .watch_config(WatchConfigRequest { known_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().revision, 1);
    // ...and an HTTP/2 request whose body arrives slowly.
    let mut sender = h2_connect(addr).await.0;
    let (tx, body) = streamed_body();
    let req = hyper::Request::post(format!("http://{addr}/v1/allocate"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(&BODY.as_bytes()[..10]))))
        .await
        .unwrap();
    let slow = tokio::spawn(sender.send_request(req));

    // Meanwhile, normal clients are served.
    let http = Client::plain(addr);
    for _ in 0..5 {
        let r = http.post("/v1/allocate", &[], BODY).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let req = net_support::request("POST", &format!("http://{addr}/v1/allocate"), &[], BODY);
        let r = net_support::send_h2(tcp, req).await.unwrap();
        assert_eq!(cells(&r.json()), want);
        let reply = allocate(&mut native).await.unwrap();
        assert_eq!(reply.allocations.len(), want.len());
    }

    // The slow and idle connections are closed.
    for task in trickled {
        let types = task.await.unwrap();
        assert!(types.contains(&GOAWAY), "frames sent: {types:?}");
    }
    assert_eq!(idle_http.await.unwrap().0, 200);
    assert_eq!(
        idle_grpc.await.unwrap(),
        (200, Some("0".to_owned())),
        "health check answered"
    );

    // Well past the timeout, the long-lived requests are still open and still served.
    tokio::time::sleep(timeout * 3).await;
    tx.send(Ok(Frame::data(Bytes::from_static(&BODY.as_bytes()[10..]))))
        .await
        .expect("the slow request is still being read");
    drop(tx);
    let res = tokio::time::timeout(HANG, slow)
        .await
        .expect("the slow request is answered")
        .unwrap()
        .expect("the slow request's connection stayed open");
    assert_eq!(res.status(), 200);
    let config = server.store().load_full().unwrap().config().clone();
    server.store().apply(&config, Some(2), None).unwrap();
    let update = tokio::time::timeout(HANG, watch.message())
        .await
        .expect("the stream gets its update")
        .expect("the stream stayed open")
        .expect("the stream did not end");
    assert_eq!(update.revision, 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_steady(dir.path(), &["--request-timeout", "1h"]).await;
    let want = expected(&server);
    let (addr, mgmt) = (server.http_addr, Client::plain(server.mgmt_addr));
    let held = Held::open(addr).await;
    until("the request is in flight", || async {
        in_flight(&mgmt).await == 1.0
    })
    .await;
    let shutdown = tokio::spawn(server.shutdown());
    // New connections are refused once accepting stopped (the listener is closed).
    until("the HTTP port stops accepting", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the in-flight request"
    );
    // The in-flight request still completes, correctly, and then shutdown finishes.
    let (status, body) = parse_raw(&held.finish().await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(cells(&body), want);
    tokio::time::timeout(HANG, shutdown)
        .await
        .expect("shutdown finishes once drained")
        .unwrap()
        .unwrap();
}

/// Tasks that keep the test's runtime busy: each spins the CPU for 5 ms per poll, then yields,
/// so every other task (the server's connections, its saturation probe) waits behind them, as
/// under CPU overload. Dropping the returned guard stops them.
struct Hogs(Arc<AtomicBool>);

impl Hogs {
    fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..n {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let spin = Instant::now();
                    while spin.elapsed() < Duration::from_millis(5) {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            });
        }
        Self(stop)
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_saturated_runtime_sheds_new_requests_and_recovers_when_the_load_stops() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        CONFIG,
        &["--shed-lag", "2ms", "--shed-interval", "20ms"],
    )
    .await;
    let want = expected(&server);
    let http = Client::plain(server.http_addr);
    let mgmt = Client::plain(server.mgmt_addr);
    let mut native = AllocatorClient::new(net_support::grpc_channel(&server).await);
    // Idle: served.
    assert_eq!(http.post("/v1/allocate", &[], BODY).await.status, 200);

    let hogs = Hogs::start(4);
    // The lag (at least one 5 ms spin per turn) stays above 2 ms: new requests are shed, on
    // every API, before anything else is done with them.
    for path in ["/v1/allocate", "/ofrep/v1/evaluate/flags"] {
        until(&format!("a request to {path} is shed"), || async {
            let r = http.post(path, &[], BODY).await;
            if r.status == 503 {
                assert_shed(&r, path, "saturated");
                return true;
            }
            assert_eq!(r.status, 200, "{}", r.text());
            false
        })
        .await;
    }
    until("a gRPC call is shed", || {
        let mut native = native.clone();
        async move {
            match allocate(&mut native).await {
                Ok(_) => false,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert_eq!(
                        status
                            .metadata()
                            .get("grpc-retry-pushback-ms")
                            .map(|v| v.to_str().unwrap()),
                        Some("1000")
                    );
                    true
                }
            }
        }
    })
    .await;
    // Management is never shed.
    assert_eq!(mgmt.get("/readyz", &[]).await.status, 200);

    // The load stops: the lag falls and every request is served again, correctly.
    drop(hogs);
    until("20 requests in a row are served", || async {
        for _ in 0..20 {
            let r = http.post("/v1/allocate", &[], BODY).await;
            if r.status != 200 {
                return false;
            }
            assert_eq!(cells(&r.json()), want);
        }
        true
    })
    .await;
    let reply = allocate(&mut native).await.expect("gRPC recovers");
    assert_eq!(reply.allocations.len(), want.len());
    for transport in ["http", "grpc"] {
        let shed = metric(
            &mgmt,
            &format!(
                r#"allot_requests_rejected_total{{transport="{transport}",reason="overload"}}"#
            ),
        )
        .await;
        assert!(shed >= 1.0, "{transport}: {shed}");
    }
    server.shutdown().await.unwrap();
}

/// An HTTP/1.1 keep-alive connection that has been served once (so the server counts it).
async fn kept_alive(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = net_support::request("POST", "/v1/allocate", &[], BODY);
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    sender
}

/// Sends `head` (a whole request) on a new connection; returns all the server sent before
/// closing it.
async fn once(addr: SocketAddr, head: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The server may close before reading it all: that is an answer too.
    let _ = tcp.write_all(head.as_bytes()).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(HANG, tcp.read_to_end(&mut got))
        .await
        .expect("closed in time");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_cheaply_and_a_freed_slot_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_steady(
        dir.path(),
        &["--max-connections", "2", "--header-read-timeout", "60s"],
    )
    .await;
    let want = expected(&server);
    let addr = server.http_addr;
    let mgmt = Client::plain(server.mgmt_addr);
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        )
    };

    // Two open connections fill the HTTP port's cap.
    let first = kept_alive(addr).await;
    let _second = kept_alive(addr).await;
    // A third gets 503 + Retry-After + Connection: close, and is closed (keep-alive asked for).
    let got = once(addr, &post("/v1/allocate")).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got:?}");
    let lower = got.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1\r\n"), "{got:?}");
    assert!(lower.contains("connection: close\r\n"), "{got:?}");
    let (status, body) = parse_raw(&got);
    assert_eq!(status, 503);
    assert_eq!(body["code"], "OVERLOADED", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("connection limit"),
        "{body}"
    );
    // OFREP paths get OFREP's shape.
    let (status, body) = parse_raw(&once(addr, &post("/ofrep/v1/evaluate/flags")).await);
    assert_eq!(status, 503);
    assert_eq!(body["errorCode"], "GENERAL", "{body}");
    // HTTP/2 too.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let req = net_support::request("POST", &format!("http://{addr}/v1/allocate"), &[], BODY);
    let r = net_support::send_h2(tcp, req).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));

    // Two silent connections fill the refusals in progress; past both caps a connection is
    // closed unanswered.
    let silent = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    assert_eq!(once(addr, &post("/v1/allocate")).await, "");
    drop(silent);

    // The gRPC port has its own cap: two channels are served, a third is refused.
    let mut a = AllocatorClient::new(net_support::grpc_channel(&server).await);
    let mut b = AllocatorClient::new(net_support::grpc_channel(&server).await);
    for client in [&mut a, &mut b] {
        assert!(allocate(client).await.is_ok());
    }
    let mut c = AllocatorClient::new(net_support::grpc_channel(&server).await);
    let status = allocate(&mut c).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Management has no cap.
    for _ in 0..5 {
        assert_eq!(mgmt.get("/readyz", &[]).await.status, 200);
    }
    assert_eq!(
        metric(
            &mgmt,
            r#"allot_requests_rejected_total{transport="http",reason="overload"}"#
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &mgmt,
            r#"allot_requests_rejected_total{transport="grpc",reason="overload"}"#
        )
        .await,
        1.0
    );

    // A connection closes: its slot serves a new one.
    drop(first);
    until("a new connection is served", || async {
        let head = post("/v1/allocate").replacen("\r\n\r\n", "\r\nconnection: close\r\n\r\n", 1);
        let (status, body) = parse_raw(&once(addr, &head).await);
        status == 200 && cells(&body) == want
    })
    .await;
    drop(a);
    until("a new gRPC channel is served", || async {
        let mut c = AllocatorClient::new(net_support::grpc_channel(&server).await);
        allocate(&mut c).await.is_ok()
    })
    .await;
    server.shutdown().await.unwrap();
}
