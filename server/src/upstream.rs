//! `--upstream URL`: follow another allot-server over `WatchConfig`, adopting its revisions.
//!
//! Followers take the upstream's revision numbers so that trace stamps agree across replicas.
//! Each update is parsed and compiled off the async workers; a bad one is logged and dropped and
//! the serving config stays. A lost upstream is retried with jittered exponential backoff,
//! resuming from the serving revision. This module never serves anything itself.

use std::sync::Arc;
use std::time::Duration;

use allot::Config;
use allot::client::Backoff;
use allot_proto::allot::v1::allocator_client::AllocatorClient;
use allot_proto::allot::v1::{ConfigUpdate, WatchConfigRequest};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

use crate::grpc::KNOWN_CONTENT_HASH;
use crate::metrics::Metrics;
use crate::state::{Applied, ApplyError, ConfigStore, Source};

/// Largest `ConfigUpdate` accepted (tonic's default of 4 MiB is below what admin PUT takes).
const MAX_UPDATE: usize = 64 << 20;

/// Follows the upstream allot-server at `url` (e.g. `http://allot-primary:8013`), applying
/// every config it streams to `store` under the upstream's revision, until `shutdown` becomes
/// `true` (a dropped sender counts as never shutting down).
///
/// Never returns an error: a failed connection or stream is logged and retried with
/// exponential backoff (100 ms doubling to 5 s, ±20% jitter), and the store keeps serving
/// whatever it holds meanwhile.
pub async fn follow(url: String, store: Arc<ConfigStore>, shutdown: watch::Receiver<bool>) {
    follow_with(url, store, shutdown, None).await;
}

/// [`follow`], counting every update in `metrics` as a reload from [`Source::Upstream`]
/// (success when accepted or unchanged, failure when rejected).
pub async fn follow_with(
    url: String,
    store: Arc<ConfigStore>,
    shutdown: watch::Receiver<bool>,
    metrics: Option<Arc<Metrics>>,
) {
    follow_authorized(url, None, store, shutdown, metrics).await;
}

/// [`follow_with`], presenting `token` (`authorization: Bearer <token>`) to an upstream
/// started with `--client-tokens`.
pub async fn follow_authorized(
    url: String,
    token: Option<String>,
    store: Arc<ConfigStore>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Option<Arc<Metrics>>,
) {
    let mut backoff = Backoff::default();
    let authorization = match token.map(|t| MetadataValue::try_from(format!("Bearer {t}"))) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            tracing::error!(upstream = %url, "--upstream-token is not a valid header value; following without it");
            None
        }
    };
    loop {
        tokio::select! {
            result = watch_once(&url, authorization.as_ref(), &store, metrics.as_deref(), &mut backoff) => match result {
                Ok(()) => tracing::info!(upstream = %url, "upstream closed the config stream"),
                Err(error) => tracing::warn!(upstream = %url, %error, "upstream config stream failed"),
            },
            () = stopped(&mut shutdown) => return,
        }
        let delay = backoff.next_delay();
        tracing::debug!(upstream = %url, ?delay, "reconnecting to upstream");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// One connection: subscribes from the serving revision and applies updates until the stream
/// ends (`Ok`) or fails (`Err`).
async fn watch_once(
    url: &str,
    authorization: Option<&MetadataValue<tonic::metadata::Ascii>>,
    store: &Arc<ConfigStore>,
    metrics: Option<&Metrics>,
    backoff: &mut Backoff,
) -> Result<(), tonic::Status> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(format!("bad upstream URL: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        // Detects a silently dead upstream (no FIN) while the stream is idle.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
    let serving = store.load_full();
    let known_revision = serving.as_ref().map_or(0, |s| s.revision());
    let mut request = tonic::Request::new(WatchConfigRequest { known_revision });
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    if let Some(s) = &serving {
        // The revision alone could match a different document on a restarted upstream.
        let hash = format!("{:016x}", s.content_hash());
        if let Ok(value) = MetadataValue::try_from(hash.as_str()) {
            request.metadata_mut().insert(KNOWN_CONTENT_HASH, value);
        }
    }
    let mut stream = AllocatorClient::new(channel)
        .max_decoding_message_size(MAX_UPDATE)
        .watch_config(request)
        .await?
        .into_inner();
    tracing::info!(upstream = %url, known_revision, "following upstream");
    backoff.reset();
    while let Some(update) = stream.message().await? {
        let accepted = apply_update(url, store, update).await;
        if let Some(m) = metrics {
            m.reload(Source::Upstream, accepted);
        }
    }
    Ok(())
}

/// Parses, compiles and applies one update off the async workers; logs the outcome and
/// returns whether the update was accepted (swapped in or unchanged).
async fn apply_update(url: &str, store: &Arc<ConfigStore>, update: ConfigUpdate) -> bool {
    let revision = update.revision;
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let config = Config::from_json(&update.config_json).map_err(ApplyError::Invalid)?;
        let hash = format!("{:016x}", config.content_hash());
        if hash != update.content_hash {
            // Not fatal: the engines may differ in version; the document is what counts.
            tracing::warn!(
                revision,
                upstream_hash = %update.content_hash,
                local_hash = %hash,
                "upstream content hash differs from the parsed document's"
            );
        }
        store.apply(&config, Some(revision), None)
    })
    .await;
    match result {
        Ok(Ok(Applied::Swapped(_))) => {
            tracing::info!(upstream = %url, revision, "applied upstream config");
            true
        }
        Ok(Ok(Applied::Unchanged(_))) => {
            tracing::debug!(upstream = %url, revision, "upstream config unchanged");
            true
        }
        Ok(Err(error)) => {
            tracing::error!(upstream = %url, revision, %error, "rejected upstream config; keeping the serving one");
            false
        }
        Err(error) => {
            tracing::error!(upstream = %url, revision, %error, "compiling upstream config panicked; keeping the serving one");
            false
        }
    }
}

/// Completes once `shutdown` is `true`; never if its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
