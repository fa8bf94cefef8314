//! `allot-loadtest` binary: parses flags into an [`allot_loadtest::Config`], runs it, prints the
//! report (text or `--json`), and exits 2 when `--assert-p99-ms` is missed.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use allot_loadtest::{Config, DEFAULT_FLAG, Protocol, Swap};
use anyhow::Context as _;
use clap::Parser;

/// Open-loop load generator for allot: fixed-rate requests, latency measured from each
/// request's scheduled send time (no coordinated omission).
#[derive(Debug, Parser)]
#[command(name = "allot-loadtest", version, about, long_about = None)]
struct Cli {
    /// Server URL; defaults to http://127.0.0.1:8016 (HTTP protocols) or
    /// http://127.0.0.1:8013 (gRPC protocols). For HTTP, a path replaces the protocol's own.
    #[arg(long)]
    url: Option<String>,

    /// API to load: `http` (POST /v1/allocate), `ofrep` (POST /ofrep/v1/evaluate/flags/FLAG),
    /// `ofrep-bulk` (POST /ofrep/v1/evaluate/flags), `grpc` (allot.v1.Allocator/Allocate),
    /// `flagd` (flagd.evaluation.v2 ResolveBoolean on FLAG), `flagd-all` (flagd.evaluation.v1
    /// ResolveAll).
    #[arg(long, default_value = "http")]
    protocol: Protocol,

    /// The flag `ofrep` and `flagd` evaluate (a boolean flag for `flagd`).
    #[arg(long, default_value = DEFAULT_FLAG)]
    flag: String,

    /// HTTP/2 (h2c, prior knowledge) for the HTTP protocols: each connection carries
    /// concurrent streams. gRPC protocols always use HTTP/2.
    #[arg(long)]
    http2: bool,

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

    /// HTTP/1.1 keep-alive connections, or HTTP/2 connections / gRPC channels (concurrent
    /// streams).
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

    /// Swap the server's config this often during the run (PUT /admin/config), alternating
    /// the --swap-config files.
    #[arg(long, value_parser = humantime::parse_duration, requires = "swap_config")]
    swap_every: Option<Duration>,

    /// A config document (YAML or JSON) for --swap-every; give it twice or more.
    #[arg(long, value_name = "FILE")]
    swap_config: Vec<PathBuf>,

    /// The admin endpoint for --swap-every.
    #[arg(long, default_value = "http://127.0.0.1:8014/admin/config")]
    swap_url: String,

    /// Admin bearer token for --swap-every.
    #[arg(
        long,
        env = "ALLOT_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    swap_token: String,

    /// Print the report as one JSON object (and no progress line).
    #[arg(long)]
    json: bool,

    /// No live progress line (it is also off when stdout is not a terminal).
    #[arg(long)]
    quiet: bool,

    /// Exit with status 2 if p99 latency exceeds this many milliseconds.
    #[arg(long)]
    assert_p99_ms: Option<f64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let swap = match swap(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("allot-loadtest: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        url: cli
            .url
            .unwrap_or_else(|| cli.protocol.default_url().to_owned()),
        protocol: cli.protocol,
        flag: cli.flag.clone(),
        http2: cli.http2,
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
        swap,
        progress: !cli.json && !cli.quiet && std::io::stdout().is_terminal(),
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

/// The swap settings, reading the documents.
fn swap(cli: &Cli) -> anyhow::Result<Option<Swap>> {
    let Some(every) = cli.swap_every else {
        return Ok(None);
    };
    let documents = cli
        .swap_config
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(Swap {
        url: cli.swap_url.clone(),
        token: cli.swap_token.clone(),
        every,
        documents,
    }))
}
