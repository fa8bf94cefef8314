//! The client's on-disk cache: the last accepted config as the server's `GET /v1/config` body
//! (`{revision, content_hash, config}`), written atomically (temp file, fsync, rename) so a
//! crash leaves either the old or the new file, never half of one.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::{Config, Snapshot};

/// The cache file's name inside the cache directory.
pub(super) const FILE: &str = "allot-config.json";

/// The cached snapshot, compiled under its revision; `None` (logged) if there is none or it is
/// unusable.
pub(super) fn load(dir: &Path) -> Option<Snapshot> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "allot client: cannot read the cache");
            return None;
        }
    };
    let Some((revision, config)) = parse_body(&text) else {
        tracing::warn!(path = %path.display(), "allot client: the cache is not a config body; ignoring it");
        return None;
    };
    match crate::compile(&config, revision) {
        Ok(s) => {
            tracing::info!(revision, path = %path.display(), "allot client: serving the cached config");
            Some(s)
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "allot client: the cached config is invalid; ignoring it");
            None
        }
    }
}

/// Writes `snapshot` as the cache.
pub(super) fn store(dir: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let body = body(
        snapshot.revision(),
        snapshot.content_hash(),
        snapshot.config(),
    );
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE))?;
    // Makes the rename itself durable; not possible everywhere (and not fatal).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A `GET /v1/config` body.
pub(super) fn body(revision: u64, content_hash: u64, config: &Config) -> String {
    format!(
        r#"{{"revision":{revision},"content_hash":"{content_hash:016x}","config":{}}}"#,
        config.to_canonical_json()
    )
}

/// (revision, config) of a `GET /v1/config` body; `None` if `text` is not one.
pub(super) fn parse_body(text: &str) -> Option<(u64, Config)> {
    let Value::Object(mut body) = serde_json::from_str::<Value>(text).ok()? else {
        return None;
    };
    let revision = body.get("revision")?.as_u64()?;
    body.get("content_hash")?.as_str()?;
    let config = body.remove("config")?;
    if !config.is_object() {
        return None;
    }
    let config = Config::from_json(&config.to_string()).ok()?;
    Some((revision, config))
}
