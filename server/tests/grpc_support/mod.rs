//! Shared helpers for the gRPC, parity and upstream integration tests: a test config, a
//! deterministic context generator, and a gRPC server on `127.0.0.1:0` that can be stopped
//! and restarted on the same address.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allot::{Config, Snapshot};
use allot_proto::allot::v1::allocator_client::AllocatorClient;
use allot_proto::allot::v1::allocator_server::{Allocator, AllocatorServer};
use allot_proto::allot::v1::{
    AllocateRequest, AllocateResponse, ConfigUpdate, ResolveFlagsRequest, ResolveFlagsResponse,
    WatchConfigRequest,
};
use allot_proto::convert::json_map_to_struct;
use allot_server::service::{Limits, Service};
use allot_server::state::ConfigStore;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Several layers (one per device), a holdout over two of them, conditions, segments, rules,
/// rollouts (by member and by device), a disabled flag and flags of every type.
pub const CONFIG: &str = r#"
segments:
  north: { country: { in: [SE, NO, DK] } }
  new-tv:
    all:
      - { platform: tv }
      - { app_version: { semver_ge: "5.0.0" } }
layers:
  - { id: home, salt: t-home }
  - { id: playback, salt: t-playback, buckets: 1000 }
  - { id: device, salt: t-device, unit: device_id, buckets: 100 }
  - { id: search }
experiments:
  - id: prefetch
    layer: home
    ranges: ["0..4000"]
    when: { country: { in: [US, CA, SE] } }
    cells:
      - { id: control, weight: 1, flags: { prefetch: "off", rows: ten } }
      - { id: treatment, weight: 1, flags: { prefetch: "on", rows: twelve } }
  - id: artwork
    layer: home
    ranges: ["4000..6000", "9000..10000"]
    cells:
      - { id: control, weight: 2, flags: { art: classic } }
      - { id: bold, weight: 1, flags: { art: bold } }
      - { id: minimal, weight: 1, flags: { art: minimal } }
  - id: abr
    layer: playback
    ranges: ["0..700"]
    when: { not: { segment: new-tv } }
    cells:
      - { id: control, weight: 9, flags: { ratio: base, abr: default } }
      - { id: aggressive, weight: 1, flags: { ratio: high, abr: aggressive } }
  - id: tv-ui
    layer: device
    ranges: ["0..50"]
    when: { segment: new-tv }
    cells:
      - { id: control, weight: 3, flags: { theme: current } }
      - { id: refresh, weight: 1, flags: { theme: refresh } }
  - id: ranker
    layer: search
    ranges: ["0..10000"]
    when: { platform: { ne: tv } }
    cells:
      - { id: a, flags: { ranker: a } }
      - { id: b, flags: { ranker: b } }
holdouts:
  - { id: holdout-t, salt: ht, ranges: ["0..500"], layers: [home, playback] }
flags:
  - key: prefetch
    type: bool
    variants: { "on": true, "off": false }
    default: "off"
    rules:
      - { when: { platform: { eq: tv } }, variant: "off" }
  - { key: rows, type: int, variants: { ten: 10, twelve: 12 }, default: ten }
  - { key: art, type: string, variants: { classic: classic, bold: bold, minimal: minimal }, default: classic }
  - { key: ratio, type: float, variants: { base: 1.0, high: 1.5 }, default: base }
  - key: abr
    type: object
    variants:
      default: { algorithm: bola, max_kbps: 8000 }
      aggressive: { algorithm: bola-e, max_kbps: 16000, boost: true }
    default: default
  - { key: theme, type: string, variants: { current: current, refresh: refresh-2026 }, default: current }
  - { key: ranker, type: string, variants: { a: alpha, b: beta }, default: a }
  - key: search.fuzzy
    type: bool
    variants: { "on": true, "off": false }
    default: "off"
    rules:
      - { when: { segment: north }, variant: "on" }
      - { when: { email: { ends_with: "@example.com" } }, variant: "on" }
      - rollout:
          salt: fuzzy-ramp
          split: [{ variant: "on", weight: 20 }, { variant: "off", weight: 80 }]
  - key: player.engine
    type: string
    variants: { classic: classic, next: next-gen }
    default: classic
    rules:
      - rollout:
          unit: device_id
          split: [{ variant: next, weight: 1 }, { variant: classic, weight: 3 }]
  - { key: retry-limit, type: int, variants: { three: 3 }, default: three }
  - key: discount
    type: float
    variants: { none: 0.0, loyal: 0.15 }
    default: none
    rules:
      - { when: { tenure_months: { gte: 24 } }, variant: loyal }
  - key: legacy
    type: bool
    enabled: false
    variants: { "on": true, "off": false }
    default: "off"
    rules:
      - { when: { platform: web }, variant: "on" }
"#;

/// A small valid config distinguished by `n` (its only layer has `n` buckets).
pub fn small_config(n: u32) -> Config {
    Config::parse(&format!(
        "layers: [{{ id: a, buckets: {n} }}]\n\
         experiments:\n  - {{ id: e, layer: a, ranges: [\"0..{n}\"], cells: [{{ id: c, flags: {{ f: x }} }}] }}\n\
         flags: [{{ key: f, type: string, variants: {{ x: x{n} }}, default: x }}]"
    ))
    .expect("small config parses")
}

/// A store serving [`CONFIG`] at revision 1.
pub fn store() -> Arc<ConfigStore> {
    let store = Arc::new(ConfigStore::new());
    store
        .apply(
            &Config::parse(CONFIG).expect("test config parses"),
            None,
            None,
        )
        .expect("test config is valid");
    store
}

/// A service over `store` with the default limits.
pub fn service(store: &Arc<ConfigStore>) -> Service {
    Service::new(store.clone(), Limits::default())
}

/// The `i`-th generated context: ids `member-{i}`, countries, platforms, app versions, and
/// (for some) a device, a tenure, an e-mail, or no `targetingKey` at all.
pub fn context(i: usize) -> Map<String, Value> {
    const COUNTRIES: [&str; 8] = ["US", "CA", "SE", "NO", "DE", "BR", "JP", "IN"];
    const PLATFORMS: [&str; 4] = ["tv", "web", "ios", "android"];
    const VERSIONS: [&str; 5] = ["4.9.0", "5.0.0", "5.2.1", "6.0.0-beta.1", "7"];
    let mut m = Map::new();
    // Every 97th context has only a device id: member rollouts then report an error code.
    if !i.is_multiple_of(97) {
        m.insert("targetingKey".into(), json!(format!("member-{i}")));
    }
    m.insert("country".into(), json!(COUNTRIES[i % COUNTRIES.len()]));
    m.insert(
        "platform".into(),
        json!(PLATFORMS[(i / 3) % PLATFORMS.len()]),
    );
    m.insert(
        "app_version".into(),
        json!(VERSIONS[(i / 7) % VERSIONS.len()]),
    );
    if i % 3 != 1 || i.is_multiple_of(97) {
        m.insert(
            "device_id".into(),
            json!(format!("device-{}", (i * 7919) % 100_003)),
        );
    }
    if i.is_multiple_of(5) {
        m.insert("tenure_months".into(), json!(i % 48));
    }
    if i.is_multiple_of(11) {
        m.insert("email".into(), json!(format!("member-{i}@example.com")));
    }
    m
}

/// `map` as a protobuf `Struct`.
pub fn to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    json_map_to_struct(map)
}

/// A gRPC server (`allot_server::grpc::serve`) on a loopback port.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Serves `service` on `127.0.0.1:0`.
    pub async fn start(service: Service) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), service).await
    }

    /// Serves `service` on `addr`, retrying the bind for up to 5 s (the previous server on
    /// the same address may still be releasing it).
    pub async fn start_on(addr: SocketAddr, service: Service) -> Self {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("bind {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(allot_server::grpc::serve(listener, service, async move {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    /// The `http://` URL of the server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel to the server, for any service's client.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// A client connected to the server.
    pub async fn client(&self) -> AllocatorClient<Channel> {
        AllocatorClient::connect(self.url()).await.expect("connect")
    }

    /// Shuts the server down gracefully; fails if that does not finish within 5 s.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server shuts down within 5 s")
            .expect("server task")
            .expect("server ran without error");
    }
}

/// Waits (at most 5 s) until `store` serves `revision`, and returns that snapshot.
pub async fn wait_for_revision(store: &ConfigStore, revision: u64) -> Arc<Snapshot> {
    let mut rx = store.subscribe();
    let waited = tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.revision() == revision)),
    )
    .await;
    match waited {
        Ok(Ok(s)) => s.clone().unwrap(),
        _ => panic!(
            "store did not reach revision {revision} within 5 s (serving {:?})",
            store.revision()
        ),
    }
}

/// A fake upstream on 127.0.0.1 whose `WatchConfig` streams whatever the test sends through
/// [`FakeUpstream::tx`], on one stream only (a second stream, i.e. a reconnect, gets
/// UNAVAILABLE); its other methods are unimplemented.
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The updates (or errors) to stream.
    pub tx: tokio::sync::mpsc::Sender<Result<ConfigUpdate, tonic::Status>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

struct FakeAllocator {
    updates:
        std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Result<ConfigUpdate, tonic::Status>>>>,
}

#[tonic::async_trait]
impl Allocator for FakeAllocator {
    async fn allocate(
        &self,
        _: tonic::Request<AllocateRequest>,
    ) -> Result<tonic::Response<AllocateResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }

    async fn resolve_flags(
        &self,
        _: tonic::Request<ResolveFlagsRequest>,
    ) -> Result<tonic::Response<ResolveFlagsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }

    type WatchConfigStream =
        tokio_stream::wrappers::ReceiverStream<Result<ConfigUpdate, tonic::Status>>;

    async fn watch_config(
        &self,
        _: tonic::Request<WatchConfigRequest>,
    ) -> Result<tonic::Response<Self::WatchConfigStream>, tonic::Status> {
        match self.updates.lock().unwrap().take() {
            Some(rx) => Ok(tonic::Response::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )),
            None => Err(tonic::Status::unavailable("already streaming")),
        }
    }
}

impl FakeUpstream {
    /// Binds an ephemeral port and serves.
    pub async fn start() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let fake = FakeAllocator {
            updates: std::sync::Mutex::new(Some(rx)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AllocatorServer::new(fake))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            addr,
            tx,
            stop,
            task,
        }
    }

    /// Ends the stream and stops the server (within 5 s).
    pub async fn stop(self) {
        drop(self.tx);
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// The `WatchConfig` update that carries `config` as `revision`.
pub fn update(config: &Config, revision: u64) -> ConfigUpdate {
    ConfigUpdate {
        revision,
        content_hash: format!("{:016x}", config.content_hash()),
        config_json: config.to_canonical_json(),
    }
}
