//! The management port: `/healthz`, `/readyz`, `/metrics`, and `GET|PUT /admin/config`.
//!
//! Admin writes need `Authorization: Bearer <token>` matching `--admin-token` (compared in
//! constant time); without a configured token every write is refused. `GET /admin/config` is
//! open unless [`AdminState::private_reads`] is set (the server sets it with
//! `--client-tokens`), but a presented credential must be the admin token: a client token
//! gets 403 on every admin route, reads included. Health, readiness and metrics stay open. A `PUT` compiles off the
//! async runtime and goes through [`ConfigStore::apply`](crate::state::ConfigStore::apply), so a rejected document never replaces
//! the serving one, and `If-Match` is checked atomically with the swap. Persistence happens in
//! the store's accept hook, for every source alike.

use std::sync::Arc;

use allot::Config;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::http::{body_error, config_response, method_not_allowed, no_route};
use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::service::Service;
use crate::state::{Applied, ApplyError, Source};
use crate::track::TrackLayer;

/// Largest config document `PUT /admin/config` accepts: 16 MiB.
pub const MAX_CONFIG_BODY: usize = 16 << 20;

/// What the management router needs.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The evaluation service (its store is the one admin writes go to).
    pub service: Service,
    /// The admin bearer token; `None` refuses every admin write.
    pub token: Option<Arc<str>>,
    /// The metrics rendered on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Whether `GET /admin/config` needs the admin token too (the config is private when the
    /// evaluation APIs need client tokens).
    pub private_reads: bool,
}

/// The management router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/admin/config",
            get(get_config)
                .put(put_config)
                .layer(DefaultBodyLimit::max(MAX_CONFIG_BODY)),
        )
        .route_layer(TrackLayer::new(state.service.metrics()))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.service.store().revision() {
        Some(revision) => format!("ready: revision {revision}\n").into_response(),
        None => ApiError::NotReady.into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        state.metrics.render(state.service.store()),
    )
        .into_response()
}

async fn get_config(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if (state.private_reads || headers.contains_key(header::AUTHORIZATION))
        && let Err(e) = authorize(state.token.as_deref(), &headers)
    {
        return e.into_response();
    }
    config_response(state.service.store(), &headers)
}

/// `PUT /admin/config` query parameters.
#[derive(Debug, Default, Deserialize)]
struct PutParams {
    /// Validate only; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Success body of `PUT /admin/config`.
#[derive(Debug, Serialize)]
struct PutBody {
    revision: u64,
    content_hash: String,
    changed: bool,
}

/// Success body of a dry run.
#[derive(Debug, Serialize)]
struct DryRunBody {
    valid: bool,
    content_hash: String,
    /// Whether applying it would create a new revision.
    changed: bool,
    /// The revision serving now.
    serving_revision: Option<u64>,
}

async fn put_config(
    State(state): State<AdminState>,
    headers: HeaderMap,
    params: Result<Query<PutParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match put_inner(state, headers, params, body).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn put_inner(
    state: AdminState,
    headers: HeaderMap,
    params: Result<Query<PutParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(state.token.as_deref(), &headers)?;
    let Query(params) =
        params.map_err(|e| ApiError::Parse(format!("bad query string: {}", e.body_text())))?;
    let expected = if_match(&headers)?;
    let bytes = body.map_err(|e| body_error(e, MAX_CONFIG_BODY))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::Parse(format!("config body is not UTF-8: {e}")))?
        .to_owned();
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    let store = state.service.store().clone();
    let metrics = state.metrics.clone();
    tokio::task::spawn_blocking(move || {
        let config = match kind.as_deref() {
            Some(ct) if ct.contains("json") => Config::from_json(&text),
            Some(ct) if ct.contains("yaml") => Config::from_yaml(&text),
            _ => Config::parse(&text),
        }
        .map_err(ApiError::Config);
        let config = match config {
            Ok(c) => c,
            Err(e) => {
                if !params.dry_run {
                    metrics.reload(Source::Admin, false);
                }
                return Err(e);
            }
        };
        let current = store.load_full();
        if params.dry_run {
            let serving = current.as_ref().map(|s| s.revision());
            if let Some(expected) = expected
                && serving != Some(expected)
            {
                return Err(mismatch(expected, serving));
            }
            let next = serving.map_or(1, |r| r + 1);
            allot::compile(&config, next)?;
            let hash = config.content_hash();
            return Ok(Json(DryRunBody {
                valid: true,
                content_hash: format!("{hash:016x}"),
                changed: current.is_none_or(|s| s.content_hash() != hash),
                serving_revision: serving,
            })
            .into_response());
        }
        let result = store.apply(&config, None, expected);
        // A failed precondition is not a rejected config.
        if !matches!(result, Err(ApplyError::RevisionMismatch { .. })) {
            metrics.reload(Source::Admin, result.is_ok());
        }
        match result {
            Ok(applied) => {
                let snap = applied.snapshot();
                tracing::info!(revision = snap.revision(), "config applied by admin");
                Ok(Json(PutBody {
                    revision: snap.revision(),
                    content_hash: format!("{:016x}", snap.content_hash()),
                    changed: matches!(applied, Applied::Swapped(_)),
                })
                .into_response())
            }
            Err(ApplyError::Invalid(errors)) => Err(ApiError::Config(errors)),
            Err(ApplyError::RevisionMismatch { expected, current }) => {
                Err(mismatch(expected, current))
            }
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("config apply task: {e}")))?
}

fn mismatch(expected: u64, current: Option<u64>) -> ApiError {
    ApiError::RevisionMismatch {
        expected: expected.to_string(),
        current: current.unwrap_or(0),
    }
}

/// Checks `Authorization: Bearer <token>` against the configured token in constant time.
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::AdminDisabled);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    // Lengths may differ (and that much may leak); the bytes are compared in constant time.
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// `If-Match: <revision>`, `"<revision>"`, `W/"<revision>"`, or the `"<revision>-<hash>"`
/// ETag of `GET /admin/config`; `*` means no precondition.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or("").trim();
    if raw == "*" {
        return Ok(None);
    }
    let tag = raw.strip_prefix("W/").unwrap_or(raw).trim_matches('"');
    let rev = tag.split_once('-').map_or(tag, |(rev, _)| rev);
    rev.parse::<u64>().map(Some).map_err(|_| {
        ApiError::Parse(format!(
            "If-Match must be a config revision (e.g. `\"42\"`), got `{raw}`"
        ))
    })
}
