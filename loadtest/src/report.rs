//! Results: the latency histograms and error counts gathered during a run ([`Stats`]), and the
//! [`Report`] made from them, printable as text or as one JSON object.
//!
//! Latencies are whole microseconds in HdrHistograms covering 1 µs .. 60 s at 3 significant
//! digits; longer ones are clamped to 60 s. Shed answers ([`ErrorKind::is_shed`]) go to a
//! histogram of their own: a server that sheds answers those fast, and mixing them in would
//! make the admitted requests look faster than they were.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::swap::SwapReport;
use crate::target::ErrorKind;

/// Largest latency the histogram tracks, in microseconds (60 s).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// What the workers record while a run is going on.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latencies of admitted answered requests (successes and failures other than shedding),
    /// in microseconds.
    pub histogram: Histogram<u64>,
    /// Latencies of shed answers, in microseconds.
    pub shed_histogram: Histogram<u64>,
    /// Correct answers.
    pub ok: u64,
    /// Failures by kind, shed ones included.
    pub errors: HashMap<ErrorKind, u64>,
    /// Completion time of the last recorded request, since the start of the measured window.
    pub last_completion: Duration,
}

/// Percentiles of the latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `http`, `ofrep`, `ofrep-bulk`, `grpc`, `flagd` or `flagd-all`.
    pub protocol: String,
    /// Whether the HTTP protocols ran over HTTP/2 (gRPC always does).
    pub http2: bool,
    /// The flag evaluated (`ofrep`, `flagd`).
    pub flag: Option<String>,
    /// Where the requests went.
    pub url: String,
    /// `open` (fixed rate) or `max` (closed loop).
    pub mode: String,
    /// The scheduled rate in requests per second (open loop only).
    pub target_rate: Option<f64>,
    /// Length of the measured window, in seconds.
    pub duration_s: f64,
    /// Connections (HTTP) or channels (gRPC).
    pub connections: usize,
    /// Requests scheduled (open loop) or sent (closed loop) in the measured window:
    /// `ok + errors + shed`.
    pub total: u64,
    /// Requests answered correctly.
    pub ok: u64,
    /// Requests that failed, of any kind but shedding.
    pub errors: u64,
    /// Failures by kind (`connect`, `timeout`, `io`, `http_status_XXX`, `grpc_<Code>`,
    /// `grpc_transport_<Code>`, `bad_body`, `flag_error`, `dropped_overload`), shedding
    /// excluded.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Requests the server shed (HTTP 503 or 429, gRPC `RESOURCE_EXHAUSTED`).
    pub shed: u64,
    /// Shed requests by kind (`http_status_503`, `http_status_429`, `grpc_ResourceExhausted`).
    pub shed_by_kind: BTreeMap<String, u64>,
    /// Answers (correct or not, shed or not) per second, from the start of the window to the
    /// last answer.
    pub achieved_rate: f64,
    /// Latency of the admitted (not shed) answered requests, from the scheduled send time to
    /// the end of the answer, in microseconds.
    pub latency_us: Latency,
    /// Latency of the shed answers, measured the same way; `None` when nothing was shed.
    pub shed_latency_us: Option<Latency>,
    /// How late the load generator's scheduler handed out requests, in microseconds (open loop
    /// only). It is part of `latency_us`; when it is large, the generator (not the server) was
    /// the bottleneck and the run should be repeated at a lower rate or on a quieter machine.
    pub scheduler_lag_us: Option<Latency>,
    /// Server CPU time (user + system) during the window, in microseconds (`--server-pid`).
    pub server_cpu_us: Option<u64>,
    /// Server CPU time per answered request, in microseconds.
    pub server_cpu_us_per_request: Option<f64>,
    /// This load generator's own CPU time per answered request, in microseconds.
    pub client_cpu_us_per_request: Option<f64>,
    /// The server's CPU time per answered request by thread name (`--server-pid`), in
    /// microseconds: which threads did the work, e.g. the runtime's workers (the request path)
    /// against a background writer.
    pub server_cpu_by_thread_us_per_request: Option<BTreeMap<String, f64>>,
    /// Config swaps made during the run (`--swap-every`).
    pub swaps: Option<SwapReport>,
    #[serde(skip)]
    histogram: Histogram<u64>,
}

// === impl Latency ===

impl Latency {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

// === impl Stats ===

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            histogram: new_histogram(),
            shed_histogram: new_histogram(),
            ok: 0,
            errors: HashMap::new(),
            last_completion: Duration::ZERO,
        }
    }

    /// Records one answer: its latency and whether it was correct; `at` is its completion time
    /// since the start of the measured window.
    pub fn record(&mut self, latency: Duration, result: Result<(), ErrorKind>, at: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let histogram = match result {
            Err(kind) if kind.is_shed() => &mut self.shed_histogram,
            _ => &mut self.histogram,
        };
        histogram.saturating_record(us.clamp(1, MAX_LATENCY_US));
        match result {
            Ok(()) => self.ok += 1,
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
        self.last_completion = self.last_completion.max(at);
    }

    /// Counts `n` failures of `kind` that have no latency (dropped or never answered).
    pub fn count(&mut self, kind: ErrorKind, n: u64) {
        if n > 0 {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    /// Answers recorded, correct or not, shed or not.
    pub fn answered(&self) -> u64 {
        self.histogram.len() + self.shed_histogram.len()
    }

    /// Shed answers recorded.
    pub fn shed(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| k.is_shed())
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests accounted for: answered, dropped or timed out.
    pub fn accounted(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

/// An empty histogram of 1 µs .. 60 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("1 µs .. 60 s at 3 digits are valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Report ===

/// How a run was configured, as far as the report needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub protocol: String,
    pub http2: bool,
    pub flag: Option<String>,
    pub url: String,
    pub target_rate: Option<f64>,
    pub duration: Duration,
    pub connections: usize,
}

/// CPU times measured around the window, in microseconds.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuTimes {
    pub server_us: Option<u64>,
    pub client_us: Option<u64>,
    /// The server's, by thread name.
    pub server_threads_us: Option<BTreeMap<String, u64>>,
}

impl Report {
    pub(crate) fn new(
        header: Header,
        stats: Stats,
        lag: Option<Histogram<u64>>,
        cpu: CpuTimes,
        swaps: Option<SwapReport>,
    ) -> Self {
        let h = &stats.histogram;
        let answered = stats.answered();
        let shed = stats.shed();
        let errors: u64 = stats.errors.values().sum::<u64>() - shed;
        let by_kind = |want_shed: bool| {
            stats
                .errors
                .iter()
                .filter(|(k, _)| k.is_shed() == want_shed)
                .map(|(k, n)| (k.to_string(), *n))
                .collect()
        };
        let elapsed = stats.last_completion.as_secs_f64();
        let per_request = |us: Option<u64>| {
            us.filter(|_| answered > 0)
                .map(|us| us as f64 / answered as f64)
        };
        Self {
            protocol: header.protocol,
            http2: header.http2,
            flag: header.flag,
            url: header.url,
            mode: if header.target_rate.is_some() {
                "open"
            } else {
                "max"
            }
            .to_owned(),
            target_rate: header.target_rate,
            duration_s: header.duration.as_secs_f64(),
            connections: header.connections,
            total: stats.ok + errors + shed,
            ok: stats.ok,
            errors,
            errors_by_kind: by_kind(false),
            shed,
            shed_by_kind: by_kind(true),
            achieved_rate: if elapsed > 0.0 {
                answered as f64 / elapsed
            } else {
                0.0
            },
            latency_us: Latency::of(h),
            shed_latency_us: (!stats.shed_histogram.is_empty())
                .then(|| Latency::of(&stats.shed_histogram)),
            scheduler_lag_us: lag.as_ref().map(Latency::of),
            server_cpu_us: cpu.server_us,
            server_cpu_us_per_request: per_request(cpu.server_us),
            client_cpu_us_per_request: per_request(cpu.client_us),
            server_cpu_by_thread_us_per_request: cpu
                .server_threads_us
                .filter(|_| answered > 0)
                .map(|threads| {
                    threads
                        .into_iter()
                        .map(|(name, us)| (name, us as f64 / answered as f64))
                        .collect()
                }),
            swaps,
            histogram: stats.histogram,
        }
    }

    /// The latency at quantile `q` (in `0.0..=1.0`) of the admitted answered requests.
    pub fn latency_at(&self, q: f64) -> Duration {
        Duration::from_micros(self.histogram.value_at_quantile(q))
    }

    /// How many admitted answered requests took at least `latency`.
    pub fn count_at_or_above(&self, latency: Duration) -> u64 {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .iter_recorded()
            .filter(|v| v.value_iterated_to() >= us)
            .map(|v| v.count_at_value())
            .sum()
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }
}

impl Report {
    /// ` over HTTP/2` and ` (flag …)` where they apply, for the title line.
    fn variant(&self) -> String {
        let mut s = String::new();
        if self.http2 && !matches!(self.protocol.as_str(), "grpc" | "flagd" | "flagd-all") {
            s.push_str(" over HTTP/2");
        }
        if let Some(flag) = &self.flag {
            s.push_str(&format!(" (flag {flag})"));
        }
        s
    }
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target_rate {
            Some(rate) => writeln!(
                f,
                "{}{} {}: open loop at {rate} req/s for {:.1} s over {} connection(s)",
                self.protocol,
                self.variant(),
                self.url,
                self.duration_s,
                self.connections
            )?,
            None => writeln!(
                f,
                "{}{} {}: closed loop (--max) for {:.1} s with {} worker(s)",
                self.protocol,
                self.variant(),
                self.url,
                self.duration_s,
                self.connections
            )?,
        }
        writeln!(
            f,
            "requests   {} total, {} ok, {} errors, {} shed; achieved {:.1} req/s",
            self.total, self.ok, self.errors, self.shed, self.achieved_rate
        )?;
        let latency = |f: &mut fmt::Formatter<'_>, label: &str, l: &Latency| {
            writeln!(
                f,
                "{label} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p99_9),
                ms(l.max),
                ms(l.mean.round() as u64),
            )
        };
        latency(f, "latency   ", &self.latency_us)?;
        if let Some(l) = &self.shed_latency_us {
            latency(f, "shed      ", l)?;
        }
        if let Some(lag) = &self.scheduler_lag_us {
            writeln!(
                f,
                "sched lag  p99 {}  p99.9 {}  max {}  (load generator's own lateness, included above)",
                ms(lag.p99),
                ms(lag.p99_9),
                ms(lag.max)
            )?;
        }
        if !self.errors_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "errors     {}", kinds.join(", "))?;
        }
        if !self.shed_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .shed_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "shed       {}", kinds.join(", "))?;
        }
        if let Some(s) = &self.swaps {
            writeln!(
                f,
                "swaps      {} ok, {} failed {:?}",
                s.ok, s.failed, s.failed_by_kind
            )?;
        }
        if let Some(us) = self.server_cpu_us_per_request {
            writeln!(f, "server CPU {us:.1} µs/request")?;
        }
        if let Some(threads) = &self.server_cpu_by_thread_us_per_request {
            let parts: Vec<String> = threads
                .iter()
                .filter(|(_, us)| **us >= 0.05)
                .map(|(name, us)| format!("{name} {us:.1}"))
                .collect();
            writeln!(f, "  by thread {} µs/request", parts.join(", "))?;
        }
        if let Some(us) = self.client_cpu_us_per_request {
            writeln!(f, "client CPU {us:.1} µs/request")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_answers_are_counted_and_timed_apart() {
        let mut stats = Stats::new();
        let at = Duration::from_secs(1);
        for _ in 0..9 {
            stats.record(Duration::from_millis(10), Ok(()), at);
        }
        stats.record(Duration::from_millis(30), Err(ErrorKind::Io), at);
        for _ in 0..5 {
            stats.record(
                Duration::from_micros(50),
                Err(ErrorKind::HttpStatus(503)),
                at,
            );
        }
        stats.count(ErrorKind::Timeout, 2);
        let header = Header {
            protocol: "http".to_owned(),
            http2: false,
            flag: None,
            url: "http://x".to_owned(),
            target_rate: Some(17.0),
            duration: Duration::from_secs(1),
            connections: 1,
        };
        let r = Report::new(header, stats, None, CpuTimes::default(), None);
        assert_eq!((r.total, r.ok, r.errors, r.shed), (17, 9, 3, 5));
        assert_eq!(r.errors_by_kind.len(), 2);
        assert_eq!(r.shed_by_kind["http_status_503"], 5);
        // Admitted: nine at 10 ms and the failed one at 30 ms; the fast shed ones are apart.
        assert!(r.latency_us.p50 >= 9_990, "{:?}", r.latency_us);
        assert!(r.latency_us.max >= 29_900);
        let shed = r.shed_latency_us.unwrap();
        assert!(shed.max < 100, "{shed:?}");
        assert_eq!(r.achieved_rate, 15.0);
    }
}
