//! OFREP, the OpenFeature Remote Evaluation Protocol, on the evaluation HTTP port:
//! `POST /ofrep/v1/evaluate/flags/{key}` (one flag) and `POST /ofrep/v1/evaluate/flags` (bulk).
//!
//! Spec: open-feature/protocol `service/openapi.yaml`. A missing body or `context` is an empty
//! context. Success entries always carry `value` and `variant`; `metadata` holds only scalars
//! (`experiment`, `cell`, `layer` when an experiment decided, and `revision`). Errors use the
//! OFREP bodies `{key, errorCode, errorDetails}`. The unit is checked per flag
//! ([`Service::evaluate_with`]): a static or rule-only flag evaluates without a
//! `targetingKey`. The bulk answer carries an `ETag` over the config and the canonical context,
//! and `If-None-Match` naming it gives 304. CORS is open to any origin, on requests that carry
//! an `Origin` (browsers), so browser providers can call it. Like [`crate::http`], this module
//! only decodes, calls [`Service`], and encodes.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::Poll;

use allot::{Context, ErrorCode, FlagType, Reason, Resolution};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::handler::{Handler as _, HandlerWithoutStateExt as _};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post_service;
use pin_project_lite::pin_project;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::Layer;
use tower_http::cors::{self, Any, Cors, CorsLayer};

use crate::error::ApiError;
use crate::guard::{self, GuardLayer};
use crate::http::{self, BAGGAGE, MAX_BODY, TRACEPARENT};
use crate::render::{self, RenderCache};
use crate::service::{AllocateView, RequestMeta, Service};
use crate::track::TrackLayer;

/// The single-flag route.
pub const SINGLE_ROUTE: &str = "/ofrep/v1/evaluate/flags/{key}";

/// The bulk route.
pub const BULK_ROUTE: &str = "/ofrep/v1/evaluate/flags";

/// The OFREP routes behind `guard`, each with CORS ([`BrowserCorsLayer`]), the body limit and
/// its request metrics (composed as in [`crate::http::guarded`]); merge into the evaluation
/// router.
pub fn routes(service: &Service, guard: &GuardLayer<guard::Http>) -> Router {
    let metrics = service.metrics();
    let outer = (
        guard.clone(),
        BrowserCorsLayer,
        DefaultBodyLimit::max(MAX_BODY),
    );
    // Preflights (`OPTIONS`) reach the fallback, where CORS answers them.
    let not_allowed = outer.clone().layer(http::method_not_allowed.into_service());
    Router::new()
        .route(
            SINGLE_ROUTE,
            post_service(http::endpoint(
                outer.clone(),
                TrackLayer::route(metrics, SINGLE_ROUTE),
                single.with_state(service.clone()),
            ))
            .fallback_service(not_allowed.clone()),
        )
        .route(
            BULK_ROUTE,
            post_service(http::endpoint(
                outer,
                TrackLayer::route(metrics, BULK_ROUTE),
                bulk.with_state(service.clone()),
            ))
            .fallback_service(not_allowed),
        )
}

/// [`cors`] for requests that carry an `Origin`. Browsers send it on every cross-origin request
/// and preflight (and on every `POST`); server-side providers do not, and skip the layer's
/// per-response work (building and merging a `Vary` and the `access-control-*` headers, about
/// a sixth of a single-flag evaluation). OFREP answers are `POST` responses, which shared
/// caches do not store, so omitting `Vary: Origin` there is safe. A plain tower layer (no
/// per-request boxing or cloning, unlike `axum::middleware::from_fn`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BrowserCorsLayer;

/// The service of [`BrowserCorsLayer`].
#[derive(Debug, Clone)]
pub struct BrowserCors<S> {
    inner: S,
    cors: Cors<S>,
}

impl<S: Clone> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> BrowserCors<S> {
        static CORS: LazyLock<CorsLayer> = LazyLock::new(cors);
        BrowserCors {
            cors: CORS.layer(inner.clone()),
            inner,
        }
    }
}

impl<S, B, R> tower::Service<Request<B>> for BrowserCors<S>
where
    S: tower::Service<Request<B>, Response = axum::http::Response<R>>,
    R: Default,
{
    type Response = axum::http::Response<R>;
    type Error = S::Error;
    type Future = BrowserCorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        std::task::ready!(self.inner.poll_ready(cx))?;
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.headers().contains_key(header::ORIGIN) {
            BrowserCorsFuture {
                state: CorsState::Cors {
                    inner: self.cors.call(req),
                },
            }
        } else {
            BrowserCorsFuture {
                state: CorsState::Plain {
                    inner: self.inner.call(req),
                },
            }
        }
    }
}

pin_project! {
    /// The response future of [`BrowserCors`].
    pub struct BrowserCorsFuture<F> {
        #[pin]
        state: CorsState<F>,
    }
}

pin_project! {
    #[project = CorsStateProj]
    enum CorsState<F> {
        // Without CORS.
        Plain { #[pin] inner: F },
        // Through `cors()`.
        Cors { #[pin] inner: cors::ResponseFuture<F> },
    }
}

impl<F, R, E> Future for BrowserCorsFuture<F>
where
    F: Future<Output = Result<axum::http::Response<R>, E>>,
    R: Default,
{
    type Output = Result<axum::http::Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            CorsStateProj::Plain { inner } => inner.poll(cx),
            CorsStateProj::Cors { inner } => inner.poll(cx),
        }
    }
}

/// CORS for browser clients: any origin, `POST`, any request header; `ETag` and `baggage`
/// readable by scripts.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([header::ETAG, HeaderName::from_static(BAGGAGE)])
}

/// An OFREP request body decoded straight into a [`Context`], without building a
/// `serde_json::Value` tree first. Unknown fields are ignored.
#[derive(Deserialize)]
struct EvaluationRequest {
    #[serde(default)]
    context: Option<Context>,
}

/// The context of an OFREP body: `{"context": {...}}`; an empty body, a missing or `null`
/// `context` is an empty context.
pub fn context_of(body: &[u8]) -> Result<Context, ApiError> {
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(Context::new());
    };
    // The fast path takes JSON objects only (a derived struct would also accept an array).
    // Whatever it rejects is decoded again below, so the error says what is wrong.
    if *first == b'{'
        && let Ok(req) = serde_json::from_slice::<EvaluationRequest>(body)
    {
        return Ok(req.context.unwrap_or_default());
    }
    match http::parse_json::<Value>(body)? {
        Value::Object(mut top) => match top.remove("context") {
            None | Some(Value::Null) => Ok(Context::new()),
            Some(Value::Object(map)) => Ok(Context::from(map)),
            Some(_) => Err(ApiError::InvalidContext(
                "`context` must be a JSON object".to_owned(),
            )),
        },
        _ => Err(ApiError::Parse(
            "request body must be a JSON object with a `context` object".to_owned(),
        )),
    }
}

/// The OFREP `errorCode` of a request-level error.
pub fn error_code(e: &ApiError) -> &'static str {
    match e {
        ApiError::Parse(_) => "PARSE_ERROR",
        ApiError::InvalidContext(_) => "INVALID_CONTEXT",
        ApiError::UnitMissing(_) => "TARGETING_KEY_MISSING",
        ApiError::FlagNotFound(_) => "FLAG_NOT_FOUND",
        ApiError::TypeMismatch { .. } => "TYPE_MISMATCH",
        ApiError::NotReady => "PROVIDER_NOT_READY",
        _ => "GENERAL",
    }
}

/// The HTTP status of a request-level error: 401, 403, 404, 413, 503, 500, else 400.
fn error_status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::FlagNotFound(_) => StatusCode::NOT_FOUND,
        ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::NotReady | ApiError::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        e if e.is_shed() => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Unauthorized | ApiError::ClientToken => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden => StatusCode::FORBIDDEN,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// An OFREP error body `{[key,] errorCode, errorDetails}` with its status.
pub fn error_response(key: Option<&str>, e: &ApiError) -> Response {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Body<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        error_code: &'static str,
        error_details: String,
    }
    if let ApiError::Internal(detail) = e {
        tracing::error!(%detail, "internal error");
    }
    let body = Body {
        key,
        error_code: error_code(e),
        error_details: e.to_string(),
    };
    let mut res = (error_status(e), axum::Json(body)).into_response();
    e.add_headers(res.headers_mut());
    res
}

/// The engine's per-flag error as OFREP `errorCode` and `errorDetails`.
fn flag_error(r: &Resolution<'_>) -> Option<(&'static str, String)> {
    if r.reason != Reason::Error {
        return None;
    }
    Some(match r.error {
        Some(ErrorCode::InvalidContext) => (
            "INVALID_CONTEXT",
            format!(
                "flag `{}` hashes a context attribute that is not a string of 1 to {} bytes",
                r.key,
                allot::id::MAX_UNIT_LEN
            ),
        ),
        Some(ErrorCode::TargetingKeyMissing) => (
            "TARGETING_KEY_MISSING",
            format!(
                "flag `{}` splits traffic by a unit the context does not carry (e.g. `targetingKey`)",
                r.key
            ),
        ),
        None => (
            "GENERAL",
            format!("flag `{}` could not be evaluated", r.key),
        ),
    })
}

/// The served value in its declared type: float flags always as JSON floats, integer flags
/// as JSON integers.
pub struct TypedValue<'a>(pub FlagType, pub &'a Value);

impl Serialize for TypedValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.0, self.1) {
            (FlagType::Float, Value::Number(n)) => match n.as_f64() {
                Some(f) => s.serialize_f64(f),
                None => self.1.serialize(s),
            },
            (FlagType::Int, Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => s.serialize_i64(i),
                // An integral float (`10.0`) as an integer.
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    s.serialize_i64(f as i64)
                }
                _ => self.1.serialize(s),
            },
            _ => self.1.serialize(s),
        }
    }
}

/// One flag's OFREP entry: success `{key, value, variant, reason, metadata}` or failure
/// `{key, errorCode, errorDetails}`.
struct Entry<'a, 's> {
    r: &'a Resolution<'s>,
    revision: u64,
}

impl Serialize for Entry<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.r;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("key", r.key)?;
        if let Some((code, details)) = flag_error(r) {
            m.serialize_entry("errorCode", code)?;
            m.serialize_entry("errorDetails", &details)?;
            return m.end();
        }
        m.serialize_entry("value", &TypedValue(r.kind, r.value))?;
        m.serialize_entry("variant", r.variant)?;
        m.serialize_entry("reason", r.reason.as_str())?;
        m.serialize_entry(
            "metadata",
            &Metadata {
                r,
                revision: self.revision,
            },
        )?;
        m.end()
    }
}

/// Scalar metadata: `experiment`, `cell`, `layer` (when an experiment decided), `revision`.
struct Metadata<'a, 's> {
    r: &'a Resolution<'s>,
    revision: u64,
}

impl Serialize for Metadata<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(a) = &self.r.assignment {
            m.serialize_entry("experiment", a.experiment)?;
            m.serialize_entry("cell", a.cell)?;
            m.serialize_entry("layer", a.layer)?;
        }
        m.serialize_entry("revision", &self.revision)?;
        m.end()
    }
}

/// The bulk body: `{"flags": [...], "metadata": {"revision": N}}`.
struct Bulk<'a, 's>(&'a AllocateView<'s>);

impl Serialize for Bulk<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Meta {
            revision: u64,
        }
        let revision = self.0.snapshot.revision();
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("flags", &Entries(self.0, revision))?;
        m.serialize_entry("metadata", &Meta { revision })?;
        m.end()
    }
}

/// The bulk body's `flags` array, written entry by entry (no intermediate `Vec`).
struct Entries<'a, 's>(&'a AllocateView<'s>, u64);

impl Serialize for Entries<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let revision = self.1;
        s.collect_seq(self.0.flags.iter().map(|r| Entry { r, revision }))
    }
}

/// `value` as JSON into a buffer of `capacity` bytes: sized for the whole answer, so the
/// encoder does not regrow `serde_json::to_vec`'s 128-byte start several times.
fn to_json<T: Serialize>(value: &T, capacity: usize) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// One flag's OFREP entry, the bytes of `serde_json` of [`Entry`]: from `cache`'s fragment
/// when it has one for `r`, else (and for errors) through [`Entry`] itself.
fn write_entry(
    out: &mut Vec<u8>,
    cache: Option<&RenderCache>,
    r: &Resolution<'_>,
    revision: u64,
) -> serde_json::Result<()> {
    let prefix = match cache.and_then(|c| c.ofrep_prefix(r)) {
        Some(prefix) if r.reason != Reason::Error => prefix,
        _ => return serde_json::to_writer(out, &Entry { r, revision }),
    };
    out.extend_from_slice(prefix);
    out.extend_from_slice(r.reason.as_str().as_bytes());
    out.extend_from_slice(b"\",\"metadata\":{");
    if let Some(a) = &r.assignment {
        out.extend_from_slice(b"\"experiment\":");
        render::push_str(out, a.experiment)?;
        out.extend_from_slice(b",\"cell\":");
        render::push_str(out, a.cell)?;
        out.extend_from_slice(b",\"layer\":");
        render::push_str(out, a.layer)?;
        out.push(b',');
    }
    out.extend_from_slice(b"\"revision\":");
    render::push_u64(out, revision);
    out.extend_from_slice(b"}}");
    Ok(())
}

/// The single-flag answer for `r`, the flag of `view`: the bytes of `serde_json` of [`Entry`],
/// written from `cache` (rendered for `view.snapshot`) when given.
pub(crate) fn single_json(
    view: &AllocateView<'_>,
    r: &Resolution<'_>,
    cache: Option<&RenderCache>,
) -> serde_json::Result<Vec<u8>> {
    let cache = cache.filter(|c| c.is_for(view.snapshot));
    let revision = view.snapshot.revision();
    let mut out = Vec::with_capacity(ENTRY_BYTES);
    write_entry(&mut out, cache, r, revision)?;
    Ok(out)
}

/// The bulk answer of `view`: the bytes of `serde_json` of [`Bulk`], written from `cache`
/// (rendered for `view.snapshot`) when given.
pub(crate) fn bulk_json(
    view: &AllocateView<'_>,
    cache: Option<&RenderCache>,
) -> serde_json::Result<Vec<u8>> {
    let Some(cache) = cache.filter(|c| c.is_for(view.snapshot)) else {
        return to_json(&Bulk(view), 64 + ENTRY_BYTES * view.flags.len());
    };
    let revision = view.snapshot.revision();
    let mut out = Vec::with_capacity(cache.ofrep_capacity());
    out.extend_from_slice(b"{\"flags\":[");
    for (i, r) in view.flags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_entry(&mut out, Some(cache), r, revision)?;
    }
    out.extend_from_slice(b"],\"metadata\":{\"revision\":");
    render::push_u64(&mut out, revision);
    out.extend_from_slice(b"}}");
    Ok(out)
}

/// Bytes reserved for one flag's OFREP entry (the demo's average is about 120).
const ENTRY_BYTES: usize = 192;

/// The bulk `ETag`: `"<revision>-<16 hex>"`, the hex hashing the config's content hash and
/// the canonical (key-sorted) context, so a context change is a new tag.
pub fn bulk_etag(revision: u64, content_hash: u64, ctx: &Context) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&content_hash.to_le_bytes());
    // Serializing a `Context` cannot fail (string keys, JSON values).
    h.update(&to_json(ctx, 256).unwrap_or_default());
    format!("\"{revision}-{:016x}\"", h.digest())
}

fn incoming(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn meta(headers: &HeaderMap) -> RequestMeta<'_> {
    RequestMeta::http(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()))
}

/// The outgoing `baggage` header value, built while the view is borrowed (no `String` copy);
/// `None` if it is not a valid header value.
fn baggage_header(view: &AllocateView<'_>) -> Option<HeaderValue> {
    HeaderValue::try_from(view.baggage.as_str()).ok()
}

fn with_baggage(mut res: Response, baggage: Option<HeaderValue>) -> Response {
    if let Some(v) = baggage {
        res.headers_mut()
            .insert(HeaderName::from_static(BAGGAGE), v);
    }
    res
}

fn json_response(status: StatusCode, json: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response()
}

async fn single(
    State(service): State<Service>,
    key: Result<Path<String>, PathRejection>,
    mut req: Request,
) -> Response {
    let headers = http::take_headers(&mut req);
    let body = Bytes::from_request(req, &()).await;
    // A key that does not percent-decode to UTF-8 gets an OFREP body too, not axum's text.
    let key = match key {
        Ok(Path(key)) => key,
        Err(e) => {
            let e = ApiError::Parse(format!("bad flag key in the path: {}", e.body_text()));
            return error_response(None, &e);
        }
    };
    let ctx = match body
        .map_err(|e| http::body_error(e, MAX_BODY))
        .and_then(|b| context_of(&b))
    {
        Ok(ctx) => ctx,
        Err(e) => return error_response(Some(&key), &e),
    };
    let keys = [key];
    let result = service.evaluate_with(&ctx, &keys, &incoming(&headers), meta(&headers), |v| {
        let encoded = v.flags.first().map(|r| {
            let status = match r.reason {
                Reason::Error => StatusCode::BAD_REQUEST,
                _ => StatusCode::OK,
            };
            let json = service
                .with_render(v.snapshot, |cache| single_json(v, r, Some(cache)))
                .and_then(|json| json);
            (status, json)
        });
        (encoded, baggage_header(v))
    });
    let [key] = keys;
    match result {
        Ok((Some((status, Ok(json))), baggage)) => {
            with_baggage(json_response(status, json), baggage)
        }
        Ok((Some((_, Err(e))), _)) => {
            error_response(Some(&key), &ApiError::Internal(format!("encoding: {e}")))
        }
        Ok((None, _)) => error_response(Some(&key), &ApiError::FlagNotFound(key.clone())),
        Err(e) => error_response(Some(&key), &e),
    }
}

async fn bulk(State(service): State<Service>, mut req: Request) -> Response {
    let headers = http::take_headers(&mut req);
    let body = Bytes::from_request(req, &()).await;
    let ctx = match body
        .map_err(|e| http::body_error(e, MAX_BODY))
        .and_then(|b| context_of(&b))
    {
        Ok(ctx) => ctx,
        Err(e) => return error_response(None, &e),
    };
    let result = service.evaluate_with(&ctx, &[], &incoming(&headers), meta(&headers), |v| {
        let etag = bulk_etag(v.snapshot.revision(), v.snapshot.content_hash(), &ctx);
        let json = if http::if_none_match(&headers, &etag) {
            None
        } else {
            Some(
                service
                    .with_render(v.snapshot, |cache| bulk_json(v, Some(cache)))
                    .and_then(|json| json),
            )
        };
        (etag, json, baggage_header(v))
    });
    let (etag, json, baggage) = match result {
        Ok(parts) => parts,
        Err(e) => return error_response(None, &e),
    };
    let etag = HeaderValue::try_from(etag).unwrap_or(HeaderValue::from_static("\"\""));
    let mut res = match json {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(Ok(json)) => json_response(StatusCode::OK, json),
        Some(Err(e)) => return error_response(None, &ApiError::Internal(format!("encoding: {e}"))),
    };
    res.headers_mut().insert(header::ETAG, etag);
    with_baggage(res, baggage)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::service::Limits;
    use crate::state::ConfigStore;

    /// CORS applies exactly where axum matches an OFREP route (any method, preflights too),
    /// and nowhere else.
    #[tokio::test]
    async fn cors_applies_to_the_ofrep_routes_only() {
        let store = Arc::new(ConfigStore::new());
        store
            .apply(&crate::source::embedded().unwrap(), None, None)
            .unwrap();
        let app = http::router(Service::new(store, Limits::default()));
        let cases = [
            ("/ofrep/v1/evaluate/flags", true),
            ("/ofrep/v1/evaluate/flags/prefetch", true),
            ("/ofrep/v1/evaluate/flags/no-such-flag", true),
            ("/ofrep/v1/evaluate/flags/a%2Fb", true),
            ("/ofrep/v1/evaluate/flags/%FF", true),
            ("/ofrep/v1/evaluate/flags/", false),
            ("/ofrep/v1/evaluate/flags//", false),
            ("/ofrep/v1/evaluate/flags/a/b", false),
            ("/ofrep/v1/evaluate/flagsx", false),
            ("/ofrep/v1/evaluate", false),
            ("/v1/allocate", false),
            ("/nowhere", false),
        ];
        for (path, route) in cases {
            for method in [Method::POST, Method::GET, Method::OPTIONS] {
                let req = axum::http::Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .header(header::ORIGIN, "https://app.example")
                    .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(r#"{"context":{"targetingKey":"u"}}"#))
                    .unwrap();
                let res = app.clone().oneshot(req).await.unwrap();
                let status = res.status();
                // As every route's fallback answer (axum adds it), preflights included.
                if route && method != Method::POST {
                    assert_eq!(
                        res.headers().get(header::ALLOW).map(HeaderValue::as_bytes),
                        Some(&b"POST"[..]),
                        "{method} {path}"
                    );
                }
                let cors = res
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN);
                let body = res.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(cors, route, "{method} {path}: {status} {body:?}");
                // What axum routes: an unknown path is the JSON 404 of `no_route`.
                let unknown = status == StatusCode::NOT_FOUND
                    && String::from_utf8_lossy(&body).contains("no route for");
                if path.starts_with("/ofrep/") {
                    assert_eq!(unknown, !route, "{method} {path}: {status} {body:?}");
                }
            }
        }
    }
}
