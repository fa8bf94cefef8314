//! `ApiError`: the one error type of the request path, with its HTTP and gRPC mappings.
//!
//! Clients get a stable code and a specific message naming the problem; a client mistake is
//! never a 500. Internals go to logs, not to response bodies.

use allot::ConfigErrors;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::metadata::MetadataValue;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No config has been accepted yet (readiness is false).
    #[error("no config loaded yet")]
    NotReady,
    /// The request body or message could not be decoded.
    #[error("{0}")]
    Parse(String),
    /// The context is unusable (too many keys, bad unit type, ...).
    #[error("{0}")]
    InvalidContext(String),
    /// The context has none of the unit keys the config hashes.
    #[error("context has no unit: expected a string attribute {0}")]
    UnitMissing(String),
    /// An unknown flag key.
    #[error("flag `{0}` not found")]
    FlagNotFound(String),
    /// A flag asked for as the wrong type.
    #[error("flag `{key}` is {actual}, not {requested}")]
    TypeMismatch {
        /// Flag key.
        key: String,
        /// The flag's type.
        actual: &'static str,
        /// The type asked for.
        requested: &'static str,
    },
    /// A config document was rejected; carries every error with its path.
    #[error("{0}")]
    Config(ConfigErrors),
    /// `If-Match` did not name the serving revision.
    #[error("revision {current} is serving, not {expected}")]
    RevisionMismatch {
        /// The revision the client expected.
        expected: String,
        /// The serving revision.
        current: u64,
    },
    /// No or malformed credentials.
    #[error("missing or malformed bearer token")]
    Unauthorized,
    /// Valid-looking credentials that do not grant this operation.
    #[error("token does not grant this operation")]
    Forbidden,
    /// An evaluation request without a configured client token (`--client-tokens`). The
    /// message is the same for a missing and a wrong token.
    #[error(
        "a valid client token is required: send `Authorization: Bearer <token>` (HTTP `X-API-Key: <token>` also works)"
    )]
    ClientToken,
    /// The process is at `--max-concurrency`; the request was shed instead of queued.
    #[error("the server is at its concurrency limit; retry shortly")]
    Overloaded,
    /// The process is saturated (its scheduling lag stayed above `--shed-lag`); the request
    /// was shed before its body was read.
    #[error("the server is saturated and shedding load; retry shortly")]
    Saturated,
    /// The connection is past `--max-connections` of its port; the server answers its
    /// requests with this and closes it.
    #[error("the server is at its connection limit; retry shortly on a new connection")]
    TooManyConnections,
    /// The request did not complete within `--request-timeout` (or its `grpc-timeout`).
    #[error("the request did not complete within {ms} ms")]
    Timeout {
        /// The deadline that passed, in milliseconds.
        ms: u64,
    },
    /// Admin writes are refused because no admin token is configured.
    #[error(
        "admin writes are disabled: start the server with --admin-token or ALLOT_ADMIN_TOKEN to enable them"
    )]
    AdminDisabled,
    /// The request body is larger than the endpoint accepts.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body has a content type the endpoint does not read.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No route at this path (the flag-level 404 is [`ApiError::FlagNotFound`]).
    #[error("no route for `{0}`; see the API reference in the README")]
    RouteNotFound(String),
    /// The route exists, but not for this method.
    #[error("method {method} is not allowed on `{path}`")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// A server-side failure (I/O); the message is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

/// One config error as sent to clients.
#[derive(Debug, Serialize)]
pub struct ConfigErrorBody {
    /// Path of the value at fault.
    pub path: String,
    /// The reason.
    pub message: String,
}

// === impl ApiError ===

impl ApiError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotReady => "NOT_READY",
            ApiError::Parse(_) => "PARSE_ERROR",
            ApiError::InvalidContext(_) => "INVALID_CONTEXT",
            ApiError::UnitMissing(_) => "TARGETING_KEY_MISSING",
            ApiError::FlagNotFound(_) => "FLAG_NOT_FOUND",
            ApiError::TypeMismatch { .. } => "TYPE_MISMATCH",
            ApiError::Config(_) => "INVALID_CONFIG",
            ApiError::RevisionMismatch { .. } => "REVISION_MISMATCH",
            ApiError::Unauthorized | ApiError::ClientToken => "UNAUTHORIZED",
            ApiError::Overloaded | ApiError::Saturated | ApiError::TooManyConnections => {
                "OVERLOADED"
            }
            ApiError::Timeout { .. } => "TIMEOUT",
            ApiError::Forbidden => "FORBIDDEN",
            ApiError::AdminDisabled => "ADMIN_DISABLED",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::RouteNotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::Internal(_) => "INTERNAL",
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotReady
            | ApiError::Overloaded
            | ApiError::Saturated
            | ApiError::TooManyConnections
            | ApiError::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Parse(_)
            | ApiError::InvalidContext(_)
            | ApiError::UnitMissing(_)
            | ApiError::TypeMismatch { .. } => StatusCode::BAD_REQUEST,
            ApiError::FlagNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RevisionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Unauthorized | ApiError::ClientToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::AdminDisabled => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The headers this error's response carries besides the body: `WWW-Authenticate` on 401,
    /// `Retry-After: 1` when the request was shed.
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        if self.status() == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.is_shed() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
    }

    /// Whether the request was shed to protect the server (answered 503 + `Retry-After: 1`,
    /// gRPC `RESOURCE_EXHAUSTED`).
    pub fn is_shed(&self) -> bool {
        matches!(
            self,
            ApiError::Overloaded | ApiError::Saturated | ApiError::TooManyConnections
        )
    }

    /// The config errors, for bodies that list them.
    pub fn config_errors(&self) -> Vec<ConfigErrorBody> {
        match self {
            ApiError::Config(errs) => errs
                .errors()
                .iter()
                .map(|e| ConfigErrorBody {
                    path: e.path.clone(),
                    message: e.kind.to_string(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl From<ConfigErrors> for ApiError {
    fn from(e: ConfigErrors) -> Self {
        ApiError::Config(e)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        use tonic::Code;
        let code = match &e {
            ApiError::NotReady => Code::Unavailable,
            ApiError::Parse(_)
            | ApiError::InvalidContext(_)
            | ApiError::UnitMissing(_)
            | ApiError::TypeMismatch { .. }
            | ApiError::Config(_) => Code::InvalidArgument,
            ApiError::FlagNotFound(_) => Code::NotFound,
            ApiError::RevisionMismatch { .. } => Code::FailedPrecondition,
            ApiError::Unauthorized | ApiError::ClientToken => Code::Unauthenticated,
            ApiError::Overloaded | ApiError::Saturated | ApiError::TooManyConnections => {
                Code::ResourceExhausted
            }
            ApiError::Timeout { .. } => Code::DeadlineExceeded,
            ApiError::Forbidden | ApiError::AdminDisabled => Code::PermissionDenied,
            ApiError::PayloadTooLarge { .. } => Code::ResourceExhausted,
            ApiError::UnsupportedMediaType(_) => Code::InvalidArgument,
            ApiError::RouteNotFound(_) => Code::NotFound,
            ApiError::MethodNotAllowed { .. } => Code::Unimplemented,
            ApiError::Internal(_) => Code::Internal,
        };
        let mut status = tonic::Status::new(code, e.to_string());
        if e.is_shed() {
            // gRPC's counterpart of `Retry-After`, read by clients with a retry policy.
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", MetadataValue::from_static("1000"));
        }
        status
    }
}

/// The JSON error body: `{"code", "message"[, "errors"]}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// [`ApiError::code`].
    pub code: &'static str,
    /// A message naming the problem.
    pub message: String,
    /// Every config error with its path (only for `INVALID_CONFIG`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ConfigErrorBody>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = ErrorBody {
            code: self.code(),
            message: match &self {
                // The display form lists the errors on extra lines; the body has them as a list.
                ApiError::Config(errs) => format!(
                    "config rejected ({} error{})",
                    errs.errors().len(),
                    if errs.errors().len() == 1 { "" } else { "s" }
                ),
                other => other.to_string(),
            },
            errors: self.config_errors(),
        };
        let mut res = (status, axum::Json(body)).into_response();
        self.add_headers(res.headers_mut());
        res
    }
}
