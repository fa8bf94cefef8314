//! # allot-loadtest
//!
//! A load generator for allot's native APIs (`POST /v1/allocate` over HTTP/1.1 and
//! `allot.v1.Allocator/Allocate` over gRPC) that measures latency honestly.
//!
//! - **Open loop** (`rate: Some(r)`): request `i` is scheduled at `t0 + i / r` whatever the
//!   server does, and its latency runs from that *scheduled* time to the end of the answer. A
//!   request that waits for a busy connection keeps its clock running, so a stalled server shows
//!   its queueing in the percentiles instead of hiding it (no coordinated omission).
//! - **Closed loop** (`rate: None`, `--max`): each of `connections` workers sends its next
//!   request as soon as the previous answer is in, for peak throughput.
//!
//! Every answer is checked (HTTP 200 with a JSON `revision`; gRPC `OK` status with a revision)
//! and failures are counted by kind. [`run`] returns a [`Report`]; the `allot-loadtest` binary is
//! a thin CLI over it.
//!
//! Modules: [`population`] draws units and their contexts from a seed, [`target`] holds the
//! HTTP and gRPC clients, [`report`] the histogram and its report, [`cpu`] reads `/proc`.

pub mod cpu;
pub mod population;
pub mod report;
pub mod target;

mod engine;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use engine::run;
pub use report::Report;

/// Which API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Native HTTP: `POST /v1/allocate` with a JSON `{"context": {...}}` body.
    Http,
    /// Native gRPC: `allot.v1.Allocator/Allocate`.
    Grpc,
}

/// Settings of one run. `Config::default()` is a 10 s open-loop HTTP run at 1,000 req/s
/// against a local server.
#[derive(Debug, Clone)]
pub struct Config {
    /// `http://host:port` of the server; for HTTP an optional path replaces `/v1/allocate`.
    pub url: String,
    /// Which API to load.
    pub protocol: Protocol,
    /// Requests per second on a fixed timetable (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    /// Length of the measured window.
    pub duration: Duration,
    /// Load applied before the window and not recorded.
    pub warmup: Duration,
    /// HTTP/1.1 keep-alive connections (one request at a time each), or gRPC channels (HTTP/2,
    /// concurrent streams); in closed loop also the number of workers.
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
}

// === impl Protocol ===

impl Protocol {
    /// The URL of a local allot server's port for this protocol.
    pub fn default_url(self) -> &'static str {
        match self {
            Protocol::Http => "http://127.0.0.1:8016",
            Protocol::Grpc => "http://127.0.0.1:8013",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(Protocol::Http),
            "grpc" => Ok(Protocol::Grpc),
            other => Err(format!(
                "unknown protocol `{other}`: expected `http` or `grpc`"
            )),
        }
    }
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        Self {
            url: Protocol::Http.default_url().to_owned(),
            protocol: Protocol::Http,
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
        }
    }
}
