//! Prometheus metrics (`/metrics` on the management port), in the OpenMetrics text format.
//!
//! Owns the registry and every metric family. The request path only touches pre-resolved
//! handles or label sets made of `&'static str` and integers, so counting allocates nothing:
//! per-experiment counters are resolved once per config revision into `AllocTable`.
//! Must not hold a lock across a request or format strings per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use allot::{Allocation, Snapshot};
use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::state::{ConfigStore, Source};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which transport served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// HTTP (axum), evaluation or management port.
    Http,
    /// gRPC (tonic).
    Grpc,
}

/// Labels of the request counter and latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    transport: &'static str,
    endpoint: &'static str,
    /// The HTTP status, or the numeric gRPC code.
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AllocLabels {
    experiment: String,
    cell: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    source: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    transport: &'static str,
    reason: &'static str,
}

/// Why a request was refused before it reached a handler (`allot_requests_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Shed at `--max-concurrency` (HTTP 503, gRPC `RESOURCE_EXHAUSTED`).
    Overload,
    /// Cut at `--request-timeout` or the caller's `grpc-timeout`.
    Timeout,
    /// No or a wrong client token.
    Unauthenticated,
}

/// Pre-resolved `allot_requests_rejected_total` counters of one transport, so counting a
/// rejection neither hashes labels nor takes the family lock.
#[derive(Debug, Clone)]
pub struct RejectCounters {
    overload: Counter,
    timeout: Counter,
    unauthenticated: Counter,
}

impl RejectCounters {
    /// Counts one rejection.
    pub fn inc(&self, why: Rejection) {
        match why {
            Rejection::Overload => self.overload.inc(),
            Rejection::Timeout => self.timeout.inc(),
            Rejection::Unauthenticated => self.unauthenticated.inc(),
        };
    }
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Every metric the server exports. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    allocations: Family<AllocLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    revision: Gauge,
    log_lines: Counter,
    log_dropped: Counter,
    persist_failures: Counter,
    rejected: Family<RejectLabels, Counter>,
    in_flight: Gauge,
    table: ArcSwapOption<AllocTable>,
    /// Request counter and histogram handles already resolved, by label set (at most
    /// [`HOT_LIMIT`]), so a request neither hashes its labels nor takes the family locks.
    hot: ArcSwap<Vec<HotRequest>>,
}

/// Most label sets kept in [`Metrics::observe_request`]'s handle cache.
const HOT_LIMIT: usize = 64;

/// The request counter and latency histogram of one label set (handles share the families').
#[derive(Clone)]
struct HotRequest {
    labels: RequestLabels,
    requests: Counter,
    latency: Histogram,
}

/// Allocation counters of one config revision, resolved once: experiment → [(cell, counter)].
struct AllocTable {
    revision: u64,
    content_hash: u64,
    /// XXH3 rather than SipHash: the keys are the config's own ids (no flooding to defend
    /// against), looked up once per allocated layer per request.
    experiments: HashMap<Box<str>, CellCounters, Xxh3DefaultBuilder>,
}

/// One experiment's cells and their counters.
type CellCounters = Vec<(Box<str>, Counter)>;

// === impl Metrics ===

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("allot");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by transport, endpoint and status",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(|| {
            // 10 µs .. ~2.4 s.
            Histogram::new(exponential_buckets(0.000_01, 3.0, 12))
        });
        registry.register(
            "request_duration_seconds",
            "Request latency in seconds, by transport, endpoint and status",
            latency.clone(),
        );
        let allocations = Family::<AllocLabels, Counter>::default();
        registry.register(
            "allocations",
            "Units allocated to each experiment cell",
            allocations.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config documents applied (accepted, unchanged) or rejected, by source",
            reloads.clone(),
        );
        let revision = Gauge::default();
        registry.register(
            "config_revision",
            "The serving config revision (0 before the first config)",
            revision.clone(),
        );
        let log_lines = Counter::default();
        registry.register(
            "assignment_log_lines",
            "Assignment log lines queued for writing",
            log_lines.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "assignment_log_dropped",
            "Assignment log lines dropped because the queue was full or closed",
            log_dropped.clone(),
        );
        let persist_failures = Counter::default();
        registry.register(
            "state_persist_failures",
            "Accepted configs that could not be written to --state-dir",
            persist_failures.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "requests_rejected",
            "Evaluation requests refused before a handler ran, by transport and reason (overload, timeout, unauthenticated)",
            rejected.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Evaluation requests holding a --max-concurrency slot now (streams hold none)",
            in_flight.clone(),
        );
        Arc::new(Self {
            registry,
            rejected,
            in_flight,
            requests,
            latency,
            allocations,
            reloads,
            revision,
            log_lines,
            log_dropped,
            persist_failures,
            table: ArcSwapOption::empty(),
            hot: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// Counts one request and its latency. `endpoint` is a route (`/v1/allocate`) or an RPC
    /// method (`Allocate`); `status` is the HTTP status or the numeric gRPC code.
    pub fn observe_request(
        &self,
        transport: Transport,
        endpoint: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            transport: transport_name(transport),
            endpoint,
            status,
        };
        let secs = elapsed.as_secs_f64();
        if let Some(hot) = self.hot.load().iter().find(|h| h.labels == labels) {
            hot.requests.inc();
            hot.latency.observe(secs);
            return;
        }
        let hot = HotRequest {
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            labels,
        };
        hot.requests.inc();
        hot.latency.observe(secs);
        if self.hot.load().len() < HOT_LIMIT {
            self.hot.rcu(|list| {
                let mut list = Vec::clone(list);
                if !list.iter().any(|h| h.labels == hot.labels) {
                    list.push(hot.clone());
                }
                list
            });
        }
    }

    /// The in-flight gauge, shared with the [`crate::guard::Guard`] that counts its slots in it.
    pub fn in_flight_gauge(&self) -> Gauge {
        self.in_flight.clone()
    }

    /// The rejection counters of `transport` (every reason is registered, so each renders as 0
    /// before the first rejection).
    pub fn reject_counters(&self, transport: Transport) -> RejectCounters {
        let get = |reason| {
            self.rejected
                .get_or_create(&RejectLabels {
                    transport: transport_name(transport),
                    reason,
                })
                .clone()
        };
        RejectCounters {
            overload: get("overload"),
            timeout: get("timeout"),
            unauthenticated: get("unauthenticated"),
        }
    }

    /// Counts the unit's experiment cells.
    pub fn count_allocation(&self, snapshot: &Snapshot, allocation: &Allocation<'_>) {
        if allocation.assignments().is_empty() {
            return;
        }
        let guard = self.table.load();
        let built;
        let table = match &*guard {
            Some(t)
                if t.revision == snapshot.revision()
                    && t.content_hash == snapshot.content_hash() =>
            {
                &**t
            }
            // First request on a new revision: resolve its counters once. Racing builders
            // produce equal tables over the same shared counters.
            _ => {
                built = Arc::new(self.table_for(snapshot));
                self.table.store(Some(built.clone()));
                &*built
            }
        };
        for a in allocation.assignments() {
            if let Some(cells) = table.experiments.get(a.experiment)
                && let Some((_, c)) = cells.iter().find(|(id, _)| &**id == a.cell)
            {
                c.inc();
            }
        }
    }

    /// Counts one config document from `source`: accepted (new revision or unchanged) or rejected.
    pub fn reload(&self, source: Source, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                source: source_name(source),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// Counts an assignment log line queued.
    pub fn log_line(&self) {
        self.log_lines.inc();
    }

    /// Counts an assignment log line dropped.
    pub fn log_dropped(&self) {
        self.log_dropped.inc();
    }

    /// Assignment log lines dropped so far.
    pub fn log_dropped_total(&self) -> u64 {
        self.log_dropped.get()
    }

    /// Counts a failure to persist an accepted config.
    pub fn persist_failure(&self) {
        self.persist_failures.inc();
    }

    /// The OpenMetrics text of every metric, with the revision gauge read from `store`.
    pub fn render(&self, store: &ConfigStore) -> String {
        self.revision.set(
            store
                .revision()
                .map_or(0, |r| i64::try_from(r).unwrap_or(i64::MAX)),
        );
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn table_for(&self, snapshot: &Snapshot) -> AllocTable {
        let experiments = snapshot
            .config()
            .experiments
            .iter()
            .map(|e| {
                let cells = e
                    .cells
                    .iter()
                    .map(|c| {
                        let counter = self
                            .allocations
                            .get_or_create(&AllocLabels {
                                experiment: e.id.clone(),
                                cell: c.id.clone(),
                            })
                            .clone();
                        (c.id.as_str().into(), counter)
                    })
                    .collect();
                (e.id.as_str().into(), cells)
            })
            .collect();
        AllocTable {
            revision: snapshot.revision(),
            content_hash: snapshot.content_hash(),
            experiments,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The label value of a transport.
fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Http => "http",
        Transport::Grpc => "grpc",
    }
}

/// The label value of a config source.
pub fn source_name(source: Source) -> &'static str {
    match source {
        Source::Embedded => "embedded",
        Source::File => "file",
        Source::Admin => "admin",
        Source::Upstream => "upstream",
        Source::Persisted => "persisted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_allocations_and_revision() {
        let store = ConfigStore::new();
        let config = allot::Config::parse(
            "layers: [{id: l}]\nexperiments: [{id: e, layer: l, ranges: ['0..10000'], cells: [{id: c}]}]",
        )
        .unwrap();
        let snap = store.apply(&config, None, None).unwrap().snapshot().clone();
        let m = Metrics::new();
        m.observe_request(
            Transport::Http,
            "/v1/allocate",
            200,
            Duration::from_micros(5),
        );
        let ctx = allot::Context::with_targeting_key("u");
        m.count_allocation(&snap, &snap.allocate(&ctx));
        m.count_allocation(&snap, &snap.allocate(&ctx));
        m.reload(Source::File, false);
        let text = m.render(&store);
        assert!(
            text.contains(
                r#"allot_requests_total{transport="http",endpoint="/v1/allocate",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"allot_allocations_total{experiment="e",cell="c"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"allot_config_reloads_total{source="file",result="failure"} 1"#),
            "{text}"
        );
        assert!(text.contains("allot_config_revision 1"), "{text}");
    }
}
