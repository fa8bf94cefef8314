//! The run itself: connect, schedule, dispatch, record, and always finish on time.
//!
//! Open loop: a scheduler thread walks the timetable (`t0 + i / rate`) with `thread::sleep`,
//! which wakes within tens of microseconds (tokio's timer would round every slot up to the
//! next millisecond), and puts each request, stamped with its scheduled time, on one bounded
//! queue. HTTP/1.1 workers (one per keep-alive connection, one request at a time) take the next
//! request whenever they are idle; for HTTP/2 and gRPC a dispatcher spreads requests over the
//! connections as concurrent streams. A full queue or too many in flight counts as
//! `dropped_overload`. Beside the load, an optional swapper pushes configs to the admin port
//! and an optional progress line shows the counts so far.
//!
//! Invariant: the run ends by `warmup + duration + grace` (plus connection setup): every
//! request's timeout is cut to that deadline, workers stop taking work at it, and whatever
//! was scheduled in the window but not answered by then counts as a `timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use hdrhistogram::Histogram;
use hyper::Uri;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, mpsc};

use crate::cpu::{cpu_time_us, thread_cpu_us};
use crate::population::Population;
use crate::report::{CpuTimes, Header, MAX_LATENCY_US, Report, Stats};
use crate::swap::Swapper;
use crate::target::{ErrorKind, GrpcConn, H2Conn, HttpConn};
use crate::{Config, Protocol};

/// Extra time, past the grace period, allowed for workers to notice the deadline.
const JOIN_SLACK: Duration = Duration::from_secs(1);

/// Runs the load described by `config` and reports on the measured window.
///
/// Fails before sending any load if the configuration is invalid or the server cannot be
/// reached; once load has started, every failure is counted in the report instead.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    ensure!(config.connections > 0, "connections must be at least 1");
    ensure!(!config.duration.is_zero(), "duration must be positive");
    if let Some(rate) = config.rate {
        ensure!(
            rate.is_finite() && rate > 0.0,
            "rate must be a positive number, not {rate}"
        );
    }
    ensure!(
        config.zipf.is_finite() && config.zipf >= 0.0,
        "zipf exponent must be >= 0"
    );
    ensure!(
        !(config.http2 && config.protocol.is_grpc()),
        "HTTP/2 is an option of the HTTP protocols; {} always uses it",
        config.protocol
    );
    let swapper = config.swap.as_ref().map(Swapper::new).transpose()?;
    let url: Uri = config
        .url
        .parse()
        .with_context(|| format!("bad URL `{}`", config.url))?;
    if let Some(pid) = config.server_pid {
        cpu_time_us(Some(pid)).context("--server-pid")?;
    }

    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let (protocol, flag) = (config.protocol, config.flag.as_str());
        let connect = async {
            anyhow::Ok(if protocol.is_grpc() {
                Conn::Mux(Mux::Grpc(GrpcConn::connect(&url, protocol, flag).await?))
            } else if config.http2 {
                Conn::Mux(Mux::H2(H2Conn::connect(&url, protocol, flag).await?))
            } else {
                Conn::Http(HttpConn::connect(&url, protocol, flag).await?)
            })
        };
        // A silent address (packets dropped) would otherwise hang for the OS's TCP timeout.
        let conn = tokio::time::timeout(config.timeout, connect)
            .await
            .with_context(|| {
                format!("connecting to {url}: no answer within {:?}", config.timeout)
            })??;
        conns.push(conn);
    }

    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    let run = Arc::new(Shared {
        population: Population::new(config.units, config.zipf, config.seed),
        stats: Mutex::new(Stats::new()),
        measure_start,
        deadline: end + config.grace,
        timeout: config.timeout,
    });
    let pid = config.server_pid;
    let cpu_before = tokio::spawn(async move {
        tokio::time::sleep_until(measure_start.into()).await;
        cpu_sample(pid)
    });
    let swaps = swapper.map(|s| tokio::spawn(s.run(start, end)));
    let progress = config
        .progress
        .then(|| tokio::spawn(show_progress(run.clone(), start, end)));

    let window = match config.rate {
        Some(rate) => open_loop(&run, conns, rate, start, end, config.max_pending).await,
        None => {
            closed_loop(&run, conns, end).await;
            None
        }
    };
    let cpu_after = cpu_sample(pid);
    if let Some(p) = progress {
        p.abort();
    }
    let swaps = match swaps {
        Some(task) => task.await.ok(),
        None => None,
    };

    // Late answers after this point go to a fresh `Stats` that nobody reads.
    let mut stats = std::mem::take(&mut *run.stats.lock().unwrap_or_else(PoisonError::into_inner));
    let mut lag = None;
    if let Some(window) = window {
        stats.count(ErrorKind::DroppedOverload, window.dropped);
        let unanswered = window.scheduled.saturating_sub(stats.accounted());
        stats.count(ErrorKind::Timeout, unanswered);
        lag = window.lag;
    }
    let cpu_before = cpu_before.await.unwrap_or_default();
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    let server_threads_us = match (cpu_before.server_threads_us, cpu_after.server_threads_us) {
        (Some(before), Some(after)) => Some(
            after
                .into_iter()
                .map(|(name, us)| {
                    let was = before.get(&name).copied().unwrap_or(0);
                    (name, us.saturating_sub(was))
                })
                .collect(),
        ),
        _ => None,
    };
    let cpu = CpuTimes {
        server_us: delta(cpu_before.server_us, cpu_after.server_us),
        client_us: delta(cpu_before.client_us, cpu_after.client_us),
        server_threads_us,
    };
    let uses_flag = matches!(config.protocol, Protocol::Ofrep | Protocol::Flagd);
    let header = Header {
        protocol: config.protocol.to_string(),
        http2: config.http2 || config.protocol.is_grpc(),
        flag: uses_flag.then(|| config.flag.clone()),
        url: config.url,
        target_rate: config.rate,
        duration: config.duration,
        connections: config.connections,
    };
    Ok(Report::new(header, stats, lag, cpu, swaps))
}

/// State every worker shares.
struct Shared {
    population: Population,
    stats: Mutex<Stats>,
    measure_start: Instant,
    /// Nothing is sent or waited for past this instant.
    deadline: Instant,
    timeout: Duration,
}

/// One scheduled request.
#[derive(Debug, Clone, Copy)]
struct Job {
    /// When it should have been sent: its latency is measured from here.
    scheduled: Instant,
    unit: u64,
    /// Scheduled inside the measured window (not during warm-up).
    measured: bool,
}

/// What the scheduler counted in the measured window.
#[derive(Debug, Clone)]
struct WindowCount {
    scheduled: u64,
    dropped: u64,
    /// How late the scheduler itself handed out each request, in microseconds; `None` if the
    /// scheduler thread failed.
    lag: Option<Histogram<u64>>,
}

/// A connection: HTTP/1.1 (one request at a time) or multiplexed.
enum Conn {
    Http(HttpConn),
    Mux(Mux),
}

/// A connection that carries concurrent requests; clones share it.
#[derive(Clone)]
enum Mux {
    H2(H2Conn),
    Grpc(GrpcConn),
}

// === impl Shared ===

impl Shared {
    /// Records the answer to a request scheduled at `scheduled`.
    fn finish(&self, scheduled: Instant, result: Result<(), ErrorKind>) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(scheduled);
        let at = now.saturating_duration_since(self.measure_start);
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(latency, result, at);
    }

    /// The timeout for a request sent now, or `None` once the deadline has passed.
    fn request_timeout(&self) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| left.min(self.timeout))
    }
}

// === impl Conn ===

impl Conn {
    async fn call(
        &mut self,
        population: &Population,
        unit: u64,
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        match self {
            Conn::Http(c) => c.call_timeout(population, unit, timeout).await,
            Conn::Mux(c) => c.call(population, unit, timeout).await,
        }
    }
}

// === impl Mux ===

impl Mux {
    async fn call(
        &self,
        population: &Population,
        unit: u64,
        timeout: Duration,
    ) -> Result<(), ErrorKind> {
        match self {
            Mux::H2(c) => c.call_timeout(population, unit, timeout).await,
            Mux::Grpc(c) => c.call_timeout(population, unit, timeout).await,
        }
    }
}

async fn open_loop(
    run: &Arc<Shared>,
    conns: Vec<Conn>,
    rate: f64,
    start: Instant,
    end: Instant,
    max_pending: usize,
) -> Option<WindowCount> {
    let (tx, rx) = mpsc::channel::<Job>(max_pending.max(1));
    let scheduled = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let scheduler = {
        let (run, scheduled, dropped) = (run.clone(), scheduled.clone(), dropped.clone());
        tokio::task::spawn_blocking(move || {
            schedule(&run, &tx, rate, start, end, &scheduled, &dropped)
        })
    };

    let workers: tokio::task::JoinHandle<()> = match conns.first() {
        Some(Conn::Mux(_)) => {
            let clients = conns
                .into_iter()
                .filter_map(|c| match c {
                    Conn::Mux(m) => Some(m),
                    Conn::Http(_) => None,
                })
                .collect();
            tokio::spawn(mux_dispatch(
                run.clone(),
                rx,
                clients,
                max_pending,
                dropped.clone(),
            ))
        }
        _ => {
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let handles: Vec<_> = conns
                .into_iter()
                .map(|conn| tokio::spawn(http_worker(run.clone(), rx.clone(), conn)))
                .collect();
            tokio::spawn(async move {
                for h in handles {
                    let _ = h.await;
                }
            })
        }
    };

    let lag = scheduler.await.ok();
    let join_by = tokio::time::Instant::from_std(run.deadline + JOIN_SLACK);
    if tokio::time::timeout_at(join_by, workers).await.is_err() {
        // Cannot happen unless a worker ignores its deadline; the report stays correct because
        // unanswered requests are counted as timeouts below.
    }
    Some(WindowCount {
        scheduled: scheduled.load(Ordering::Relaxed),
        dropped: dropped.load(Ordering::Relaxed),
        lag,
    })
}

/// Walks the timetable on a blocking thread, handing each slot's request to the queue, and
/// returns how late (µs) it handed out each request of the window: lag here is the load
/// generator's own, not the server's.
fn schedule(
    run: &Shared,
    tx: &mpsc::Sender<Job>,
    rate: f64,
    start: Instant,
    end: Instant,
    scheduled: &AtomicU64,
    dropped: &AtomicU64,
) -> Histogram<u64> {
    let mut lag = Stats::new().histogram;
    let mut sampler = run.population.sampler(0);
    for i in 0u64.. {
        let slot = start + Duration::from_secs_f64(i as f64 / rate);
        if slot >= end {
            break;
        }
        let now = Instant::now();
        if slot > now {
            std::thread::sleep(slot - now);
        }
        let measured = slot >= run.measure_start;
        if measured {
            let late = Instant::now().saturating_duration_since(slot).as_micros();
            lag.saturating_record(
                u64::try_from(late)
                    .unwrap_or(u64::MAX)
                    .clamp(1, MAX_LATENCY_US),
            );
        }
        let job = Job {
            scheduled: slot,
            unit: sampler.next_unit(),
            measured,
        };
        if measured {
            scheduled.fetch_add(1, Ordering::Relaxed);
        }
        match tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if measured {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    lag
}

/// One HTTP/1.1 connection: takes the oldest queued request whenever it is idle.
async fn http_worker(
    run: Arc<Shared>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    mut conn: Conn,
) {
    loop {
        // Holding the lock while waiting makes the queue hand each job to one idle worker.
        let job = rx.lock().await.recv().await;
        let Some(job) = job else { break };
        let Some(timeout) = run.request_timeout() else {
            break;
        };
        let result = conn.call(&run.population, job.unit, timeout).await;
        if job.measured {
            run.finish(job.scheduled, result);
        }
    }
}

/// Spreads queued requests over the HTTP/2 connections or gRPC channels round-robin, each as
/// its own stream.
async fn mux_dispatch(
    run: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    clients: Vec<Mux>,
    max_in_flight: usize,
    dropped: Arc<AtomicU64>,
) {
    let max_in_flight = u32::try_from(max_in_flight.max(1)).unwrap_or(u32::MAX);
    let in_flight = Arc::new(Semaphore::new(max_in_flight as usize));
    let mut next = 0usize;
    while let Some(job) = rx.recv().await {
        let Some(timeout) = run.request_timeout() else {
            break;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if job.measured {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        let client = clients[next % clients.len()].clone();
        next = next.wrapping_add(1);
        let run = run.clone();
        tokio::spawn(async move {
            let result = client.call(&run.population, job.unit, timeout).await;
            if job.measured {
                run.finish(job.scheduled, result);
            }
            drop(permit);
        });
    }
    // Every permit back means every spawned call has finished.
    let deadline = tokio::time::Instant::from_std(run.deadline);
    let _ = tokio::time::timeout_at(deadline, in_flight.acquire_many(max_in_flight)).await;
}

/// Closed loop: every connection sends its next request as soon as its last one is answered.
async fn closed_loop(run: &Arc<Shared>, conns: Vec<Conn>, end: Instant) {
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let run = run.clone();
            tokio::spawn(async move {
                let mut sampler = run.population.sampler(i as u64 + 1);
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let Some(timeout) = run.request_timeout() else {
                        break;
                    };
                    let unit = sampler.next_unit();
                    let result = conn.call(&run.population, unit, timeout).await;
                    if sent >= run.measure_start {
                        run.finish(sent, result);
                    }
                }
            })
        })
        .collect();
    let join_by = tokio::time::Instant::from_std(run.deadline + JOIN_SLACK);
    for h in handles {
        let _ = tokio::time::timeout_at(join_by, h).await;
    }
}

/// CPU times of the server (if a pid is given) and of this process; unreadable ones are `None`.
fn cpu_sample(server_pid: Option<u32>) -> CpuTimes {
    CpuTimes {
        server_us: server_pid.and_then(|pid| cpu_time_us(Some(pid)).ok()),
        client_us: cpu_time_us(None).ok(),
        server_threads_us: server_pid.and_then(|pid| thread_cpu_us(pid).ok()),
    }
}

/// Redraws a progress line on stderr every 200 ms until aborted: elapsed time over the whole
/// run, then the measured window's counts so far. indicatif draws nothing when stderr is not a
/// terminal.
async fn show_progress(run: Arc<Shared>, start: Instant, end: Instant) {
    let total_ms = end.saturating_duration_since(start).as_millis();
    let bar = ProgressBar::new(u64::try_from(total_ms).unwrap_or(u64::MAX));
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:24}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // The task ends by being aborted: the guard clears the line when the future is dropped.
    struct Clear(ProgressBar);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    let bar = Clear(bar);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(start).as_millis();
        bar.0
            .set_position(u64::try_from(elapsed).unwrap_or(u64::MAX));
        if now < run.measure_start {
            bar.0.set_message("warm-up");
            continue;
        }
        let (ok, shed, failed, answered) = {
            let stats = run.stats.lock().unwrap_or_else(PoisonError::into_inner);
            let shed = stats.shed();
            let failed = stats.errors.values().sum::<u64>() - shed;
            (stats.ok, shed, failed, stats.answered())
        };
        let secs = now
            .saturating_duration_since(run.measure_start)
            .as_secs_f64();
        let rate = if secs > 0.0 {
            answered as f64 / secs
        } else {
            0.0
        };
        bar.0.set_message(format!(
            "{ok} ok, {failed} errors, {shed} shed, {rate:.0} req/s"
        ));
    }
}
