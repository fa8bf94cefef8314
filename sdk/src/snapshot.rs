//! The compiled, immutable snapshot of a config and the per-request evaluation:
//! `allocate` (experiments per layer, holdouts) and `resolve` (flag values).
//!
//! Everything here is read-only and allocation-free in the common case: seeds are precomputed,
//! ranges sorted, references resolved to indices. Must not do I/O, read a clock or use an RNG.

use std::sync::Arc;

use serde_json::Value;
use smallvec::SmallVec;

use crate::bucket::{Prepared, SeedPair, hash, scale};
use crate::condition::Condition;
use crate::config::{Config, FlagType};
use crate::context::{Context, TARGETING_KEY, UnitError, short_eq};
use crate::key_index::KeyIndex;

/// Inline capacity for per-request lists: no heap allocation for units in up to 8 layers.
const INLINE: usize = 8;
/// Layers located together in `allocate_into` (see there).
const BATCH: usize = 8;
/// `Owner::condition` of an experiment without a `when`.
pub(crate) const UNCONDITIONAL: u32 = u32::MAX;

/// `allocate_into`'s condition classes already evaluated, and their results: entry `class + 1`
/// for the first 127 classes ([`UNKNOWN`], [`HOLDS`] or [`FAILS`]), and entry 0 for
/// [`UNCONDITIONAL`] (which wraps to 0), always `HOLDS`: an unconditional owner takes the same
/// path as a known class, one load and no branch of its own (a branch on whether an owner is
/// conditional is mispredicted across layers). One-layer evaluations (`resolve`) check the
/// condition directly ([`Snapshot::eligible`]).
struct Classes([u8; 128]);

const UNKNOWN: u8 = 0;
const HOLDS: u8 = 1;
const FAILS: u8 = 2;

impl Default for Classes {
    fn default() -> Self {
        let mut classes = [UNKNOWN; 128];
        classes[0] = HOLDS;
        Classes(classes)
    }
}

/// A compiled config: build it with [`crate::compile`], share it (`Arc`) across threads.
///
/// Laid out for lookups: each layer's owned ranges are a contiguous slice of `bounds`, with
/// one cache line per range in `owners` (the owning experiment's cell seed, weights, first two
/// cells and names), and a slot table per layer in `slots` that finds the range from the layer
/// hash. A unit's pass through a layer usually touches two random cache lines, its slot and
/// the owner, and no pointers it does not need.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) revision: u64,
    pub(crate) content_hash: u64,
    pub(crate) config: Config,
    pub(crate) layers: Box<[Layer]>,
    /// `[start, end)` of every owned range, grouped by layer, sorted by start within a layer.
    pub(crate) bounds: Box<[(u32, u32)]>,
    /// Every layer's slot table (see `Layer::slots`): where to look in `bounds` for a bucket,
    /// and the end of the range found there.
    pub(crate) slots: Box<[(u32, u32)]>,
    /// Parallel to `bounds`: who owns the range.
    pub(crate) owners: Box<[Owner]>,
    pub(crate) experiments: Box<[Experiment]>,
    /// Every experiment's cells, grouped by experiment.
    pub(crate) cells: Box<[Cell]>,
    /// Distinct cell ids: owners name their first two cells by index into it. Few and shared
    /// (`control`, `treatment`, ...), so it stays in cache.
    pub(crate) cell_names: Box<[Box<str>]>,
    pub(crate) holdouts: Box<[Holdout]>,
    pub(crate) flags: Box<[Flag]>,
    /// Flag key → index into `flags`, confirmed with `short_eq` (word compares instead of a
    /// `memcmp` call for keys up to 16 bytes).
    pub(crate) flag_index: KeyIndex,
    /// Distinct layers that drive at least one flag, ascending.
    pub(crate) flag_layers: Box<[u32]>,
    /// Distinct context keys used as units by layers, holdouts and rollouts, sorted.
    /// Layers, holdouts and rollouts refer to them by index so a request reads each once.
    pub(crate) unit_keys: Box<[Box<str>]>,
    /// Index of `targetingKey` in `unit_keys`, read through the context's fast path.
    pub(crate) targeting_unit: Option<u32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) id: Box<str>,
    pub(crate) seed: u64,
    pub(crate) buckets: u32,
    /// Index into `Snapshot::unit_keys`.
    pub(crate) unit: u32,
    /// This layer's slice of `bounds`/`owners`.
    pub(crate) first: u32,
    pub(crate) len: u32,
    /// Where this layer's slot table starts in `Snapshot::slots`: `2^(64 - shift)` slots
    /// (at least as many as ranges) and one more entry, `first + len`. A unit's slot is the top
    /// `64 - shift` bits of its layer hash. Slot `s` holds the index into `bounds` of the first
    /// range ending after the least bucket a hash in the slot can have, and that range's end
    /// (0 if there is none). So the range owning a bucket in slot `s` is at or after entry `s`
    /// and at most at entry `s + 1`, and it is entry `s`'s if the bucket is below its end.
    pub(crate) slots: u32,
    pub(crate) shift: u32,
    /// Holdouts covering this layer.
    pub(crate) holdouts: Box<[u32]>,
}

/// Everything a unit whose bucket falls in an owned range needs, in one cache line: the
/// owning experiment's cell seed and weights, its first two cells inline, and the names.
#[derive(Debug, Clone)]
#[repr(align(64))]
pub(crate) struct Owner {
    /// The experiment's cell seed and total weight.
    pub(crate) seed: u64,
    pub(crate) total: u64,
    /// Exclusive end of the first cell's slice of `0..total` (`total` for one cell): one
    /// cell's weight, so it fits 32 bits.
    pub(crate) split: u32,
    /// The first bucket of the range this entry owns (its end is in `bounds`).
    pub(crate) start: u32,
    /// The experiment's id, shared, so naming an assignment needs no extra lookup.
    pub(crate) experiment_id: Arc<str>,
    /// The first experiment whose `when` is the same as this one's (its own index if it has
    /// none or is the first): the condition evaluated.
    pub(crate) experiment: u32,
    /// The class of the experiment's `when` condition, dense in order of first appearance
    /// (equal `when`s share one), or [`UNCONDITIONAL`]. `allocate_into` evaluates each class
    /// at most once per call.
    pub(crate) condition: u32,
    /// The experiment's slice of `cells`.
    pub(crate) first_cell: u32,
    pub(crate) cell_count: u32,
    /// Indices into `Snapshot::cell_names` of the first two cells' ids (the second is unused
    /// for one cell).
    pub(crate) names: [u32; 2],
}

#[derive(Debug)]
pub(crate) struct Experiment {
    pub(crate) when: Condition,
}

#[derive(Debug)]
pub(crate) struct Cell {
    /// Exclusive upper end of this cell's slice of `0..total`.
    pub(crate) end: u64,
    pub(crate) id: Box<str>,
    /// (flag index, variant index), sorted by flag index.
    pub(crate) flags: Box<[(u32, u32)]>,
}

#[derive(Debug)]
pub(crate) struct Holdout {
    pub(crate) id: Box<str>,
    pub(crate) seed: u64,
    pub(crate) buckets: u32,
    /// Index into `Snapshot::unit_keys`.
    pub(crate) unit: u32,
    pub(crate) ranges: Box<[(u32, u32)]>,
}

#[derive(Debug)]
pub(crate) struct Flag {
    /// This flag's position in `Snapshot::flags`, as cells refer to it.
    pub(crate) index: u32,
    pub(crate) key: Box<str>,
    pub(crate) kind: FlagType,
    pub(crate) variants: Box<[(Box<str>, Value)]>,
    pub(crate) default: u32,
    pub(crate) enabled: bool,
    /// The layer whose experiments set this flag: its index in `Snapshot::layers` and a copy of
    /// its entry, so `resolve` reads the layer's seed and slot table from the flag itself (one
    /// dependent load fewer before the unit's first hash).
    pub(crate) layer: Option<(u32, Layer)>,
    /// The position of `layer` in `Snapshot::flag_layers` (0 without a layer), so
    /// `resolve_all` finds the layer's evaluation without a search.
    pub(crate) slot: u32,
    /// Set when one owned range of the layer is all that can set this flag (see [`Direct`]).
    pub(crate) direct: Option<Direct>,
    pub(crate) rules: Box<[Rule]>,
}

/// The plan of a flag that one owned range alone can set: the usual shape, a flag driven by
/// one experiment with one range. `resolve` then knows the experiment's cell seed before it
/// knows the unit's bucket, so it hashes the unit for the layer and for the cells at once
/// (two independent hashes instead of one waiting on the other through the slot table and the
/// owner line), and reads the variant from here instead of from the cell.
///
/// Same answer as the general path: ranges in a layer are disjoint, so a bucket inside this
/// range is this owner's, and a bucket outside it belongs to an owner that does not set the
/// flag (no hit).
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    /// A copy of the range's owner line (seed, weights, condition, first cells).
    pub(crate) owner: Owner,
    /// The range's index into `bounds`/`owners`, for the hit.
    pub(crate) index: u32,
    /// The range's exclusive end (its start is `owner.start`).
    pub(crate) end: u32,
    /// The layer's seed and the owner's cell seed, keyed for hashing the unit under both.
    pub(crate) seeds: SeedPair,
    /// The layer's index in `Snapshot::layers`, bucket count and id.
    pub(crate) layer: u32,
    pub(crate) buckets: u32,
    pub(crate) layer_id: Box<str>,
    /// Whether `resolve` takes the plan's short path: the flag is enabled, no holdout covers
    /// the layer, and the layer's unit is `targetingKey` (the usual flag).
    pub(crate) quick: bool,
    /// The flag's variant in the experiment's first two cells, or [`NO_VARIANT`] where the
    /// cell leaves the flag unset.
    pub(crate) variants: [u32; 2],
    /// The answer's names for those two cells, so the short path names a hit with one load
    /// that depends on the cell (unused where `variants` is [`NO_VARIANT`]).
    pub(crate) named: [Named; 2],
}

/// The variant a cell of a [`Direct`] plan serves (its name and value) and the cell's id:
/// copies, two per plan, next to the rest of the plan. (Shared through an `Arc` instead, the
/// extra offset on every variant `resolve_all` names cost it about 4 %.)
#[derive(Debug, Clone, Default)]
pub(crate) struct Named {
    pub(crate) variant: Box<str>,
    pub(crate) value: Value,
    pub(crate) cell: Box<str>,
}

/// `Direct::variants` of a cell that does not set the flag.
pub(crate) const NO_VARIANT: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) when: Condition,
    pub(crate) action: Action,
}

#[derive(Debug)]
pub(crate) enum Action {
    Variant(u32),
    Rollout {
        seed: u64,
        /// Index into `Snapshot::unit_keys`.
        unit: u32,
        total: u64,
        /// (exclusive cumulative end, variant index), in split order.
        split: Box<[(u64, u32)]>,
    },
}

/// A unit's experiment and cell in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Assignment<'s> {
    /// Layer id.
    pub layer: &'s str,
    /// Experiment id.
    pub experiment: &'s str,
    /// Cell id.
    pub cell: &'s str,
    /// The unit's bucket in the layer.
    pub bucket: u32,
}

/// Everything a unit is allocated to under one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation<'s> {
    pub(crate) assignments: SmallVec<[Assignment<'s>; INLINE]>,
    pub(crate) holdouts: SmallVec<[&'s str; 4]>,
}

/// The OpenFeature resolution reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The flag has no rules and no experiments: its default is its only value.
    Static,
    /// Nothing matched (or the unit is held out): the default variant.
    Default,
    /// A rule's condition selected the variant.
    TargetingMatch,
    /// A hash split (an experiment cell or a rollout) selected the variant.
    Split,
    /// The flag is disabled: the default variant.
    Disabled,
    /// Evaluation failed; see the error code. The value is the default variant's.
    Error,
}

/// Why an evaluation failed (OpenFeature error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A rollout needs a unit the context does not have.
    TargetingKeyMissing,
    /// The unit attribute is present but not a string of 1 to 256 bytes.
    InvalidContext,
}

/// The value of one flag for one context, and what decided it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution<'s> {
    /// Flag key.
    pub key: &'s str,
    /// The flag's position in config order (as [`Snapshot::flag_keys`] lists them), so callers
    /// that keep per-flag tables can index them without looking the key up again.
    pub index: u32,
    /// Flag type.
    pub kind: FlagType,
    /// The value served.
    pub value: &'s Value,
    /// The variant served.
    pub variant: &'s str,
    /// Why.
    pub reason: Reason,
    /// Set when `reason` is [`Reason::Error`].
    pub error: Option<ErrorCode>,
    /// The experiment cell that selected the variant, if one did.
    pub assignment: Option<Assignment<'s>>,
}

/// A flag of one snapshot's config, looked up once ([`Snapshot::flag_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlagId {
    index: u32,
    /// Content hash of the config the index belongs to.
    config: u64,
}

/// `resolve_id` with a handle from a snapshot of another config: look the key up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flag handle belongs to another config; look the flag up again")]
pub struct StaleFlagId(pub FlagId);

/// `resolve` of a key the snapshot does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flag `{0}` not found")]
pub struct FlagNotFound(pub String);

/// Internal: a layer assignment by indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hit {
    layer: u32,
    /// Index into `bounds`/`owners`.
    owner: u32,
    /// Index into `cells`.
    cell: u32,
    bucket: u32,
}

/// A resolution by indices into the snapshot that made it: what [`Resolution`] names.
/// `Snapshot::view` turns it into one; the client's owned `Resolved` holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw {
    /// Index into `flags`.
    flag: u32,
    /// Index into the flag's variants.
    variant: u32,
    reason: Reason,
    error: Option<ErrorCode>,
    hit: Option<Hit>,
}

#[cfg(feature = "client")]
impl Raw {
    pub(crate) fn reason(&self) -> Reason {
        self.reason
    }

    pub(crate) fn error(&self) -> Option<ErrorCode> {
        self.error
    }
}

/// Each unit key's value in one context, read once per request.
type Units<'c> = SmallVec<[Result<&'c str, UnitError>; 4]>;

// === impl Snapshot ===

impl Snapshot {
    /// The revision this snapshot was compiled as.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The content hash of the source document ([`Config::content_hash`]).
    pub fn content_hash(&self) -> u64 {
        self.content_hash
    }

    /// The source document.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Flag keys in config order.
    pub fn flag_keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.flags.iter().map(|f| &*f.key)
    }

    /// The type of flag `key`, if it exists.
    pub fn flag_type(&self, key: &str) -> Option<FlagType> {
        self.flag(key).map(|f| f.kind)
    }

    /// The context keys this config hashes as units (`targetingKey`, `device_id`, ...), sorted.
    /// A context with none of them gets no experiment and no rollout.
    pub fn unit_keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.unit_keys.iter().map(|k| &**k)
    }

    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Number of experiments.
    pub fn experiment_count(&self) -> usize {
        self.experiments.len()
    }

    /// The unit's experiments in every layer (config order) and the holdouts it is in.
    pub fn allocate<'s>(&'s self, ctx: &Context) -> Allocation<'s> {
        let mut out = Allocation::default();
        self.allocate_into(ctx, &mut out);
        out
    }

    /// [`Snapshot::allocate`] into a reused buffer (cleared first), for callers that allocate
    /// in bulk across many layers.
    pub fn allocate_into<'s>(&'s self, ctx: &Context, out: &mut Allocation<'s>) {
        out.assignments.clear();
        out.holdouts.clear();
        let units = self.units(ctx);
        let mut held: SmallVec<[u32; 4]> = SmallVec::new();
        for (i, h) in self.holdouts.iter().enumerate() {
            if h.contains(&units) {
                held.push(i as u32);
                out.holdouts.push(&h.id);
            }
        }
        // With one unit key (the usual config) every layer hashes the same unit: the common
        // unit lengths (17 to 64 bytes: UUIDs, ULIDs, hex ids) are prepared once and get a
        // layer loop of their own, without a per-hash dispatch on the length.
        if let [Ok(unit)] = units.as_slice() {
            if let Some(unit) = Prepared::<2>::new(unit.as_bytes()) {
                return self.allocate_layers(ctx, &held, out, OneUnit(unit));
            }
            if let Some(unit) = Prepared::<1>::new(unit.as_bytes()) {
                return self.allocate_layers(ctx, &held, out, OneUnit(unit));
            }
        }
        self.allocate_layers(ctx, &held, out, &units);
    }

    /// The layer loop of `allocate_into`; `held` lists the holdouts the unit is in.
    #[inline(always)]
    fn allocate_layers<'s, U: LayerUnits>(
        &'s self,
        ctx: &Context,
        held: &[u32],
        out: &mut Allocation<'s>,
        units: U,
    ) {
        // Layers go in batches: first every layer's bucket, owning range and owner, then the
        // owners' cells. The lookups of different layers do not depend on each other, so their
        // cache misses overlap instead of queueing one behind the other.
        let mut classes = Classes::default();
        for chunk in self.layers.chunks(BATCH) {
            let mut located: [Option<(&Owner, u32, U::Unit)>; BATCH] = [None; BATCH];
            for (slot, layer) in located.iter_mut().zip(chunk) {
                if !held.is_empty() && layer.holdouts.iter().any(|h| held.contains(h)) {
                    continue;
                }
                if let Some(unit) = units.unit(layer.unit) {
                    *slot = self
                        .locate(layer, units.hash(unit, layer.seed))
                        .map(|(_, owner, bucket)| (owner, bucket, unit));
                }
            }
            for (slot, layer) in located.iter().zip(chunk) {
                // Unconditional owners go through `classes` too, so the only branch on
                // eligibility is on the answer.
                let Some((owner, bucket, unit)) = *slot else {
                    continue;
                };
                if !self.eligible_in(owner, ctx, &mut classes) {
                    continue;
                }
                let p = scale(units.hash(unit, owner.seed), owner.total);
                let Some(k) = owner.cell(p, &self.cells) else {
                    continue;
                };
                out.assignments.push(Assignment {
                    layer: &layer.id,
                    experiment: &owner.experiment_id,
                    cell: self.cell_name(owner, k),
                    bucket,
                });
            }
        }
    }

    /// The value of flag `key` for the context.
    #[inline(always)]
    pub fn resolve<'s>(&'s self, key: &str, ctx: &Context) -> Result<Resolution<'s>, FlagNotFound> {
        match self.flag(key) {
            Some(flag) => self.resolve_ok(flag, ctx),
            None => Err(not_found(key)),
        }
    }

    /// A handle to flag `key` in this snapshot, for callers that resolve the same flag often:
    /// [`Snapshot::resolve_id`] then skips the key lookup.
    pub fn flag_id(&self, key: &str) -> Option<FlagId> {
        let flag = self.flag(key)?;
        Some(FlagId {
            index: flag.index,
            config: self.content_hash,
        })
    }

    /// [`Snapshot::resolve`] by handle. A handle made by a snapshot of another config is
    /// rejected (`StaleFlagId`), never read as some other flag.
    #[inline(always)]
    pub fn resolve_id<'s>(
        &'s self,
        id: FlagId,
        ctx: &Context,
    ) -> Result<Resolution<'s>, StaleFlagId> {
        match self.flags.get(id.index as usize) {
            Some(flag) if id.config == self.content_hash => self.resolve_ok(flag, ctx),
            _ => Err(StaleFlagId(id)),
        }
    }

    #[cfg(feature = "client")]
    /// [`Snapshot::resolve`] by indices, for holders of a snapshot that keep the answer.
    #[inline]
    pub(crate) fn resolve_raw(&self, key: &str, ctx: &Context) -> Result<Raw, FlagNotFound> {
        let Some(flag) = self.flag(key) else {
            return Err(not_found(key));
        };
        Ok(match self.quick_pick(flag, ctx) {
            Some((d, bucket, k, variant)) => d.raw(flag, bucket, k, variant),
            None => self.resolve_slow(flag, ctx),
        })
    }

    #[cfg(feature = "client")]
    /// Every flag by indices, in config order, to `each`; see [`Snapshot::resolve_all`].
    pub(crate) fn resolve_all_raw(&self, ctx: &Context, mut each: impl FnMut(Raw)) {
        self.resolve_all_with(ctx, |_, raw| each(raw));
    }

    #[cfg(feature = "client")]
    /// Names a resolution this snapshot made.
    pub(crate) fn view(&self, raw: Raw) -> Resolution<'_> {
        match self.flags.get(raw.flag as usize) {
            Some(flag) => self.view_of(flag, raw),
            // Unreachable for a `Raw` of this snapshot (its only source); answer an empty
            // error rather than panic.
            None => Resolution {
                key: "",
                index: raw.flag,
                kind: FlagType::Bool,
                value: &Value::Null,
                variant: "",
                reason: Reason::Error,
                error: None,
                assignment: None,
            },
        }
    }

    #[inline(always)]
    fn view_of<'s>(&'s self, flag: &'s Flag, raw: Raw) -> Resolution<'s> {
        let mut r = flag.resolution(raw.variant, raw.reason);
        r.error = raw.error;
        r.assignment = raw.hit.map(|hit| self.named(hit));
        r
    }

    /// `Ok(view_of(resolve_flag(..)))`, for `resolve` and `resolve_id`. The usual flag (see
    /// [`Direct::quick`]) is named where it is found, in a short path; everything else is
    /// evaluated out of line. Both end in one construction of the answer, in place: a merge of
    /// two whole `Resolution`s would copy it through the stack, and the copy's wide loads of
    /// narrow stores stall store forwarding.
    #[inline(always)]
    fn resolve_ok<'s, E>(&'s self, flag: &'s Flag, ctx: &Context) -> Result<Resolution<'s>, E> {
        let (variant, reason, error, assignment) = match self.quick_pick(flag, ctx) {
            // The first two cells (nearly always): named from the plan.
            Some((d, bucket, k, _)) if let Some(named) = d.named.get(k as usize) => {
                let mut r = flag.resolution_of(&named.variant, &named.value, Reason::Split);
                r.assignment = Some(Assignment {
                    layer: &d.layer_id,
                    experiment: &d.owner.experiment_id,
                    cell: &named.cell,
                    bucket,
                });
                return Ok(r);
            }
            Some((d, bucket, k, variant)) => {
                let assignment = Assignment {
                    layer: &d.layer_id,
                    experiment: &d.owner.experiment_id,
                    cell: self.cell_name(&d.owner, k),
                    bucket,
                };
                (variant, Reason::Split, None, Some(assignment))
            }
            None => {
                let raw = self.resolve_slow(flag, ctx);
                (
                    raw.variant,
                    raw.reason,
                    raw.error,
                    raw.hit.map(|hit| self.named(hit)),
                )
            }
        };
        let mut r = flag.resolution(variant, reason);
        r.error = error;
        r.assignment = assignment;
        Ok(r)
    }

    /// The short path of `resolve`: a flag with a [`Direct::quick`] plan, and the unit's bucket,
    /// cell position and variant when the unit's cell sets it. `None` sends the flag to
    /// [`Snapshot::resolve_slow`].
    #[inline(always)]
    fn quick_pick<'s>(&self, flag: &'s Flag, ctx: &Context) -> Option<(&'s Direct, u32, u32, u32)> {
        let d = flag.direct.as_ref().filter(|d| d.quick)?;
        let unit = ctx.targeting_unit().ok()?;
        let (bucket, k, variant) = self.direct_pick(flag, d, unit, ctx)?;
        Some((d, bucket, k, variant))
    }

    /// [`Snapshot::resolve_ok`] past its short path.
    #[inline(never)]
    fn resolve_slow(&self, flag: &Flag, ctx: &Context) -> Raw {
        match &flag.direct {
            // The short path found no cell: that plan's one range is all that could set it.
            Some(d) if d.quick => self.finish(flag, None, ctx, |u| self.unit_of(u, ctx)),
            _ => self.resolve_flag(flag, ctx),
        }
    }

    #[inline(always)]
    fn resolve_flag(&self, flag: &Flag, ctx: &Context) -> Raw {
        if !flag.enabled {
            return flag.default_raw(Reason::Disabled);
        }
        let mut hit = None;
        if let Some((li, layer)) = &flag.layer
            && let Ok(unit) = self.unit_of(layer.unit, ctx)
        {
            let held = layer.holdouts.iter().any(|&h| {
                self.holdouts
                    .get(h as usize)
                    .is_some_and(|h| h.contains_unit(self.unit_of(h.unit, ctx)))
            });
            if held {
                return flag.default_raw(Reason::Default);
            }
            match &flag.direct {
                Some(direct) => {
                    if let Some(raw) = self.direct(flag, direct, unit, ctx) {
                        return raw;
                    }
                }
                None => hit = self.assign(*li, layer, unit, ctx),
            }
        }
        self.finish(flag, hit, ctx, |u| self.unit_of(u, ctx))
    }

    /// The flag's variant from its one setting range (see [`Direct`]), or `None` when the
    /// unit is outside it, not eligible, or in a cell that leaves the flag unset.
    #[inline(always)]
    fn direct(&self, flag: &Flag, d: &Direct, unit: &str, ctx: &Context) -> Option<Raw> {
        let (bucket, k, variant) = self.direct_pick(flag, d, unit, ctx)?;
        Some(d.raw(flag, bucket, k, variant))
    }

    /// The unit's bucket, cell position and the flag's variant there, if the unit is in the
    /// flag's one setting range, eligible, and in a cell that sets the flag.
    #[inline(always)]
    fn direct_pick(
        &self,
        flag: &Flag,
        d: &Direct,
        unit: &str,
        ctx: &Context,
    ) -> Option<(u32, u32, u32)> {
        let owner = &d.owner;
        // Independent of each other: the CPU runs both hashes at once.
        let (h, c) = d.seeds.hash(unit);
        let bucket = scale(h, u64::from(d.buckets)) as u32;
        let p = scale(c, owner.total);
        if bucket < owner.start || bucket >= d.end {
            return None;
        }
        if !self.eligible(owner, ctx) {
            return None;
        }
        let k = owner.cell(p, &self.cells)?;
        let variant = match d.variants.get(k as usize) {
            Some(&v) => (v != NO_VARIANT).then_some(v)?,
            None => self
                .cells
                .get((owner.first_cell + k) as usize)?
                .variant_of(flag.index)?,
        };
        Some((bucket, k, variant))
    }

    /// Every flag's value for the context, in config order.
    pub fn resolve_all<'s>(&'s self, ctx: &Context) -> Vec<Resolution<'s>> {
        let mut out = Vec::with_capacity(self.flags.len());
        self.resolve_all_into(ctx, &mut out);
        out
    }

    /// [`Snapshot::resolve_all`] into a reused buffer (cleared first).
    pub fn resolve_all_into<'s>(&'s self, ctx: &Context, out: &mut Vec<Resolution<'s>>) {
        out.clear();
        self.resolve_all_with(ctx, |flag, raw| out.push(self.view_of(flag, raw)));
    }

    #[inline(always)]
    fn resolve_all_with<'s>(&'s self, ctx: &Context, mut push: impl FnMut(&'s Flag, Raw)) {
        let units = self.units(ctx);
        // Each layer that drives flags is evaluated once, in `flag_layers` order (a flag's
        // `slot` indexes it): (held out, hit).
        let mut layers: SmallVec<[(bool, Option<Hit>); INLINE]> = SmallVec::new();
        let mut held: SmallVec<[(u32, bool); 4]> = SmallVec::new();
        for &li in self.flag_layers.iter() {
            let Some(layer) = self.layers.get(li as usize) else {
                layers.push((false, None));
                continue;
            };
            let Some(Ok(unit)) = units.get(layer.unit as usize) else {
                layers.push((false, None));
                continue;
            };
            let is_held = layer.holdouts.iter().any(|&h| {
                if let Some(&(_, inside)) = held.iter().find(|(i, _)| *i == h) {
                    return inside;
                }
                let inside = self
                    .holdouts
                    .get(h as usize)
                    .is_some_and(|ho| ho.contains(&units));
                held.push((h, inside));
                inside
            });
            let hit = if is_held {
                None
            } else {
                self.assign(li, layer, unit, ctx)
            };
            layers.push((is_held, hit));
        }
        for flag in self.flags.iter() {
            if !flag.enabled {
                push(flag, flag.default_raw(Reason::Disabled));
                continue;
            }
            let (is_held, hit) = match flag.layer {
                Some(_) => layers
                    .get(flag.slot as usize)
                    .copied()
                    .unwrap_or((false, None)),
                None => (false, None),
            };
            let raw = if is_held {
                flag.default_raw(Reason::Default)
            } else {
                self.finish(flag, hit, ctx, |u| {
                    units
                        .get(u as usize)
                        .copied()
                        .unwrap_or(Err(UnitError::Missing))
                })
            };
            push(flag, raw);
        }
    }

    #[inline]
    fn flag(&self, key: &str) -> Option<&Flag> {
        let found = self.flag_index.find(key, |i| {
            self.flags
                .get(i as usize)
                .is_some_and(|f| short_eq(&f.key, key))
        })?;
        self.flags.get(found as usize)
    }

    fn unit_key(&self, i: u32) -> Option<&str> {
        self.unit_keys.get(i as usize).map(|k| &**k)
    }

    /// The value of unit key `i` in `ctx`.
    #[inline(always)]
    fn unit_of<'c>(&self, i: u32, ctx: &'c Context) -> Result<&'c str, UnitError> {
        if Some(i) == self.targeting_unit {
            return ctx.targeting_unit();
        }
        self.unit_key(i)
            .map_or(Err(UnitError::Missing), |k| ctx.unit(k))
    }

    /// Every unit key's value, read once.
    #[inline]
    fn units<'c>(&self, ctx: &'c Context) -> Units<'c> {
        (0..self.unit_keys.len() as u32)
            .map(|i| self.unit_of(i, ctx))
            .collect()
    }

    /// The unit's experiment and cell in one layer, holdouts aside.
    #[inline(always)]
    fn assign(&self, li: u32, layer: &Layer, unit: &str, ctx: &Context) -> Option<Hit> {
        let (idx, owner, bucket) = self.locate(layer, hash(layer.seed, unit))?;
        let k = self.pick(owner, unit, ctx)?;
        Some(Hit {
            layer: li,
            owner: idx,
            cell: owner.first_cell + k,
            bucket,
        })
    }

    /// The range owning `bucket` after a slot's first candidate `lo`, up to the next slot's
    /// entry `next` (inclusive, if that is still this layer's); `None` if the bucket is in a gap.
    #[inline(always)]
    fn search_past(&self, layer: &Layer, lo: u32, next: u32, bucket: u32) -> Option<u32> {
        let hi = (next + 1).min(layer.first + layer.len);
        let candidates = self.bounds.get(lo as usize + 1..hi as usize)?;
        let i = candidates.partition_point(|&(_, end)| end <= bucket);
        let &(start, _) = candidates.get(i)?;
        (bucket >= start).then_some(lo + 1 + i as u32)
    }

    /// The range owning the bucket of layer hash `h` (the unit's, under the layer's seed), if
    /// any: its index into `bounds`/`owners`, its owner, and the bucket. Where a slot has at most
    /// two candidate ranges (nearly always) the choice has no branch on the hash: across 500
    /// layers a branch on whether the bucket is past the slot's first range is mispredicted for
    /// about a quarter of them.
    #[inline(always)]
    fn locate(&self, layer: &Layer, h: u64) -> Option<(u32, &Owner, u32)> {
        let bucket = scale(h, u64::from(layer.buckets)) as u32;
        // The hash's top bits pick a slot, which bounds where the owning range can be.
        let slot = layer.slots as usize + h.checked_shr(layer.shift).unwrap_or(0) as usize;
        // This slot's entry and the next (usually in the same line).
        let &[(lo, end), (next, next_end)] = self.slots.get(slot..slot + 2)? else {
            return None;
        };
        let past = bucket >= end;
        // `in_layer` is false when the candidate is past the layer's last range.
        let (idx, in_layer) = if next <= lo + 1 {
            // The common case: at most two candidates, the slot's first and the next, which owns
            // the bucket if it is past the first's end (it ends after every bucket of this
            // slot). Chosen without a branch on the hash, as is `in_layer`: the next may be the
            // end of the layer (end 0: no range ends after this slot), and then the bucket is
            // in no range (the owner read there is another layer's, or none).
            (lo + u32::from(past), !past | (next_end != 0))
        } else if !past {
            // The slot's first candidate, if the bucket is not in a gap before it. Its start is
            // in the owner's line, which is read anyway.
            (lo, true)
        } else {
            // Past it: a later range up to the next slot's entry.
            (self.search_past(layer, lo, next, bucket)?, true)
        };
        let owner = self.owners.get(idx as usize)?;
        (in_layer & (owner.start <= bucket)).then_some((idx, owner, bucket))
    }

    /// Eligibility and the position of the unit's cell among `owner`'s experiment's cells.
    #[inline(always)]
    fn pick(&self, owner: &Owner, unit: &str, ctx: &Context) -> Option<u32> {
        if !self.eligible(owner, ctx) {
            return None;
        }
        owner.cell(scale(hash(owner.seed, unit), owner.total), &self.cells)
    }

    /// Names a hit of `resolve`/`resolve_all`, whose `finish` has just read the hit's cell.
    #[inline(always)]
    fn named(&self, hit: Hit) -> Assignment<'_> {
        Assignment {
            layer: self.layers.get(hit.layer as usize).map_or("", |l| &*l.id),
            experiment: self
                .owners
                .get(hit.owner as usize)
                .map_or("", |o| &*o.experiment_id),
            cell: self.cells.get(hit.cell as usize).map_or("", |c| &*c.id),
            bucket: hit.bucket,
        }
    }

    /// Whether the context satisfies `owner`'s experiment's condition, if it has one (one
    /// evaluation: `allocate_into` remembers classes with [`Snapshot::eligible_in`]).
    #[inline(always)]
    fn eligible(&self, owner: &Owner, ctx: &Context) -> bool {
        owner.condition == UNCONDITIONAL || self.holds(owner, ctx)
    }

    /// Whether the context satisfies `owner`'s experiment's `when`.
    #[inline(always)]
    fn holds(&self, owner: &Owner, ctx: &Context) -> bool {
        self.experiments
            .get(owner.experiment as usize)
            .is_some_and(|e| e.when.eval(ctx))
    }

    /// [`Snapshot::eligible`] for `allocate_into`: each condition class evaluated at most once
    /// per call, unconditional owners included (see [`Classes`]).
    #[inline(always)]
    fn eligible_in(&self, owner: &Owner, ctx: &Context, classes: &mut Classes) -> bool {
        // Classes past the first 127 have no entry: evaluated every time.
        let i = owner.condition.wrapping_add(1) as usize;
        match classes.0.get(i) {
            Some(&HOLDS) => return true,
            Some(&FAILS) => return false,
            _ => {}
        }
        let holds = self.holds(owner, ctx);
        if let Some(e) = classes.0.get_mut(i) {
            *e = if holds { HOLDS } else { FAILS };
        }
        holds
    }

    /// The id of the `k`th cell of `owner`'s experiment: from the shared names for its first
    /// two cells, without reading `cells` (and without a branch on which of the two).
    #[inline(always)]
    fn cell_name(&self, owner: &Owner, k: u32) -> &str {
        let name = match owner.names.get(k as usize) {
            Some(&i) => self.cell_names.get(i as usize),
            None => self
                .cells
                .get((owner.first_cell + k) as usize)
                .map(|c| &c.id),
        };
        name.map_or("", |n| &**n)
    }

    /// Experiments first, then rules in order, then the default. The caller has handled
    /// disabled flags and holdouts; `unit` reads a unit key's value.
    #[inline(always)]
    fn finish<'c>(
        &self,
        flag: &Flag,
        hit: Option<Hit>,
        ctx: &Context,
        unit: impl Fn(u32) -> Result<&'c str, UnitError>,
    ) -> Raw {
        if let Some(hit) = hit
            && let Some(v) = self
                .cells
                .get(hit.cell as usize)
                .and_then(|c| c.variant_of(flag.index))
        {
            let mut r = flag.raw(v, Reason::Split);
            r.hit = Some(hit);
            return r;
        }
        for rule in flag.rules.iter() {
            if !rule.when.eval(ctx) {
                continue;
            }
            return match &rule.action {
                Action::Variant(v) => flag.raw(*v, Reason::TargetingMatch),
                Action::Rollout {
                    seed,
                    unit: key,
                    total,
                    split,
                } => match unit(*key) {
                    Ok(unit) => {
                        let p = scale(hash(*seed, unit), *total);
                        // The first split whose end exceeds `p`, counted without a branch on
                        // the hash (which a branch would mispredict half the time).
                        let i = split.iter().filter(|(end, _)| *end <= p).count();
                        match split.get(i) {
                            Some(&(_, v)) => flag.raw(v, Reason::Split),
                            None => flag.default_raw(Reason::Default),
                        }
                    }
                    Err(e) => {
                        let mut r = flag.default_raw(Reason::Error);
                        r.error = Some(match e {
                            UnitError::Missing => ErrorCode::TargetingKeyMissing,
                            UnitError::Invalid => ErrorCode::InvalidContext,
                        });
                        r
                    }
                },
            };
        }
        let reason = if flag.rules.is_empty() && flag.layer.is_none() {
            Reason::Static
        } else {
            Reason::Default
        };
        flag.default_raw(reason)
    }
}

// === impl LayerUnits ===

/// How `allocate_layers` reads and hashes a layer's unit: `unit` once per layer, `hash` for the
/// layer's seed and its owner's.
trait LayerUnits: Copy {
    type Unit: Copy;
    /// The value of unit key `key` in the context, if it has one.
    fn unit(self, key: u32) -> Option<Self::Unit>;
    /// `xxh3_64_with_seed(unit, seed)`.
    fn hash(self, unit: Self::Unit, seed: u64) -> u64;
}

/// Any config: each unit key's value, hashed as it is.
impl<'u> LayerUnits for &Units<'u> {
    type Unit = &'u str;

    #[inline(always)]
    fn unit(self, key: u32) -> Option<&'u str> {
        self.get(key as usize).and_then(|u| u.ok())
    }

    #[inline(always)]
    fn hash(self, unit: &'u str, seed: u64) -> u64 {
        hash(seed, unit)
    }
}

/// A config with one unit key, whose value in the context is prepared: every layer has it.
#[derive(Clone, Copy)]
struct OneUnit<const ROUNDS: usize>(Prepared<ROUNDS>);

impl<const ROUNDS: usize> LayerUnits for OneUnit<ROUNDS> {
    type Unit = ();

    #[inline(always)]
    fn unit(self, _: u32) -> Option<()> {
        Some(())
    }

    #[inline(always)]
    fn hash(self, _: (), seed: u64) -> u64 {
        self.0.hash(seed)
    }
}

// === impl Holdout ===

impl Holdout {
    #[inline]
    fn contains(&self, units: &Units<'_>) -> bool {
        self.contains_unit(
            units
                .get(self.unit as usize)
                .copied()
                .unwrap_or(Err(UnitError::Missing)),
        )
    }

    #[inline]
    fn contains_unit(&self, unit: Result<&str, UnitError>) -> bool {
        let Ok(unit) = unit else { return false };
        let b = scale(hash(self.seed, unit), u64::from(self.buckets)) as u32;
        self.ranges.iter().any(|&(s, e)| s <= b && b < e)
    }
}

// === impl Owner ===

impl Owner {
    /// The position within the experiment's cells of the cell holding `p` (`p < total`).
    #[inline(always)]
    fn cell(&self, p: u64, cells: &[Cell]) -> Option<u32> {
        if self.cell_count <= 2 {
            // One compare and no branch on it: a branch on the hash would be mispredicted about
            // as often as the split is even. (One cell: `split` is `total`, so always 0.)
            return Some(u32::from(p >= u64::from(self.split)));
        }
        if p < u64::from(self.split) {
            return Some(0);
        }
        // Three or more cells: walk the rest.
        let first = self.first_cell as usize;
        let rest = cells.get(first + 1..first + self.cell_count as usize)?;
        rest.iter().position(|c| p < c.end).map(|i| i as u32 + 1)
    }
}

// === impl Cell ===

impl Cell {
    #[inline(always)]
    pub(crate) fn variant_of(&self, flag: u32) -> Option<u32> {
        self.flags.iter().find(|(f, _)| *f == flag).map(|&(_, v)| v)
    }
}

// === impl Flag ===

impl Direct {
    /// `flag`'s answer from this plan: `variant`, served by the owner's cell `k` to a unit in
    /// `bucket`.
    #[inline(always)]
    fn raw(&self, flag: &Flag, bucket: u32, k: u32, variant: u32) -> Raw {
        let mut r = flag.raw(variant, Reason::Split);
        r.hit = Some(Hit {
            layer: self.layer,
            owner: self.index,
            cell: self.owner.first_cell + k,
            bucket,
        });
        r
    }
}

impl Flag {
    #[inline(always)]
    fn resolution(&self, variant: u32, reason: Reason) -> Resolution<'_> {
        static NULL: Value = Value::Null;
        let (name, value) = self
            .variants
            .get(variant as usize)
            .map_or(("", &NULL), |(n, v)| (&**n, v));
        self.resolution_of(name, value, reason)
    }

    /// The flag's answer serving variant `name` with `value`.
    #[inline(always)]
    fn resolution_of<'s>(
        &'s self,
        name: &'s str,
        value: &'s Value,
        reason: Reason,
    ) -> Resolution<'s> {
        Resolution {
            key: &self.key,
            index: self.index,
            kind: self.kind,
            value,
            variant: name,
            reason,
            error: None,
            assignment: None,
        }
    }

    #[inline(always)]
    fn raw(&self, variant: u32, reason: Reason) -> Raw {
        Raw {
            flag: self.index,
            variant,
            reason,
            error: None,
            hit: None,
        }
    }

    #[inline(always)]
    fn default_raw(&self, reason: Reason) -> Raw {
        self.raw(self.default, reason)
    }
}

// === impl Allocation ===

impl<'s> Allocation<'s> {
    /// The unit's assignments, one per layer where it has an experiment, in config layer order.
    pub fn assignments(&self) -> &[Assignment<'s>] {
        &self.assignments
    }

    /// Ids of the holdouts the unit is in, in config order.
    pub fn holdouts(&self) -> &[&'s str] {
        &self.holdouts
    }
}

// === impl Reason ===

impl Reason {
    /// The OpenFeature spelling: `STATIC`, `DEFAULT`, `TARGETING_MATCH`, `SPLIT`, `DISABLED`, `ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

// === impl ErrorCode ===

impl ErrorCode {
    /// The OpenFeature spelling: `TARGETING_KEY_MISSING`, `INVALID_CONTEXT`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
        }
    }
}

/// The error of `resolve` for `key`, out of line.
#[cold]
#[inline(never)]
fn not_found(key: &str) -> FlagNotFound {
    FlagNotFound(key.to_owned())
}

/// The default unit key, re-exported for layer/rollout defaults.
pub(crate) const DEFAULT_UNIT: &str = TARGETING_KEY;
