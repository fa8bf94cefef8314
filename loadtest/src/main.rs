//! `allot-loadtest` binary: parses flags into an [`allot_loadtest::Config`], runs it, prints the
//! report (text or `--json`), and exits 2 when `--assert-p99-ms` is missed.

use std::process::ExitCode;
use std::time::Duration;

use allot_loadtest::{Config, Protocol};
use clap::Parser;

/// Open-loop load generator for allot: fixed-rate requests, latency measured from each
/// request's scheduled send time (no coordinated omission).
#[derive(Debug, Parser)]
#[command(name = "allot-loadtest", version, about, long_about = None)]
struct Cli {
    /// Server URL; defaults to http://127.0.0.1:8016 (http) or http://127.0.0.1:8013 (grpc).
    /// For http, a path replaces /v1/allocate.
    #[arg(long)]
    url: Option<String>,

    /// API to load: `http` (POST /v1/allocate) or `grpc` (allot.v1.Allocator/Allocate).
    #[arg(long, default_value = "http")]
    protocol: Protocol,

    /// Requests per second, on a fixed timetable (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,

    /// Closed loop instead: each connection sends as fast as answers come back (ignores --rate).
    #[arg(long)]
    max: bool,

    /// Length of the measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Load applied before the measured window and not recorded.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// HTTP/1.1 keep-alive connections, or gRPC channels (HTTP/2, concurrent streams).
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Distinct unit ids (member-0 .. member-{N-1}).
    #[arg(long, default_value_t = 100_000)]
    units: u64,

    /// Zipf exponent of the unit distribution (0 = uniform).
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,

    /// Seed of the unit sequence and the units' attributes (country, platform, app_version).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Longest wait for one answer before it counts as a timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Wait after the window for outstanding answers; those still missing count as timeouts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    grace: Duration,

    /// Most requests queued or in flight; past it requests count as dropped_overload.
    #[arg(long, default_value_t = 100_000)]
    max_pending: usize,

    /// PID of a local server: report its CPU time per request (from /proc/PID/stat).
    #[arg(long)]
    server_pid: Option<u32>,

    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,

    /// Exit with status 2 if p99 latency exceeds this many milliseconds.
    #[arg(long)]
    assert_p99_ms: Option<f64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = Config {
        url: cli
            .url
            .unwrap_or_else(|| cli.protocol.default_url().to_owned()),
        protocol: cli.protocol,
        rate: (!cli.max).then_some(cli.rate),
        duration: cli.duration,
        warmup: cli.warmup,
        connections: cli.connections,
        units: cli.units,
        zipf: cli.zipf,
        seed: cli.seed,
        timeout: cli.timeout,
        grace: cli.grace,
        max_pending: cli.max_pending,
        server_pid: cli.server_pid,
    };
    let report = match allot_loadtest::run(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("allot-loadtest: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    if let Some(limit) = cli.assert_p99_ms {
        let p99_ms = report.latency_us.p99 as f64 / 1000.0;
        if p99_ms > limit {
            eprintln!("allot-loadtest: p99 {p99_ms:.3} ms exceeds --assert-p99-ms {limit}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
