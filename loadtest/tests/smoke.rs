//! Smoke runs of every protocol against the real allot server (`allot_server::app::start`,
//! every port on `127.0.0.1:0`, the embedded demo config): about one second at 300 req/s
//! each, zero errors and nothing shed, the scheduled count, and a JSON report that parses. One
//! run also swaps the config through the admin port during the load. No latency thresholds:
//! the machine is shared.

use std::time::Duration;

use allot_loadtest::{Config, Protocol, Report, Swap};
use allot_server::app::{self, Server};
use allot_server::settings::Settings;
use tokio::net::TcpListener;

const RATE: f64 = 300.0;
const TOKEN: &str = "smoke-token";

/// The demo config with another salt and widened ranges: a different revision that still
/// serves every flag the load asks for.
fn demo_variant() -> String {
    include_str!("../../server/src/demo.yaml")
        .replace("home-2026q4", "home-2026q4-b")
        .replace("\"0..3000\"", "\"0..4000\"")
        .replace("\"3000..5000\"", "\"4000..5000\"")
}

async fn start_server() -> Server {
    let mut settings = Settings::local();
    settings.admin_token = Some(TOKEN.to_owned());
    app::start(settings).await.unwrap()
}

fn config(server: &Server, protocol: Protocol) -> Config {
    let addr = if protocol.is_grpc() {
        server.grpc_addr
    } else {
        server.http_addr
    };
    Config {
        url: format!("http://{addr}"),
        protocol,
        rate: Some(RATE),
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

/// Runs `config` and checks the report: every scheduled request answered correctly.
async fn smoke(config: Config) -> Report {
    let protocol = config.protocol;
    let report = allot_loadtest::run(config).await.unwrap();
    eprintln!("{report}");
    assert_eq!(report.protocol, protocol.name());
    assert_eq!(report.errors, 0, "{:?}", report.errors_by_kind);
    assert_eq!(report.shed, 0, "{:?}", report.shed_by_kind);
    assert!(report.total > 0);
    assert!(
        (270..=330).contains(&report.total),
        "{RATE} req/s for 1 s scheduled {} requests",
        report.total
    );
    assert_eq!(report.ok, report.total);
    assert!(report.latency_us.max >= report.latency_us.p50);
    assert!(report.shed_latency_us.is_none());
    // The server runs in this process, so its CPU time is measurable.
    assert!(report.server_cpu_us_per_request.is_some());
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["protocol"], protocol.name());
    assert_eq!(json["total"], report.total);
    assert_eq!(json["shed"], 0);
    assert!(json["latency_us"]["p99_9"].is_u64());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_allocate_smoke() {
    let server = start_server().await;
    smoke(config(&server, Protocol::Http)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_allocate_smoke() {
    let server = start_server().await;
    let report = smoke(Config {
        http2: true,
        ..config(&server, Protocol::Http)
    })
    .await;
    assert!(report.http2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ofrep_single_flag_smoke() {
    let server = start_server().await;
    let report = smoke(config(&server, Protocol::Ofrep)).await;
    assert_eq!(report.flag.as_deref(), Some("prefetch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ofrep_bulk_smoke_over_http2() {
    let server = start_server().await;
    smoke(Config {
        http2: true,
        ..config(&server, Protocol::OfrepBulk)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_allocate_smoke() {
    let server = start_server().await;
    smoke(config(&server, Protocol::Grpc)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagd_resolve_boolean_smoke() {
    let server = start_server().await;
    smoke(Config {
        flag: "search.new-ranker".to_owned(),
        ..config(&server, Protocol::Flagd)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagd_resolve_all_smoke() {
    let server = start_server().await;
    smoke(config(&server, Protocol::FlagdAll)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_swaps_during_load_cause_no_errors() {
    let server = start_server().await;
    let first = server.store().revision().unwrap();
    let report = smoke(Config {
        swap: Some(Swap {
            url: format!("http://{}/admin/config", server.mgmt_addr),
            token: TOKEN.to_owned(),
            every: Duration::from_millis(100),
            documents: vec![
                demo_variant(),
                include_str!("../../server/src/demo.yaml").to_owned(),
            ],
        }),
        ..config(&server, Protocol::Http)
    })
    .await;
    let swaps = report.swaps.as_ref().unwrap();
    assert_eq!(swaps.failed, 0, "{:?}", swaps.failed_by_kind);
    // 1.2 s of run at one swap per 100 ms; timer slack may cost a few.
    assert!(swaps.ok >= 5, "{swaps:?}");
    assert_eq!(server.store().revision(), Some(first + swaps.ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_that_does_not_exist_is_an_error_per_request() {
    let server = start_server().await;
    let report = allot_loadtest::run(Config {
        flag: "no-such-flag".to_owned(),
        duration: Duration::from_millis(300),
        ..config(&server, Protocol::Flagd)
    })
    .await
    .unwrap();
    assert_eq!(report.ok, 0);
    assert_eq!(
        report.errors_by_kind.get("grpc_NotFound"),
        Some(&report.total)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_before_load() {
    // Bind then drop: the port is free and nothing listens on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = allot_loadtest::run(Config {
        url: format!("http://{addr}"),
        ..Config::default()
    })
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("connecting"), "{err:#}");
}
