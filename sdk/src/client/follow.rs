//! The client's sync task: gRPC `WatchConfig` first, `GET /v1/config` polling when the stream
//! cannot be established, jittered exponential backoff when neither answers.
//!
//! Never gives up and never clears the serving snapshot; it ends when every `Client` is gone.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Weak};
use std::time::Duration;

use allot_proto::allot::v1::WatchConfigRequest;
use allot_proto::allot::v1::allocator_client::AllocatorClient;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

use super::Shared;

/// The `WatchConfig` metadata carrying the content hash of the held config (the server's
/// `allot_server::grpc::KNOWN_CONTENT_HASH`).
pub(super) const KNOWN_CONTENT_HASH: &str = "allot-known-content-hash";

/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Each delay is scaled by a random factor in `1 ± JITTER` so clients do not reconnect in step.
const JITTER: f64 = 0.2;
/// How long connecting and opening the stream may take.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// While polling over HTTP, how often to try the gRPC stream again.
const GRPC_RETRY: Duration = Duration::from_secs(30);
/// Largest `ConfigUpdate` accepted (as the server's upstream follower).
const MAX_UPDATE: usize = 64 << 20;

/// Where the server is.
#[derive(Debug, Clone)]
pub(super) struct Sources {
    pub(super) grpc: String,
    pub(super) http: String,
    pub(super) poll_interval: Duration,
    /// `Bearer <client token>`, sent with every request when set.
    pub(super) authorization: Option<String>,
}

/// How a gRPC attempt ended.
enum Watch {
    /// The stream was open (a message came, or it stayed open a while) and then ended or
    /// failed: retry gRPC after a backoff.
    Ended(Option<tonic::Status>),
    /// The stream could not be opened, or failed before its first message: try HTTP.
    NotEstablished(tonic::Status),
    /// Every `Client` is gone.
    Gone,
}

/// The sync loop; returns when `shared` is dropped.
pub(super) async fn run(sources: Sources, shared: Weak<Shared>) {
    let http = reqwest::Client::builder()
        .connect_timeout(ESTABLISH_TIMEOUT)
        .timeout(ESTABLISH_TIMEOUT * 2)
        .build()
        .unwrap_or_default();
    let mut backoff = Backoff::default();
    let mut grpc_after = Instant::now();
    loop {
        if Instant::now() >= grpc_after {
            match watch(&sources, &shared, &mut backoff).await {
                Watch::Gone => return,
                Watch::Ended(status) => {
                    tracing::info!(server = %sources.grpc, ?status, "allot client: config stream ended");
                    if !sleep(backoff.next_delay(), &shared).await {
                        return;
                    }
                    continue;
                }
                Watch::NotEstablished(status) => {
                    tracing::debug!(server = %sources.grpc, %status, "allot client: no config stream; trying HTTP");
                }
            }
        }
        match poll(&http, &sources, &shared).await {
            Poll::Gone => return,
            Poll::Answered => {
                if grpc_after <= Instant::now() {
                    tracing::info!(server = %sources.http, "allot client: polling GET /v1/config");
                    grpc_after = Instant::now() + GRPC_RETRY;
                }
                backoff.reset();
                if !sleep(sources.poll_interval, &shared).await {
                    return;
                }
            }
            Poll::Failed(error) => {
                tracing::warn!(server = %sources.http, %error, "allot client: server unreachable; serving the last good config");
                // Both failed: next time, try the stream again first.
                grpc_after = Instant::now();
                if !sleep(backoff.next_delay(), &shared).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps for `d`; `false` if every `Client` is gone.
async fn sleep(d: Duration, shared: &Weak<Shared>) -> bool {
    tokio::time::sleep(d).await;
    shared.strong_count() > 0
}

/// One `WatchConfig` stream, from the held revision and hash, applying updates until it ends.
async fn watch(sources: &Sources, shared: &Weak<Shared>, backoff: &mut Backoff) -> Watch {
    let url = sources.grpc.as_str();
    let stream = tokio::time::timeout(
        ESTABLISH_TIMEOUT,
        open(url, sources.authorization.as_deref(), shared),
    )
    .await;
    let mut stream = match stream {
        Err(_) => return Watch::NotEstablished(tonic::Status::deadline_exceeded("timed out")),
        Ok(Err(status)) => return Watch::NotEstablished(status),
        Ok(Ok(None)) => return Watch::Gone,
        Ok(Ok(Some(s))) => s,
    };
    let opened = Instant::now();
    let mut received = false;
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                if !received {
                    tracing::info!(server = %url, "allot client: following the config stream");
                    received = true;
                    backoff.reset();
                }
                let Some(shared) = shared.upgrade() else {
                    return Watch::Gone;
                };
                apply(
                    shared,
                    update.revision,
                    update.content_hash,
                    update.config_json,
                )
                .await;
            }
            // tonic reports the response status (e.g. a plain HTTP server's 404 mapped to
            // `UNIMPLEMENTED`) with the first read: a stream that fails before any message
            // was never a config stream.
            Err(status) if !received && opened.elapsed() < BACKOFF_MAX => {
                return Watch::NotEstablished(status);
            }
            end => {
                if opened.elapsed() >= BACKOFF_MAX {
                    // It served for a while: reconnect quickly.
                    backoff.reset();
                }
                return Watch::Ended(end.err());
            }
        }
    }
}

/// Connects and opens the stream; `Ok(None)` if every `Client` is gone.
async fn open(
    url: &str,
    authorization: Option<&str>,
    shared: &Weak<Shared>,
) -> Result<Option<tonic::Streaming<allot_proto::allot::v1::ConfigUpdate>>, tonic::Status> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(format!("bad server URL: {e}")))?
        .connect_timeout(ESTABLISH_TIMEOUT)
        // Detects a silently dead server (no FIN) while the stream is idle.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
    let Some(held) = shared.upgrade().map(|s| s.current.load_full()) else {
        return Ok(None);
    };
    let known_revision = held.as_ref().map_or(0, |s| s.revision());
    let mut request = tonic::Request::new(WatchConfigRequest { known_revision });
    if let Some(auth) = authorization {
        let value = MetadataValue::try_from(auth).map_err(|_| {
            tonic::Status::invalid_argument("the client token is not a valid header value")
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    if let Some(s) = &held {
        // The revision alone could match a different document on a restarted server.
        let hash = format!("{:016x}", s.content_hash());
        if let Ok(value) = MetadataValue::try_from(hash.as_str()) {
            request.metadata_mut().insert(KNOWN_CONTENT_HASH, value);
        }
    }
    let stream = AllocatorClient::new(channel)
        .max_decoding_message_size(MAX_UPDATE)
        .watch_config(request)
        .await?
        .into_inner();
    Ok(Some(stream))
}

/// How one HTTP poll ended.
enum Poll {
    /// 200 (applied or rejected), 304, or 503 (no config yet): the server is there.
    Answered,
    /// No answer, or an unexpected one.
    Failed(String),
    /// Every `Client` is gone.
    Gone,
}

/// One `GET /v1/config` with `If-None-Match` of the held config.
async fn poll(http: &reqwest::Client, sources: &Sources, shared: &Weak<Shared>) -> Poll {
    let base = sources.http.as_str();
    let Some(held) = shared.upgrade().map(|s| s.current.load_full()) else {
        return Poll::Gone;
    };
    let url = format!("{}/v1/config", base.trim_end_matches('/'));
    let mut request = http.get(&url);
    if let Some(auth) = &sources.authorization {
        request = request.header("authorization", auth);
    }
    if let Some(s) = &held {
        request = request.header(
            "if-none-match",
            format!("\"{}-{:016x}\"", s.revision(), s.content_hash()),
        );
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Poll::Failed(e.to_string()),
    };
    match response.status().as_u16() {
        200 => {}
        304 | 503 => return Poll::Answered,
        other => return Poll::Failed(format!("GET {url}: status {other}")),
    }
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Poll::Failed(e.to_string()),
    };
    let Some((revision, hash, config_json)) = split_body(&body) else {
        tracing::error!(
            url,
            "allot client: GET /v1/config answered something else than a config body; keeping the serving config"
        );
        return Poll::Answered;
    };
    let Some(shared) = shared.upgrade() else {
        return Poll::Gone;
    };
    apply(shared, revision, hash, config_json).await;
    Poll::Answered
}

/// (revision, content hash, config JSON) of a `GET /v1/config` body.
fn split_body(body: &[u8]) -> Option<(u64, String, String)> {
    let serde_json::Value::Object(mut body) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    let revision = body.get("revision")?.as_u64()?;
    let hash = body.get("content_hash")?.as_str()?.to_owned();
    let config = body.remove("config")?;
    Some((revision, hash, config.to_string()))
}

/// Parses, compiles and swaps in one update off the async workers.
async fn apply(shared: Arc<Shared>, revision: u64, hash: String, config_json: String) {
    let result =
        tokio::task::spawn_blocking(move || shared.apply(revision, &hash, &config_json)).await;
    if let Err(error) = result {
        tracing::error!(revision, %error, "allot client: compiling a config panicked; keeping the serving one");
    }
}

/// Exponential reconnect delays with jitter: 100 ms doubling to 5 s, each scaled by a random
/// factor in `1 ± 0.2` so followers do not reconnect in step. Shared by the SDK client and the
/// server's `--upstream` follower.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    /// Per-process random keys: the jitter source, without an RNG dependency.
    random: RandomState,
    draws: u64,
}

// === impl Backoff ===

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_MIN,
            random: RandomState::new(),
            draws: 0,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt; doubles the one after, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        self.draws += 1;
        // Uniform in [0, 1) from the top 53 bits of a keyed hash.
        let unit = (self.random.hash_one(self.draws) >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit)
    }

    /// Back to the first delay, after a successful (re)connection.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::default();
        let mut base = BACKOFF_MIN;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(d >= base.mul_f64(1.0 - JITTER) && d <= base.mul_f64(1.0 + JITTER));
            base = (base * 2).min(BACKOFF_MAX);
            seen.insert(d);
        }
        assert!(seen.len() > 6, "jittered delays differ");
        assert_eq!(b.next, BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next, BACKOFF_MIN);
    }

    #[test]
    fn config_body_splits() {
        let (rev, hash, json) =
            split_body(br#"{"revision":7,"content_hash":"00ff","config":{"layers":[]}}"#).unwrap();
        assert_eq!(
            (rev, hash.as_str(), json.as_str()),
            (7, "00ff", r#"{"layers":[]}"#)
        );
        assert!(split_body(b"[]").is_none());
        assert!(split_body(br#"{"revision":"x"}"#).is_none());
    }
}
