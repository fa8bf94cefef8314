//! The assignment log (DESIGN §7): one JSON line per unit the first time it is seen in an
//! experiment cell under a revision, written off the request path.
//!
//! The request path ([`AssignmentLog::observe`]) only hashes, checks a TTL cache and
//! `try_send`s on a bounded queue; a full queue drops the line and counts it. A dedicated
//! writer thread owns the file (or stdout), serializes and batches lines in a `BufWriter`, and
//! under load wakes once per [`TICK`] (not once per line) to write and flush what has queued. It
//! must never block a request.
//!
//! Deduplication is per (unit, experiment, cell, revision), with a TTL, as DESIGN §7 asks: the
//! cache maps a digest of each entry to the time it expires, checked on lookup. It is a
//! `quick_cache` (sharded, S3-FIFO eviction, no maintenance pass). DESIGN §7 names moka, which
//! this replaced: on a fresh server, where nearly every request has a new unit, moka's inserts
//! (a pointer chase through its lock-free table, bookkeeping queued for a maintenance pass)
//! cost about 2.5 µs of CPU per request on one core (BENCHMARKS.md, "Assignment log").

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use allot::{Allocation, Context, Snapshot, TARGETING_KEY};
use quick_cache::sync::{Cache, GuardResult};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use xxhash_rust::xxh3::Xxh3;

use crate::metrics::{Metrics, Transport};
use crate::trace::TraceParent;

/// How long the writer sleeps between batches while lines keep arriving (see `write_loop`):
/// the longest a queued line waits before it is written and flushed, give or take one batch.
///
/// Each tick costs a wake-up and a `write` on whichever core the writer shares. On a server
/// pinned to one core at 10,000 req/s with new units, a 1 ms tick cost 2.6 µs of CPU per
/// request and 10 ms cost 0.9; 50 ms cost 0.6 but raised p99, each batch holding the core longer
/// (BENCHMARKS.md, "Assignment log").
pub const TICK: Duration = Duration::from_millis(10);

/// The longest queue [`open`] accepts (`--assignment-log-queue`'s bound).
pub const MAX_QUEUE: usize = 1 << 24;

/// Where the log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`-`).
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// Assignment log tuning.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where lines go.
    pub target: Target,
    /// How long a (unit, experiment, cell, revision) is remembered as logged.
    pub ttl: Duration,
    /// Most entries remembered (others are evicted and may be logged again); the cache's
    /// memory for them is reserved when the log opens.
    pub capacity: u64,
    /// Lines that may wait for the writer before new ones are dropped.
    pub queue: usize,
}

/// The request-side handle: dedup cache and queue sender. Shared by every transport.
pub struct AssignmentLog {
    /// Entry digests, each with the time it expires (milliseconds since `epoch`).
    seen: Cache<u128, u64>,
    /// The zero of the expiry times.
    epoch: Instant,
    /// The TTL in milliseconds.
    ttl_ms: u64,
    tx: mpsc::Sender<Msg>,
    metrics: Option<Arc<Metrics>>,
}

/// The writer thread's handle; [`Writer::close`] flushes and stops it.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    done: oneshot::Receiver<io::Result<()>>,
}

enum Msg {
    Line(Record),
    Close,
}

/// One line of the log.
#[derive(Debug, Serialize)]
struct Record {
    #[serde(serialize_with = "rfc3339")]
    ts: SystemTime,
    trace_id: Option<String>,
    span_id: Option<String>,
    revision: u64,
    unit_key: String,
    unit: String,
    allocations: Vec<Entry>,
    source: &'static str,
}

#[derive(Debug, Serialize)]
struct Entry {
    layer: String,
    experiment: String,
    cell: String,
    bucket: u32,
}

/// Opens the log target and starts the writer thread. Fails if the target cannot be opened or
/// `options.queue` exceeds [`MAX_QUEUE`].
pub fn open(
    options: &Options,
    metrics: Option<Arc<Metrics>>,
) -> io::Result<(Arc<AssignmentLog>, Writer)> {
    if options.queue > MAX_QUEUE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "assignment log queue {} exceeds {MAX_QUEUE} lines",
                options.queue
            ),
        ));
    }
    let out: Box<dyn Write + Send> = match &options.target {
        Target::Stdout => Box::new(io::stdout()),
        Target::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
    };
    let (tx, rx) = mpsc::channel(options.queue.max(1));
    let (done_tx, done) = oneshot::channel();
    let capacity = usize::try_from(options.capacity)
        .unwrap_or(usize::MAX)
        .max(1);
    std::thread::Builder::new()
        .name("allot-assignment-log".into())
        .spawn(move || {
            let _ = done_tx.send(write_loop(rx, out));
        })?;
    Ok((
        Arc::new(AssignmentLog {
            seen: reserved(capacity),
            epoch: Instant::now(),
            ttl_ms: u64::try_from(options.ttl.as_millis()).unwrap_or(u64::MAX),
            tx: tx.clone(),
            metrics,
        }),
        Writer { tx, done },
    ))
}

// === impl AssignmentLog ===

impl AssignmentLog {
    /// Queues a line per unit attribute for the allocation if any of its (unit, experiment,
    /// cell, revision) entries is new within the TTL. Never blocks.
    pub fn observe(
        &self,
        snapshot: &Snapshot,
        allocation: &Allocation<'_>,
        ctx: &Context,
        trace: Option<&TraceParent>,
        transport: Transport,
    ) {
        let assignments = allocation.assignments();
        if assignments.is_empty() {
            return;
        }
        let layers = &snapshot.config().layers;
        let unit_key = |layer: &str| {
            layers
                .iter()
                .find(|l| l.id == layer)
                .and_then(|l| l.unit.as_deref())
                .unwrap_or(TARGETING_KEY)
        };
        let revision = snapshot.revision();
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // One line per distinct unit attribute (usually one): layers may hash different units.
        for (i, first) in assignments.iter().enumerate() {
            let key = unit_key(first.layer);
            if assignments
                .get(..i)
                .is_some_and(|before| before.iter().any(|a| unit_key(a.layer) == key))
            {
                continue;
            }
            let Ok(unit) = ctx.unit(key) else { continue };
            let mine = || assignments.iter().filter(|a| unit_key(a.layer) == key);
            let mut fresh: Vec<u128> = Vec::new();
            for a in mine() {
                let k = dedup_key(unit, a.experiment, a.cell, revision);
                if self.claim(k, now) {
                    fresh.push(k);
                }
            }
            if fresh.is_empty() {
                continue;
            }
            let record = Record {
                ts: SystemTime::now(),
                trace_id: trace.map(TraceParent::trace_id_hex),
                span_id: trace.map(TraceParent::span_id_hex),
                revision,
                unit_key: key.to_owned(),
                unit: unit.to_owned(),
                allocations: mine()
                    .map(|a| Entry {
                        layer: a.layer.to_owned(),
                        experiment: a.experiment.to_owned(),
                        cell: a.cell.to_owned(),
                        bucket: a.bucket,
                    })
                    .collect(),
                source: match transport {
                    Transport::Http => "http",
                    Transport::Grpc => "grpc",
                },
            };
            match self.tx.try_send(Msg::Line(record)) {
                Ok(()) => {
                    if let Some(m) = &self.metrics {
                        m.log_line();
                    }
                }
                Err(_) => {
                    // Forget the entries so the unit is logged when the queue has room again.
                    for k in &fresh {
                        self.seen.remove(k);
                    }
                    if let Some(m) = &self.metrics {
                        m.log_dropped();
                    }
                }
            }
        }
    }

    /// Whether the entry `key` is new (never seen, evicted, or expired at `now`), in which case
    /// it is remembered until `now + ttl`. Of two requests racing on one new entry, one claims
    /// it; the other does not wait (a zero timeout) and counts it as seen. Two racing on an
    /// expired entry may both renew it: at worst a duplicate line, never a missing one.
    fn claim(&self, key: u128, now: u64) -> bool {
        let expiry = now.saturating_add(self.ttl_ms);
        match self.seen.get_value_or_guard(&key, Some(Duration::ZERO)) {
            GuardResult::Value(until) if until > now => false,
            GuardResult::Value(_) => {
                self.seen.insert(key, expiry);
                true
            }
            GuardResult::Guard(guard) => guard.insert(expiry).is_ok(),
            GuardResult::Timeout => false,
        }
    }
}

impl std::fmt::Debug for AssignmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignmentLog")
            .field("entries", &self.seen.len())
            .finish_non_exhaustive()
    }
}

// === impl Writer ===

impl Writer {
    /// Writes every line queued before this call, flushes, and stops the writer thread.
    pub async fn close(self) -> io::Result<()> {
        if self.tx.send(Msg::Close).await.is_err() {
            // The thread already stopped (an earlier write error); report it below.
        }
        self.done
            .await
            .unwrap_or_else(|_| Err(io::Error::other("assignment log writer thread panicked")))
    }
}

/// The writer thread. Idle, it blocks on the queue. Once a line arrives it works in ticks:
/// it drains whatever is queued, writes and flushes it, sleeps [`TICK`], and does it again,
/// until a tick finds the queue empty. So under load the thread wakes once per tick instead
/// of once per line. Each wake-up is a futex wake and a context switch, often on the cores
/// serving requests, and per line they cost more than writing the line. Lines reach the file
/// within about a tick.
fn write_loop(mut rx: mpsc::Receiver<Msg>, out: Box<dyn Write + Send>) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        loop {
            while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                match msg {
                    Msg::Line(record) => {
                        serde_json::to_writer(&mut out, &record)?;
                        out.write_all(b"\n")?;
                    }
                    Msg::Close => return out.flush(),
                }
            }
            out.flush()?;
            std::thread::sleep(TICK);
            if rx.is_empty() {
                break;
            }
        }
    }
    // Every sender is gone.
    out.flush()
}

/// The most entries [`reserved`] sizes the cache for up front; a larger cache grows past it.
const RESERVE_MAX: usize = 4_000_000;

/// The dedup cache, sized for its capacity (up to [`RESERVE_MAX`]) up front.
///
/// Grown on demand, each shard's table doubles, rehashing every entry under the shard's lock,
/// and its entry slab is copied to a larger one: on a fresh server, where the cache fills at
/// the request rate, those are milliseconds on the request path every time a shard doubles.
/// Reserved, the memory is mapped but mostly touched only as entries arrive: about 20 MB RSS
/// at start for a million entries (the table's control bytes, and whole transparent huge
/// pages where the kernel backs the heap with them).
fn reserved(capacity: usize) -> Cache<u128, u64> {
    let cache = Cache::new(capacity);
    cache.reserve(capacity.min(RESERVE_MAX));
    cache
}

/// A 128-bit digest of (unit, experiment, cell, revision): no allocation per lookup, and
/// collisions (which would only skip a line) are out of reach at the cache's size.
fn dedup_key(unit: &str, experiment: &str, cell: &str, revision: u64) -> u128 {
    let mut h = Xxh3::new();
    for part in [unit, experiment, cell] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update(&revision.to_le_bytes());
    h.digest128()
}

fn rfc3339<S: serde::Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_key_separates_fields() {
        assert_ne!(dedup_key("ab", "c", "d", 1), dedup_key("a", "bc", "d", 1));
        assert_ne!(dedup_key("a", "b", "c", 1), dedup_key("a", "b", "c", 2));
        assert_eq!(dedup_key("a", "b", "c", 1), dedup_key("a", "b", "c", 1));
    }
}
