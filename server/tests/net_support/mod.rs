//! Helpers of the hardening tests (TLS, access, overload, slow clients): a whole server from
//! flags, a self-signed certificate, HTTP/1.1 over plain TCP or TLS (raw hyper, so each test
//! controls its connections), and `/metrics` scraping.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use allot_server::app::{self, Server};
use allot_server::settings::Settings;
use axum::body::Bytes;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// Generous limit for anything that could hang; never a performance threshold.
pub const HANG: Duration = Duration::from_secs(30);

/// A server started from `args` (on top of [`Settings::local`]) with the config `yaml`.
/// A plaintext gRPC channel to `server`'s gRPC port.
pub async fn grpc_channel(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn start(dir: &Path, yaml: &str, args: &[&str]) -> Server {
    try_start(dir, yaml, args).await.expect("server starts")
}

/// [`start`], returning the startup error.
pub async fn try_start(dir: &Path, yaml: &str, args: &[&str]) -> anyhow::Result<Server> {
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut all = vec![
        "allot-server",
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--mgmt-addr",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let settings = <Settings as clap::Parser>::try_parse_from(all)?;
    app::start(settings).await
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as `cert.pem` and
/// `key.pem` under `dir`; returns the certificate (the client's only root).
pub fn self_signed(dir: &Path) -> CertificateDer<'static> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), signing_key.serialize_pem()).unwrap();
    cert.der().clone()
}

/// A TLS client trusting only `root` (ring provider), offering `alpn`.
pub fn tls_connector(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A response, buffered.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// Where and how to send HTTP/1.1 requests.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub tls: Option<TlsConnector>,
}

impl Client {
    /// Plaintext to `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    /// TLS to `addr`, trusting `root`.
    pub fn tls(addr: SocketAddr, root: &CertificateDer<'static>) -> Self {
        Self {
            addr,
            tls: Some(tls_connector(root, &[b"http/1.1"])),
        }
    }

    /// Sends one request on a fresh connection.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let tcp = TcpStream::connect(self.addr).await?;
        match &self.tls {
            None => send_on(TokioIo::new(tcp), req).await,
            Some(tls) => {
                let name = ServerName::try_from("localhost").unwrap();
                let stream = tls.connect(name, tcp).await?;
                send_on(TokioIo::new(stream), req).await
            }
        }
    }

    /// `GET path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(request("GET", path, headers, "")).await.unwrap()
    }

    /// `POST path` with a JSON body and extra headers.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.send(request("POST", path, headers, body))
            .await
            .unwrap()
    }
}

/// A request with `Host` set and, for a body, `Content-Type: application/json`.
pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn send_on<I>(io: I, req: Request<Full<Bytes>>) -> anyhow::Result<Reply>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await?;
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The value of a metric line (`name{labels} value`) in `/metrics` on `mgmt`, or 0.
pub async fn metric(mgmt: &Client, line_prefix: &str) -> f64 {
    let text = mgmt.get("/metrics", &[]).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `f` every 20 ms until it is true, for at most [`HANG`].
pub async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + HANG;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one request over HTTP/2 on `io` (h2c prior knowledge on plain TCP, or TLS that
/// negotiated `h2`).
pub async fn send_h2<I>(io: I, req: Request<Full<Bytes>>) -> anyhow::Result<Reply>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await?;
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}
