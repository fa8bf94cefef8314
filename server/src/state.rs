//! The serving config: one `ArcSwap` that every request loads exactly once, a watch channel
//! that streams accepted configs to followers, and the single write path that assigns
//! revisions.
//!
//! Invariant: a rejected config never replaces the serving one. Revisions only increase on this
//! server (a follower adopts its upstream's numbers so stamps agree across replicas).

use std::sync::{Arc, Mutex, OnceLock};

use allot::{Config, ConfigErrors, Snapshot};
use arc_swap::{ArcSwapOption, Guard};
use tokio::sync::watch;

/// Where a config came from (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The demo config compiled into the binary.
    Embedded,
    /// `--config FILE`.
    File,
    /// `PUT /admin/config`.
    Admin,
    /// `--upstream URL` (WatchConfig).
    Upstream,
    /// The last accepted config persisted under `--state-dir`.
    Persisted,
}

/// The outcome of applying a config.
#[derive(Debug, Clone)]
pub enum Applied {
    /// The document equals the serving one: nothing changed, no new revision.
    Unchanged(Arc<Snapshot>),
    /// The document was accepted and is now serving.
    Swapped(Arc<Snapshot>),
}

/// Why a config was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Validation failed; the serving config is untouched.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    /// `If-Match` named another revision than the serving one.
    #[error("revision {current:?} is serving, not {expected}")]
    RevisionMismatch {
        /// What the caller expected.
        expected: u64,
        /// What is serving.
        current: Option<u64>,
    },
}

/// The current snapshot and its single writer.
pub struct ConfigStore {
    current: ArcSwapOption<Snapshot>,
    updates: watch::Sender<Option<Arc<Snapshot>>>,
    /// Serialises writers so revision n+1 is always compiled after revision n.
    write: Mutex<()>,
    /// Called with every newly accepted snapshot, under the write lock (so in revision
    /// order): persistence to `--state-dir`.
    on_accept: OnceLock<AcceptHook>,
}

/// A callback run on every accepted snapshot (see [`ConfigStore::set_on_accept`]).
pub type AcceptHook = Box<dyn Fn(&Snapshot) + Send + Sync>;

// === impl ConfigStore ===

impl ConfigStore {
    /// An empty store: not ready until the first config is applied.
    pub fn new() -> Self {
        let (updates, _) = watch::channel(None);
        Self {
            current: ArcSwapOption::empty(),
            updates,
            write: Mutex::new(()),
            on_accept: OnceLock::new(),
        }
    }

    /// Installs the hook run on every snapshot accepted from now on, from any source, before
    /// it starts serving. Only the first call takes effect; returns whether this one did.
    ///
    /// The hook runs on the applying thread while writers are serialised, so it sees
    /// revisions in order; it may block briefly (an fsync), which is why `apply` belongs in
    /// `spawn_blocking`. It cannot veto a config: a failure is the hook's to log and count.
    pub fn set_on_accept(&self, hook: AcceptHook) -> bool {
        self.on_accept.set(hook).is_ok()
    }

    /// The serving snapshot. Call once per request and use the guard for the whole request.
    #[inline]
    pub fn load(&self) -> Guard<Option<Arc<Snapshot>>> {
        self.current.load()
    }

    /// The serving snapshot as an owned `Arc`, for holding across `.await`.
    pub fn load_full(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// The serving revision, if any config is loaded.
    pub fn revision(&self) -> Option<u64> {
        self.current.load().as_ref().map(|s| s.revision())
    }

    /// A receiver that sees every accepted snapshot (starting with the current one).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.updates.subscribe()
    }

    /// Validates and compiles without serving: the `dry_run` path.
    pub fn validate(&self, config: &Config) -> Result<Snapshot, ConfigErrors> {
        allot::compile(config, self.revision().map_or(1, |r| r + 1))
    }

    /// Compiles `config` and, if valid, makes it the serving snapshot.
    ///
    /// `revision`: `None` assigns the next revision (serving + 1, or 1); `Some(r)` adopts `r`
    /// (upstream follow, persisted state). `expected`: the `If-Match` revision, checked
    /// atomically with the swap. A document whose content hash equals the serving one is not a
    /// new revision. Compilation runs on the caller's thread: call it from `spawn_blocking`
    /// for large configs.
    pub fn apply(
        &self,
        config: &Config,
        revision: Option<u64>,
        expected: Option<u64>,
    ) -> Result<Applied, ApplyError> {
        // A poisoned lock only means another writer panicked; the guarded data is `()`.
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load_full();
        let current_rev = current.as_ref().map(|s| s.revision());
        if let Some(expected) = expected
            && current_rev != Some(expected)
        {
            return Err(ApplyError::RevisionMismatch {
                expected,
                current: current_rev,
            });
        }
        if let Some(cur) = &current
            && cur.content_hash() == config.content_hash()
            && revision.is_none_or(|r| r == cur.revision())
        {
            return Ok(Applied::Unchanged(cur.clone()));
        }
        let next = revision.unwrap_or_else(|| current_rev.map_or(1, |r| r + 1));
        let snapshot = Arc::new(allot::compile(config, next)?);
        if let Some(hook) = self.on_accept.get() {
            hook(&snapshot);
        }
        self.current.store(Some(snapshot.clone()));
        self.updates.send_replace(Some(snapshot.clone()));
        Ok(Applied::Swapped(snapshot))
    }
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("revision", &self.revision())
            .finish()
    }
}

// === impl Applied ===

impl Applied {
    /// The snapshot serving after the call.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        match self {
            Applied::Unchanged(s) | Applied::Swapped(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(buckets: u64) -> Config {
        Config::parse(&format!("layers: [{{ id: a, buckets: {buckets} }}]")).unwrap()
    }

    #[test]
    fn revisions_increase_and_rejects_keep_serving() {
        let store = ConfigStore::new();
        assert!(store.load().is_none());
        let rx = store.subscribe();
        assert_eq!(
            store
                .apply(&cfg(10), None, None)
                .unwrap()
                .snapshot()
                .revision(),
            1
        );
        assert!(matches!(
            store.apply(&cfg(10), None, None).unwrap(),
            Applied::Unchanged(_)
        ));
        assert_eq!(
            store
                .apply(&cfg(20), None, None)
                .unwrap()
                .snapshot()
                .revision(),
            2
        );
        assert!(matches!(
            store.apply(&cfg(0), None, None),
            Err(ApplyError::Invalid(_))
        ));
        assert_eq!(store.revision(), Some(2));
        assert!(matches!(
            store.apply(&cfg(30), None, Some(1)),
            Err(ApplyError::RevisionMismatch {
                expected: 1,
                current: Some(2)
            })
        ));
        assert_eq!(
            store
                .apply(&cfg(30), None, Some(2))
                .unwrap()
                .snapshot()
                .revision(),
            3
        );
        assert_eq!(
            store
                .apply(&cfg(40), Some(17), None)
                .unwrap()
                .snapshot()
                .revision(),
            17
        );
        assert_eq!(rx.borrow().as_ref().unwrap().revision(), 17);
    }
}
