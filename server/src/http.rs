//! HTTP transport (axum) on the evaluation port: `POST /v1/allocate`, `GET /v1/config`, and
//! the OFREP routes of [`crate::ofrep`].
//!
//! Handlers only decode requests, call [`Service`], and encode its views; every failure is an
//! [`ApiError`] with a specific status, code and message (axum's default rejection texts are
//! replaced). Must not hold evaluation logic.

use std::time::Instant;

use allot::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::metrics::Transport;
use crate::service::{RequestMeta, Service};
use crate::state::ConfigStore;

/// Largest `/v1/allocate` body accepted: 1 MiB.
pub const MAX_BODY: usize = 1 << 20;

/// The `baggage` header name.
pub const BAGGAGE: &str = "baggage";

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";

/// The evaluation router: `POST /v1/allocate`, `GET /v1/config`, and OFREP ([`crate::ofrep`]).
pub fn router(service: Service) -> Router {
    Router::new()
        .route("/v1/allocate", post(allocate))
        .route("/v1/config", get(config))
        .route_layer(middleware::from_fn_with_state(service.clone(), track))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(service.clone())
        .merge(crate::ofrep::router(service))
}

async fn allocate(
    State(service): State<Service>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match allocate_inner(&service, &headers, body) {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

fn allocate_inner(
    service: &Service,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(headers)?;
    let bytes = body.map_err(|e| body_error(e, MAX_BODY))?;
    let context = context_of(parse_json(&bytes)?)?;
    let incoming: Vec<&str> = headers
        .get_all(BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let meta = RequestMeta::http(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    let (json, baggage) = service.allocate_with(&context, &[], &incoming, meta, |view| {
        (serde_json::to_vec(view), view.baggage.clone())
    })?;
    let json = json.map_err(|e| ApiError::Internal(format!("encoding response: {e}")))?;
    let baggage = HeaderValue::try_from(baggage)
        .map_err(|e| ApiError::Internal(format!("baggage header: {e}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::HeaderName::from_static(BAGGAGE), baggage),
        ],
        json,
    )
        .into_response())
}

/// The `context` object of a `{"context": {...}}` body.
pub fn context_of(body: Value) -> Result<Context, ApiError> {
    let Value::Object(mut top) = body else {
        return Err(ApiError::Parse(format!(
            "request body must be a JSON object with a `context` object, not {}",
            kind(&body)
        )));
    };
    match top.remove("context") {
        Some(Value::Object(map)) => Ok(Context::from(map)),
        None | Some(Value::Null) => Err(ApiError::InvalidContext(
            "request body has no `context` object".to_owned(),
        )),
        Some(other) => Err(ApiError::InvalidContext(format!(
            "`context` must be a JSON object, not {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

async fn config(State(service): State<Service>, headers: HeaderMap) -> Response {
    config_response(service.store(), &headers)
}

/// The body of `GET /v1/config` and `GET /admin/config`.
#[derive(Debug, Serialize)]
pub struct ConfigBody<'a> {
    /// The serving revision.
    pub revision: u64,
    /// The content hash, 16 lower-case hex digits.
    pub content_hash: String,
    /// The config document in canonical form.
    pub config: &'a allot::Config,
}

/// `GET` of the serving config: 200 with an `ETag: "<revision>-<hash>"`, 304 when
/// `If-None-Match` names it, 503 before the first config.
pub fn config_response(store: &ConfigStore, headers: &HeaderMap) -> Response {
    let Some(snapshot) = store.load_full() else {
        return ApiError::NotReady.into_response();
    };
    let etag = etag(snapshot.revision(), snapshot.content_hash());
    let etag_value = HeaderValue::try_from(etag.as_str()).unwrap_or(HeaderValue::from_static(""));
    if if_none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    let body = ConfigBody {
        revision: snapshot.revision(),
        content_hash: format!("{:016x}", snapshot.content_hash()),
        config: snapshot.config(),
    };
    match serde_json::to_vec(&body) {
        Ok(json) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::ETAG, etag_value),
            ],
            json,
        )
            .into_response(),
        Err(e) => ApiError::Internal(format!("encoding config: {e}")).into_response(),
    }
}

/// The strong entity tag of a config: `"<revision>-<16 hex hash>"`.
pub fn etag(revision: u64, content_hash: u64) -> String {
    format!("\"{revision}-{content_hash:016x}\"")
}

/// Whether `If-None-Match` (any of its lines and list members, weak or not, or `*`) names `etag`.
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// 415 unless `Content-Type` is `application/json` or a `+json` type (parameters allowed).
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let found = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let ok = found.as_deref().is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
            || (essence.len() > 5
                && essence
                    .get(essence.len() - 5..)
                    .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
                && essence
                    .get(..12)
                    .is_some_and(|s| s.eq_ignore_ascii_case("application/")))
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(match found {
            Some(ct) => format!("Content-Type must be application/json, not `{ct}`"),
            None => "Content-Type must be application/json (the header is missing)".to_owned(),
        }))
    }
}

/// A body that could not be buffered: 413 past `limit`, else 400.
pub fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    match e {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::PayloadTooLarge { limit }
        }
        other => ApiError::Parse(format!("cannot read request body: {}", other.body_text())),
    }
}

/// Decodes a JSON body; the message names the problem and its line and column.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Eof if bytes.iter().all(u8::is_ascii_whitespace) => {
                return ApiError::Parse("request body is empty; expected a JSON object".into());
            }
            Category::Eof => "truncated JSON",
            Category::Syntax | Category::Io => "malformed JSON",
            Category::Data => "unexpected JSON",
        };
        ApiError::Parse(format!("{what}: {e}"))
    })
}

/// Counts each request and its latency under its route (a static label, no allocation).
pub async fn track(State(service): State<Service>, req: Request<Body>, next: Next) -> Response {
    let Some(metrics) = service.metrics().cloned() else {
        return next.run(req).await;
    };
    let endpoint = endpoint_label(req.extensions().get::<MatchedPath>());
    let start = Instant::now();
    let res = next.run(req).await;
    metrics.observe_request(
        Transport::Http,
        endpoint,
        res.status().as_u16(),
        start.elapsed(),
    );
    res
}

/// The metrics label of a matched route: the known routes of both HTTP routers, else `other`.
pub fn endpoint_label(path: Option<&MatchedPath>) -> &'static str {
    match path.map(MatchedPath::as_str) {
        Some("/v1/allocate") => "/v1/allocate",
        Some("/v1/config") => "/v1/config",
        Some(crate::ofrep::SINGLE_ROUTE) => crate::ofrep::SINGLE_ROUTE,
        Some(crate::ofrep::BULK_ROUTE) => crate::ofrep::BULK_ROUTE,
        Some("/admin/config") => "/admin/config",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        _ => "other",
    }
}
