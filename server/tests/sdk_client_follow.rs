//! The embedded SDK client (`allot::Client`) follows a server: it picks up configs pushed over
//! `WatchConfig`, keeps serving through a server restart on the same port and catches up,
//! refuses bad configs, falls back to `GET /v1/config` polling when there is no gRPC, and
//! boots from a bootstrap file or its cache while the server is unreachable.

mod grpc_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allot::{Client, Context};
use allot_proto::allot::v1::ConfigUpdate;
use allot_server::state::ConfigStore;
use grpc_support::{FakeUpstream, Server, service, small_config, update};
use serde_json::json;
use tokio::time::Instant;

/// Waits (at most 5 s) until `client` serves `revision`; returns how long that took.
async fn wait_revision(client: &Client, revision: u64) -> Duration {
    let started = Instant::now();
    let mut rx = client.subscribe();
    let waited = tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|r| *r == Some(revision)),
    )
    .await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "client did not reach revision {revision} within 5 s (serving {:?})",
        client.revision()
    );
    started.elapsed()
}

/// The value of flag `f` (`x<n>` for `small_config(n)`).
fn f(client: &Client) -> String {
    let r = client
        .resolve("f", &Context::with_targeting_key("member-1"))
        .unwrap();
    r.value().as_str().unwrap().to_owned()
}

/// A loopback address nothing listens on (bound, read, released).
async fn free_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn client_picks_up_pushed_configs_over_the_stream() {
    let store = Arc::new(ConfigStore::new());
    store.apply(&small_config(10), None, None).unwrap();
    let server = Server::start(service(&store)).await;
    let client = Client::builder(server.url()).connect().unwrap();
    assert!(client.wait_ready(Duration::from_secs(5)).await);
    assert_eq!(client.revision(), Some(1));
    assert_eq!(f(&client), "x10");

    for (n, revision) in [(20, 2), (30, 3)] {
        // The push itself: an admin apply on the server's store.
        store.apply(&small_config(n), None, None).unwrap();
        let took = wait_revision(&client, revision).await;
        eprintln!("client took revision {revision} {took:?} after the server applied it");
        assert_eq!(f(&client), format!("x{n}"));
    }
    // Revision numbers are the server's, not renumbered.
    store.apply(&small_config(40), Some(40), None).unwrap();
    wait_revision(&client, 40).await;
    assert_eq!(client.snapshot().unwrap().revision(), 40);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn client_keeps_serving_through_a_server_restart_and_catches_up() {
    let store = Arc::new(ConfigStore::new());
    store.apply(&small_config(10), None, None).unwrap();
    store.apply(&small_config(20), None, None).unwrap();
    let server = Server::start(service(&store)).await;
    let addr = server.addr;
    let client = Client::builder(server.url()).connect().unwrap();
    wait_revision(&client, 2).await;

    // The server goes away; the client keeps answering from what it holds while it retries
    // (gRPC, then HTTP, with backoff).
    server.stop().await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(client.revision(), Some(2));
        assert_eq!(f(&client), "x20");
        assert!(client.is_ready());
    }

    // It comes back on the same address with its persisted revision and then a newer one.
    let restarted = Arc::new(ConfigStore::new());
    restarted.apply(&small_config(20), Some(2), None).unwrap();
    restarted.apply(&small_config(30), None, None).unwrap();
    let server = Server::start_on(addr, service(&restarted)).await;
    let took = wait_revision(&client, 3).await;
    eprintln!("client caught up with the restarted server in {took:?}");
    assert_eq!(f(&client), "x30");

    // And follows the new process.
    restarted.apply(&small_config(40), None, None).unwrap();
    wait_revision(&client, 4).await;
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn client_refuses_bad_configs_and_keeps_serving() {
    let upstream = FakeUpstream::start().await;
    let (addr, tx) = (upstream.addr, upstream.tx.clone());
    let client = Client::builder(format!("http://{addr}")).connect().unwrap();
    tx.send(Ok(update(&small_config(10), 1))).await.unwrap();
    wait_revision(&client, 1).await;

    let mut seen = client.subscribe();
    // Not JSON; JSON but not a config; a config that fails validation.
    for (revision, config_json) in [
        (2, "{not json".to_owned()),
        (3, r#"{"layers": 7}"#.to_owned()),
        (4, small_config(0).to_canonical_json()),
    ] {
        tx.send(Ok(ConfigUpdate {
            revision,
            content_hash: "0000000000000000".into(),
            config_json,
        }))
        .await
        .unwrap();
    }
    // Updates are applied in order: once revision 5 serves, 2-4 were seen and dropped.
    tx.send(Ok(update(&small_config(20), 5))).await.unwrap();
    wait_revision(&client, 5).await;
    assert_eq!(f(&client), "x20");
    // The only change the client published was revision 5.
    assert!(seen.has_changed().unwrap());
    assert_eq!(*seen.borrow_and_update(), Some(5));

    // Dropping the last handle ends the sync task, and with it the stream.
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), tx.closed())
        .await
        .expect("the client closes its stream within 5 s of being dropped");
    drop(tx);
    upstream.stop().await;
}

#[tokio::test]
async fn client_falls_back_to_polling_get_config_without_grpc() {
    let store = Arc::new(ConfigStore::new());
    store.apply(&small_config(10), None, None).unwrap();
    // Only the HTTP router (HTTP/1): the gRPC stream cannot be established there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = allot_server::http::router(service(&store));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Client::builder(format!("http://{addr}"))
        .poll_interval(Duration::from_millis(50))
        .connect()
        .unwrap();
    wait_revision(&client, 1).await;
    assert_eq!(f(&client), "x10");
    store.apply(&small_config(20), None, None).unwrap();
    let took = wait_revision(&client, 2).await;
    eprintln!("client polled revision 2 in {took:?}");
    assert_eq!(f(&client), "x20");
    drop(client);
    server.abort();
}

#[tokio::test]
async fn client_boots_from_bootstrap_or_cache_while_the_server_is_unreachable() {
    let dead = format!("http://{}", free_addr().await);

    // A plain config document: served as revision 0 at once.
    let yaml = "layers: [{ id: a, buckets: 7 }]\n\
        experiments:\n  - { id: e, layer: a, ranges: [\"0..7\"], cells: [{ id: c, flags: { f: x } }] }\n\
        flags: [{ key: f, type: string, variants: { x: x7 }, default: x }]";
    let client = Client::builder(&dead)
        .bootstrap_str(yaml)
        .connect()
        .unwrap();
    assert!(client.is_ready());
    assert_eq!(client.revision(), Some(0));
    assert_eq!(f(&client), "x7");
    assert_eq!(
        client
            .allocate(&Context::with_targeting_key("m"))
            .unwrap()
            .stamp,
        "1.0.e~c"
    );
    drop(client);

    // A saved `GET /v1/config` body in a file: served under its revision.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.json");
    let cfg = small_config(10);
    let body = json!({
        "revision": 9,
        "content_hash": format!("{:016x}", cfg.content_hash()),
        "config": serde_json::from_str::<serde_json::Value>(&cfg.to_canonical_json()).unwrap(),
    });
    std::fs::write(&file, body.to_string()).unwrap();
    let client = Client::builder(&dead)
        .bootstrap_file(&file)
        .connect()
        .unwrap();
    assert_eq!(client.revision(), Some(9));
    assert_eq!(f(&client), "x10");
    drop(client);
    // An unreadable or invalid bootstrap is an error, not a silent empty client.
    assert!(
        Client::builder(&dead)
            .bootstrap_file(dir.path().join("missing"))
            .connect()
            .is_err()
    );
    assert!(
        Client::builder(&dead)
            .bootstrap_str("layers: 7")
            .connect()
            .is_err()
    );

    // The cache: a client that followed a server persists what it accepted ...
    let cache = dir.path().join("cache");
    let store = Arc::new(ConfigStore::new());
    store.apply(&small_config(30), Some(12), None).unwrap();
    let server = Server::start(service(&store)).await;
    let addr = server.addr;
    let client = Client::builder(server.url())
        .cache_dir(&cache)
        .connect()
        .unwrap();
    wait_revision(&client, 12).await;
    drop(client);
    server.stop().await;
    assert!(cache.join("allot-config.json").exists());
    assert!(!cache.join("allot-config.json.tmp").exists());

    // ... so the next one boots from it with the server down (the cache beats the bootstrap),
    let client = Client::builder(format!("http://{addr}"))
        .cache_dir(&cache)
        .bootstrap_str(yaml)
        .connect()
        .unwrap();
    assert_eq!(client.revision(), Some(12));
    assert_eq!(f(&client), "x30");

    // and catches up when the server is back.
    store.apply(&small_config(40), None, None).unwrap();
    let server = Server::start_on(addr, service(&store)).await;
    wait_revision(&client, 13).await;
    assert_eq!(f(&client), "x40");
    drop(client);
    server.stop().await;
}
