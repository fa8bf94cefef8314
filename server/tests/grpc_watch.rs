//! `WatchConfig` over a real socket: the current config at once (unless the caller holds its
//! revision), then every accepted config; rejected configs are never sent; the stream ends
//! cleanly when the server shuts down.

mod grpc_support;

use std::sync::Arc;
use std::time::Duration;

use allot_proto::allot::v1::{ConfigUpdate, WatchConfigRequest};
use allot_server::state::ConfigStore;
use grpc_support::{Server, service, small_config};
use tonic::Streaming;

async fn next(stream: &mut Streaming<ConfigUpdate>) -> Option<ConfigUpdate> {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an update within 5 s")
        .expect("stream ok")
}

fn check(update: &ConfigUpdate, store: &ConfigStore) {
    let snapshot = store.load_full().unwrap();
    assert_eq!(update.revision, snapshot.revision());
    assert_eq!(
        update.content_hash,
        format!("{:016x}", snapshot.content_hash())
    );
    assert_eq!(update.content_hash.len(), 16);
    assert_eq!(update.config_json, snapshot.config().to_canonical_json());
    // The document round-trips to the same content.
    let parsed = allot::Config::from_json(&update.config_json).unwrap();
    assert_eq!(parsed.content_hash(), snapshot.content_hash());
}

#[tokio::test]
async fn sends_the_current_config_then_every_accepted_one() {
    let store = Arc::new(ConfigStore::new());
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;
    let mut stream = client
        .watch_config(WatchConfigRequest { known_revision: 0 })
        .await
        .unwrap()
        .into_inner();

    // Nothing is sent before a config exists; the first one is sent when it arrives.
    store.apply(&small_config(10), None, None).unwrap();
    let first = next(&mut stream).await.unwrap();
    check(&first, &store);
    assert_eq!(first.revision, 1);

    // A rejected config is never sent; the next accepted one is.
    assert!(store.apply(&small_config(0), None, None).is_err());
    store.apply(&small_config(20), None, None).unwrap();
    let second = next(&mut stream).await.unwrap();
    check(&second, &store);
    assert_eq!(second.revision, 2);

    // A new subscriber gets the current config at once.
    let mut late = client
        .watch_config(WatchConfigRequest { known_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut late).await.unwrap(), second);

    // Server shutdown ends both streams cleanly (no error), so shutdown can finish.
    server.stop().await;
    assert_eq!(next(&mut stream).await, None);
    assert_eq!(next(&mut late).await, None);
}

#[tokio::test]
async fn skips_the_initial_send_when_the_caller_holds_the_revision() {
    let store = Arc::new(ConfigStore::new());
    store.apply(&small_config(10), None, None).unwrap();
    store.apply(&small_config(20), None, None).unwrap();
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;

    // Holding an older revision: the current one comes at once.
    let mut behind = client
        .watch_config(WatchConfigRequest { known_revision: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut behind).await.unwrap().revision, 2);

    // Holding the current revision: nothing until the next accepted config.
    let mut current = client
        .watch_config(WatchConfigRequest { known_revision: 2 })
        .await
        .unwrap()
        .into_inner();
    store.apply(&small_config(30), None, None).unwrap();
    let update = next(&mut current).await.unwrap();
    assert_eq!(update.revision, 3);
    check(&update, &store);
    assert_eq!(next(&mut behind).await.unwrap(), update);
    server.stop().await;
}

#[tokio::test]
async fn a_known_revision_with_another_content_hash_is_sent() {
    use allot_server::grpc::KNOWN_CONTENT_HASH;
    use tonic::metadata::MetadataValue;

    let store = Arc::new(ConfigStore::new());
    store.apply(&small_config(10), None, None).unwrap();
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;
    let hash = format!("{:016x}", store.load_full().unwrap().content_hash());

    let watch = |hash: &str| {
        let mut request = tonic::Request::new(WatchConfigRequest { known_revision: 1 });
        request
            .metadata_mut()
            .insert(KNOWN_CONTENT_HASH, MetadataValue::try_from(hash).unwrap());
        request
    };
    // Same revision, other content (an upstream restarted without its state): sent.
    let mut other = client
        .watch_config(watch("00000000deadbeef"))
        .await
        .unwrap()
        .into_inner();
    let update = next(&mut other).await.unwrap();
    check(&update, &store);
    // Same revision and content: skipped until the next config.
    let mut same = client
        .watch_config(watch(&hash))
        .await
        .unwrap()
        .into_inner();
    store.apply(&small_config(20), None, None).unwrap();
    assert_eq!(next(&mut same).await.unwrap().revision, 2);
    server.stop().await;
}
