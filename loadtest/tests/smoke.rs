//! Smoke run of both protocols against the real allot server, in process on `127.0.0.1:0`:
//! about one second at 500 req/s each, zero errors, and the scheduled count. No latency
//! thresholds: the machine is shared.

use std::sync::Arc;
use std::time::Duration;

use allot_loadtest::{Config, Protocol, Report};
use allot_server::service::{Limits, Service};
use allot_server::state::ConfigStore;
use tokio::net::TcpListener;

const CONFIG: &str = r#"
layers: [{ id: home }]
experiments:
  - id: prefetch
    layer: home
    ranges: ["0..8000"]
    when: { country: { in: [US, CA, SE] } }
    cells:
      - { id: control, flags: { prefetch: "off" } }
      - { id: treatment, flags: { prefetch: "on" } }
flags:
  - key: prefetch
    type: bool
    variants: { "on": true, "off": false }
    default: "off"
    rules:
      - { when: { platform: { eq: tv } }, variant: "off" }
"#;

/// The allot server's HTTP and gRPC transports on loopback ports, serving [`CONFIG`].
async fn start_server() -> (String, String) {
    let store = Arc::new(ConfigStore::new());
    store
        .apply(&allot::Config::parse(CONFIG).unwrap(), None, None)
        .unwrap();
    let service = Service::new(store, Limits::default());

    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_url = format!("http://{}", http.local_addr().unwrap());
    let router = allot_server::http::router(service.clone());
    tokio::spawn(async move { axum::serve(http, router).await });

    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    tokio::spawn(allot_server::grpc::serve(
        grpc,
        service,
        std::future::pending(),
    ));
    (http_url, grpc_url)
}

fn config(url: String, protocol: Protocol) -> Config {
    Config {
        url,
        protocol,
        rate: Some(500.0),
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        connections: 2,
        units: 1000,
        zipf: 1.1,
        seed: 42,
        server_pid: Some(std::process::id()),
        ..Config::default()
    }
}

fn check(report: &Report) {
    eprintln!("{report}");
    assert_eq!(report.errors, 0, "{:?}", report.errors_by_kind);
    assert!(
        (450..=550).contains(&report.total),
        "500 req/s for 1 s scheduled {} requests",
        report.total
    );
    assert_eq!(report.ok, report.total);
    assert!(report.latency_us.max >= report.latency_us.p50);
    // The server runs in this process, so its CPU time is measurable.
    assert!(report.server_cpu_us_per_request.is_some());
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["total"], report.total);
    assert!(json["latency_us"]["p99_9"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_allocate_smoke() {
    let (http, _) = start_server().await;
    let report = allot_loadtest::run(config(http, Protocol::Http))
        .await
        .unwrap();
    assert_eq!(report.protocol, "http");
    check(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_allocate_smoke() {
    let (_, grpc) = start_server().await;
    let report = allot_loadtest::run(config(grpc, Protocol::Grpc))
        .await
        .unwrap();
    assert_eq!(report.protocol, "grpc");
    check(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_before_load() {
    // Bind then drop: the port is free and nothing listens on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = allot_loadtest::run(config(format!("http://{addr}"), Protocol::Http))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("connecting"), "{err:#}");
}
