//! The one service type: everything a request means, independent of transport.
//!
//! HTTP (axum) and gRPC (tonic) handlers decode their input, call [`Service`], and encode the
//! view it hands back; they hold no logic of their own. Each call loads the snapshot exactly
//! once, so one request sees one config.

use std::sync::Arc;

use allot::{Allocation, Context, Reason, Resolution, Snapshot, stamp};
use arc_swap::ArcSwapOption;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::error::ApiError;
use crate::log::AssignmentLog;
use crate::metrics::{Metrics, Transport};
use crate::render::{self, RenderCache};
use crate::state::ConfigStore;
use crate::trace::{ServerSpan, TraceParent};

/// Request limits enforced before evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most attributes a context may carry.
    pub max_context_keys: usize,
    /// Byte budget of the `allot` baggage value.
    pub stamp_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_context_keys: 1_000,
            stamp_budget: stamp::DEFAULT_BUDGET,
        }
    }
}

/// The logic of every evaluation endpoint.
#[derive(Debug, Clone)]
pub struct Service {
    store: Arc<ConfigStore>,
    limits: Limits,
    metrics: Option<Arc<Metrics>>,
    log: Option<Arc<AssignmentLog>>,
    /// JSON fragments of the last config a response was encoded for ([`Service::encode`]).
    render: Arc<ArcSwapOption<RenderCache>>,
}

/// What a transport knows about a request besides its payload.
#[derive(Debug, Clone, Copy)]
pub struct RequestMeta<'a> {
    /// The caller's W3C `traceparent` header/metadata value, if any (invalid ones are ignored).
    pub traceparent: Option<&'a str>,
    /// The transport that received the request (the assignment log's `source`).
    pub transport: Transport,
}

/// What one allocation produced, borrowed from the snapshot it was computed on.
#[derive(Debug)]
pub struct AllocateView<'s> {
    /// The snapshot (for revision and lookups).
    pub snapshot: &'s Snapshot,
    /// Experiments per layer and holdouts.
    pub allocation: Allocation<'s>,
    /// Flags, in config order (all, or the ones asked for).
    pub flags: Vec<Resolution<'s>>,
    /// The stamp value `1.<rev>.<exp>~<cell>...`.
    pub stamp: String,
    /// The outgoing `baggage` header: our member first, the caller's kept.
    pub baggage: String,
}

// === impl Service ===

impl Service {
    /// A service over `store`.
    pub fn new(store: Arc<ConfigStore>, limits: Limits) -> Self {
        Self {
            store,
            limits,
            metrics: None,
            log: None,
            render: Arc::new(ArcSwapOption::empty()),
        }
    }

    /// Counts allocations per experiment cell in `metrics` (and lets transports count requests).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes first-seen assignments to `log`.
    pub fn with_assignment_log(mut self, log: Arc<AssignmentLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// The metrics, if this service counts.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// The config store.
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The native JSON response of `view`: the bytes of `serde_json::to_vec(view)`, written
    /// from fragments rendered once per config revision ([`crate::render`]).
    pub fn encode(&self, view: &AllocateView<'_>) -> serde_json::Result<Vec<u8>> {
        self.with_render(view.snapshot, |cache| render::encode(view, cache))?
    }

    /// Hands `f` the JSON fragments of `snapshot`'s config ([`crate::render`]), rendered on the
    /// first call for a new revision.
    pub fn with_render<R>(
        &self,
        snapshot: &Snapshot,
        f: impl FnOnce(&RenderCache) -> R,
    ) -> serde_json::Result<R> {
        let guard = self.render.load();
        if let Some(cache) = &*guard
            && cache.is_for(snapshot)
        {
            return Ok(f(cache));
        }
        drop(guard);
        // First response on a new revision: render its fragments once. Racing builders
        // produce equal caches.
        let cache = Arc::new(RenderCache::new(snapshot)?);
        self.render.store(Some(cache.clone()));
        Ok(f(&cache))
    }

    /// Allocates the context in every layer and resolves every flag (or only `keys` if not
    /// empty), then hands the view to `f` while the snapshot is held.
    ///
    /// Same as [`Service::allocate_with`] with [`RequestMeta::grpc`]`(None)`: no trace context,
    /// logged with source `grpc`.
    pub fn allocate<R>(
        &self,
        ctx: &Context,
        keys: &[String],
        incoming_baggage: &[&str],
        f: impl FnOnce(&AllocateView<'_>) -> R,
    ) -> Result<R, ApiError> {
        self.allocate_with(ctx, keys, incoming_baggage, RequestMeta::grpc(None), f)
    }

    /// [`Service::allocate`] with the request's trace context and transport, which the
    /// assignment log records.
    pub fn allocate_with<R>(
        &self,
        ctx: &Context,
        keys: &[String],
        incoming_baggage: &[&str],
        meta: RequestMeta<'_>,
        f: impl FnOnce(&AllocateView<'_>) -> R,
    ) -> Result<R, ApiError> {
        self.run(ctx, keys, incoming_baggage, meta, true, f)
    }

    /// [`Service::allocate_with`] for the OpenFeature transports (OFREP, flagd): the unit is
    /// checked per flag, not per request. A context without any unit is accepted; a flag that
    /// needs one resolves with [`Reason::Error`] and [`allot::ErrorCode::TargetingKeyMissing`]
    /// (an invalid unit with `InvalidContext`), while static and rule-only flags evaluate
    /// normally. The context's attribute count is still limited.
    pub fn evaluate_with<R>(
        &self,
        ctx: &Context,
        keys: &[String],
        incoming_baggage: &[&str],
        meta: RequestMeta<'_>,
        f: impl FnOnce(&AllocateView<'_>) -> R,
    ) -> Result<R, ApiError> {
        self.run(ctx, keys, incoming_baggage, meta, false, f)
    }

    fn run<R>(
        &self,
        ctx: &Context,
        keys: &[String],
        incoming_baggage: &[&str],
        meta: RequestMeta<'_>,
        require_unit: bool,
        f: impl FnOnce(&AllocateView<'_>) -> R,
    ) -> Result<R, ApiError> {
        let guard = self.store.load();
        let snapshot: &Snapshot = guard.as_ref().ok_or(ApiError::NotReady)?;
        if require_unit {
            self.check_context(snapshot, ctx)?;
        } else {
            self.check_size(ctx)?;
        }
        let parent = meta.traceparent.and_then(TraceParent::parse);
        let span = parent.as_ref().map(ServerSpan::start);
        let allocation = snapshot.allocate(ctx);
        if let Some(m) = &self.metrics {
            m.count_allocation(snapshot, &allocation);
        }
        if let Some(log) = &self.log {
            let trace = match (&span, &parent) {
                (Some(span), Some(parent)) => Some(span.ids(parent)),
                _ => None,
            };
            log.observe(snapshot, &allocation, ctx, trace.as_ref(), meta.transport);
        }
        let flags = if keys.is_empty() {
            snapshot.resolve_all(ctx)
        } else {
            keys.iter()
                .map(|k| {
                    snapshot
                        .resolve(k, ctx)
                        .map_err(|e| ApiError::FlagNotFound(e.0))
                })
                .collect::<Result<_, _>>()?
        };
        let stamp = stamp::stamp(snapshot.revision(), &allocation, self.limits.stamp_budget);
        let baggage = stamp::merge(&stamp, incoming_baggage.iter().copied());
        let view = AllocateView {
            snapshot,
            allocation,
            flags,
            stamp,
            baggage,
        };
        let out = f(&view);
        if let Some(span) = span {
            span.finish(snapshot.revision(), view.allocation.assignments().len());
        }
        Ok(out)
    }

    /// Rejects contexts the engine would silently give nothing: too many keys, no unit at
    /// all, or a unit attribute that is not a 1-256 byte string.
    pub fn check_context(&self, snapshot: &Snapshot, ctx: &Context) -> Result<(), ApiError> {
        self.check_size(ctx)?;
        let mut present = false;
        for key in snapshot.unit_keys() {
            match ctx.unit(key) {
                Ok(_) => present = true,
                Err(allot::UnitError::Missing) => {}
                Err(allot::UnitError::Invalid) => {
                    return Err(ApiError::InvalidContext(format!(
                        "context attribute `{key}` must be a string of 1 to {} bytes",
                        allot::id::MAX_UNIT_LEN
                    )));
                }
            }
        }
        if !present && snapshot.unit_keys().len() > 0 {
            let keys: Vec<String> = snapshot.unit_keys().map(|k| format!("`{k}`")).collect();
            return Err(ApiError::UnitMissing(keys.join(" or ")));
        }
        Ok(())
    }
}

impl Service {
    /// Rejects contexts with more attributes than [`Limits::max_context_keys`].
    pub fn check_size(&self, ctx: &Context) -> Result<(), ApiError> {
        if ctx.len() > self.limits.max_context_keys {
            return Err(ApiError::InvalidContext(format!(
                "context has {} attributes, more than the limit of {}",
                ctx.len(),
                self.limits.max_context_keys
            )));
        }
        Ok(())
    }
}

// === impl RequestMeta ===

impl<'a> RequestMeta<'a> {
    /// A request received over HTTP.
    pub fn http(traceparent: Option<&'a str>) -> Self {
        Self {
            traceparent,
            transport: Transport::Http,
        }
    }

    /// A request received over gRPC.
    pub fn grpc(traceparent: Option<&'a str>) -> Self {
        Self {
            traceparent,
            transport: Transport::Grpc,
        }
    }
}

// === impl AllocateView ===

impl AllocateView<'_> {
    /// The `allot=<stamp>` baggage member alone (the body's `baggage` field).
    pub fn member(&self) -> String {
        format!("{}={}", stamp::KEY, self.stamp)
    }
}

/// The native JSON response (docs/spec.md §5).
impl Serialize for AllocateView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Alloc<'a> {
            layer: &'a str,
            experiment: &'a str,
            cell: &'a str,
            bucket: u32,
        }
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("revision", &self.snapshot.revision())?;
        let allocs: Vec<Alloc<'_>> = self
            .allocation
            .assignments()
            .iter()
            .map(|a| Alloc {
                layer: a.layer,
                experiment: a.experiment,
                cell: a.cell,
                bucket: a.bucket,
            })
            .collect();
        m.serialize_entry("allocations", &allocs)?;
        m.serialize_entry("holdouts", self.allocation.holdouts())?;
        m.serialize_entry("flags", &FlagMap(&self.flags))?;
        m.serialize_entry("baggage", &self.member())?;
        m.end()
    }
}

struct FlagMap<'a, 's>(&'a [Resolution<'s>]);

impl Serialize for FlagMap<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for r in self.0 {
            m.serialize_entry(r.key, &FlagJson(r))?;
        }
        m.end()
    }
}

/// One flag in the native response: `{value, variant, reason[, experiment, cell, layer][, errorCode]}`.
pub struct FlagJson<'a, 's>(pub &'a Resolution<'s>);

impl Serialize for FlagJson<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("value", r.value)?;
        m.serialize_entry("variant", r.variant)?;
        m.serialize_entry("reason", r.reason.as_str())?;
        if let Some(a) = &r.assignment {
            m.serialize_entry("experiment", a.experiment)?;
            m.serialize_entry("cell", a.cell)?;
            m.serialize_entry("layer", a.layer)?;
        }
        if let (Reason::Error, Some(code)) = (r.reason, r.error) {
            m.serialize_entry("errorCode", code.as_str())?;
        }
        m.end()
    }
}
