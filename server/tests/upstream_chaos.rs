//! Upstream chaos: a follower (`--upstream`) serves HTTP clients without a single error while
//! its upstream (with `--state-dir`, so every restart serves its persisted revision) is shut
//! down and restarted 10 times on the same gRPC port, with admin PUTs of new configs between
//! some restarts (one of them just before a shutdown); at the end the follower serves the
//! upstream's final revision and document.
//!
//! Both are the real server from `allot_server::app::start`. The follower reconnects with the
//! upstream module's fixed backoff (100 ms doubling to 5 s, reset on every established stream);
//! there is no setting for it, and none is needed here: each outage lasts well under a second.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use allot_server::app::{self, Server};
use allot_server::settings::Settings;
use serde_json::Value;

const TOKEN: &str = "chaos-admin-token";
const RESTARTS: u32 = 10;

/// A valid config whose content differs per `k`; every unit with a `targetingKey` is allocated.
fn config(k: u32) -> String {
    format!(
        r#"{{"layers": [{{"id": "home", "buckets": {}}}],
            "experiments": [{{"id": "e{k}", "layer": "home", "ranges": ["0..50"],
                              "cells": [{{"id": "a", "flags": {{"f": "on"}}}}, {{"id": "b"}}]}}],
            "flags": [{{"key": "f", "type": "bool", "variants": {{"on": true, "off": false}}, "default": "off"}}]}}"#,
        100 + k
    )
}

/// The upstream on `grpc` (`127.0.0.1:0` the first time), persisting to `state`. A restart
/// retries the bind for a while: the previous instance may still be releasing the port.
async fn start_upstream(state: &Path, grpc: SocketAddr) -> Server {
    let mut settings = Settings::local();
    settings.state_dir = Some(state.to_owned());
    settings.admin_token = Some(TOKEN.to_owned());
    settings.grpc_addr = grpc;
    for attempt in 0.. {
        match app::start(settings.clone()).await {
            Ok(server) => return server,
            Err(e) if attempt < 100 => {
                eprintln!("upstream start: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("upstream does not start: {e:#}"),
        }
    }
    unreachable!()
}

async fn put_config(client: &reqwest::Client, upstream: &Server, k: u32) -> u64 {
    let res = client
        .put(format!("http://{}/admin/config", upstream.mgmt_addr))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(config(k))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(body["changed"], true, "{body}");
    body["revision"].as_u64().unwrap()
}

/// Counts of the hammering client.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    /// The highest revision any answer carried.
    revision: AtomicU64,
}

/// Calls the follower's `/v1/allocate` until `stop`; every answer must be a 200, under a
/// revision never older than the one this client saw last.
async fn hammer(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/allocate");
    let (mut i, mut last) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let body = format!(r#"{{"context":{{"targetingKey":"member-{}"}}}}"#, i % 1000);
        i += 1;
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let res = match sent {
            Ok(res) if res.status() == 200 => res,
            Ok(res) => {
                eprintln!("follower answered {}", res.status());
                tally.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                eprintln!("follower request failed: {e}");
                tally.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        let revision = body["revision"].as_u64().unwrap();
        // One client's requests are sequential, so its revisions never go back (another
        // client's answer may be a moment older).
        if revision < last {
            eprintln!("revision went back from {last} to {revision}");
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
        last = revision;
        tally.revision.fetch_max(revision, Ordering::Relaxed);
        tally.ok.fetch_add(1, Ordering::Relaxed);
    }
}

async fn wait_for_revision(follower: &Server, revision: u64, round: u32) {
    let mut rx = follower.store().subscribe();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.revision() == revision)),
    )
    .await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "round {round}: the follower serves {:?}, not the upstream's {revision}",
        follower.store().revision()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_serves_without_errors_through_upstream_restarts_and_converges() {
    let state = tempfile::tempdir().unwrap();
    let admin = reqwest::Client::new();
    let mut upstream = start_upstream(state.path(), "127.0.0.1:0".parse().unwrap()).await;
    let grpc = upstream.grpc_addr;
    let mut revision = put_config(&admin, &upstream, 0).await;

    let mut settings = Settings::local();
    settings.upstream = Some(format!("http://{grpc}"));
    let follower = app::start(settings).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rx = follower.store().subscribe();
        let _ = rx
            .wait_for(|s| s.as_ref().is_some_and(|s| s.revision() == revision))
            .await;
    })
    .await;
    assert!(
        waited.is_ok(),
        "the follower never served revision {revision}"
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| tokio::spawn(hammer(follower.http_addr, tally.clone(), stop.clone())))
        .collect();

    for round in 1..=RESTARTS {
        // Some rounds change the config just before the upstream goes away, so the follower
        // may only learn of it after the restart.
        if round % 3 == 0 {
            revision = put_config(&admin, &upstream, round).await;
        }
        let ok_before = tally.ok.load(Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(30), upstream.shutdown())
            .await
            .expect("upstream shuts down in time")
            .expect("clean upstream shutdown");
        // Down for a varying while: shorter and longer than the first reconnect delays.
        tokio::time::sleep(Duration::from_millis(50 + 70 * u64::from(round % 5))).await;
        upstream = start_upstream(state.path(), grpc).await;
        assert_eq!(upstream.grpc_addr, grpc);
        assert_eq!(
            upstream.store().revision(),
            Some(revision),
            "round {round}: the restarted upstream serves its persisted revision"
        );
        if round % 2 == 0 {
            revision = put_config(&admin, &upstream, 100 + round).await;
        }
        // Every other round, the follower must have reconnected and caught up before the next
        // outage; the other rounds take the upstream away again while it may still be
        // reconnecting.
        if round % 2 == 1 {
            wait_for_revision(&follower, revision, round).await;
        }
        // The follower's clients were served while the upstream was down.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tally.ok.load(Ordering::Relaxed) == ok_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no request answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // Converges to the upstream's final revision and document.
    let want = upstream.store().load_full().unwrap();
    assert_eq!(want.revision(), revision);
    let mut rx = follower.store().subscribe();
    let converged = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.revision() == revision)),
    )
    .await;
    assert!(
        converged.is_ok(),
        "the follower serves {:?}, not the upstream's {revision}",
        follower.store().revision()
    );
    let got = follower.store().load_full().unwrap();
    assert_eq!(got.content_hash(), want.content_hash());

    // A few more answers on the final revision, then stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tally.revision.load(Ordering::Relaxed) < revision {
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients never saw revision {revision}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, errors) = (
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    eprintln!(
        "{ok} requests answered through {RESTARTS} upstream restarts, {errors} errors; final revision {revision}"
    );
    assert_eq!(errors, 0);
    assert!(ok > u64::from(RESTARTS), "{ok} requests");

    follower.shutdown().await.unwrap();
    upstream.shutdown().await.unwrap();
}
