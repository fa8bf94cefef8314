//! `--upstream`: a follower store converges to its upstream's revision and config, never takes
//! a bad document, keeps serving through an upstream restart on the same port, and catches up
//! when the upstream is back, while its own clients see no failed request.

mod grpc_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use allot::Context;
use allot_proto::allot::v1::ConfigUpdate;
use allot_server::metrics::Metrics;
use allot_server::state::ConfigStore;
use grpc_support::{FakeUpstream, Server, service, small_config, update, wait_for_revision};
use tokio::sync::watch;

/// A follower of `url`; dropping the sender stops it (see [`Follower::stop`]).
struct Follower {
    store: Arc<ConfigStore>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(url: String) -> Self {
        Self::start_with(url, None)
    }

    fn start_with(url: String, metrics: Option<Arc<Metrics>>) -> Self {
        let store = Arc::new(ConfigStore::new());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(allot_server::upstream::follow_with(
            url,
            store.clone(),
            stopped,
            metrics,
        ));
        Self { store, stop, task }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("follow returns within 5 s of shutdown")
            .unwrap();
    }
}

/// Asserts that `follower` serves exactly what `upstream` serves.
async fn converged(follower: &ConfigStore, upstream: &ConfigStore) {
    let want = upstream.load_full().unwrap();
    let got = wait_for_revision(follower, want.revision()).await;
    assert_eq!(got.content_hash(), want.content_hash());
    assert_eq!(
        got.config().to_canonical_json(),
        want.config().to_canonical_json()
    );
}

#[tokio::test]
async fn follower_converges_after_each_upstream_apply() {
    let upstream = Arc::new(ConfigStore::new());
    upstream.apply(&small_config(10), None, None).unwrap();
    let server = Server::start(service(&upstream)).await;
    let follower = Follower::start(server.url());
    converged(&follower.store, &upstream).await;

    upstream.apply(&small_config(20), None, None).unwrap();
    converged(&follower.store, &upstream).await;

    // Adopting revision numbers: an explicit jump is mirrored, not renumbered.
    upstream.apply(&small_config(30), Some(40), None).unwrap();
    converged(&follower.store, &upstream).await;
    assert_eq!(follower.store.revision(), Some(40));

    // A bad config is rejected upstream and so never reaches the follower.
    assert!(upstream.apply(&small_config(0), None, None).is_err());
    upstream.apply(&small_config(50), None, None).unwrap();
    converged(&follower.store, &upstream).await;
    assert_eq!(follower.store.revision(), Some(41));

    follower.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn follower_rejects_bad_updates_and_keeps_serving() {
    let upstream = FakeUpstream::start().await;
    let (addr, tx) = (upstream.addr, upstream.tx.clone());
    let metrics = Metrics::new();
    let follower = Follower::start_with(format!("http://{addr}"), Some(metrics.clone()));

    let good = small_config(10);
    tx.send(Ok(update(&good, 1))).await.unwrap();
    let serving = wait_for_revision(&follower.store, 1).await;
    assert_eq!(serving.content_hash(), good.content_hash());

    // Not JSON; JSON but not a config; a config that fails validation.
    for (revision, json) in [
        (2, "{not json".to_owned()),
        (3, r#"{"layers": 7}"#.to_owned()),
        (4, small_config(0).to_canonical_json()),
    ] {
        tx.send(Ok(ConfigUpdate {
            revision,
            content_hash: "0000000000000000".into(),
            config_json: json,
        }))
        .await
        .unwrap();
    }
    // Updates are applied in order, so once revision 5 serves, 2-4 were seen and dropped.
    let next = small_config(20);
    tx.send(Ok(update(&next, 5))).await.unwrap();
    let serving = wait_for_revision(&follower.store, 5).await;
    assert_eq!(serving.content_hash(), next.content_hash());

    // Every update is counted as an upstream reload: 2 accepted, 3 rejected. The count
    // follows the swap, so wait for it (at most 5 s).
    let count = |result: &str| {
        let text = metrics.render(&follower.store);
        text.lines()
            .find(|l| l.contains("upstream") && l.contains(result) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while count("success").as_deref() != Some("2") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count("success").as_deref(), Some("2"));
    assert_eq!(count("failure").as_deref(), Some("3"));

    follower.stop().await;
    drop(tx);
    upstream.stop().await;
}

#[tokio::test]
async fn follower_survives_an_upstream_restart_on_the_same_port() {
    let upstream = Arc::new(ConfigStore::new());
    upstream.apply(&small_config(10), None, None).unwrap();
    upstream.apply(&small_config(20), None, None).unwrap();
    let server = Server::start(service(&upstream)).await;
    let addr = server.addr;
    let follower = Follower::start(server.url());
    converged(&follower.store, &upstream).await;

    // A client of the follower keeps calling throughout.
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let svc = service(&follower.store);
        let (calls, failures, done) = (calls.clone(), failures.clone(), done.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let ctx = Context::with_targeting_key(format!("member-{i}"));
                match svc.allocate(&ctx, &[], &[], |v| v.snapshot.revision()) {
                    Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("allocate failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // The upstream goes away; the follower keeps serving what it has.
    server.stop().await;
    let before = calls.load(Ordering::Relaxed);
    // Let the follower fail a few reconnects (100 ms, 200 ms, ... backoff).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(follower.store.revision(), Some(2));
    assert!(
        calls.load(Ordering::Relaxed) > before,
        "client loop stalled"
    );

    // It comes back on the same address with a newer config (as a restart with state would:
    // the persisted revision, then a new one).
    let restarted = Arc::new(ConfigStore::new());
    let persisted = upstream.load_full().unwrap();
    restarted
        .apply(persisted.config(), Some(persisted.revision()), None)
        .unwrap();
    restarted.apply(&small_config(30), None, None).unwrap();
    assert_eq!(restarted.revision(), Some(3));
    let server = Server::start_on(addr, service(&restarted)).await;
    converged(&follower.store, &restarted).await;

    // And it keeps following the new process.
    restarted.apply(&small_config(40), None, None).unwrap();
    converged(&follower.store, &restarted).await;

    done.store(true, Ordering::Relaxed);
    client.await.unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(calls.load(Ordering::Relaxed) > 0);
    follower.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn follow_retries_an_absent_upstream_and_stops_on_shutdown() {
    // Reserve a port, then free it: nothing listens there until the upstream starts.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let follower = Follower::start(format!("http://{addr}"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(follower.store.revision(), None);

    let upstream = Arc::new(ConfigStore::new());
    upstream.apply(&small_config(10), None, None).unwrap();
    let server = Server::start_on(addr, service(&upstream)).await;
    converged(&follower.store, &upstream).await;
    follower.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn follower_catches_up_with_an_upstream_restarted_at_the_same_revision() {
    let upstream = Arc::new(ConfigStore::new());
    upstream.apply(&small_config(10), None, None).unwrap();
    let server = Server::start(service(&upstream)).await;
    let addr = server.addr;
    let follower = Follower::start(server.url());
    converged(&follower.store, &upstream).await;
    server.stop().await;

    // Restarted without state and with an edited config: revision 1 again, other content.
    let restarted = Arc::new(ConfigStore::new());
    restarted.apply(&small_config(20), None, None).unwrap();
    assert_eq!(restarted.revision(), Some(1));
    let server = Server::start_on(addr, service(&restarted)).await;
    let mut rx = follower.store.subscribe();
    let want = restarted.load_full().unwrap().content_hash();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.content_hash() == want)),
    )
    .await
    .expect("the follower takes the restarted upstream's config within 5 s")
    .unwrap();
    converged(&follower.store, &restarted).await;
    follower.stop().await;
    server.stop().await;
}
