//! CPU time of a process from Linux's `/proc/PID/stat` (user + system, all threads), and of
//! each of its threads by name.
//!
//! The kernel reports process time in clock ticks of `USER_HZ`, which is 100 on every Linux
//! ABI, so the resolution is 10 ms: over a window of a few seconds at thousands of requests per
//! second that is well under 0.1 µs per request. Per thread it reads `schedstat` (nanoseconds
//! on CPU) where the kernel has it, because one thread's share can be a few ticks.

use std::collections::BTreeMap;

use anyhow::Context as _;

/// Microseconds per clock tick (`USER_HZ` = 100).
const US_PER_TICK: u64 = 10_000;

/// The CPU time (user + system) `pid` has used so far, in microseconds; `None` is this
/// process.
pub fn cpu_time_us(pid: Option<u32>) -> anyhow::Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&stat).with_context(|| format!("parsing {path}"))
}

/// The CPU time `pid`'s threads have used so far, in microseconds, summed by thread name
/// (`comm`: at most 15 bytes, so a name may be cut short). A thread that exits while it is
/// read is left out.
pub fn thread_cpu_us(pid: u32) -> anyhow::Result<BTreeMap<String, u64>> {
    let dir = format!("/proc/{pid}/task");
    let mut by_name = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(task) = entry.map(|e| e.path()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        let us = std::fs::read_to_string(task.join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
            .or_else(|| {
                let stat = std::fs::read_to_string(task.join("stat")).ok()?;
                parse_stat(&stat).ok()
            });
        if let Some(us) = us {
            *by_name.entry(comm.trim_end().to_owned()).or_default() += us;
        }
    }
    Ok(by_name)
}

/// The time on CPU (the first field of `/proc/PID/task/TID/schedstat`, in nanoseconds), in
/// microseconds.
fn parse_schedstat(schedstat: &str) -> Option<u64> {
    let ns: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1_000)
}

/// Parses `utime + stime` (fields 14 and 15) out of a `/proc/PID/stat` line, in microseconds.
fn parse_stat(stat: &str) -> anyhow::Result<u64> {
    // Field 2, the command name, is in parentheses and may contain spaces or ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no ')' after the command name")?;
    // After the name come field 3 (state) onwards: utime is field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || -> anyhow::Result<u64> {
        fields
            .next()
            .context("too few fields")?
            .parse::<u64>()
            .context("not a number")
    };
    let (utime, stime) = (next()?, next()?);
    Ok((utime + stime) * US_PER_TICK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime() {
        let line = "4242 (allot server) S 1 4242 4242 0 -1 4194560 500 0 0 0 123 45 0 0 20 0 \
                    5 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(line).unwrap(), (123 + 45) * US_PER_TICK);
        let odd = "7 (a) b) R 1 7 7 0 -1 0 0 0 0 0 2 3 0 0";
        assert_eq!(parse_stat(odd).unwrap(), 5 * US_PER_TICK);
    }

    #[test]
    fn reads_its_own_process() {
        cpu_time_us(None).unwrap();
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(parse_schedstat("123456789 2000 17\n"), Some(123_456));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn reads_its_own_threads_by_name() {
        let (busy_tx, busy_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let burner = std::thread::Builder::new()
            .name("cpu-test-burner".into())
            .spawn(move || {
                // Spin until this thread has used some CPU (bounded: a reader that never sees
                // it fails the assertion below instead of hanging), then stay alive to be read.
                let mut x = 0u64;
                for _ in 0..10_000 {
                    let used = thread_cpu_us(std::process::id())
                        .ok()
                        .and_then(|m| m.get("cpu-test-burner").copied());
                    if used.unwrap_or(0) >= 1_000 {
                        break;
                    }
                    for i in 0..100_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                busy_tx.send(x).unwrap();
                done_rx.recv().unwrap();
            })
            .unwrap();
        busy_rx.recv().unwrap();
        let by_name = thread_cpu_us(std::process::id()).unwrap();
        done_tx.send(()).unwrap();
        burner.join().unwrap();
        let burned = by_name.get("cpu-test-burner").copied().unwrap_or(0);
        assert!(burned >= 1_000, "{by_name:?}");
        assert!(thread_cpu_us(u32::MAX).is_err());
    }
}
