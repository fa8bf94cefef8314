//! Hostile input through real sockets: the server from `allot_server::app::start` (embedded
//! demo config, an admin token) gets malformed, truncated, oversized and forged requests on
//! every port: HTTP/1.1 written byte by byte (so invalid UTF-8 in headers, lying
//! `Content-Length`s and 10 MB bodies are possible), and HTTP/2 gRPC requests whose frames and
//! protobuf payloads are crafted by hand (tonic's `Channel` carries any body).
//!
//! Every case gets a specific answer (status and error code, or a correct result); nothing
//! takes longer than a generous timeout; and a probe client that keeps asking the same question
//! throughout keeps getting the same right answer, with a median latency during the attack
//! within 20x of its median before it (a ratio in one run, never a wall-clock threshold).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use allot_proto::allot::v1::AllocateRequest;
use allot_server::app::{self, Server};
use allot_server::settings::Settings;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tower::ServiceExt;

const TOKEN: &str = "hostile-admin-token";
/// Generous: a debug build on a loaded 2-core machine; a hang is what this catches.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The probe's question and a context the demo config enrols in experiments.
const PROBE: &str = r#"{"context":{"targetingKey":"member-42","country":"SE","platform":"web"}}"#;

async fn start() -> Server {
    let mut settings = Settings::local();
    settings.admin_token = Some(TOKEN.to_owned());
    app::start(settings).await.expect("server starts")
}

// === raw HTTP/1.1 ===

/// A decoded HTTP/1.1 response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Asserts a native JSON error.
    fn native_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(
            !body["message"].as_str().unwrap_or_default().is_empty(),
            "{body}"
        );
        body
    }

    /// Asserts an OFREP error.
    fn ofrep_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        assert_eq!(body["errorCode"], code, "{body}");
        assert!(
            !body["errorDetails"].as_str().unwrap_or_default().is_empty(),
            "{body}"
        );
        body
    }
}

/// Writes `head` (request line and headers, without the blank line) and then `body` (whose
/// length `Content-Length` announces unless `head` already sets one), closes the writing side,
/// and reads the response until the server closes. The body is written concurrently, so a
/// server that answers before reading it all (413) is read, not deadlocked.
async fn raw(addr: SocketAddr, head: &[u8], body: Vec<u8>) -> Reply {
    tokio::time::timeout(TIMEOUT, raw_inner(addr, head, body))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer within {TIMEOUT:?}: {}",
                String::from_utf8_lossy(&head[..head.len().min(200)])
            )
        })
}

async fn raw_inner(addr: SocketAddr, head: &[u8], body: Vec<u8>) -> Reply {
    let what = String::from_utf8_lossy(&head[..head.len().min(120)]).into_owned();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let mut request = head.to_vec();
    request.extend_from_slice(b"\r\nConnection: close\r\n");
    if !head
        .to_ascii_lowercase()
        .windows(15)
        .any(|w| w == b"content-length:")
    {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let writer = tokio::spawn(async move {
        // The server may answer and close before reading a body it refuses.
        let _ = wr.write_all(&request).await;
        let _ = wr.write_all(&body).await;
        // Keep the writing side open: hyper drops a connection whose client half-closes
        // before the answer. Dropped when the reader is done.
        std::future::pending::<()>().await;
        drop(wr);
    });
    let mut buf = Vec::new();
    // `Connection: close`: the server closes after its answer. A reset after the answer
    // (an unread body) is fine: what arrived is the answer.
    let _ = rd.read_to_end(&mut buf).await;
    writer.abort();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP response to {what:?}: {:?}",
                String::from_utf8_lossy(&buf)
            )
        });
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply { status, head, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
    out
}

/// `POST path` with `content-type: application/json` and `extra` header lines.
async fn post(addr: SocketAddr, path: &str, extra: &[&[u8]], body: impl Into<Vec<u8>>) -> Reply {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: allot\r\nContent-Type: application/json")
        .into_bytes();
    for h in extra {
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(h);
    }
    raw(addr, &head, body.into()).await
}

// === raw gRPC ===

/// A gRPC answer: the HTTP status, the grpc-status and grpc-message (from the headers of a
/// trailers-only response or from the trailers), and the response metadata.
#[derive(Debug)]
struct GrpcReply {
    http: u16,
    code: Option<i32>,
    message: String,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

/// One length-prefixed gRPC message frame.
fn frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![u8::from(compressed)];
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

async fn grpc_raw(
    channel: &Channel,
    path: &str,
    content_type: &str,
    extra: &[(&str, &[u8])],
    body: Vec<u8>,
) -> GrpcReply {
    let mut req = axum::http::Request::post(format!("http://allot{path}"))
        .header("content-type", content_type)
        .header("te", "trailers");
    for (k, v) in extra {
        req = req.header(*k, axum::http::HeaderValue::from_bytes(v).unwrap());
    }
    let req = req
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .unwrap();
    let call = async {
        let res = channel.clone().oneshot(req).await.expect("HTTP/2 exchange");
        let (parts, body) = res.into_parts();
        let collected = body.collect().await.expect("response body");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let pick = |name: &str| {
            trailers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        GrpcReply {
            http: parts.status.as_u16(),
            code: pick("grpc-status").and_then(|s| s.parse().ok()),
            message: pick("grpc-message").unwrap_or_default(),
            headers: parts.headers.clone(),
            body: collected.to_bytes(),
        }
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .unwrap_or_else(|_| panic!("no gRPC answer on {path}"))
}

/// A protobuf `Struct` with `targetingKey` = `unit` (hand-encoded: field 1 map entries of
/// string key 1 and `Value` 2 with `string_value` 3).
fn struct_with_unit(unit: &[u8]) -> Vec<u8> {
    let mut value = vec![0x1a];
    put_len(&mut value, unit.len());
    value.extend_from_slice(unit);
    let mut entry = vec![0x0a];
    put_len(&mut entry, b"targetingKey".len());
    entry.extend_from_slice(b"targetingKey");
    entry.push(0x12);
    put_len(&mut entry, value.len());
    entry.extend_from_slice(&value);
    let mut st = vec![0x0a];
    put_len(&mut st, entry.len());
    st.extend_from_slice(&entry);
    st
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A message whose field `field` (length-delimited) is `inner`.
fn wrap(field: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    put_len(&mut out, inner.len());
    out.extend_from_slice(inner);
    out
}

// === the probe ===

/// Median of latencies (sorted in place).
fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Asks [`PROBE`] in a loop on its own keep-alive connection until `stop`; every answer must
/// equal `expected`. Returns the latencies.
async fn probe(
    addr: SocketAddr,
    expected: Arc<Value>,
    stop: Arc<AtomicBool>,
    min: usize,
) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/allocate");
    let mut latencies = Vec::new();
    while latencies.len() < min || !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let res = tokio::time::timeout(
            TIMEOUT,
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(PROBE)
                .send(),
        )
        .await
        .expect("probe answered in time")
        .expect("probe request");
        assert_eq!(res.status(), 200);
        let body: Value = serde_json::from_slice(&res.bytes().await.expect("probe body")).unwrap();
        latencies.push(start.elapsed());
        assert_eq!(body, *expected, "the probe got a different answer");
    }
    latencies
}

// === the attack ===

/// Every hostile HTTP case, each with its specific answer.
async fn http_attack(addr: SocketAddr, mgmt: SocketAddr) {
    let allocate = "/v1/allocate";
    let single = "/ofrep/v1/evaluate/flags/search.new-ranker";
    let bulk = "/ofrep/v1/evaluate/flags";

    // Malformed and truncated JSON.
    let e = post(addr, allocate, &[], r#"{"context": {"targetingKey": "m",}"#)
        .await
        .native_error(400, "PARSE_ERROR");
    assert!(
        e["message"].as_str().unwrap().contains("malformed JSON"),
        "{e}"
    );
    let e = post(addr, allocate, &[], r#"{"context": {"targetingKey": "m""#)
        .await
        .native_error(400, "PARSE_ERROR");
    assert!(
        e["message"].as_str().unwrap().contains("truncated JSON"),
        "{e}"
    );
    post(addr, bulk, &[], r#"{"context": [1,"#)
        .await
        .ofrep_error(400, "PARSE_ERROR");
    post(addr, single, &[], "{\"context\": nul")
        .await
        .ofrep_error(400, "PARSE_ERROR");
    // A body cut short by the client (Content-Length promises more than arrives, then the
    // client half-closes): a 400 naming the body, or the connection dropped without an answer
    // (hyper may see the EOF first); never a wait for the rest.
    let cut = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /v1/allocate HTTP/1.1\r\nHost: allot\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"context\": {")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        buf
    };
    let answer = tokio::time::timeout(TIMEOUT, cut)
        .await
        .expect("a cut body is not waited for");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty()
            || (answer.starts_with("HTTP/1.1 400 ")
                && answer.contains(r#"{"code":"PARSE_ERROR","message":"cannot read request body"#)),
        "{answer:?}"
    );

    // A flag key that is not UTF-8 once percent-decoded (regression: axum's plain text).
    let e = post(addr, "/ofrep/v1/evaluate/flags/%FF%FE", &[], PROBE)
        .await
        .ofrep_error(400, "PARSE_ERROR");
    assert!(e.get("key").is_none(), "{e}");
    // An unknown (but well-formed) key.
    let e = post(addr, "/ofrep/v1/evaluate/flags/no.such-flag", &[], PROBE)
        .await
        .ofrep_error(404, "FLAG_NOT_FOUND");
    assert_eq!(e["key"], "no.such-flag");

    // Wrong content types.
    let plain = b"POST /v1/allocate HTTP/1.1\r\nHost: allot\r\nContent-Type: text/plain";
    raw(addr, plain, PROBE.into())
        .await
        .native_error(415, "UNSUPPORTED_MEDIA_TYPE");
    let none = b"POST /v1/allocate HTTP/1.1\r\nHost: allot";
    raw(addr, none, PROBE.into())
        .await
        .native_error(415, "UNSUPPORTED_MEDIA_TYPE");
    let grpc = b"POST /v1/allocate HTTP/1.1\r\nHost: allot\r\nContent-Type: application/grpc";
    raw(addr, grpc, PROBE.into())
        .await
        .native_error(415, "UNSUPPORTED_MEDIA_TYPE");

    // A 10 MB body, on every endpoint that takes one.
    let big = {
        let mut b = br#"{"context":{"targetingKey":"m","pad":""#.to_vec();
        b.resize(10 << 20, b'x');
        b.extend_from_slice(br#""}}"#);
        b
    };
    post(addr, allocate, &[], big.clone())
        .await
        .native_error(413, "PAYLOAD_TOO_LARGE");
    post(addr, bulk, &[], big.clone())
        .await
        .ofrep_error(413, "GENERAL");
    post(addr, single, &[], big.clone())
        .await
        .ofrep_error(413, "GENERAL");

    // A 100,000-key context (under the 1 MiB body limit): refused by the attribute limit.
    let many = {
        let keys: Vec<String> = (0..100_000).map(|i| format!("\"{i:x}\":1")).collect();
        format!(r#"{{"context":{{"targetingKey":"m",{}}}}}"#, keys.join(","))
    };
    assert!(many.len() < 1 << 20, "{} bytes", many.len());
    let e = post(addr, allocate, &[], many.clone())
        .await
        .native_error(400, "INVALID_CONTEXT");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("more than the limit of 1000"),
        "{e}"
    );
    post(addr, bulk, &[], many)
        .await
        .ofrep_error(400, "INVALID_CONTEXT");

    // Unit ids of 0 and 10,000 bytes.
    for unit in [String::new(), "u".repeat(10_000)] {
        let body = json!({ "context": { "targetingKey": unit } }).to_string();
        let e = post(addr, allocate, &[], body.clone())
            .await
            .native_error(400, "INVALID_CONTEXT");
        assert!(
            e["message"].as_str().unwrap().contains("`targetingKey`"),
            "{e}"
        );
        // OFREP checks per flag: the rollout of `search.new-ranker` cannot hash it.
        let e = post(addr, single, &[], body)
            .await
            .ofrep_error(400, "INVALID_CONTEXT");
        assert_eq!(e["key"], "search.new-ranker");
    }

    // Invalid UTF-8 in the body, and in a string of it.
    post(addr, allocate, &[], b"\xff\xfe{\"context\":{}}".to_vec())
        .await
        .native_error(400, "PARSE_ERROR");
    post(
        addr,
        allocate,
        &[],
        b"{\"context\":{\"targetingKey\":\"m\xc3\x28\"}}".to_vec(),
    )
    .await
    .native_error(400, "PARSE_ERROR");
    post(
        addr,
        bulk,
        &[],
        b"{\"context\":{\"k\":\"\xed\xa0\x80\"}}".to_vec(),
    )
    .await
    .ofrep_error(400, "PARSE_ERROR");

    // Invalid UTF-8 in headers: a content type is refused by name; baggage and traceparent
    // are ignored, and the answer is the probe's.
    let bad_ct = b"POST /v1/allocate HTTP/1.1\r\nHost: allot\r\nContent-Type: application/js\xffon";
    raw(addr, bad_ct, PROBE.into())
        .await
        .native_error(415, "UNSUPPORTED_MEDIA_TYPE");
    let r = post(
        addr,
        allocate,
        &[
            b"baggage: k=\xff\xfe,allot=1.9.x~y",
            b"traceparent: 00-\xff",
        ],
        PROBE,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let baggage = r.header("baggage").unwrap();
    assert!(
        baggage.starts_with("allot=1.1.") && !baggage.contains("1.9.x~y"),
        "{baggage}"
    );

    // 8 KB+ baggage with forged members: ours first and only, the rest cut to the W3C limits.
    let forged = format!(
        "baggage: allot=1.999.forged~x,userId=alice,{},allot=2.0.again~y",
        (0..200)
            .map(|i| format!("m{i}={}", "v".repeat(40)))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(forged.len() > 8_192);
    for path in [allocate, bulk, single] {
        let r = post(
            addr,
            path,
            &[forged.as_bytes(), b"baggage: second=header"],
            PROBE,
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let baggage = r.header("baggage").unwrap();
        let members: Vec<&str> = baggage.split(',').collect();
        assert!(members[0].starts_with("allot=1.1."), "{baggage}");
        assert_eq!(
            members.iter().filter(|m| m.starts_with("allot")).count(),
            1,
            "{baggage}"
        );
        assert_eq!(members[1], "userId=alice");
        assert!(
            baggage.len() <= 8_192 && members.len() <= 64,
            "{} bytes, {} members",
            baggage.len(),
            members.len()
        );
        assert!(
            !baggage.contains("forged") && !baggage.contains("again"),
            "{baggage}"
        );
    }

    // Admin PUTs: deeply nested conditions (compile error at its path), JSON nested past the
    // parser's limit, and YAML flow nesting that once kept the YAML scanner busy for minutes.
    let admin = |ct: &'static str| {
        format!(
            "PUT /admin/config HTTP/1.1\r\nHost: allot\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ct}"
        )
    };
    let mut cond = json!({ "country": "SE" });
    for _ in 0..40 {
        cond = json!({ "not": cond });
    }
    let deep = json!({
        "layers": [{ "id": "home" }],
        "experiments": [{ "id": "e", "layer": "home", "ranges": ["0..10"], "when": cond, "cells": [{ "id": "c" }] }]
    });
    let r = raw(
        mgmt,
        admin("application/json").as_bytes(),
        deep.to_string().into(),
    )
    .await;
    let e = r.native_error(422, "INVALID_CONFIG");
    let errors = e["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|x| x["path"]
            .as_str()
            .unwrap()
            .starts_with("experiments[0].when")
            && x["message"].as_str().unwrap().contains("deeper than 32")),
        "{e}"
    );
    let json_deep = format!(
        "{{\"segments\":{{\"s\":{}{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    raw(mgmt, admin("application/json").as_bytes(), json_deep.into())
        .await
        .native_error(422, "INVALID_CONFIG");
    let yaml_deep = format!(
        "segments:\n  s: {}{}\n",
        "[".repeat(1_000_000),
        "]".repeat(1_000_000)
    );
    let e = raw(mgmt, admin("application/yaml").as_bytes(), yaml_deep.into())
        .await
        .native_error(422, "INVALID_CONFIG");
    assert!(
        e["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nest deeper than"),
        "{e}"
    );
    // Without the token: refused before the body is looked at.
    let anon = b"PUT /admin/config HTTP/1.1\r\nHost: allot\r\nContent-Type: application/json";
    raw(mgmt, anon, b"{}".to_vec())
        .await
        .native_error(401, "UNAUTHORIZED");
}

/// Every hostile gRPC case on `allot.v1` and flagd v1/v2.
async fn grpc_attack(channel: &Channel) {
    const INTERNAL: i32 = 13;
    let allocate = "/allot.v1.Allocator/Allocate";
    let flagd_v1 = "/flagd.evaluation.v1.Service/ResolveBoolean";
    let flagd_v2 = "/flagd.evaluation.v2.Service/ResolveAll";
    let grpc = "application/grpc";
    let good = wrap(1, &struct_with_unit(b"member-42"));

    // Sanity: the crafted request is a valid one.
    let r = grpc_raw(channel, allocate, grpc, &[], frame(false, &good)).await;
    assert_eq!((r.http, r.code), (200, Some(0)), "{r:?}");
    let decoded =
        allot_proto::allot::v1::AllocateResponse::decode(&r.body[5..]).expect("response decodes");
    assert_eq!(decoded.revision, 1);

    for path in [allocate, flagd_v1, flagd_v2] {
        // flagd v1's ResolveBoolean has the flag key in field 1 and the context in field 2;
        // the other two take the context in field 1.
        let field = if path == flagd_v1 { 2 } else { 1 };
        let mut valid = if path == flagd_v1 {
            wrap(1, b"prefetch")
        } else {
            Vec::new()
        };
        valid.extend(wrap(field, &struct_with_unit(b"member-42")));
        let r = grpc_raw(channel, path, grpc, &[], frame(false, &valid)).await;
        assert_eq!(r.code, Some(0), "{path}: {r:?}");

        // Truncated protobuf inside a well-formed frame.
        let truncated = &valid[..valid.len() - 4];
        let r = grpc_raw(channel, path, grpc, &[], frame(false, truncated)).await;
        assert_eq!(r.code, Some(INTERNAL), "{path}: {r:?}");
        assert!(r.message.contains("decode"), "{path}: {r:?}");
        // Garbage protobuf: an invalid wire type.
        let r = grpc_raw(channel, path, grpc, &[], frame(false, &[0x0f, 0xff, 0xff])).await;
        assert_eq!(r.code, Some(INTERNAL), "{path}: {r:?}");
        // Invalid UTF-8 in a protobuf string.
        let r = grpc_raw(
            channel,
            path,
            grpc,
            &[],
            frame(false, &wrap(field, &struct_with_unit(b"m\xff"))),
        )
        .await;
        assert_eq!(r.code, Some(INTERNAL), "{path}: {r:?}");
        // A frame that promises more bytes than the stream carries.
        let mut short = frame(false, &valid);
        short.truncate(short.len() - 3);
        let r = grpc_raw(channel, path, grpc, &[], short).await;
        assert_eq!(r.code, Some(INTERNAL), "{path}: {r:?}");
        // A frame header cut in the middle.
        let r = grpc_raw(channel, path, grpc, &[], vec![0, 0, 0]).await;
        assert_eq!(r.code, Some(INTERNAL), "{path}: {r:?}");
        // The compressed flag without a grpc-encoding.
        let r = grpc_raw(channel, path, grpc, &[], frame(true, &valid)).await;
        assert_eq!(r.code, Some(INTERNAL), "{path}: {r:?}");
        // An unsupported grpc-encoding.
        let r = grpc_raw(
            channel,
            path,
            grpc,
            &[("grpc-encoding", b"snappy")],
            frame(true, &valid),
        )
        .await;
        assert_eq!(r.code, Some(12), "{path}: {r:?}"); // UNIMPLEMENTED
        // A frame announcing 4 GiB.
        let mut huge = vec![0, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(&valid);
        let r = grpc_raw(channel, path, grpc, &[], huge).await;
        assert_eq!(r.code, Some(11), "{path}: {r:?}"); // OUT_OF_RANGE (tonic)
        assert!(r.message.contains("too%20large"), "{path}: {r:?}");
        // Two messages on a unary call: tonic answers the first and drains the rest.
        let mut two = frame(false, &valid);
        two.extend(frame(false, &valid));
        let r = grpc_raw(channel, path, grpc, &[], two).await;
        assert_eq!(r.code, Some(0), "{path}: {r:?}");
        // No message at all.
        let r = grpc_raw(channel, path, grpc, &[], Vec::new()).await;
        assert_eq!(r.code, Some(INTERNAL), "{path}: {r:?}");
        assert!(
            r.message.contains("Missing%20request%20message"),
            "{path}: {r:?}"
        );
        // Not gRPC.
        let r = grpc_raw(
            channel,
            path,
            "application/json",
            &[],
            PROBE.as_bytes().to_vec(),
        )
        .await;
        assert!(r.http == 415 || r.code == Some(INTERNAL), "{path}: {r:?}");
    }

    // Unit ids of 0 and 10,000 bytes: INVALID_ARGUMENT naming the attribute.
    for unit in [Vec::new(), vec![b'u'; 10_000]] {
        let r = grpc_raw(
            channel,
            allocate,
            grpc,
            &[],
            frame(false, &wrap(1, &struct_with_unit(&unit))),
        )
        .await;
        assert_eq!(r.code, Some(3), "{r:?}");
        assert!(r.message.contains("targetingKey"), "{r:?}");
    }
    // A 100,000-key context: over the 1 MiB message limit or the attribute limit.
    let mut ctx = serde_json::Map::new();
    ctx.insert("targetingKey".into(), json!("m"));
    for i in 0..100_000u32 {
        ctx.insert(format!("{i:x}"), Value::Null);
    }
    let req = AllocateRequest {
        context: Some(allot_proto::convert::json_map_to_struct(&ctx)),
    };
    let r = grpc_raw(
        channel,
        allocate,
        grpc,
        &[],
        frame(false, &req.encode_to_vec()),
    )
    .await;
    if req.encoded_len() > 1 << 20 {
        assert_eq!(r.code, Some(11), "{r:?}"); // OUT_OF_RANGE (tonic)
    } else {
        assert_eq!(r.code, Some(3), "{r:?}");
        assert!(r.message.contains("more than the limit"), "{r:?}");
    }
    // Forged baggage in metadata (with a non-UTF-8 member): ours, first and only.
    let r = grpc_raw(
        channel,
        allocate,
        grpc,
        &[
            ("baggage", b"allot=1.999.forged~x,userId=alice"),
            ("baggage", b"k=\xff"),
        ],
        frame(false, &good),
    )
    .await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let baggage = r.headers.get("baggage").unwrap().to_str().unwrap();
    assert!(
        baggage.starts_with("allot=1.1.") && baggage.ends_with(",userId=alice"),
        "{baggage}"
    );
    assert!(!baggage.contains("forged"), "{baggage}");
    // An unknown method.
    let r = grpc_raw(
        channel,
        "/allot.v1.Allocator/Nope",
        grpc,
        &[],
        frame(false, &good),
    )
    .await;
    assert_eq!(r.code, Some(12), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_traffic_gets_specific_errors_while_a_probe_keeps_its_answers() {
    let server = start().await;
    let (http, mgmt) = (server.http_addr, server.mgmt_addr);
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // The probe's answer and latency with nothing else going on.
    let expected = reqwest::Client::new()
        .post(format!("http://{http}/v1/allocate"))
        .header("content-type", "application/json")
        .body(PROBE)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let expected: Value = serde_json::from_slice(&expected).unwrap();
    assert!(
        !expected["allocations"].as_array().unwrap().is_empty(),
        "{expected}"
    );
    let expected = Arc::new(expected);
    let mut before = probe(http, expected.clone(), Arc::new(AtomicBool::new(true)), 200).await;

    // The attack, with the probe running alongside.
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(probe(http, expected.clone(), stop.clone(), 50));
    // Three attackers at once (two over HTTP, one over gRPC), twice.
    for _ in 0..2 {
        tokio::join!(
            http_attack(http, mgmt),
            http_attack(http, mgmt),
            grpc_attack(&channel)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut during = tokio::time::timeout(TIMEOUT, during)
        .await
        .expect("probe stops")
        .expect("probe");

    let (before_median, during_median) = (median(&mut before), median(&mut during));
    let ratio = during_median.as_secs_f64() / before_median.as_secs_f64();
    eprintln!(
        "probe median {before_median:?} before, {during_median:?} during the attack ({ratio:.1}x, {} requests)",
        during.len()
    );
    assert!(
        ratio < 20.0,
        "probe median went from {before_median:?} to {during_median:?}"
    );

    // Nothing was accepted as a config, and the server shuts down cleanly.
    assert_eq!(server.store().revision(), Some(1));
    tokio::time::timeout(TIMEOUT, server.shutdown())
        .await
        .expect("shutdown in time")
        .expect("clean shutdown");
}
