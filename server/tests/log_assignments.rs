//! The assignment log: one line per (unit, experiment, cell, revision) within the TTL, new
//! lines for a new revision, the caller's trace ids, a full queue drops and counts instead of
//! blocking, and the real server flushes the log on shutdown.

mod http_support;

use std::collections::HashMap;
use std::time::Duration;

use allot::{Config, Context};
use allot_server::app;
use allot_server::log::{self, Options, Target};
use allot_server::metrics::Metrics;
use allot_server::service::{RequestMeta, Service};
use allot_server::settings::Settings;
use http_support::{CONFIG, service, store_with};
use serde_json::Value;

fn options(path: &std::path::Path, queue: usize) -> Options {
    Options {
        target: Target::File(path.to_owned()),
        ttl: Duration::from_secs(3600),
        capacity: 100_000,
        queue,
    }
}

/// A service over `store` with the log open as `options` says (no metrics), and its writer.
fn logged(
    store: &std::sync::Arc<allot_server::state::ConfigStore>,
    options: &Options,
) -> (Service, log::Writer) {
    let (log, writer) = log::open(options, None).unwrap();
    (service(store).with_assignment_log(log), writer)
}

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn ctx(i: usize) -> Context {
    Context::with_targeting_key(format!("member-{i}")).with("device_id", format!("dev-{i}"))
}

#[tokio::test]
async fn one_line_per_unit_experiment_cell_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("assignments.jsonl");
    let store = store_with(CONFIG);
    let metrics = Metrics::new();
    let (log, writer) = log::open(&options(&path, 10_000), Some(metrics.clone())).unwrap();
    let svc = service(&store).with_assignment_log(log);

    let units = 50;
    // Each unit 5 times under revision 1, over both transports.
    let mut expected: HashMap<(String, String, String, u64), u32> = HashMap::new();
    let snap1 = store.load_full().unwrap();
    for round in 0..5 {
        for i in 0..units {
            let meta = if round % 2 == 0 {
                RequestMeta::http(Some(TRACEPARENT))
            } else {
                RequestMeta::grpc(None)
            };
            svc.allocate_with(&ctx(i), &[], &[], meta, |_| ()).unwrap();
        }
    }
    for i in 0..units {
        for a in snap1.allocate(&ctx(i)).assignments() {
            let unit = if a.layer == "device" {
                format!("dev-{i}")
            } else {
                format!("member-{i}")
            };
            expected.insert((unit, a.experiment.into(), a.cell.into(), 1), 0);
        }
    }
    // A new revision: every unit is logged again, once.
    let next = Config::parse(&CONFIG.replace("home-s", "home-s2")).unwrap();
    let snap2 = store.apply(&next, None, None).unwrap().snapshot().clone();
    for _ in 0..3 {
        for i in 0..units {
            svc.allocate_with(&ctx(i), &[], &[], RequestMeta::http(None), |_| ())
                .unwrap();
        }
    }
    for i in 0..units {
        for a in snap2.allocate(&ctx(i)).assignments() {
            let unit = if a.layer == "device" {
                format!("dev-{i}")
            } else {
                format!("member-{i}")
            };
            expected.insert((unit, a.experiment.into(), a.cell.into(), 2), 0);
        }
    }
    writer.close().await.unwrap();

    let lines = read_lines(&path);
    for line in &lines {
        let unit = line["unit"].as_str().unwrap().to_owned();
        let key = line["unit_key"].as_str().unwrap();
        assert_eq!(key == "device_id", unit.starts_with("dev-"), "{line}");
        assert!(line["ts"].as_str().unwrap().ends_with('Z'), "{line}");
        let rev = line["revision"].as_u64().unwrap();
        let source = line["source"].as_str().unwrap();
        if rev == 1 {
            // First seen in round 0, over HTTP, with the caller's trace.
            assert_eq!(source, "http");
            assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(line["span_id"], "00f067aa0ba902b7");
        } else {
            assert!(line["trace_id"].is_null());
        }
        for a in line["allocations"].as_array().unwrap() {
            assert!(a["bucket"].is_u64() && a["layer"].is_string());
            let k = (
                unit.clone(),
                a["experiment"].as_str().unwrap().to_owned(),
                a["cell"].as_str().unwrap().to_owned(),
                rev,
            );
            *expected
                .get_mut(&k)
                .unwrap_or_else(|| panic!("unexpected entry {k:?}")) += 1;
        }
    }
    let wrong: Vec<_> = expected.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        wrong.is_empty(),
        "entries not logged exactly once: {wrong:?}"
    );
    assert_eq!(metrics.log_dropped_total(), 0);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.jsonl");
    let store = store_with(CONFIG);
    let metrics = Metrics::new();
    // Queue of one; this single-threaded runtime never lets the writer thread fall behind
    // deterministically, so push enough distinct units that some must be dropped or written.
    let (log, writer) = log::open(&options(&path, 1), Some(metrics.clone())).unwrap();
    let svc = service(&store).with_assignment_log(log);
    for i in 0..20_000 {
        svc.allocate_with(&ctx(i), &[], &[], RequestMeta::http(None), |_| ())
            .unwrap();
    }
    writer.close().await.unwrap();
    let written = read_lines(&path).len() as u64;
    let dropped = metrics.log_dropped_total();
    assert!(written > 0);
    let text = metrics.render(&store);
    assert!(
        text.contains(&format!("allot_assignment_log_dropped_total {dropped}")),
        "{text}"
    );
    // Every request produced a line (a unit in a layer) that was written or dropped.
    assert!(written + dropped >= 20_000, "{written} + {dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_logs_http_requests_and_flushes_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.jsonl");
    let mut settings = Settings::local();
    settings.assignment_log = Some(path.to_str().unwrap().to_owned());
    let server = app::start(settings).await.unwrap();
    let client = reqwest::Client::new();
    for _ in 0..3 {
        for i in 0..20 {
            let res = client
                .post(format!("http://{}/v1/allocate", server.http_addr))
                .header("content-type", "application/json")
                .header("traceparent", TRACEPARENT)
                .body(format!(
                    r#"{{"context":{{"targetingKey":"m-{i}","country":"US","device_id":"d-{i}"}}}}"#
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
    }
    server.shutdown().await.unwrap();
    let lines = read_lines(&path);
    assert!(!lines.is_empty());
    // Repeated requests add nothing: each unit appears once.
    let mut units: Vec<(String, String)> = lines
        .iter()
        .map(|l| (l["unit_key"].to_string(), l["unit"].to_string()))
        .collect();
    units.sort();
    units.dedup();
    assert_eq!(units.len(), lines.len(), "{lines:?}");
    for l in &lines {
        assert_eq!(l["source"], "http");
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(l["revision"], 1);
    }
}

/// A unit known in one experiment that becomes eligible for a second (its context changed)
/// gets one more line for the new pair; the known pair is not logged on its own again.
#[tokio::test]
async fn a_new_pair_of_a_known_unit_is_logged_once() {
    const TWO: &str = r#"
layers:
  - { id: home }
  - { id: promo }
experiments:
  - id: prefetch
    layer: home
    ranges: ["0..10000"]
    cells: [ { id: control }, { id: treatment } ]
  - id: banner
    layer: promo
    ranges: ["0..10000"]
    when: { country: SE }
    cells: [ { id: a }, { id: b } ]
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    let store = store_with(TWO);
    let (svc, writer) = logged(&store, &options(&path, 100));
    let us = Context::with_targeting_key("m-1").with("country", "US");
    let se = Context::with_targeting_key("m-1").with("country", "SE");
    for ctx in [&us, &us, &se, &se, &us, &se] {
        svc.allocate_with(ctx, &[], &[], RequestMeta::http(None), |_| ())
            .unwrap();
    }
    writer.close().await.unwrap();
    let lines = read_lines(&path);
    let experiments: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| {
            l["allocations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["experiment"].as_str().unwrap())
                .collect()
        })
        .collect();
    // The US context (prefetch only), then the SE one (prefetch and, new, banner).
    assert_eq!(experiments, [vec!["prefetch"], vec!["prefetch", "banner"]]);
}

/// An entry is remembered for the TTL only: past it, the unit is logged again.
#[tokio::test]
async fn an_entry_is_logged_again_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ttl.jsonl");
    let store = store_with(CONFIG);
    let ttl = Duration::from_millis(50);
    let (svc, writer) = logged(
        &store,
        &Options {
            ttl,
            ..options(&path, 100)
        },
    );
    let run = || {
        svc.allocate_with(&ctx(7), &[], &[], RequestMeta::http(None), |_| ())
            .unwrap()
    };
    run();
    run();
    // Sleeping at least the TTL (plus a margin for the millisecond clock) expires the entries,
    // however slow the machine: no timing assumption.
    tokio::time::sleep(ttl * 2).await;
    run();
    run();
    writer.close().await.unwrap();
    let units: Vec<String> = read_lines(&path)
        .iter()
        .map(|l| l["unit"].as_str().unwrap().to_owned())
        .collect();
    // ctx(7) has two unit attributes (member and device layers): one line each, twice.
    assert_eq!(units, ["member-7", "dev-7", "member-7", "dev-7"]);
}

/// The dedup cache is bounded: it remembers at most `capacity` entries, so a second pass over
/// many more units than that logs nearly all of them again.
#[tokio::test]
async fn past_its_capacity_the_cache_forgets_and_logs_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capacity.jsonl");
    let store = store_with(CONFIG);
    let capacity = 16;
    let (svc, writer) = logged(
        &store,
        &Options {
            capacity,
            ..options(&path, 10_000)
        },
    );
    let pass = || {
        for i in 0..2_000 {
            svc.allocate_with(&ctx(i), &[], &[], RequestMeta::http(None), |_| ())
                .unwrap();
        }
    };
    pass();
    pass();
    writer.close().await.unwrap();
    let mut per_unit: HashMap<String, u64> = HashMap::new();
    for line in read_lines(&path) {
        *per_unit
            .entry(line["unit"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    // Each unit attribute has one layer here, so one entry per line: the first pass logs
    // every unit, the second all but the at most `capacity` entries still remembered.
    let units = per_unit.len() as u64;
    let twice = per_unit.values().filter(|&&n| n == 2).count() as u64;
    assert!(units > 3_000, "{units}");
    assert!(per_unit.values().all(|&n| n <= 2));
    assert!(twice >= units - capacity, "{twice} of {units} logged twice");
}

/// A queue longer than the bound is refused with an error naming it, not a panic.
#[test]
fn an_oversized_queue_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = log::open(
        &options(&dir.path().join("q.jsonl"), log::MAX_QUEUE + 1),
        None,
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("queue"), "{e}");
}
