//! Config sources on this machine: the embedded demo config, the `--config` file (watched) and
//! the state persisted under `--state-dir`.
//!
//! Every source goes through [`ConfigStore::apply`], so a rejected document never replaces the
//! serving one. Persistence is atomic (temp file in the same directory, fsync, rename, fsync the
//! directory): a crash leaves either the old or the new state, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use allot::{Config, ConfigErrors, Snapshot};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::state::{ApplyError, ConfigStore, Source};

/// The demo config served when nothing else is configured.
pub const EMBEDDED: &str = include_str!("demo.yaml");

/// The file name of the persisted state inside `--state-dir`.
pub const STATE_FILE: &str = "config.json";

/// The persisted state: the revision and the canonical config document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Persisted {
    /// The revision the config was served as.
    pub revision: u64,
    /// Its content hash, 16 hex digits (informational; recomputed on load).
    pub content_hash: String,
    /// The config document.
    pub config: Config,
}

/// Why a config file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The document was rejected.
    #[error("{path}: {errors}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every error with its path.
        errors: ConfigErrors,
    },
}

/// The embedded demo config, parsed.
pub fn embedded() -> Result<Config, ConfigErrors> {
    Config::parse(EMBEDDED)
}

/// Reads and parses a config file (YAML, or JSON when it starts with `{`).
pub fn read_file(path: &Path) -> Result<Config, FileError> {
    let text = fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Config::parse(&text).map_err(|errors| FileError::Invalid {
        path: path.to_owned(),
        errors,
    })
}

/// Applies `config` from `source`, counting the outcome; for use inside `spawn_blocking`.
pub fn apply_counted(
    store: &ConfigStore,
    metrics: &Metrics,
    source: Source,
    config: &Config,
    revision: Option<u64>,
) -> Result<Arc<Snapshot>, ApplyError> {
    let result = store.apply(config, revision, None);
    metrics.reload(source, result.is_ok());
    result.map(|a| a.snapshot().clone())
}

// --- persistence

/// Writes the snapshot's revision and config to `dir/config.json` atomically.
pub fn persist(dir: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let state = PersistedRef {
        revision: snapshot.revision(),
        content_hash: format!("{:016x}", snapshot.content_hash()),
        config: snapshot.config(),
    };
    let bytes = serde_json::to_vec_pretty(&state)?;
    let tmp = dir.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(STATE_FILE))?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[derive(Serialize)]
struct PersistedRef<'a> {
    revision: u64,
    content_hash: String,
    config: &'a Config,
}

/// Reads `dir/config.json`, if there is one.
pub fn load_persisted(dir: &Path) -> anyhow::Result<Option<Persisted>> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let state: Persisted = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not an allot state file (move it away to start from --config or the demo)",
            path.display()
        )
    })?;
    Ok(Some(state))
}

// --- file watching

/// What identifies a version of a file without reading it. The path is followed through
/// symlinks, so a Kubernetes ConfigMap's `..data` swap or an editor's rename-over changes
/// the inode even when size and mtime look alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    ino: u64,
    #[cfg(unix)]
    ctime: (i64, i64),
}

fn stat(path: &Path) -> io::Result<Stamp> {
    let m = fs::metadata(path)?;
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        #[cfg(unix)]
        ino: m.ino(),
        #[cfg(unix)]
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Watches `path` until `cancel`: every `interval` a cheap stat; on a change, read, hash and
/// (if the bytes differ from the last seen) apply. A bad file is logged and counted and the
/// serving config stays. `initial` is the content the server started from, if it read the file.
pub async fn watch_file(
    path: PathBuf,
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut last_stamp = stat(&path).ok();
    let mut last_hash = fs::read(&path).ok().map(|b| xxhash_rust::xxh3::xxh3_64(&b));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stamp = match stat(&path) {
            Ok(s) => s,
            Err(e) => {
                // Mid-swap or deleted: keep serving, look again next tick.
                if last_stamp.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "config file unavailable; keeping the serving config");
                }
                last_stamp = None;
                continue;
            }
        };
        if Some(stamp) == last_stamp {
            continue;
        }
        last_stamp = Some(stamp);
        let (p, s, m) = (path.clone(), store.clone(), metrics.clone());
        let seen = last_hash;
        let outcome = tokio::task::spawn_blocking(move || reload_file(&p, &s, &m, seen)).await;
        match outcome {
            Ok(Ok((hash, applied))) => {
                last_hash = Some(hash);
                match applied {
                    None => {}
                    Some(Ok(snap)) => tracing::info!(
                        path = %path.display(),
                        revision = snap.revision(),
                        "config file applied"
                    ),
                    Some(Err(e)) => {
                        tracing::error!("config file rejected; keeping the serving config: {e}")
                    }
                }
            }
            Ok(Err(e)) => {
                // Unreadable right now (mid-swap): look again on the next tick.
                last_stamp = None;
                tracing::warn!("{e}");
            }
            Err(e) => tracing::error!(error = %e, "config file reload task failed"),
        }
    }
}

/// The outcome of applying a changed file.
type Applied = Result<Arc<Snapshot>, ApplyError>;

/// Reads the file; if its bytes differ from `seen`, parses and applies them. Returns the
/// content hash and, if it was new, the outcome.
fn reload_file(
    path: &Path,
    store: &ConfigStore,
    metrics: &Metrics,
    seen: Option<u64>,
) -> Result<(u64, Option<Applied>), FileError> {
    let bytes = fs::read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    if Some(hash) == seen {
        return Ok((hash, None));
    }
    let parsed = match std::str::from_utf8(&bytes) {
        Ok(text) => Config::parse(text),
        Err(e) => Err(ConfigErrors::from(allot::ConfigError {
            path: String::new(),
            kind: allot::ErrorKind::Parse {
                message: format!("not UTF-8: {e}"),
            },
        })),
    };
    let outcome = match parsed {
        Ok(config) => apply_counted(store, metrics, Source::File, &config, None),
        Err(errors) => {
            metrics.reload(Source::File, false);
            Err(ApplyError::Invalid(errors))
        }
    };
    Ok((hash, Some(outcome)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_demo_compiles() {
        let config = embedded().unwrap();
        let snap = allot::compile(&config, 1).unwrap();
        assert!(snap.layer_count() >= 2);
        assert!(snap.experiment_count() >= 3);
        let types: std::collections::HashSet<_> = config.flags.iter().map(|f| f.kind).collect();
        assert_eq!(types.len(), 5, "every flag type appears");
        assert!(config.flags.iter().any(|f| !f.enabled));
        assert!(!config.holdouts.is_empty() && !config.segments.is_empty());
        assert!(snap.unit_keys().any(|k| k == "device_id"));
    }

    #[test]
    fn persist_round_trips_revision_and_hash() {
        let dir = std::env::temp_dir().join(format!("allot-persist-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let snap = allot::compile(&embedded().unwrap(), 41).unwrap();
        persist(&dir, &snap).unwrap();
        let back = load_persisted(&dir).unwrap().unwrap();
        assert_eq!(back.revision, 41);
        assert_eq!(back.config.content_hash(), snap.content_hash());
        assert_eq!(back.content_hash, format!("{:016x}", snap.content_hash()));
        assert!(load_persisted(&dir.join("absent")).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
