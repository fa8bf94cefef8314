//! TLS on all three ports (`--tls-cert`, `--tls-key`), with a certificate generated here:
//! HTTP allocate, gRPC Allocate, `/healthz`; plaintext clients fail cleanly without disturbing
//! TLS clients; bad key material fails at startup naming the flag.

mod http_support;
mod net_support;

use std::time::Duration;

use allot_proto::allot::v1::AllocateRequest;
use allot_proto::allot::v1::allocator_client::AllocatorClient;
use http_support::CONFIG;
use net_support::{Client, HANG, self_signed, start, try_start};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const BODY: &str = r#"{"context": {"targetingKey": "m-1", "device_id": "d-1"}}"#;

fn tls_args(dir: &std::path::Path) -> [String; 4] {
    [
        "--tls-cert".into(),
        dir.join("cert.pem").to_str().unwrap().into(),
        "--tls-key".into(),
        dir.join("key.pem").to_str().unwrap().into(),
    ]
}

async fn grpc_tls(addr: std::net::SocketAddr, pem: &str) -> AllocatorClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS gRPC connect");
    AllocatorClient::new(channel)
}

#[tokio::test]
async fn all_three_ports_serve_tls_and_plaintext_clients_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = self_signed(dir.path());
    let pem = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
    let args = tls_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = start(dir.path(), CONFIG, &args).await;

    // HTTP evaluation port: an allocate over TLS, the same answer as the engine's.
    let http = Client::tls(server.http_addr, &root);
    let r = http.post("/v1/allocate", &[], BODY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ctx = allot::Context::from(
        json!({"targetingKey": "m-1", "device_id": "d-1"})
            .as_object()
            .unwrap()
            .clone(),
    );
    let snapshot = server.store().load_full().unwrap();
    let expected = snapshot.allocate(&ctx);
    let cells: Vec<(String, String)> = r.json()["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["experiment"].as_str().unwrap().to_owned(),
                a["cell"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = expected
        .assignments()
        .iter()
        .map(|a| (a.experiment.to_owned(), a.cell.to_owned()))
        .collect();
    assert_eq!(cells, want);

    // gRPC port over TLS (HTTP/2 by ALPN).
    let mut grpc = grpc_tls(server.grpc_addr, &pem).await;
    let reply = grpc
        .allocate(AllocateRequest {
            context: Some(http_support_struct()),
        })
        .await
        .expect("Allocate over TLS")
        .into_inner();
    let grpc_cells: Vec<(String, String)> = reply
        .allocations
        .iter()
        .map(|a| (a.experiment.clone(), a.cell.clone()))
        .collect();
    assert_eq!(grpc_cells, want);

    // Management port over TLS.
    let mgmt = Client::tls(server.mgmt_addr, &root);
    let r = mgmt.get("/healthz", &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok\n"));

    // HTTP/2 by ALPN on the HTTP ports.
    for (addr, path) in [
        (server.http_addr, "/v1/config"),
        (server.mgmt_addr, "/healthz"),
    ] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = net_support::tls_connector(&root, &[b"h2"])
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let req = net_support::request("GET", &format!("https://localhost{path}"), &[], "");
        let r = net_support::send_h2(tls, req).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }

    // Plaintext HTTP to each TLS port: no HTTP answer, the connection just ends.
    for addr in [server.http_addr, server.mgmt_addr, server.grpc_addr] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(HANG, tcp.read_to_end(&mut got))
            .await
            .expect("a plaintext client is disconnected, not left hanging");
        // Closed (maybe with a TLS alert record, maybe reset): never an HTTP response.
        assert!(
            read.is_err() || !got.starts_with(b"HTTP/"),
            "{addr}: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            Client::plain(addr)
                .send(net_support::request("GET", "/healthz", &[], ""))
                .await
                .is_err()
        );
    }
    // A plaintext gRPC client fails too.
    let plain = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let status = AllocatorClient::new(channel)
            .allocate(AllocateRequest {
                context: Some(http_support_struct()),
            })
            .await
            .unwrap_err();
        assert_ne!(status.code(), tonic::Code::Ok);
    }

    // TLS clients are unaffected, on connections opened before and after.
    assert_eq!(http.post("/v1/allocate", &[], BODY).await.status, 200);
    assert_eq!(mgmt.get("/readyz", &[]).await.status, 200);
    let again = grpc
        .allocate(AllocateRequest {
            context: Some(http_support_struct()),
        })
        .await
        .expect("the open TLS channel still works")
        .into_inner();
    assert_eq!(again.allocations.len(), want.len());
    // A client that does not trust the certificate is refused by its own side.
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = self_signed(other_dir.path());
    assert!(
        Client::tls(server.http_addr, &stranger)
            .send(net_support::request("GET", "/v1/config", &[], ""))
            .await
            .is_err()
    );
    server.shutdown().await.unwrap();
}

fn http_support_struct() -> prost_types::Struct {
    allot_proto::convert::json_map_to_struct(
        json!({"targetingKey": "m-1", "device_id": "d-1"})
            .as_object()
            .unwrap(),
    )
}

#[tokio::test]
async fn bad_tls_material_fails_at_startup_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path());
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    // One without the other: clap names the missing flag.
    let e = try_start(dir.path(), CONFIG, &["--tls-cert", cert])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--tls-key"), "{e}");
    let e = try_start(dir.path(), CONFIG, &["--tls-key", key])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--tls-cert"), "{e}");

    // Missing file, no certificate in it, key given as the certificate, mismatched pair.
    let missing = dir.path().join("nope.pem");
    let e = try_start(
        dir.path(),
        CONFIG,
        &["--tls-cert", missing.to_str().unwrap(), "--tls-key", key],
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("--tls-cert"), "{e:#}");
    let e = try_start(dir.path(), CONFIG, &["--tls-cert", key, "--tls-key", key])
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("--tls-cert"), "{e:#}");
    let e = try_start(dir.path(), CONFIG, &["--tls-cert", cert, "--tls-key", cert])
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("--tls-key"), "{e:#}");
    let other = tempfile::tempdir().unwrap();
    self_signed(other.path());
    let other_key = other.path().join("key.pem");
    let e = try_start(
        dir.path(),
        CONFIG,
        &["--tls-cert", cert, "--tls-key", other_key.to_str().unwrap()],
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("does not match"), "{e:#}");
}
