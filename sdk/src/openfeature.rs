//! An OpenFeature provider that evaluates with the embedded engine (feature `openfeature`).
//!
//! [`Provider`] implements the `open-feature` crate's [`FeatureProvider`] over a
//! [`SnapshotSource`]: a fixed [`Snapshot`] ([`Provider::new`]), a following
//! `allot::Client` (`Provider::from_client`, feature `client`), or any type of yours that
//! hands out the serving snapshot. Every evaluation is [`Snapshot::resolve`] in process: no
//! network, no cache, the same answer as the server's for the same (config, context).
//!
//! ```
//! # async fn demo() {
//! use open_feature::{EvaluationContext, OpenFeature};
//!
//! let snapshot = allot::compile_str(r#"
//! flags:
//!   - { key: prefetch, type: bool, variants: { "on": true, "off": false }, default: "on" }
//! "#, 1).unwrap();
//! let mut api = OpenFeature::singleton_mut().await;
//! api.set_provider(allot::openfeature::Provider::new(snapshot)).await;
//! let client = api.create_client();
//! let ctx = EvaluationContext::default().with_targeting_key("member-1");
//! assert!(client.get_bool_value("prefetch", Some(&ctx), None).await.unwrap());
//! # }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo());
//! ```
//!
//! The mapping follows the OFREP handler of `allot-server`:
//!
//! - value, variant, and reason (`STATIC`, `DEFAULT`, `TARGETING_MATCH`, `SPLIT`, `DISABLED`);
//! - flag metadata: `experiment`, `cell`, `layer` when an experiment cell decided, and
//!   `revision` (the snapshot's) always;
//! - an integer flag also answers a float request; every other type difference is
//!   `TYPE_MISMATCH`;
//! - an unknown key is `FLAG_NOT_FOUND`; a split whose unit the context lacks is
//!   `TARGETING_KEY_MISSING`; a unit that is not a string of 1 to 256 bytes, or a context field
//!   the engine cannot read (a `Struct` of a type other than `StructValue`, `Value` or
//!   `serde_json::Value`), is `INVALID_CONTEXT`; a served value OpenFeature cannot represent
//!   (JSON `null` anywhere in an object flag, which OpenFeature's `Value` has no form for) is
//!   `PARSE_ERROR`; no snapshot yet is `PROVIDER_NOT_READY`.
//!
//! Context conversion: `targeting_key` becomes `targetingKey`; custom fields become JSON
//! (a `DateTime` its RFC 3339 string, a non-finite float absent).
//!
//! This module converts types and maps errors only: evaluation is the engine's.

use std::sync::Arc;

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode,
    EvaluationReason, EvaluationResult, FlagMetadata, StructValue, async_trait,
};
use serde_json::{Map, Number, Value};

use crate::snapshot::{ErrorCode, Reason, Resolution};
use crate::{Context, FlagType, Snapshot, TARGETING_KEY};

/// The provider name in OpenFeature's provider metadata.
pub const PROVIDER_NAME: &str = "allot";

/// Where a [`Provider`] gets the snapshot it evaluates against.
///
/// Implemented for [`Snapshot`], for `Arc` of any source, and (feature `client`) for
/// `allot::Client`. Implement it for a type of yours that holds the serving snapshot (an
/// `ArcSwap<Snapshot>` a service reloads, say).
pub trait SnapshotSource: Send + Sync + 'static {
    /// Runs `f` on the snapshot to evaluate against; `None` while there is none yet.
    fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> Option<R>;
}

/// An OpenFeature [`FeatureProvider`] evaluating flags in process with the allot engine.
///
/// Cheap to build; evaluations take `&self` and do no I/O. See the [module docs](self) for
/// how answers and errors map to OpenFeature.
#[derive(Debug)]
pub struct Provider<S = Arc<Snapshot>> {
    source: S,
    metadata: ProviderMetadata,
}

// === impl Provider ===

impl Provider<Arc<Snapshot>> {
    /// A provider answering from one fixed snapshot.
    pub fn new(snapshot: impl Into<Arc<Snapshot>>) -> Self {
        Self::from_source(snapshot.into())
    }
}

#[cfg(feature = "client")]
impl Provider<crate::Client> {
    /// A provider answering from the snapshot `client` is serving at each evaluation, so it
    /// follows the server's config changes. Before the client has a config its status is
    /// `NotReady` and evaluations fail with `PROVIDER_NOT_READY`; await
    /// [`crate::Client::wait_ready`] first to avoid that.
    pub fn from_client(client: crate::Client) -> Self {
        Self::from_source(client)
    }
}

impl<S: SnapshotSource> Provider<S> {
    /// A provider over any [`SnapshotSource`].
    pub fn from_source(source: S) -> Self {
        Self {
            source,
            metadata: ProviderMetadata::new(PROVIDER_NAME),
        }
    }

    /// The source the provider reads snapshots from.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Evaluates `key` for `ctx` and converts the served value with `convert`, which returns
    /// `Err(TypeMismatch)` for a flag of another type and `Err(ParseError)` for a value
    /// OpenFeature cannot hold.
    fn evaluate<T>(
        &self,
        key: &str,
        ctx: &EvaluationContext,
        convert: impl FnOnce(FlagType, &Value) -> Result<T, Unfit>,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let ctx = context(ctx)?;
        self.source
            .with_snapshot(|s| {
                let r = s.resolve(key, &ctx).map_err(|e| EvaluationError {
                    code: EvaluationErrorCode::FlagNotFound,
                    message: Some(e.to_string()),
                })?;
                // A type mismatch is the caller's error whatever the context: report it first.
                let value = match convert(r.kind, r.value) {
                    Err(unfit @ Unfit::Type(_)) => return Err(unfit.error(&r)),
                    other => other,
                };
                check(&r)?;
                let value = value.map_err(|unfit| unfit.error(&r))?;
                Ok(ResolutionDetails {
                    value,
                    variant: Some(r.variant.to_owned()),
                    reason: Some(reason(r.reason)),
                    flag_metadata: Some(metadata(&r, s.revision())),
                })
            })
            .unwrap_or_else(|| {
                Err(EvaluationError {
                    code: EvaluationErrorCode::ProviderNotReady,
                    message: Some("allot: no config loaded yet".to_owned()),
                })
            })
    }
}

#[async_trait]
impl<S: SnapshotSource> FeatureProvider for Provider<S> {
    fn status(&self) -> ProviderStatus {
        match self.source.with_snapshot(|_| ()) {
            Some(()) => ProviderStatus::Ready,
            None => ProviderStatus::NotReady,
        }
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.evaluate(flag_key, ctx, |kind, v| match kind {
            FlagType::Bool => v.as_bool().ok_or(Unfit::Value),
            _ => Err(Unfit::Type("bool")),
        })
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.evaluate(flag_key, ctx, |kind, v| match kind {
            FlagType::Int => as_int(v).ok_or(Unfit::Value),
            _ => Err(Unfit::Type("int")),
        })
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        // Integer flags answer float requests too, as over OFREP and flagd.
        self.evaluate(flag_key, ctx, |kind, v| match kind {
            FlagType::Float | FlagType::Int => v.as_f64().ok_or(Unfit::Value),
            _ => Err(Unfit::Type("float")),
        })
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.evaluate(flag_key, ctx, |kind, v| match kind {
            FlagType::String => v.as_str().map(str::to_owned).ok_or(Unfit::Value),
            _ => Err(Unfit::Type("string")),
        })
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.evaluate(flag_key, ctx, |kind, v| match (kind, v) {
            (FlagType::Object, Value::Object(map)) => to_struct(map).ok_or(Unfit::Value),
            (FlagType::Object, _) => Err(Unfit::Value),
            _ => Err(Unfit::Type("object")),
        })
    }
}

// === impl SnapshotSource ===

impl SnapshotSource for Snapshot {
    fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> Option<R> {
        Some(f(self))
    }
}

impl<S: SnapshotSource> SnapshotSource for Arc<S> {
    fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> Option<R> {
        (**self).with_snapshot(f)
    }
}

#[cfg(feature = "client")]
impl SnapshotSource for crate::Client {
    fn with_snapshot<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> Option<R> {
        crate::Client::with_snapshot(self, f)
    }
}

/// Why a served value does not fit the requested type.
enum Unfit {
    /// The flag has another type (the requested one named).
    Type(&'static str),
    /// The flag has the type but its value has no OpenFeature form.
    Value,
}

impl Unfit {
    fn error(self, r: &Resolution<'_>) -> EvaluationError {
        match self {
            Unfit::Type(wanted) => EvaluationError {
                code: EvaluationErrorCode::TypeMismatch,
                message: Some(format!(
                    "flag `{}` is of type {}, not {wanted}",
                    r.key,
                    r.kind.as_str()
                )),
            },
            Unfit::Value => EvaluationError {
                code: EvaluationErrorCode::ParseError,
                message: Some(format!(
                    "flag `{}` variant `{}` has a value OpenFeature cannot represent (e.g. a null)",
                    r.key, r.variant
                )),
            },
        }
    }
}

/// The engine's per-flag error, if the resolution failed.
fn check(r: &Resolution<'_>) -> EvaluationResult<()> {
    if r.reason != Reason::Error {
        return Ok(());
    }
    let (code, message) = match r.error {
        Some(ErrorCode::TargetingKeyMissing) => (
            EvaluationErrorCode::TargetingKeyMissing,
            format!(
                "flag `{}` splits traffic by a unit the context does not carry (e.g. `targetingKey`)",
                r.key
            ),
        ),
        Some(ErrorCode::InvalidContext) => (
            EvaluationErrorCode::InvalidContext,
            format!(
                "flag `{}` hashes a context attribute that is not a string of 1 to {} bytes",
                r.key,
                crate::id::MAX_UNIT_LEN
            ),
        ),
        None => (
            EvaluationErrorCode::General("GENERAL".to_owned()),
            format!("flag `{}` could not be evaluated", r.key),
        ),
    };
    Err(EvaluationError {
        code,
        message: Some(message),
    })
}

fn reason(r: Reason) -> EvaluationReason {
    match r {
        Reason::Static => EvaluationReason::Static,
        Reason::Default => EvaluationReason::Default,
        Reason::TargetingMatch => EvaluationReason::TargetingMatch,
        Reason::Split => EvaluationReason::Split,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Error => EvaluationReason::Error,
    }
}

/// `experiment`, `cell`, `layer` when a cell decided; `revision` always.
fn metadata(r: &Resolution<'_>, revision: u64) -> FlagMetadata {
    let mut m = FlagMetadata::default();
    if let Some(a) = &r.assignment {
        m.add_value("experiment", a.experiment);
        m.add_value("cell", a.cell);
        m.add_value("layer", a.layer);
    }
    match i64::try_from(revision) {
        Ok(rev) => m.add_value("revision", rev),
        Err(_) => m.add_value("revision", revision.to_string()),
    }
    m
}

/// An integer flag's value: a JSON integer, or an integral float (`10.0`) as the OFREP
/// handler serves it.
fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        _ => None,
    }
}

fn to_struct(map: &Map<String, Value>) -> Option<StructValue> {
    let mut out = StructValue::default();
    for (k, v) in map {
        out.add_field(k.clone(), to_value(v)?);
    }
    Some(out)
}

/// A JSON value as an OpenFeature value; `None` for `null` anywhere inside it.
fn to_value(v: &Value) -> Option<open_feature::Value> {
    use open_feature::Value as Of;
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => Of::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Of::Int(i),
            None => Of::Float(n.as_f64()?),
        },
        Value::String(s) => Of::String(s.clone()),
        Value::Array(items) => Of::Array(items.iter().map(to_value).collect::<Option<_>>()?),
        Value::Object(map) => Of::Struct(to_struct(map)?),
    })
}

/// The engine context of an OpenFeature evaluation context: `targeting_key` as
/// `targetingKey`, custom fields as JSON (a `DateTime` as an RFC 3339 string).
fn context(ctx: &EvaluationContext) -> EvaluationResult<Context> {
    let mut out = Context::new();
    for (key, field) in &ctx.custom_fields {
        out.insert(key.as_str(), field_json(key, field)?);
    }
    // The dedicated field wins over a custom `targetingKey`.
    if let Some(key) = &ctx.targeting_key {
        out.insert(TARGETING_KEY, key.as_str());
    }
    Ok(out)
}

fn field_json(key: &str, field: &EvaluationContextFieldValue) -> EvaluationResult<Value> {
    let invalid = |what: &str| EvaluationError {
        code: EvaluationErrorCode::InvalidContext,
        message: Some(format!("context field `{key}`: {what}")),
    };
    Ok(match field {
        EvaluationContextFieldValue::Bool(b) => Value::Bool(*b),
        EvaluationContextFieldValue::Int(i) => Value::from(*i),
        // NaN and infinities have no JSON form: treat them as absent.
        EvaluationContextFieldValue::Float(f) => {
            Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        EvaluationContextFieldValue::String(s) => Value::String(s.clone()),
        EvaluationContextFieldValue::DateTime(dt) => Value::String(
            dt.format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| invalid(&format!("date-time has no RFC 3339 form: {e}")))?,
        ),
        EvaluationContextFieldValue::Struct(any) => {
            if let Some(v) = any.downcast_ref::<Value>() {
                v.clone()
            } else if let Some(s) = any.downcast_ref::<StructValue>() {
                struct_to_json(s)
            } else if let Some(v) = any.downcast_ref::<open_feature::Value>() {
                value_to_json(v)
            } else {
                return Err(invalid(
                    "a struct must hold a StructValue, an open_feature::Value or a serde_json::Value",
                ));
            }
        }
    })
}

/// An OpenFeature struct as the JSON object it stands for (non-finite floats become `null`).
pub fn struct_to_json(s: &StructValue) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

/// An OpenFeature value as the JSON value it stands for (non-finite floats become `null`).
pub fn value_to_json(v: &open_feature::Value) -> Value {
    use open_feature::Value as Of;
    match v {
        Of::Bool(b) => Value::Bool(*b),
        Of::Int(i) => Value::from(*i),
        Of::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Of::String(s) => Value::String(s.clone()),
        Of::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        Of::Struct(s) => struct_to_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_floats_are_integers() {
        assert_eq!(as_int(&serde_json::json!(10)), Some(10));
        assert_eq!(as_int(&serde_json::json!(10.0)), Some(10));
        assert_eq!(as_int(&serde_json::json!(10.5)), None);
        assert_eq!(as_int(&serde_json::json!(u64::MAX)), None);
        assert_eq!(as_int(&serde_json::json!("10")), None);
    }

    #[test]
    fn json_values_convert_unless_null() {
        let v = serde_json::json!({"a": [1, 2.5, "x", true, {"b": 2}]});
        let Some(open_feature::Value::Struct(s)) = to_value(&v) else {
            panic!("not a struct");
        };
        assert_eq!(struct_to_json(&s), v);
        assert_eq!(to_value(&serde_json::json!({"a": [1, null]})), None);
        assert_eq!(
            to_value(&serde_json::json!(u64::MAX)),
            Some(open_feature::Value::Float(u64::MAX as f64))
        );
    }
}
