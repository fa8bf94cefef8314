//! The flagd evaluation gRPC API (`flagd.evaluation.v1.Service` and `v2`), so OpenFeature
//! flagd providers in RPC mode can use allot in place of flagd.
//!
//! `ResolveBoolean/String/Int/Float/Object` evaluate one flag (integer flags also answer
//! `ResolveFloat`), `ResolveAll` every flag that evaluates without error. Errors are gRPC
//! statuses as flagd sends them: `NOT_FOUND` for an unknown flag, `INVALID_ARGUMENT` for a
//! type mismatch, `FAILED_PRECONDITION` when the engine cannot evaluate the flag for this
//! context (a rollout without its unit: the message starts with `TARGETING_KEY_MISSING`),
//! `UNAVAILABLE` before the first config. Response `metadata` carries `experiment`, `cell` and
//! `layer` when an experiment decided, and `revision`; the `baggage` response metadata holds
//! the trace stamp as on `allot.v1`. `EventStream` sends `provider_ready` at once,
//! `keep_alive` every [`KEEP_ALIVE`], and `configuration_change` with the added, changed and
//! removed flag keys whenever the config swaps. Like [`crate::grpc`], this module only maps
//! messages onto [`Service`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::{Config, Context, FlagType, Reason, Resolution, Snapshot};
use allot_proto::convert::{json_map_to_struct, struct_to_json_map};
use allot_proto::flagd::evaluation::{v1, v2};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::grpc::{MAX_MESSAGE, TRACEPARENT, incoming_baggage, set_baggage};
use crate::metrics::Transport;
use crate::service::{RequestMeta, Service};

/// How often an idle `EventStream` sends `keep_alive`.
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The flagd evaluation service (both versions share it): a thin mapping onto [`Service`].
#[derive(Debug, Clone)]
pub struct Flagd {
    service: Service,
    /// Flips to `true` on server shutdown; open `EventStream`s then end.
    shutdown: watch::Receiver<bool>,
}

/// `flagd.evaluation.v1.Service` over [`Flagd`].
#[derive(Debug, Clone)]
pub struct FlagdV1(pub Flagd);

/// `flagd.evaluation.v2.Service` over [`Flagd`].
#[derive(Debug, Clone)]
pub struct FlagdV2(pub Flagd);

/// The `flagd.evaluation.v1.Service` server over `service`.
pub fn v1_server(
    service: Service,
    shutdown: watch::Receiver<bool>,
) -> v1::service_server::ServiceServer<FlagdV1> {
    v1::service_server::ServiceServer::new(FlagdV1(Flagd::new(service, shutdown)))
        .max_decoding_message_size(MAX_MESSAGE)
}

/// The `flagd.evaluation.v2.Service` server over `service`.
pub fn v2_server(
    service: Service,
    shutdown: watch::Receiver<bool>,
) -> v2::service_server::ServiceServer<FlagdV2> {
    v2::service_server::ServiceServer::new(FlagdV2(Flagd::new(service, shutdown)))
        .max_decoding_message_size(MAX_MESSAGE)
}

/// One flag's answer, owned, with its value checked against the requested type.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The served value.
    pub value: Value,
    /// The variant served.
    pub variant: String,
    /// The OpenFeature reason.
    pub reason: &'static str,
    /// `experiment`, `cell`, `layer` (when an experiment decided) and `revision`.
    pub metadata: prost_types::Struct,
}

/// `ResolveAll`'s flags by key and its response `metadata`.
type AllFlags<F> = (std::collections::HashMap<String, F>, prost_types::Struct);

/// The flagd spelling of a flag type, for error messages.
fn type_name(t: FlagType) -> &'static str {
    match t {
        FlagType::Bool => "boolean",
        FlagType::String => "string",
        FlagType::Int => "integer",
        FlagType::Float => "float",
        FlagType::Object => "object",
    }
}

fn flag_metadata(r: &Resolution<'_>, revision: u64) -> prost_types::Struct {
    let mut m = Map::new();
    if let Some(a) = &r.assignment {
        m.insert("experiment".into(), json!(a.experiment));
        m.insert("cell".into(), json!(a.cell));
        m.insert("layer".into(), json!(a.layer));
    }
    m.insert("revision".into(), json!(revision));
    json_map_to_struct(&m)
}

/// The engine's per-flag error as a status (`FAILED_PRECONDITION`, the OpenFeature code first).
fn engine_error(r: &Resolution<'_>) -> Option<Status> {
    if r.reason != Reason::Error {
        return None;
    }
    let code = r.error.map_or("GENERAL", allot::ErrorCode::as_str);
    Some(Status::failed_precondition(format!(
        "{code}: flag `{}` cannot be evaluated for this context (does it carry the unit, e.g. `targetingKey`, as a 1-{} byte string?)",
        r.key,
        allot::id::MAX_UNIT_LEN
    )))
}

fn as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

fn object_struct(v: &Value) -> prost_types::Struct {
    match v {
        Value::Object(map) => json_map_to_struct(map),
        _ => prost_types::Struct::default(),
    }
}

// === impl Flagd ===

impl Flagd {
    /// The service; `shutdown` flipping to `true` ends open `EventStream`s.
    pub fn new(service: Service, shutdown: watch::Receiver<bool>) -> Self {
        Self { service, shutdown }
    }

    fn observe(&self, method: &'static str, code: tonic::Code, start: Instant) {
        if let Some(metrics) = self.service.metrics() {
            metrics.observe_request(Transport::Grpc, method, code as u16, start.elapsed());
        }
    }

    /// Evaluates `key` for `context` as type `want` (an integer flag also satisfies
    /// [`FlagType::Float`]); the response carries the merged `baggage`.
    pub fn resolve<T>(
        &self,
        method: &'static str,
        metadata: &MetadataMap,
        key: String,
        context: Option<prost_types::Struct>,
        want: FlagType,
        build: impl FnOnce(Resolved) -> T,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let ctx = Context::from(context.as_ref().map(struct_to_json_map).unwrap_or_default());
        let incoming = incoming_baggage(metadata);
        let traceparent = metadata.get(TRACEPARENT).and_then(|v| v.to_str().ok());
        let keys = [key];
        let result = self
            .service
            .evaluate_with(
                &ctx,
                &keys,
                &incoming,
                RequestMeta::grpc(traceparent),
                |view| {
                    let r = view
                        .flags
                        .first()
                        .ok_or_else(|| Status::from(ApiError::FlagNotFound(keys[0].clone())))?;
                    let fits =
                        r.kind == want || (want == FlagType::Float && r.kind == FlagType::Int);
                    if !fits {
                        return Err(Status::from(ApiError::TypeMismatch {
                            key: r.key.to_owned(),
                            actual: type_name(r.kind),
                            requested: type_name(want),
                        }));
                    }
                    if let Some(status) = engine_error(r) {
                        return Err(status);
                    }
                    Ok((
                        Resolved {
                            value: r.value.clone(),
                            variant: r.variant.to_owned(),
                            reason: r.reason.as_str(),
                            metadata: flag_metadata(r, view.snapshot.revision()),
                        },
                        view.baggage.clone(),
                    ))
                },
            )
            .map_err(Status::from)
            .and_then(|inner| inner)
            .map(|(resolved, baggage)| {
                let mut response = Response::new(build(resolved));
                set_baggage(response.metadata_mut(), &baggage);
                response
            });
        self.observe(
            method,
            result
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok),
            start,
        );
        result
    }

    /// Every flag that evaluates without error for `context`, mapped by `each`, with the
    /// response `metadata` `{revision}`.
    fn resolve_all<F>(
        &self,
        metadata: &MetadataMap,
        context: Option<prost_types::Struct>,
        each: impl Fn(&Resolution<'_>, prost_types::Struct) -> F,
    ) -> Result<Response<AllFlags<F>>, Status> {
        let start = Instant::now();
        let ctx = Context::from(context.as_ref().map(struct_to_json_map).unwrap_or_default());
        let incoming = incoming_baggage(metadata);
        let traceparent = metadata.get(TRACEPARENT).and_then(|v| v.to_str().ok());
        let result = self
            .service
            .evaluate_with(
                &ctx,
                &[],
                &incoming,
                RequestMeta::grpc(traceparent),
                |view| {
                    let revision = view.snapshot.revision();
                    let flags = view
                        .flags
                        .iter()
                        .filter(|r| r.reason != Reason::Error)
                        .map(|r| (r.key.to_owned(), each(r, flag_metadata(r, revision))))
                        .collect();
                    let mut meta = Map::new();
                    meta.insert("revision".into(), json!(revision));
                    (flags, json_map_to_struct(&meta), view.baggage.clone())
                },
            )
            .map_err(Status::from)
            .map(|(flags, meta, baggage)| {
                let mut response = Response::new((flags, meta));
                set_baggage(response.metadata_mut(), &baggage);
                response
            });
        self.observe(
            "flagd.ResolveAll",
            result
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok),
            start,
        );
        result
    }

    /// Starts one `EventStream`: `provider_ready` now, then `configuration_change` and
    /// `keep_alive` until the client goes away or the server shuts down.
    fn events<T: Send + 'static>(
        &self,
        make: fn(&'static str, Option<prost_types::Struct>) -> T,
    ) -> ReceiverStream<Result<T, Status>> {
        let (tx, rx) = mpsc::channel(4);
        let updates = self.service.store().subscribe();
        tokio::spawn(stream_events(updates, tx, self.shutdown.clone(), make));
        ReceiverStream::new(rx)
    }
}

/// Feeds one `EventStream`.
async fn stream_events<T: Send + 'static>(
    mut updates: watch::Receiver<Option<Arc<Snapshot>>>,
    tx: mpsc::Sender<Result<T, Status>>,
    mut shutdown: watch::Receiver<bool>,
    make: fn(&'static str, Option<prost_types::Struct>) -> T,
) {
    let mut current = updates.borrow_and_update().clone();
    if tx.send(Ok(make("provider_ready", None))).await.is_err() {
        return;
    }
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = updates.borrow_and_update().clone();
                let Some(snapshot) = next.clone() else { continue };
                let changes = changed_flags(current.as_deref().map(Snapshot::config), snapshot.config());
                current = next;
                if changes.is_empty() {
                    continue;
                }
                make("configuration_change", Some(change_data(&changes)))
            }
            _ = keep_alive.tick() => make("keep_alive", None),
            () = tx.closed() => return,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        tokio::select! {
            sent = tx.send(Ok(event)) => if sent.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        keep_alive.reset();
    }
}

/// The `data` of a `configuration_change`: `{"flags": {key: {"type": "write"|"update"|"delete",
/// "flagKey": key}}}` (flagd's shape).
fn change_data(changes: &BTreeMap<String, &'static str>) -> prost_types::Struct {
    let flags: Map<String, Value> = changes
        .iter()
        .map(|(k, t)| (k.clone(), json!({"type": t, "flagKey": k})))
        .collect();
    let mut data = Map::new();
    data.insert("flags".into(), Value::Object(flags));
    json_map_to_struct(&data)
}

/// What decides a flag in `config`: its definition, the experiments that set it (with their
/// layers), plus the holdouts and segments that can change those decisions. Equal
/// fingerprints mean every context gets the same answer.
fn fingerprint(config: &Config, key: &str) -> Option<Value> {
    let flag = config.flags.iter().find(|f| f.key == key)?;
    let experiments: Vec<_> = config
        .experiments
        .iter()
        .filter(|e| e.cells.iter().any(|c| c.flags.contains_key(key)))
        .collect();
    let layers: Vec<_> = config
        .layers
        .iter()
        .filter(|l| experiments.iter().any(|e| e.layer == l.id))
        .collect();
    Some(json!({
        "flag": flag,
        "experiments": experiments,
        "layers": layers,
        "holdouts": if experiments.is_empty() { json!([]) } else { json!(config.holdouts) },
        "segments": config.segments,
    }))
}

/// The flags whose answers may differ between `old` and `new`: `write` (added), `update`
/// (changed) or `delete` (removed), by key. Everything is `write` when there was no `old`.
pub fn changed_flags(old: Option<&Config>, new: &Config) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    for flag in &new.flags {
        let before = old.and_then(|o| fingerprint(o, &flag.key));
        match before {
            None => {
                out.insert(flag.key.clone(), "write");
            }
            Some(before) if fingerprint(new, &flag.key).as_ref() != Some(&before) => {
                out.insert(flag.key.clone(), "update");
            }
            Some(_) => {}
        }
    }
    if let Some(old) = old {
        for flag in &old.flags {
            if !new.flags.iter().any(|f| f.key == flag.key) {
                out.insert(flag.key.clone(), "delete");
            }
        }
    }
    out
}

/// Implements one version's `Service` trait; the two differ only in whether values and
/// variants are optional in responses (`$some`) and in the integer `AnyFlag` encoding.
macro_rules! flagd_service {
    ($wrapper:ident, $pb:ident, $some:expr, $name:literal) => {
        #[tonic::async_trait]
        impl $pb::service_server::Service for $wrapper {
            async fn resolve_all(
                &self,
                request: Request<$pb::ResolveAllRequest>,
            ) -> Result<Response<$pb::ResolveAllResponse>, Status> {
                let (metadata, _, message) = request.into_parts();
                let response = self.0.resolve_all(&metadata, message.context, |r, meta| {
                    use $pb::any_flag::Value as V;
                    let value = match r.kind {
                        FlagType::Bool => r.value.as_bool().map(V::BoolValue),
                        FlagType::String => r.value.as_str().map(|s| V::StringValue(s.to_owned())),
                        FlagType::Int | FlagType::Float => r.value.as_f64().map(V::DoubleValue),
                        FlagType::Object => Some(V::ObjectValue(object_struct(r.value))),
                    };
                    $pb::AnyFlag {
                        reason: r.reason.as_str().to_owned(),
                        variant: $some(r.variant.to_owned()),
                        metadata: Some(meta),
                        value,
                    }
                })?;
                Ok(response.map(|(flags, meta)| $pb::ResolveAllResponse {
                    flags,
                    metadata: Some(meta),
                }))
            }

            async fn resolve_boolean(
                &self,
                request: Request<$pb::ResolveBooleanRequest>,
            ) -> Result<Response<$pb::ResolveBooleanResponse>, Status> {
                let (metadata, _, m) = request.into_parts();
                self.0.resolve(
                    concat!($name, ".ResolveBoolean"),
                    &metadata,
                    m.flag_key,
                    m.context,
                    FlagType::Bool,
                    |r| $pb::ResolveBooleanResponse {
                        value: $some(r.value.as_bool().unwrap_or_default()),
                        reason: r.reason.to_owned(),
                        variant: $some(r.variant),
                        metadata: Some(r.metadata),
                    },
                )
            }

            async fn resolve_string(
                &self,
                request: Request<$pb::ResolveStringRequest>,
            ) -> Result<Response<$pb::ResolveStringResponse>, Status> {
                let (metadata, _, m) = request.into_parts();
                self.0.resolve(
                    concat!($name, ".ResolveString"),
                    &metadata,
                    m.flag_key,
                    m.context,
                    FlagType::String,
                    |r| $pb::ResolveStringResponse {
                        value: $some(r.value.as_str().unwrap_or_default().to_owned()),
                        reason: r.reason.to_owned(),
                        variant: $some(r.variant),
                        metadata: Some(r.metadata),
                    },
                )
            }

            async fn resolve_float(
                &self,
                request: Request<$pb::ResolveFloatRequest>,
            ) -> Result<Response<$pb::ResolveFloatResponse>, Status> {
                let (metadata, _, m) = request.into_parts();
                self.0.resolve(
                    concat!($name, ".ResolveFloat"),
                    &metadata,
                    m.flag_key,
                    m.context,
                    FlagType::Float,
                    |r| $pb::ResolveFloatResponse {
                        value: $some(r.value.as_f64().unwrap_or_default()),
                        reason: r.reason.to_owned(),
                        variant: $some(r.variant),
                        metadata: Some(r.metadata),
                    },
                )
            }

            async fn resolve_int(
                &self,
                request: Request<$pb::ResolveIntRequest>,
            ) -> Result<Response<$pb::ResolveIntResponse>, Status> {
                let (metadata, _, m) = request.into_parts();
                self.0.resolve(
                    concat!($name, ".ResolveInt"),
                    &metadata,
                    m.flag_key,
                    m.context,
                    FlagType::Int,
                    |r| $pb::ResolveIntResponse {
                        value: $some(as_i64(&r.value).unwrap_or_default()),
                        reason: r.reason.to_owned(),
                        variant: $some(r.variant),
                        metadata: Some(r.metadata),
                    },
                )
            }

            async fn resolve_object(
                &self,
                request: Request<$pb::ResolveObjectRequest>,
            ) -> Result<Response<$pb::ResolveObjectResponse>, Status> {
                let (metadata, _, m) = request.into_parts();
                self.0.resolve(
                    concat!($name, ".ResolveObject"),
                    &metadata,
                    m.flag_key,
                    m.context,
                    FlagType::Object,
                    |r| $pb::ResolveObjectResponse {
                        value: Some(object_struct(&r.value)),
                        reason: r.reason.to_owned(),
                        variant: $some(r.variant),
                        metadata: Some(r.metadata),
                    },
                )
            }

            type EventStreamStream = ReceiverStream<Result<$pb::EventStreamResponse, Status>>;

            async fn event_stream(
                &self,
                _request: Request<$pb::EventStreamRequest>,
            ) -> Result<Response<Self::EventStreamStream>, Status> {
                Ok(Response::new(self.0.events(|kind, data| {
                    $pb::EventStreamResponse {
                        r#type: kind.to_owned(),
                        data,
                    }
                })))
            }
        }
    };
}

fn same<T>(v: T) -> T {
    v
}

flagd_service!(FlagdV1, v1, same, "flagd.v1");
flagd_service!(FlagdV2, v2, Some, "flagd.v2");
