//! # allot-loadtest
//!
//! A load generator for allot's APIs that measures latency honestly: native
//! `POST /v1/allocate`, OFREP single and bulk evaluation (over HTTP/1.1, or HTTP/2 with
//! [`Config::http2`]), native gRPC `allot.v1.Allocator/Allocate`, and the flagd evaluation API
//! (`ResolveBoolean`, `ResolveAll`); see [`Protocol`].
//!
//! - **Open loop** (`rate: Some(r)`): request `i` is scheduled at `t0 + i / r` whatever the
//!   server does, and its latency runs from that *scheduled* time to the end of the answer. A
//!   request that waits for a busy connection keeps its clock running, so a stalled server shows
//!   its queueing in the percentiles instead of hiding it (no coordinated omission).
//! - **Closed loop** (`rate: None`, `--max`): each of `connections` workers sends its next
//!   request as soon as the previous answer is in, for peak throughput.
//!
//! Every answer is checked (see [`target`]) and failures are counted by kind; load shedding
//! (HTTP 503 / 429, gRPC `RESOURCE_EXHAUSTED`) is counted apart, and the latency percentiles
//! are of admitted requests only, shed ones having their own. Optionally a config is swapped
//! through the admin API during the run ([`Swap`]). [`run`] returns a [`Report`]; the
//! `allot-loadtest` binary is a thin CLI over it.
//!
//! Modules: [`population`] draws units and their contexts from a seed, [`target`] holds the
//! HTTP and gRPC clients, [`wire`] the gRPC messages they send and read, [`report`] the
//! histograms and the report, [`cpu`] reads `/proc`, [`swap`] pushes configs to the admin port.

pub mod cpu;
pub mod population;
pub mod report;
pub mod swap;
pub mod target;
pub mod wire;

mod engine;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use engine::run;
pub use report::Report;
pub use swap::Swap;

/// The demo config's boolean flag, evaluated by `ofrep` and `flagd` unless told otherwise.
pub const DEFAULT_FLAG: &str = "prefetch";

/// Which API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Native HTTP: `POST /v1/allocate` with a JSON `{"context": {...}}` body.
    Http,
    /// OFREP single flag: `POST /ofrep/v1/evaluate/flags/{flag}`.
    Ofrep,
    /// OFREP bulk: `POST /ofrep/v1/evaluate/flags`, every flag of the config.
    OfrepBulk,
    /// Native gRPC: `allot.v1.Allocator/Allocate`.
    Grpc,
    /// flagd: `flagd.evaluation.v2.Service/ResolveBoolean` on one flag.
    Flagd,
    /// flagd: `flagd.evaluation.v1.Service/ResolveAll`.
    FlagdAll,
}

/// Settings of one run. `Config::default()` is a 10 s open-loop HTTP run at 1,000 req/s
/// against a local server.
#[derive(Debug, Clone)]
pub struct Config {
    /// `http://host:port` of the server; for the HTTP protocols an optional path replaces the
    /// protocol's own.
    pub url: String,
    /// Which API to load.
    pub protocol: Protocol,
    /// The flag `ofrep` and `flagd` evaluate (a boolean flag for `flagd`).
    pub flag: String,
    /// HTTP/2 (cleartext, prior knowledge) instead of HTTP/1.1 for the HTTP protocols; each
    /// connection then carries concurrent requests, as gRPC channels do.
    pub http2: bool,
    /// Requests per second on a fixed timetable (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    /// Length of the measured window.
    pub duration: Duration,
    /// Load applied before the window and not recorded.
    pub warmup: Duration,
    /// HTTP/1.1 keep-alive connections (one request at a time each), or HTTP/2 connections and
    /// gRPC channels (concurrent streams); in closed loop also the number of workers.
    pub connections: usize,
    /// Distinct unit ids (`member-0` .. `member-{units-1}`).
    pub units: u64,
    /// Zipf exponent of the unit distribution; 0 is uniform.
    pub zipf: f64,
    /// Seed of the unit sequence and of every unit's attributes.
    pub seed: u64,
    /// Longest wait for one answer before it counts as a `timeout`.
    pub timeout: Duration,
    /// How long after the window the run waits for outstanding answers; whatever is still
    /// unanswered then counts as a `timeout`.
    pub grace: Duration,
    /// Most requests queued or in flight at once (open loop); past it a scheduled request is
    /// counted as `dropped_overload` instead of being sent.
    pub max_pending: usize,
    /// A local server process whose CPU time is measured over the window.
    pub server_pid: Option<u32>,
    /// Configs pushed to the server's admin port during the run, if any.
    pub swap: Option<Swap>,
    /// Show a live progress line on the terminal (stderr) during the run.
    pub progress: bool,
}

// === impl Protocol ===

impl Protocol {
    /// The URL of a local allot server's port for this protocol.
    pub fn default_url(self) -> &'static str {
        if self.is_grpc() {
            "http://127.0.0.1:8013"
        } else {
            "http://127.0.0.1:8016"
        }
    }

    /// Whether this is a gRPC API (always HTTP/2, on the gRPC port).
    pub fn is_grpc(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::Flagd | Protocol::FlagdAll)
    }

    /// Every protocol, in the order of the CLI's help.
    pub const ALL: [Protocol; 6] = [
        Protocol::Http,
        Protocol::Ofrep,
        Protocol::OfrepBulk,
        Protocol::Grpc,
        Protocol::Flagd,
        Protocol::FlagdAll,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Ofrep => "ofrep",
            Protocol::OfrepBulk => "ofrep-bulk",
            Protocol::Grpc => "grpc",
            Protocol::Flagd => "flagd",
            Protocol::FlagdAll => "flagd-all",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown protocol `{s}`: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        Self {
            url: Protocol::Http.default_url().to_owned(),
            protocol: Protocol::Http,
            flag: DEFAULT_FLAG.to_owned(),
            http2: false,
            rate: Some(1000.0),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            connections: 4,
            units: 100_000,
            zipf: 0.0,
            seed: 1,
            timeout: Duration::from_secs(5),
            grace: Duration::from_secs(5),
            max_pending: 100_000,
            server_pid: None,
            swap: None,
            progress: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.name().parse::<Protocol>(), Ok(p));
            assert_eq!(p.to_string(), p.name());
        }
        assert!("h3".parse::<Protocol>().unwrap_err().contains("ofrep-bulk"));
        assert!(Protocol::FlagdAll.default_url().ends_with(":8013"));
        assert!(Protocol::OfrepBulk.default_url().ends_with(":8016"));
    }
}
