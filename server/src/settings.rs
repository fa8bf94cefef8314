//! Process settings: command-line flags, each with an `ALLOT_*` environment fallback, a default
//! and a doc line (the README's settings table mirrors this file).
//!
//! Only process wiring lives here. Experiment config is data and is validated by the engine's
//! compile step alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::guard::SaturationOptions;
use crate::log;

/// `allot-server`: deterministic experiment allocation and feature flags over HTTP and gRPC.
///
/// With no arguments it serves an embedded demo config on the default ports.
#[derive(Debug, Clone, Parser)]
#[command(name = "allot-server", version, about, long_about = None)]
pub struct Settings {
    /// Config file (YAML or JSON) to serve; watched, an edit is live within a second.
    #[arg(long, env = "ALLOT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory where every accepted config is persisted; a restart serves the last one.
    #[arg(long, env = "ALLOT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Bearer token for admin writes (`PUT /admin/config`); without it admin writes are refused.
    #[arg(
        long,
        env = "ALLOT_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Follow the config of another allot-server (its gRPC address) instead of serving a local one.
    #[arg(long, env = "ALLOT_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// Client token presented to the --upstream server (when it runs with --client-tokens).
    #[arg(
        long,
        env = "ALLOT_UPSTREAM_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        requires = "upstream"
    )]
    pub upstream_token: Option<String>,

    /// Evaluation HTTP listen address (`/v1/allocate`, `/v1/config`).
    #[arg(long, env = "ALLOT_HTTP_ADDR", default_value = "0.0.0.0:8016")]
    pub http_addr: SocketAddr,

    /// gRPC listen address (`allot.v1.Allocator`, health, reflection).
    #[arg(long, env = "ALLOT_GRPC_ADDR", default_value = "0.0.0.0:8013")]
    pub grpc_addr: SocketAddr,

    /// Management listen address (`/healthz`, `/readyz`, `/metrics`, `/admin/config`).
    #[arg(long, env = "ALLOT_MGMT_ADDR", default_value = "0.0.0.0:8014")]
    pub mgmt_addr: SocketAddr,

    /// Assignment log destination: a file (appended to) or `-` for stdout; off when unset.
    #[arg(long, env = "ALLOT_ASSIGNMENT_LOG", value_name = "FILE|-")]
    pub assignment_log: Option<String>,

    /// How long a (unit, experiment, cell, revision) is remembered as logged.
    #[arg(long, env = "ALLOT_ASSIGNMENT_LOG_TTL", default_value = "1h")]
    pub assignment_log_ttl: humantime::Duration,

    /// Most (unit, experiment, cell, revision) entries remembered for deduplication (1 to
    /// 100,000,000); memory for up to 4 million of them is reserved at start (about 20 MB RSS
    /// for the default).
    #[arg(
        long,
        env = "ALLOT_ASSIGNMENT_LOG_CAPACITY",
        default_value_t = 1_000_000,
        value_parser = clap::value_parser!(u64).range(1..=100_000_000)
    )]
    pub assignment_log_capacity: u64,

    /// Assignment log lines that may wait for the writer (1 to [`log::MAX_QUEUE`]); past it
    /// lines are dropped and counted.
    #[arg(
        long,
        env = "ALLOT_ASSIGNMENT_LOG_QUEUE",
        default_value_t = 65_536,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
            .range(1..=log::MAX_QUEUE as u64)
    )]
    pub assignment_log_queue: usize,

    /// Byte budget of the `allot` baggage member; past it allocations are dropped and counted.
    #[arg(long, env = "ALLOT_STAMP_BUDGET", default_value_t = allot::stamp::DEFAULT_BUDGET)]
    pub stamp_budget: usize,

    /// Most attributes an evaluation context may have.
    #[arg(long, env = "ALLOT_MAX_CONTEXT_KEYS", default_value_t = 1_000)]
    pub max_context_keys: usize,

    /// How often the --config file is checked for changes.
    #[arg(long, env = "ALLOT_CONFIG_POLL", default_value = "250ms")]
    pub config_poll: humantime::Duration,

    /// TLS certificate chain (PEM) for all three ports; needs --tls-key. Plaintext when unset.
    #[arg(
        long,
        env = "ALLOT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    #[arg(
        long,
        env = "ALLOT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Client tokens file: one token per line (`#` comments, blank lines ignored). When set,
    /// every evaluation request (HTTP, OFREP, gRPC, flagd) must present one.
    #[arg(long, env = "ALLOT_CLIENT_TOKENS", value_name = "FILE")]
    pub client_tokens: Option<PathBuf>,

    /// Most evaluation requests in flight per process; past it requests are shed (HTTP 503
    /// with `Retry-After: 1`, gRPC `RESOURCE_EXHAUSTED`) instead of queued.
    #[arg(long, env = "ALLOT_MAX_CONCURRENCY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: u32,

    /// Shed evaluation requests (HTTP 503 with `Retry-After: 1`, gRPC `RESOURCE_EXHAUSTED`)
    /// while the runtime's scheduling lag stays above this: the process is CPU-saturated and
    /// requests queue before they are read. `0` (the default) turns it off; `2ms` suits a
    /// server behind a load balancer that retries elsewhere.
    #[arg(long, env = "ALLOT_SHED_LAG", default_value = "0")]
    pub shed_lag: humantime::Duration,

    /// How long the scheduling lag must stay above --shed-lag before shedding starts (bursts
    /// and short stalls shorter than this shed nothing).
    #[arg(long, env = "ALLOT_SHED_INTERVAL", default_value = "100ms")]
    pub shed_interval: humantime::Duration,

    /// Most open connections on each of the evaluation ports (HTTP and gRPC; management is
    /// exempt). Past it a new connection's requests get HTTP 503 with `Retry-After: 1` (gRPC
    /// `RESOURCE_EXHAUSTED`) and it is closed; past twice it, it is closed unanswered. `0`: no
    /// cap.
    #[arg(long, env = "ALLOT_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: u32,

    /// Longest an evaluation request may take (HTTP 503 `TIMEOUT`, gRPC `DEADLINE_EXCEEDED`);
    /// a shorter incoming `grpc-timeout` wins.
    #[arg(long, env = "ALLOT_REQUEST_TIMEOUT", default_value = "2s")]
    pub request_timeout: humantime::Duration,

    /// How long an HTTP/1 client may take to send a request's headers (a connection's first
    /// request and every keep-alive one), and any client the first bytes of a connection (the
    /// HTTP/2 preface on the gRPC port), before the connection is closed. Also how long an
    /// HTTP/2 connection may stay without a request in flight (trickling its HEADERS, or idle)
    /// before it gets a GOAWAY, and then before it is dropped if still open.
    #[arg(long, env = "ALLOT_HEADER_READ_TIMEOUT", default_value = "5s")]
    pub header_read_timeout: humantime::Duration,

    /// Largest HTTP/1 request head (request line and headers) in bytes, at least 8192; larger
    /// ones get `431 Request Header Fields Too Large`. Also the HTTP/2 header list limit (gRPC too).
    #[arg(long, env = "ALLOT_MAX_HEADER_BYTES", default_value_t = 32 * 1024,
          value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_header_bytes: u32,

    /// How long a TLS handshake may take before the connection is dropped.
    #[arg(long, env = "ALLOT_TLS_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub tls_handshake_timeout: humantime::Duration,
}

// === impl Settings ===

impl Settings {
    /// Settings for tests and embedding: every listener on `127.0.0.1:0`, nothing else set.
    pub fn local() -> Self {
        Self::parse_from([
            "allot-server",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--mgmt-addr",
            "127.0.0.1:0",
        ])
    }

    /// The assignment log options, if the log is on.
    pub fn assignment_log_options(&self) -> Option<log::Options> {
        let target = match self.assignment_log.as_deref()? {
            "" => return None,
            "-" => log::Target::Stdout,
            path => log::Target::File(path.into()),
        };
        Some(log::Options {
            target,
            ttl: self.assignment_log_ttl.into(),
            capacity: self.assignment_log_capacity,
            queue: self.assignment_log_queue,
        })
    }

    /// The request timeout (at least 1 ms: a zero timeout would fail every request).
    pub fn request_timeout(&self) -> Duration {
        Duration::from(self.request_timeout).max(Duration::from_millis(1))
    }

    /// When to shed for saturation; `None` with `--shed-lag 0`.
    pub fn saturation(&self) -> Option<SaturationOptions> {
        let target = Duration::from(self.shed_lag);
        (!target.is_zero()).then(|| SaturationOptions {
            target,
            interval: Duration::from(self.shed_interval),
        })
    }

    /// The connection cap of each evaluation port; `None` with `--max-connections 0`.
    pub fn max_connections(&self) -> Option<usize> {
        (self.max_connections != 0)
            .then(|| usize::try_from(self.max_connections).unwrap_or(usize::MAX))
    }

    /// The --config poll interval (at least 10 ms).
    pub fn poll_interval(&self) -> Duration {
        Duration::from(self.config_poll).max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parsing() {
        <Settings as clap::CommandFactory>::command().debug_assert();
        let s = Settings::parse_from(["allot-server"]);
        assert_eq!(s.http_addr.port(), 8016);
        assert_eq!(s.grpc_addr.port(), 8013);
        assert_eq!(s.mgmt_addr.port(), 8014);
        assert_eq!(s.stamp_budget, 512);
        assert!(s.assignment_log_options().is_none());
        assert_eq!(s.poll_interval(), Duration::from_millis(250));
        let s = Settings::parse_from([
            "allot-server",
            "--assignment-log",
            "-",
            "--assignment-log-ttl",
            "90s",
        ]);
        let o = s.assignment_log_options().unwrap();
        assert_eq!(o.target, log::Target::Stdout);
        assert_eq!(o.ttl, Duration::from_secs(90));
        assert!(Settings::try_parse_from(["allot-server", "--http-addr", "nope"]).is_err());
        assert_eq!(s.max_concurrency, 1024);
        assert_eq!(s.request_timeout(), Duration::from_secs(2));
        assert_eq!(
            Duration::from(s.header_read_timeout),
            Duration::from_secs(5)
        );
        assert_eq!(s.max_header_bytes, 32 * 1024);
        assert!(s.tls_cert.is_none() && s.tls_key.is_none() && s.client_tokens.is_none());
        assert_eq!(s.saturation(), None);
        assert_eq!(s.max_connections(), None);
        let s = Settings::parse_from([
            "allot-server",
            "--shed-lag",
            "2ms",
            "--max-connections",
            "64",
        ]);
        assert_eq!(
            s.saturation(),
            Some(SaturationOptions {
                target: Duration::from_millis(2),
                interval: Duration::from_millis(100),
            })
        );
        assert_eq!(s.max_connections(), Some(64));
    }

    #[test]
    fn bad_hardening_flags_are_errors_naming_the_flag() {
        let err = |args: &[&str]| {
            Settings::try_parse_from(["allot-server"].iter().chain(args).copied())
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["--tls-cert", "c.pem"]).contains("--tls-key"));
        assert!(err(&["--tls-key", "k.pem"]).contains("--tls-cert"));
        assert!(err(&["--max-concurrency", "0"]).contains("--max-concurrency"));
        assert!(err(&["--max-header-bytes", "100"]).contains("--max-header-bytes"));
        assert!(err(&["--request-timeout", "soon"]).contains("--request-timeout"));
        assert!(err(&["--shed-lag", "fast"]).contains("--shed-lag"));
        assert!(err(&["--shed-interval", "later"]).contains("--shed-interval"));
        assert!(err(&["--max-connections", "many"]).contains("--max-connections"));
        for queue in ["0", "16777217", "4611686018427387904"] {
            let e = err(&["--assignment-log-queue", queue]);
            assert!(e.contains("--assignment-log-queue"), "{e}");
        }
        for capacity in ["0", "100000001", "lots"] {
            let e = err(&["--assignment-log-capacity", capacity]);
            assert!(e.contains("--assignment-log-capacity"), "{e}");
        }
    }
}
