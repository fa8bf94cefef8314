//! HTTP transport (axum) on the evaluation port: `POST /v1/allocate`, `GET /v1/config`, and
//! the OFREP routes of [`crate::ofrep`].
//!
//! Handlers only decode requests, call [`Service`], and encode its views; every failure is an
//! [`ApiError`] with a specific status, code and message (axum's default rejection texts are
//! replaced). Must not hold evaluation logic.

use allot::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::handler::{Handler as _, HandlerWithoutStateExt as _};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get_service, post_service};
use serde::Serialize;
use serde_json::Value;
use tower::Layer;

use crate::error::ApiError;
use crate::guard::{self, Guard};
use crate::service::{RequestMeta, Service};
use crate::state::ConfigStore;
use crate::track::{Track, TrackLayer};

/// Largest `/v1/allocate` body accepted: 1 MiB.
pub const MAX_BODY: usize = 1 << 20;

/// The `baggage` header name.
pub const BAGGAGE: &str = "baggage";

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";

/// The evaluation router: `POST /v1/allocate`, `GET /v1/config`, and OFREP ([`crate::ofrep`]),
/// behind a [`Guard::unlimited`] (no tokens, no shedding: for embedding and tests).
pub fn router(service: Service) -> Router {
    guarded(service, &Guard::unlimited())
}

/// The evaluation router behind `guard` (client tokens, concurrency limit, request timeout;
/// see [`crate::guard`]), counting rejections in the service's metrics.
///
/// Built for a short per-request path: every `Router::layer` wraps each route in one more
/// boxed service that axum clones (with everything inside it) and whose future it boxes, on
/// every request. So the layers of each route (the guard, the body limit, the endpoint's
/// metrics; OFREP: CORS) are composed into one unboxed tower stack around its handler
/// ([`endpoint`]), and the 405 and 404 fallbacks get theirs: one boxed level per request.
pub fn guarded(service: Service, guard: &Guard) -> Router {
    let metrics = service.metrics();
    let guard = guard.layer::<guard::Http>(metrics.map(|m| &**m));
    let limit = DefaultBodyLimit::max(MAX_BODY);
    let not_allowed = (guard.clone(), limit).layer(method_not_allowed.into_service());
    Router::new()
        .route(
            "/v1/allocate",
            post_service(endpoint(
                (guard.clone(), limit),
                TrackLayer::route(metrics, "/v1/allocate"),
                allocate.with_state(service.clone()),
            ))
            .fallback_service(not_allowed.clone()),
        )
        .route(
            "/v1/config",
            get_service(endpoint(
                (guard.clone(), limit),
                TrackLayer::route(metrics, "/v1/config"),
                config.with_state(service.clone()),
            ))
            .fallback_service(not_allowed),
        )
        .merge(crate::ofrep::routes(&service, &guard))
        .fallback_service(guard.layer(no_route.into_service()))
}

/// One endpoint's service: `outer` (the guard and what else wraps the whole route), then its
/// metrics, around the handler.
pub fn endpoint<L, H>(outer: L, track: TrackLayer, handler: H) -> L::Service
where
    L: Layer<Track<H>>,
{
    outer.layer(track.layer(handler))
}

/// The JSON 404 of a path no route matches (instead of axum's empty body).
pub async fn no_route(uri: Uri) -> Response {
    ApiError::RouteNotFound(uri.path().to_owned()).into_response()
}

/// The JSON 405 of a route asked for with a method it does not serve.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
    .into_response()
}

async fn allocate(State(service): State<Service>, mut req: Request) -> Response {
    let headers = take_headers(&mut req);
    let body = Bytes::from_request(req, &()).await;
    match allocate_inner(&service, &headers, body) {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

/// The request's headers, moved out (axum's `HeaderMap` extractor clones the whole map). The
/// body extractors read only the body and the extensions (the body limit).
pub fn take_headers(req: &mut Request) -> HeaderMap {
    std::mem::take(req.headers_mut())
}

fn allocate_inner(
    service: &Service,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(headers)?;
    let bytes = body.map_err(|e| body_error(e, MAX_BODY))?;
    let context = allocate_context(&bytes)?;
    let incoming: Vec<&str> = headers
        .get_all(BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let meta = RequestMeta::http(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()));
    let (json, baggage) = service.allocate_with(&context, &[], &incoming, meta, |view| {
        (service.encode(view), HeaderValue::from_str(&view.baggage))
    })?;
    let json = json.map_err(|e| ApiError::Internal(format!("encoding response: {e}")))?;
    let baggage = baggage.map_err(|e| ApiError::Internal(format!("baggage header: {e}")))?;
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

/// The context of a `/v1/allocate` body: [`parse_json`] then [`context_of`], with the same
/// errors, decoded straight into the [`Context`] (no intermediate [`Value`] maps).
pub fn allocate_context(body: &[u8]) -> Result<Context, ApiError> {
    parse_json::<AllocateBody>(body)?.into_context()
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

/// A decoded `/v1/allocate` body: what [`context_of`] of the body's [`Value`] would see, decoded
/// without building the top-level object or the context's map. Every value is still parsed as a
/// [`Value`] would be (so the errors are the same), and the last of repeated keys wins.
enum AllocateBody {
    /// The body is not an object: its [`kind`].
    NotObject(&'static str),
    /// The body is an object without `context`, or with a `null` one.
    NoContext,
    /// `context` is not an object: its [`kind`].
    NotContext(&'static str),
    /// The context.
    Context(Context),
}

/// The value of the body's `context` member.
enum ContextField {
    Null,
    Object(Context),
    Other(&'static str),
}

impl AllocateBody {
    fn into_context(self) -> Result<Context, ApiError> {
        match self {
            AllocateBody::NotObject(kind) => Err(ApiError::Parse(format!(
                "request body must be a JSON object with a `context` object, not {kind}"
            ))),
            AllocateBody::NoContext => Err(ApiError::InvalidContext(
                "request body has no `context` object".to_owned(),
            )),
            AllocateBody::NotContext(kind) => Err(ApiError::InvalidContext(format!(
                "`context` must be a JSON object, not {kind}"
            ))),
            AllocateBody::Context(ctx) => Ok(ctx),
        }
    }
}

/// Visits any JSON value: `map` decides what an object becomes, anything else is its [`kind`]
/// (arrays are drained as [`Value`]s so they fail exactly where a `Value` would).
macro_rules! visit_non_objects {
    ($out:ty, $other:expr, $null:expr) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<$out, E> {
            Ok($other("a boolean"))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<$out, E> {
            Ok($other("a number"))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<$out, E> {
            Ok($other("a number"))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<$out, E> {
            Ok($other("a number"))
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<$out, E> {
            Ok($other("a string"))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<$out, E> {
            Ok($null)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<$out, E> {
            Ok($null)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<$out, A::Error> {
            while seq.next_element::<Value>()?.is_some() {}
            Ok($other("an array"))
        }
    };
}

impl<'de> serde::Deserialize<'de> for AllocateBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> serde::de::Visitor<'de> for Top {
            type Value = AllocateBody;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            visit_non_objects!(
                AllocateBody,
                AllocateBody::NotObject,
                AllocateBody::NotObject("null")
            );
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<AllocateBody, A::Error> {
                let mut context = ContextField::Null;
                while let Some(is_context) = map.next_key::<IsContext>()? {
                    if is_context.0 {
                        context = map.next_value::<ContextField>()?;
                    } else {
                        map.next_value::<Value>()?;
                    }
                }
                Ok(match context {
                    ContextField::Null => AllocateBody::NoContext,
                    ContextField::Object(ctx) => AllocateBody::Context(ctx),
                    ContextField::Other(kind) => AllocateBody::NotContext(kind),
                })
            }
        }
        d.deserialize_any(Top)
    }
}

impl<'de> serde::Deserialize<'de> for ContextField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Field;
        impl<'de> serde::de::Visitor<'de> for Field {
            type Value = ContextField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            visit_non_objects!(ContextField, ContextField::Other, ContextField::Null);
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ContextField, A::Error> {
                let mut attrs: Vec<(Box<str>, Value)> = Vec::with_capacity(8);
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    attrs.push((key.into_boxed_str(), value));
                }
                // Sorted by key, the last of repeated keys kept: as from a JSON object.
                Ok(ContextField::Object(attrs.into_iter().collect()))
            }
        }
        d.deserialize_any(Field)
    }
}

/// Whether an object key is `context` (compared in place, no allocation).
struct IsContext(bool);

impl<'de> serde::Deserialize<'de> for IsContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = IsContext;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsContext, E> {
                Ok(IsContext(v == "context"))
            }
        }
        d.deserialize_str(Key)
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
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json (the header is missing)".to_owned(),
        ));
    };
    // Valid UTF-8 (every real client) is checked in place; anything else as its lossy decoding.
    let ok = match std::str::from_utf8(value.as_bytes()) {
        Ok(ct) => is_json_type(ct),
        Err(_) => is_json_type(&String::from_utf8_lossy(value.as_bytes())),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/json, not `{}`",
            String::from_utf8_lossy(value.as_bytes())
        )))
    }
}

/// Whether a media type (parameters allowed) is `application/json` or `application/*+json`.
fn is_json_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence
                .get(essence.len() - 5..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
            && essence
                .get(..12)
                .is_some_and(|s| s.eq_ignore_ascii_case("application/")))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed decode against the reference (`Value`, then [`context_of`]).
    fn same(body: &[u8]) {
        let fast = parse_json::<AllocateBody>(body).and_then(AllocateBody::into_context);
        let reference = parse_json::<Value>(body).and_then(context_of);
        assert_eq!(
            format!("{fast:?}"),
            format!("{reference:?}"),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }

    #[test]
    fn typed_decode_matches_value_decode() {
        let seeds: [&[u8]; 22] = [
            br#"{"context":{"targetingKey":"u","device_id":"d","n":1.5,"o":{"a":[1,null]}}}"#,
            br#"{"context":{"b":1,"a":2,"b":3},"x":[1e400]}"#,
            br#"{"x":[1e400],"context":{"targetingKey":"u"}}"#,
            br#"[1e400]"#,
            br#"[1, {"a": tru}]"#,
            br#"{"context":{"targetingKey":"u"},"context":{}}"#,
            br#"{"context":{"targetingKey":"u"},"context":null}"#,
            br#"{"context":null,"context":{"k":"v"}}"#,
            br#"{"cont\u0065xt":{"k":"v"}}"#,
            br#"{"context":[1,2]}"#,
            br#"{"context":"s"}"#,
            br#"{"context":true}"#,
            br#"{"context":-1}"#,
            br#"{"context":18446744073709551616}"#,
            b"null",
            b"\"str\"",
            b"42",
            b"false",
            b"",
            b"  \n",
            b"{} x",
            b"\xff\xfe\x00{",
        ];
        for seed in seeds {
            same(seed);
        }
        let mut deep = vec![b'['; 200];
        deep.extend_from_slice(&[b']'; 200]);
        same(&deep);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..20_000 {
            let mut body = seeds[i % 8].to_vec();
            for _ in 0..(1 + x % 3) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if body.is_empty() {
                    break;
                }
                let at = (x as usize >> 3) % body.len();
                match x % 3 {
                    0 => body[at] = b"{}[]\",:\\u0e1-n "[(x as usize >> 20) % 15],
                    1 => body.truncate(at),
                    _ => body.insert(at, b"{}[]\",:\\u0e1-n "[(x as usize >> 20) % 15]),
                }
            }
            same(&body);
        }
    }
}
