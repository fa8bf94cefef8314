//! An embedded engine that follows an allot server (feature `client`).
//!
//! A [`Client`] answers `allocate`/`resolve` in process, from a compiled [`Snapshot`] held in an
//! `ArcSwapOption`, and keeps that snapshot in sync with a server in a background task:
//!
//! - gRPC `WatchConfig` (server push), resuming from the held revision and content hash;
//! - if that stream cannot be established (an HTTP-only URL, `UNIMPLEMENTED`, ...), polling
//!   `GET /v1/config` with `If-None-Match` (every second by default), retrying gRPC now and then;
//! - reconnecting with jittered exponential backoff (100 ms doubling to 5 s, ±20%).
//!
//! The client adopts the server's revision numbers, so its stamps equal the server's. A config
//! that does not parse or compile is logged and dropped: the last good snapshot keeps serving,
//! also while the server is unreachable. A client can start from a local file
//! ([`ClientBuilder::bootstrap_file`]) or from the last config it accepted
//! ([`ClientBuilder::cache_dir`]), so a service boots when the server is down.
//!
//! Answers are pure functions of (snapshot, context), computed by the same engine as the
//! server's: the client never re-implements any of it. This module owns I/O only.

mod cache;
mod follow;

pub use follow::Backoff;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokio::sync::watch;

use crate::snapshot::{Assignment, ErrorCode, Raw, Reason, Resolution};
use crate::{Config, ConfigErrors, Context, FlagNotFound, FlagType, Snapshot, stamp};

/// Default interval of `GET /v1/config` polling.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `connect` was called outside a tokio runtime.
    #[error("allot client: connect() needs a tokio runtime")]
    NoRuntime,
    /// The bootstrap file could not be read.
    #[error("allot client: reading bootstrap file {path}: {source}")]
    BootstrapRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bootstrap document is not a valid config.
    #[error("allot client: bootstrap config is invalid: {0}")]
    BootstrapInvalid(ConfigErrors),
}

/// No config yet: neither a bootstrap, a cache nor the server has provided one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("allot client: no config loaded yet")]
pub struct NotReady;

/// Why a client-side `resolve` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No config yet.
    #[error(transparent)]
    NotReady(#[from] NotReady),
    /// The serving config has no such flag.
    #[error(transparent)]
    FlagNotFound(#[from] FlagNotFound),
}

/// An experiment assignment, owned (it outlives the snapshot it was computed on).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Assigned {
    /// Layer id.
    pub layer: String,
    /// Experiment id.
    pub experiment: String,
    /// Cell id.
    pub cell: String,
    /// The unit's bucket in the layer.
    pub bucket: u32,
}

/// Everything a unit is allocated to, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The revision the allocation was made under.
    pub revision: u64,
    /// One assignment per layer the unit is in an experiment of, in layer order.
    pub assignments: Vec<Assigned>,
    /// Holdouts the unit is held out by.
    pub holdouts: Vec<String>,
    /// The trace stamp value `1.<revision>.<exp>~<cell>…` (DESIGN §6), for
    /// [`crate::stamp::merge`], the `tower` layer or the `otel` helper.
    pub stamp: String,
}

/// The value of one flag for one context, owned: it holds the snapshot it was resolved on
/// (one reference count) and indices into it, so making one copies nothing, and everything it
/// names stays valid however long it is kept, across config swaps.
///
/// [`Resolved::resolution`] is the engine's [`Resolution`]; the accessors read its fields.
#[derive(Clone)]
pub struct Resolved {
    snapshot: Arc<Snapshot>,
    raw: Raw,
}

/// The embedded engine plus its sync task. Cheap to clone; the background task stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

/// Configures a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    grpc: Option<String>,
    http: Option<String>,
    poll_interval: Duration,
    bootstrap: Option<Bootstrap>,
    cache_dir: Option<PathBuf>,
    stamp_budget: usize,
    token: Option<Token>,
}

/// A client token; its `Debug` form hides it.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

#[derive(Debug, Clone)]
enum Bootstrap {
    File(PathBuf),
    Text(String),
}

/// State shared by the client handles and the sync task.
struct Shared {
    current: ArcSwapOption<Snapshot>,
    /// This client's number, unique in the process (never 0), for the per-thread [`LAST`].
    id: u64,
    /// Bumped after every store to `current`: a thread whose [`LAST`] was taken at this
    /// generation may use it instead of loading `current`.
    generation: AtomicU64,
    revisions: watch::Sender<Option<u64>>,
    cache_dir: Option<PathBuf>,
    stamp_budget: usize,
}

/// Aborts the sync task when the last [`Client`] goes away.
struct TaskGuard(tokio::task::AbortHandle);

// === impl Client ===

impl Client {
    /// A builder following the server at `url` (e.g. `http://allot:8013`): gRPC `WatchConfig`
    /// there, and `GET <url>/v1/config` polling if the stream cannot be established. Use
    /// [`ClientBuilder::grpc`] / [`ClientBuilder::http`] when the ports differ.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            grpc: None,
            http: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            bootstrap: None,
            cache_dir: None,
            stamp_budget: stamp::DEFAULT_BUDGET,
            token: None,
        }
    }

    /// Whether a config is loaded (from bootstrap, cache or server).
    pub fn is_ready(&self) -> bool {
        self.shared.current.load().is_some()
    }

    /// The serving revision, if any.
    pub fn revision(&self) -> Option<u64> {
        self.shared.current.load().as_ref().map(|s| s.revision())
    }

    /// Waits up to `timeout` for a config; returns whether one is loaded.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await,
            Ok(Ok(_))
        )
    }

    /// The serving snapshot, to hold across several calls (one config for a whole request).
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.shared.load_full()
    }

    /// A receiver of the serving revision: `None` until a config is loaded, then every accepted
    /// revision (coalesced: a slow reader sees the latest).
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.shared.revisions.subscribe()
    }

    /// Runs `f` on the serving snapshot without copying anything out of it (no refcount
    /// traffic either); `None` before the first config.
    #[inline]
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> Option<R> {
        self.shared.current.load().as_deref().map(f)
    }

    /// Allocates `ctx` in every layer (see [`Snapshot::allocate`]), with its stamp.
    pub fn allocate(&self, ctx: &Context) -> Result<Allocated, NotReady> {
        let budget = self.shared.stamp_budget;
        self.with_snapshot(|s| {
            let a = s.allocate(ctx);
            Allocated {
                revision: s.revision(),
                assignments: a.assignments().iter().map(Assigned::from).collect(),
                holdouts: a.holdouts().iter().map(|h| (*h).to_owned()).collect(),
                stamp: stamp::stamp(s.revision(), &a, budget),
            }
        })
        .ok_or(NotReady)
    }

    /// Resolves flag `key` for `ctx` (see [`Snapshot::resolve`]). The answer holds the
    /// snapshot it was made on; for many flags per request, [`Client::snapshot`] once and
    /// [`Snapshot::resolve`] saves the reference counting.
    pub fn resolve(&self, key: &str, ctx: &Context) -> Result<Resolved, ResolveError> {
        let snapshot = self.shared.load_full().ok_or(NotReady)?;
        let raw = snapshot.resolve_raw(key, ctx)?;
        Ok(Resolved { snapshot, raw })
    }

    /// Resolves every flag for `ctx`, in config order (see [`Snapshot::resolve_all`]).
    pub fn resolve_all(&self, ctx: &Context) -> Result<Vec<Resolved>, NotReady> {
        let snapshot = self.shared.load_full().ok_or(NotReady)?;
        let mut out = Vec::with_capacity(snapshot.flags.len());
        snapshot.resolve_all_raw(ctx, |raw| {
            out.push(Resolved {
                snapshot: Arc::clone(&snapshot),
                raw,
            })
        });
        Ok(out)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

// === impl ClientBuilder ===

impl ClientBuilder {
    /// The gRPC endpoint for `WatchConfig` (default: the builder's URL).
    pub fn grpc(mut self, url: impl Into<String>) -> Self {
        self.grpc = Some(url.into());
        self
    }

    /// The HTTP base URL for `GET /v1/config` polling (default: the builder's URL).
    pub fn http(mut self, url: impl Into<String>) -> Self {
        self.http = Some(url.into());
        self
    }

    /// How often to poll `GET /v1/config` when the gRPC stream is unavailable (default 1 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Serves this file until the server answers: either a config document (YAML or JSON,
    /// served as revision 0) or a saved `GET /v1/config` body (`{revision, content_hash,
    /// config}`, served under its revision). Ignored when the cache holds a config.
    pub fn bootstrap_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.bootstrap = Some(Bootstrap::File(path.into()));
        self
    }

    /// [`ClientBuilder::bootstrap_file`] with the text in hand.
    pub fn bootstrap_str(mut self, text: impl Into<String>) -> Self {
        self.bootstrap = Some(Bootstrap::Text(text.into()));
        self
    }

    /// Persists every accepted config under `dir` (atomically, as the server's JSON) and
    /// starts from it, so a restart boots without the server.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Byte budget of the stamp (default [`stamp::DEFAULT_BUDGET`], as the server's).
    pub fn stamp_budget(mut self, bytes: usize) -> Self {
        self.stamp_budget = bytes;
        self
    }

    /// A client token for a server started with `--client-tokens`: sent as
    /// `authorization: Bearer <token>` on `WatchConfig` and `GET /v1/config`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token(token.into()));
        self
    }

    /// Loads the cache or the bootstrap (synchronously, so the client is ready on return if
    /// either holds a config) and starts following the server in a background task on the
    /// current tokio runtime.
    ///
    /// Fails only on a bootstrap that cannot be read or compiled, or without a runtime; an
    /// unreadable cache is logged and skipped.
    pub fn connect(self) -> Result<Client, BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let initial = match self.cache_dir.as_deref().and_then(cache::load) {
            Some(snapshot) => Some(snapshot),
            None => match &self.bootstrap {
                None => None,
                Some(Bootstrap::Text(text)) => Some(bootstrap(text)?),
                Some(Bootstrap::File(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|source| {
                        BuildError::BootstrapRead {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    Some(bootstrap(&text)?)
                }
            },
        };
        let revision = initial.as_ref().map(|s| s.revision());
        let (revisions, _) = watch::channel(revision);
        let shared = Arc::new(Shared {
            current: ArcSwapOption::new(initial.map(Arc::new)),
            id: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            revisions,
            cache_dir: self.cache_dir,
            stamp_budget: self.stamp_budget,
        });
        let sources = follow::Sources {
            grpc: self.grpc.unwrap_or_else(|| self.url.clone()),
            http: self.http.unwrap_or(self.url),
            poll_interval: self.poll_interval,
            authorization: self.token.map(|t| format!("Bearer {}", t.0)),
        };
        // The task holds only a weak reference, so dropping every `Client` ends it even
        // while it is between two await points.
        let task = runtime.spawn(follow::run(sources, Arc::downgrade(&shared)));
        Ok(Client {
            shared,
            _task: Arc::new(TaskGuard(task.abort_handle())),
        })
    }
}

/// Compiles a bootstrap document: a saved `GET /v1/config` body keeps its revision; a plain
/// config document is revision 0.
fn bootstrap(text: &str) -> Result<Snapshot, BuildError> {
    if let Some((revision, config)) = cache::parse_body(text) {
        return crate::compile(&config, revision).map_err(BuildError::BootstrapInvalid);
    }
    let config = Config::parse(text).map_err(BuildError::BootstrapInvalid)?;
    crate::compile(&config, 0).map_err(BuildError::BootstrapInvalid)
}

/// Numbers the clients of this process, from 1.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

/// The snapshot this thread last took from a client, and at which generation.
struct Last {
    client: u64,
    generation: u64,
    /// Weak, so a thread that stops resolving does not keep a replaced config alive (only
    /// the `Snapshot` header's allocation stays until the thread's next load).
    snapshot: Weak<Snapshot>,
}

thread_local! {
    /// Saves [`Client::resolve`] the `ArcSwap` load: while the client's generation is the
    /// one remembered here, the snapshot is upgraded from this weak reference (one atomic
    /// read-modify-write, which the answer's own reference count needs anyway) instead of
    /// through `ArcSwap`'s debt slot (three).
    static LAST: RefCell<Last> = const {
        RefCell::new(Last { client: 0, generation: 0, snapshot: Weak::new() })
    };
}

// === impl Shared ===

impl Shared {
    /// The serving snapshot, owned; what `current.load_full()` returns, in fewer atomic
    /// operations when this thread took the same snapshot last time.
    ///
    /// The generation is read before `current`, and bumped after each store, so a snapshot
    /// remembered under generation `g` is at least as new as the store that made `g`; once
    /// [`Shared::apply`] returns, every thread sees the new generation and reloads.
    fn load_full(&self) -> Option<Arc<Snapshot>> {
        let generation = self.generation.load(Ordering::Acquire);
        let remembered = LAST
            .try_with(|last| {
                let last = last.try_borrow().ok()?;
                if last.client == self.id && last.generation == generation {
                    last.snapshot.upgrade()
                } else {
                    None
                }
            })
            .ok()
            .flatten();
        if remembered.is_some() {
            return remembered;
        }
        let snapshot = self.current.load_full()?;
        // Fails only while the thread is being torn down; then nothing is remembered.
        let _ = LAST.try_with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Last {
                    client: self.id,
                    generation,
                    snapshot: Arc::downgrade(&snapshot),
                };
            }
        });
        Some(snapshot)
    }

    /// Compiles `config_json` under `revision` and makes it serving, unless it is what is
    /// already serving. Returns whether the update was accepted (swapped or unchanged); a
    /// rejected one is logged and leaves the serving snapshot alone. Blocking: call it from
    /// `spawn_blocking`.
    fn apply(&self, revision: u64, content_hash: &str, config_json: &str) -> bool {
        let config = match Config::from_json(config_json) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(revision, %error, "allot client: rejected config; keeping the serving one");
                return false;
            }
        };
        let hash = config.content_hash();
        if format!("{hash:016x}") != content_hash {
            // Not fatal: engine versions may differ; the document is what counts.
            tracing::warn!(revision, server_hash = %content_hash, local_hash = %format!("{hash:016x}"),
                "allot client: content hash differs from the parsed document's");
        }
        if let Some(cur) = self.current.load().as_ref()
            && cur.revision() == revision
            && cur.content_hash() == hash
        {
            return true;
        }
        let snapshot = match crate::compile(&config, revision) {
            Ok(s) => Arc::new(s),
            Err(error) => {
                tracing::error!(revision, %error, "allot client: rejected config; keeping the serving one");
                return false;
            }
        };
        if let Some(dir) = &self.cache_dir
            && let Err(error) = cache::store(dir, &snapshot)
        {
            tracing::warn!(dir = %dir.display(), %error, "allot client: could not persist the config");
        }
        self.current.store(Some(snapshot));
        self.generation.fetch_add(1, Ordering::Release);
        self.revisions.send_replace(Some(revision));
        tracing::info!(revision, "allot client: applied config");
        true
    }
}

// === impl TaskGuard ===

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Assigned ===

impl From<&Assignment<'_>> for Assigned {
    fn from(a: &Assignment<'_>) -> Self {
        Self {
            layer: a.layer.to_owned(),
            experiment: a.experiment.to_owned(),
            cell: a.cell.to_owned(),
            bucket: a.bucket,
        }
    }
}

// === impl Resolved ===

impl Resolved {
    /// The engine's answer, borrowed from the snapshot this holds.
    pub fn resolution(&self) -> Resolution<'_> {
        self.snapshot.view(self.raw)
    }

    /// The revision it was resolved under.
    pub fn revision(&self) -> u64 {
        self.snapshot.revision()
    }

    /// The snapshot it was resolved on.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Flag key.
    pub fn key(&self) -> &str {
        self.resolution().key
    }

    /// Flag type.
    pub fn kind(&self) -> FlagType {
        self.resolution().kind
    }

    /// The value served.
    pub fn value(&self) -> &Value {
        self.resolution().value
    }

    /// The variant served.
    pub fn variant(&self) -> &str {
        self.resolution().variant
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.raw.reason()
    }

    /// Set when [`Resolved::reason`] is [`Reason::Error`].
    pub fn error(&self) -> Option<ErrorCode> {
        self.raw.error()
    }

    /// The experiment cell that selected the variant, if one did.
    pub fn assignment(&self) -> Option<Assignment<'_>> {
        self.resolution().assignment
    }
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("revision", &self.revision())
            .field("resolution", &self.resolution())
            .finish()
    }
}

/// Equal when they name the same revision and the same answer.
impl PartialEq for Resolved {
    fn eq(&self, other: &Self) -> bool {
        self.revision() == other.revision() && self.resolution() == other.resolution()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"flags": [{"key": "theme", "type": "string",
        "variants": {"dark": "dark", "light": "light"}, "default": "light",
        "rules": [{"when": {"country": "SE"}, "variant": "dark"}]}]}"#;

    #[tokio::test]
    async fn resolved_outlives_the_snapshot_it_was_made_on() {
        let client = Client::builder("http://127.0.0.1:9")
            .bootstrap_str(V1)
            .connect()
            .unwrap();
        let ctx = Context::with_targeting_key("member-7").with("country", "SE");
        let before = client.resolve("theme", &ctx).unwrap();
        let rev = before.revision();
        assert_eq!(
            (before.variant(), before.reason()),
            ("dark", Reason::TargetingMatch)
        );

        // After the swap nothing but `before` holds the old snapshot.
        let v2 = V1.replace(r#""variant": "dark""#, r#""variant": "light""#);
        let hash = format!("{:016x}", Config::from_json(&v2).unwrap().content_hash());
        assert!(client.shared.apply(rev + 1, &hash, &v2));
        let after = client.resolve("theme", &ctx).unwrap();
        assert_eq!((after.revision(), after.variant()), (rev + 1, "light"));
        assert_ne!(after, before);
        assert_eq!(Arc::strong_count(before.snapshot()), 1);

        let kept = before.clone();
        drop(before);
        assert_eq!(kept.revision(), rev);
        assert_eq!((kept.key(), kept.variant()), ("theme", "dark"));
        assert_eq!(kept.value(), &Value::from("dark"));
        assert_eq!(kept.reason(), Reason::TargetingMatch);
        assert_eq!(kept.resolution().assignment, None);
    }

    fn client(config: &str) -> Client {
        Client::builder("http://127.0.0.1:9")
            .bootstrap_str(config)
            .connect()
            .unwrap()
    }

    fn swap(client: &Client, config: &str) -> u64 {
        let rev = client.revision().unwrap() + 1;
        let hash = format!("{:016x}", Config::from_json(config).unwrap().content_hash());
        assert!(client.shared.apply(rev, &hash, config));
        rev
    }

    #[tokio::test]
    async fn each_client_answers_from_its_own_snapshot_on_one_thread() {
        let v2 = V1.replace(r#""default": "light""#, r#""default": "dark""#);
        let (a, b) = (client(V1), client(&v2));
        let ctx = Context::with_targeting_key("member-7");
        for _ in 0..3 {
            // Alternating: the thread's remembered snapshot is the other client's each time.
            assert_eq!(a.resolve("theme", &ctx).unwrap().variant(), "light");
            assert_eq!(b.resolve("theme", &ctx).unwrap().variant(), "dark");
            let hash_a = Config::from_json(V1).unwrap().content_hash();
            assert_eq!(a.snapshot().unwrap().content_hash(), hash_a);
            assert_ne!(b.snapshot().unwrap().content_hash(), hash_a);
        }
        // A clone is the same client: same answers, same remembered snapshot.
        let a2 = a.clone();
        let (x, y) = (
            a.resolve("theme", &ctx).unwrap(),
            a2.resolve("theme", &ctx).unwrap(),
        );
        assert!(Arc::ptr_eq(x.snapshot(), y.snapshot()));
    }

    #[tokio::test]
    async fn a_swap_on_another_thread_is_seen_by_the_next_resolve() {
        let c = client(V1);
        let ctx = Context::with_targeting_key("member-7");
        let dark = V1.replace(r#""default": "light""#, r#""default": "dark""#);
        for round in 0..20u64 {
            // This thread remembers the serving snapshot (twice, to be sure it is the
            // remembered one that answers) ...
            let before = c.resolve("theme", &ctx).unwrap();
            assert_eq!(
                c.resolve("theme", &ctx).unwrap().revision(),
                before.revision()
            );
            // ... another thread swaps the config ...
            let (c2, next) = (
                c.clone(),
                if round % 2 == 0 {
                    dark.clone()
                } else {
                    V1.into()
                },
            );
            let rev = std::thread::spawn(move || swap(&c2, &next)).join().unwrap();
            // ... and the very next answer here is the new one.
            let after = c.resolve("theme", &ctx).unwrap();
            assert_eq!(after.revision(), rev);
            assert_eq!(
                after.variant(),
                if round % 2 == 0 { "dark" } else { "light" }
            );
            assert_eq!(c.snapshot().unwrap().revision(), rev);
            // The thread does not keep the replaced snapshot alive.
            drop(after);
            assert_eq!(Arc::strong_count(before.snapshot()), 1);
        }
    }
}
