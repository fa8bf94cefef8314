//! Validation and compilation: a [`Config`] document in, an immutable [`Snapshot`] out, or every
//! error found, each with its path.
//!
//! This is the only place that decides whether a config is acceptable; the server and the SDK
//! never re-validate. Everything that can be done once per config is done here (salts to seeds,
//! ranges sorted, names resolved to indices) so evaluation only looks things up.

use std::collections::HashMap;

use foldhash::fast::FixedState;
use serde_json::{Number, Value};

use crate::bucket::{SeedPair, scale, seed};
use crate::condition::{Compiler, Condition};
use crate::config::{Config, DEFAULT_BUCKETS, FlagConfig, FlagType, RuleConfig};
use crate::error::{ConfigError, ConfigErrors, ErrorKind, json_type};
use crate::id::{is_valid_flag_key, is_valid_id};
use crate::key_index::KeyIndex;
use crate::snapshot::{
    Action, Cell, DEFAULT_UNIT, Direct, Experiment, Flag, Holdout, Layer, NO_VARIANT, Named, Owner,
    Rule, Snapshot, UNCONDITIONAL,
};

/// Id tables of one compile (duplicate checks, references by id): a fixed-seed hasher, as ids
/// come from the config being compiled.
type IdMap<'a, V> = HashMap<&'a str, V, FixedState>;

/// Largest bucket count of a layer or holdout.
pub const MAX_BUCKETS: u32 = 1_000_000;

const ID_PATTERN: &str = "[A-Za-z0-9_-]{1,64}";
const FLAG_KEY_PATTERN: &str = "[A-Za-z0-9_.-]{1,64}";

/// Validates `config` and compiles it into a snapshot stamped with `revision`.
///
/// On failure every problem is reported, each with the path of the value at fault.
pub fn compile(config: &Config, revision: u64) -> Result<Snapshot, ConfigErrors> {
    // Unit keys first: layers, holdouts and rollouts refer to them by index.
    let mut unit_keys: Vec<&str> = config
        .layers
        .iter()
        .map(|l| l.unit.as_deref().unwrap_or(DEFAULT_UNIT))
        .chain(
            config
                .holdouts
                .iter()
                .map(|h| h.unit.as_deref().unwrap_or(DEFAULT_UNIT)),
        )
        .chain(
            config
                .flags
                .iter()
                .flat_map(|f| f.rules.iter())
                .filter_map(|r| r.rollout.as_ref())
                .map(|r| r.unit.as_deref().unwrap_or(DEFAULT_UNIT)),
        )
        .collect();
    unit_keys.sort_unstable();
    unit_keys.dedup();
    let mut cx = Cx {
        errors: Vec::new(),
        unit_keys: &unit_keys,
    };
    let mut conds = Compiler::new(&config.segments);
    conds.compile_segments();

    // --- layers
    let mut layer_ids: IdMap<'_, u32> = IdMap::default();
    let mut layers: Vec<Layer> = Vec::with_capacity(config.layers.len());
    for (i, l) in config.layers.iter().enumerate() {
        let path = format!("layers[{i}]");
        cx.id(|| format!("{path}.id"), "layer id", &l.id);
        if layer_ids.insert(&l.id, i as u32).is_some() {
            cx.err(
                format!("{path}.id"),
                ErrorKind::DuplicateId {
                    what: "layer id",
                    id: l.id.clone(),
                },
            );
        }
        let salt = cx.salt(|| format!("{path}.salt"), l.salt.as_deref(), &l.id);
        layers.push(Layer {
            id: l.id.as_str().into(),
            seed: seed(salt),
            buckets: cx.buckets(&format!("{path}.buckets"), l.buckets),
            unit: cx.unit(&format!("{path}.unit"), l.unit.as_deref()),
            first: 0,
            len: 0,
            slots: 0,
            shift: 64,
            holdouts: Box::new([]),
        });
    }

    // --- flags (before experiments: cells refer to them)
    let mut flag_ids: IdMap<'_, u32> = IdMap::default();
    let mut flags: Vec<Flag> = Vec::with_capacity(config.flags.len());
    let mut variant_ids: Vec<IdMap<'_, u32>> = Vec::with_capacity(config.flags.len());
    for (i, f) in config.flags.iter().enumerate() {
        let path = format!("flags[{i}]");
        if !is_valid_flag_key(&f.key) {
            cx.err(
                format!("{path}.key"),
                ErrorKind::InvalidId {
                    what: "flag key",
                    id: f.key.clone(),
                    pattern: FLAG_KEY_PATTERN,
                },
            );
        }
        if flag_ids.insert(&f.key, i as u32).is_some() {
            cx.err(
                format!("{path}.key"),
                ErrorKind::DuplicateId {
                    what: "flag key",
                    id: f.key.clone(),
                },
            );
        }
        let (flag, names) = cx.flag(f, i as u32, &path, &mut conds);
        flags.push(flag);
        variant_ids.push(names);
    }

    // --- experiments
    // Experiment and holdout ids share one namespace.
    let mut owner_ids: IdMap<'_, ()> = IdMap::default();
    let mut experiments: Vec<Experiment> = Vec::with_capacity(config.experiments.len());
    // Per experiment, what its owned ranges carry (see `Owner`).
    let mut metas: Vec<Owner> = Vec::with_capacity(config.experiments.len());
    let mut cells: Vec<Cell> = Vec::with_capacity(config.experiments.len() * 2);
    // Distinct cell ids, which owners name their first two cells by.
    let mut cell_names: Vec<Box<str>> = Vec::new();
    let mut cell_name_ids: IdMap<'_, u32> = IdMap::default();
    // Distinct `when`s (compact JSON) → (condition class, first experiment with it).
    let mut condition_ids: HashMap<String, (u32, u32), FixedState> = HashMap::default();
    // (layer, start, end, experiment, range index) for the overlap check.
    let mut claims: Vec<(u32, u32, u32, u32, u32)> = Vec::new();
    let mut flag_layer: Vec<Option<(u32, String)>> = vec![None; flags.len()];
    for (i, e) in config.experiments.iter().enumerate() {
        let path = format!("experiments[{i}]");
        cx.id(|| format!("{path}.id"), "experiment id", &e.id);
        if owner_ids.insert(&e.id, ()).is_some() {
            cx.err(
                format!("{path}.id"),
                ErrorKind::DuplicateId {
                    what: "experiment or holdout id",
                    id: e.id.clone(),
                },
            );
        }
        let li = layer_ids.get(e.layer.as_str()).copied();
        if li.is_none() {
            cx.err(
                format!("{path}.layer"),
                ErrorKind::Unknown {
                    what: "layer",
                    id: e.layer.clone(),
                },
            );
        }
        let layer = li.and_then(|li| layers.get(li as usize));
        for (r, text) in e.ranges.iter().enumerate() {
            // Paths are only built for errors: a valid 10,000-experiment config would spend
            // more on formatting them than on the rest of its compile.
            let rpath = || format!("{path}.ranges[{r}]");
            let Some((start, end)) = cx.range(rpath, text) else {
                continue;
            };
            if let (Some(li), Some(layer)) = (li, layer) {
                if end > layer.buckets {
                    cx.err(
                        rpath(),
                        ErrorKind::RangeExceeds {
                            range: format!("{start}..{end}"),
                            scope: format!("layer {}", layer.id),
                            buckets: layer.buckets,
                        },
                    );
                } else {
                    claims.push((li, start, end, i as u32, r as u32));
                }
            }
        }
        let when = conds.compile_opt(e.when.as_ref(), || format!("{path}.when"));
        if e.cells.is_empty() {
            cx.err(
                format!("{path}.cells"),
                ErrorKind::EmptyList { what: "cells" },
            );
        }
        let mut cell_ids: IdMap<'_, ()> = IdMap::default();
        let mut end = 0u64;
        let first_cell = cells.len() as u32;
        for (c, cell) in e.cells.iter().enumerate() {
            let cpath = || format!("{path}.cells[{c}]");
            cx.id(|| format!("{}.id", cpath()), "cell id", &cell.id);
            if cell_ids.insert(&cell.id, ()).is_some() {
                cx.err(
                    format!("{}.id", cpath()),
                    ErrorKind::DuplicateId {
                        what: "cell id",
                        id: cell.id.clone(),
                    },
                );
            }
            end += u64::from(cell.weight);
            let mut selected = Vec::with_capacity(cell.flags.len());
            for (key, variant) in &cell.flags {
                let fpath = || format!("{}.flags.{key}", cpath());
                let Some(&fi) = flag_ids.get(key.as_str()) else {
                    cx.err(
                        fpath(),
                        ErrorKind::Unknown {
                            what: "flag",
                            id: key.clone(),
                        },
                    );
                    continue;
                };
                match variant_ids
                    .get(fi as usize)
                    .and_then(|v| v.get(variant.as_str()))
                {
                    Some(&vi) => selected.push((fi, vi)),
                    None => cx.err(
                        fpath(),
                        ErrorKind::UnknownVariant {
                            flag: key.clone(),
                            variant: variant.clone(),
                        },
                    ),
                }
                if let (Some(li), Some(slot)) = (li, flag_layer.get_mut(fi as usize)) {
                    match slot {
                        None => *slot = Some((li, e.layer.clone())),
                        Some((first, first_id)) if *first != li => cx.err(
                            fpath(),
                            ErrorKind::FlagInTwoLayers {
                                flag: key.clone(),
                                first: first_id.clone(),
                                second: e.layer.clone(),
                            },
                        ),
                        Some(_) => {}
                    }
                }
            }
            selected.sort_unstable();
            cells.push(Cell {
                id: cell.id.as_str().into(),
                end,
                flags: selected.into(),
            });
        }
        if !e.cells.is_empty() && end == 0 {
            cx.err(format!("{path}.cells"), ErrorKind::ZeroWeight);
        }
        let salt = cx.salt(|| format!("{path}.salt"), e.salt.as_deref(), &e.id);
        let mut names = [0u32; 2];
        for (name, cell) in names.iter_mut().zip(&e.cells) {
            *name = *cell_name_ids.entry(&cell.id).or_insert_with(|| {
                cell_names.push(cell.id.as_str().into());
                cell_names.len() as u32 - 1
            });
        }
        let (condition, evaluated) = match &e.when {
            Some(v) if !matches!(when, Condition::True) => {
                let next = (condition_ids.len() as u32, i as u32);
                *condition_ids.entry(v.to_string()).or_insert(next)
            }
            _ => (UNCONDITIONAL, i as u32),
        };
        metas.push(Owner {
            experiment: evaluated,
            experiment_id: e.id.as_str().into(),
            condition,
            first_cell,
            cell_count: cells.len() as u32 - first_cell,
            seed: seed(salt),
            total: end,
            // The first cell's end is its weight, a u32.
            split: cells
                .get(first_cell as usize)
                .map_or(0, |c| u32::try_from(c.end).unwrap_or(u32::MAX)),
            start: 0,
            names,
        });
        experiments.push(Experiment { when });
    }

    // Disjoint ranges per layer: sort by (layer, start) and compare with the furthest end so far.
    claims.sort_by_key(|c| (c.0, c.1, c.2));
    let mut per_layer: Vec<Vec<(u32, u32, u32)>> = (0..layers.len()).map(|_| Vec::new()).collect();
    let mut prev: Option<(u32, u32, u32, u32)> = None; // layer, start, end, experiment of the furthest-reaching claim
    for (li, start, end, exp, r) in claims {
        if let Some((pl, ps, pe, pexp)) = prev
            && pl == li
            && start < pe
        {
            cx.err(
                format!("experiments[{exp}].ranges[{r}]"),
                ErrorKind::Overlap {
                    range: format!("{start}..{end}"),
                    other_range: format!("{ps}..{pe}"),
                    other: format!(
                        "experiment {}",
                        metas.get(pexp as usize).map_or("", |m| &*m.experiment_id)
                    ),
                },
            );
            if end <= pe {
                continue;
            }
        }
        prev = Some((li, start, end, exp));
        if let Some(o) = per_layer.get_mut(li as usize) {
            o.push((start, end, exp));
        }
    }
    let mut bounds: Vec<(u32, u32)> = Vec::new();
    let mut owners: Vec<Owner> = Vec::new();
    let mut slots: Vec<(u32, u32)> = Vec::new();
    for (layer, claims) in layers.iter_mut().zip(per_layer) {
        layer.first = bounds.len() as u32;
        for (start, end, exp) in claims {
            if let Some(meta) = metas.get(exp as usize) {
                bounds.push((start, end));
                owners.push(Owner {
                    start,
                    ..meta.clone()
                });
            }
        }
        layer.len = bounds.len() as u32 - layer.first;
        // The slot table (see `Layer::slots`): at least as many slots as ranges, a power of two.
        let ranges = bounds.get(layer.first as usize..).unwrap_or_default();
        let bits = ranges.len().max(1).next_power_of_two().trailing_zeros();
        layer.shift = 64 - bits;
        layer.slots = slots.len() as u32;
        for s in 0..1u64 << bits {
            // The least bucket of a hash whose top `bits` bits are `s`.
            let least = scale(
                s.checked_shl(layer.shift).unwrap_or(0),
                u64::from(layer.buckets),
            );
            let before = ranges.partition_point(|&(_, end)| u64::from(end) <= least);
            let end = ranges.get(before).map_or(0, |&(_, end)| end);
            slots.push((layer.first + before as u32, end));
        }
        slots.push((layer.first + layer.len, 0));
    }

    // --- holdouts
    let mut holdouts = Vec::with_capacity(config.holdouts.len());
    let mut covering: Vec<Vec<u32>> = (0..layers.len()).map(|_| Vec::new()).collect();
    for (i, h) in config.holdouts.iter().enumerate() {
        let path = format!("holdouts[{i}]");
        cx.id(|| format!("{path}.id"), "holdout id", &h.id);
        if owner_ids.insert(&h.id, ()).is_some() {
            cx.err(
                format!("{path}.id"),
                ErrorKind::DuplicateId {
                    what: "experiment or holdout id",
                    id: h.id.clone(),
                },
            );
        }
        let buckets = cx.buckets(&format!("{path}.buckets"), h.buckets);
        let mut ranges: Vec<(u32, u32, String)> = Vec::new();
        for (r, text) in h.ranges.iter().enumerate() {
            let rpath = format!("{path}.ranges[{r}]");
            let Some((start, end)) = cx.range(|| rpath.clone(), text) else {
                continue;
            };
            if end > buckets {
                cx.err(
                    rpath,
                    ErrorKind::RangeExceeds {
                        range: format!("{start}..{end}"),
                        scope: format!("holdout {}", h.id),
                        buckets,
                    },
                );
            } else {
                ranges.push((start, end, rpath));
            }
        }
        ranges.sort_by_key(|r| (r.0, r.1));
        let mut kept: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (start, end, rpath) in ranges {
            if let Some(&(ps, pe)) = kept.last()
                && start < pe
            {
                cx.err(
                    rpath,
                    ErrorKind::Overlap {
                        range: format!("{start}..{end}"),
                        other_range: format!("{ps}..{pe}"),
                        other: format!("holdout {}", h.id),
                    },
                );
                continue;
            }
            kept.push((start, end));
        }
        if h.layers.is_empty() {
            cx.err(
                format!("{path}.layers"),
                ErrorKind::EmptyList { what: "layers" },
            );
        }
        for (l, id) in h.layers.iter().enumerate() {
            match layer_ids.get(id.as_str()) {
                Some(&li) => {
                    if let Some(c) = covering.get_mut(li as usize)
                        && !c.contains(&(i as u32))
                    {
                        c.push(i as u32);
                    }
                }
                None => cx.err(
                    format!("{path}.layers[{l}]"),
                    ErrorKind::Unknown {
                        what: "layer",
                        id: id.clone(),
                    },
                ),
            }
        }
        let salt = cx.salt(|| format!("{path}.salt"), h.salt.as_deref(), &h.id);
        holdouts.push(Holdout {
            id: h.id.as_str().into(),
            seed: seed(salt),
            buckets,
            unit: cx.unit(&format!("{path}.unit"), h.unit.as_deref()),
            ranges: kept.into(),
        });
    }
    for (layer, c) in layers.iter_mut().zip(covering) {
        layer.holdouts = c.into();
    }

    let flag_layer: Vec<Option<u32>> = flag_layer
        .into_iter()
        .map(|driver| driver.map(|(li, _)| li))
        .collect();
    let mut flag_layers: Vec<u32> = flag_layer.iter().flatten().copied().collect();
    flag_layers.sort_unstable();
    flag_layers.dedup();
    let targeting_unit = unit_keys
        .binary_search(&DEFAULT_UNIT)
        .ok()
        .map(|i| i as u32);
    for (flag, li) in flags.iter_mut().zip(flag_layer) {
        if let Some(li) = li {
            flag.slot = flag_layers.binary_search(&li).unwrap_or_default() as u32;
            flag.layer = layers.get(li as usize).map(|layer| (li, layer.clone()));
            flag.direct = direct(flag, &layers, li, &bounds, &owners, &cells, targeting_unit);
        }
    }

    cx.errors.append(&mut conds.errors);
    if !cx.errors.is_empty() {
        return Err(ConfigErrors(cx.errors));
    }
    let flag_index = KeyIndex::new(flags.iter().map(|f| &*f.key));
    Ok(Snapshot {
        revision,
        content_hash: config.content_hash(),
        config: config.clone(),
        layers: layers.into(),
        bounds: bounds.into(),
        slots: slots.into(),
        owners: owners.into(),
        experiments: experiments.into(),
        cells: cells.into(),
        cell_names: cell_names.into(),
        holdouts: holdouts.into(),
        flags: flags.into(),
        flag_index,
        flag_layers: flag_layers.into(),
        targeting_unit,
        unit_keys: unit_keys.iter().map(|&k| Box::from(k)).collect(),
    })
}

/// Parses a YAML or JSON document and compiles it: [`Config::parse`] then [`compile`].
pub fn compile_str(text: &str, revision: u64) -> Result<Snapshot, ConfigErrors> {
    compile(&Config::parse(text)?, revision)
}

/// Error collection for one compilation, and the unit keys to index.
struct Cx<'k> {
    errors: Vec<ConfigError>,
    unit_keys: &'k [&'k str],
}

impl Cx<'_> {
    fn err(&mut self, path: impl Into<String>, kind: ErrorKind) {
        self.errors.push(ConfigError::new(path, kind));
    }

    fn id(&mut self, path: impl FnOnce() -> String, what: &'static str, id: &str) {
        if !is_valid_id(id) {
            self.err(
                path(),
                ErrorKind::InvalidId {
                    what,
                    id: id.to_owned(),
                    pattern: ID_PATTERN,
                },
            );
        }
    }

    fn salt<'a>(
        &mut self,
        path: impl FnOnce() -> String,
        salt: Option<&'a str>,
        id: &'a str,
    ) -> &'a str {
        match salt {
            Some("") => {
                self.err(path(), ErrorKind::Empty { what: "salt" });
                ""
            }
            Some(s) => s,
            None => id,
        }
    }

    /// The index of a unit key in the snapshot's unit keys (all were collected up front).
    fn unit(&mut self, path: &str, unit: Option<&str>) -> u32 {
        let unit = unit.unwrap_or(DEFAULT_UNIT);
        if unit.is_empty() {
            self.err(path, ErrorKind::Empty { what: "unit" });
        }
        self.unit_keys.binary_search(&unit).unwrap_or(0) as u32
    }

    fn buckets(&mut self, path: &str, buckets: Option<u64>) -> u32 {
        match buckets {
            None => DEFAULT_BUCKETS,
            Some(b) if (1..=u64::from(MAX_BUCKETS)).contains(&b) => b as u32,
            Some(b) => {
                self.err(
                    path,
                    ErrorKind::InvalidBuckets {
                        buckets: b,
                        max: MAX_BUCKETS,
                    },
                );
                DEFAULT_BUCKETS
            }
        }
    }

    /// Parses `"start..end"` (half-open, start < end).
    fn range(&mut self, path: impl FnOnce() -> String, text: &str) -> Option<(u32, u32)> {
        let fail = |reason| ErrorKind::InvalidRange {
            range: text.to_owned(),
            reason,
        };
        let Some((a, b)) = text.split_once("..") else {
            self.err(path(), fail("expected `start..end`"));
            return None;
        };
        let num = |s: &str| {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                None
            } else {
                s.parse::<u32>().ok()
            }
        };
        match (num(a), num(b)) {
            (Some(start), Some(end)) if start < end => Some((start, end)),
            (Some(_), Some(_)) => {
                self.err(path(), fail("start must be less than end"));
                None
            }
            _ => {
                self.err(path(), fail("start and end must be whole numbers"));
                None
            }
        }
    }

    fn flag<'c>(
        &mut self,
        f: &'c FlagConfig,
        index: u32,
        path: &str,
        conds: &mut Compiler<'_>,
    ) -> (Flag, IdMap<'c, u32>) {
        if f.variants.is_empty() {
            self.err(
                format!("{path}.variants"),
                ErrorKind::EmptyList { what: "variants" },
            );
        }
        let mut names = IdMap::with_capacity_and_hasher(f.variants.len(), FixedState::default());
        let mut variants = Vec::with_capacity(f.variants.len());
        for (name, value) in &f.variants {
            let vpath = format!("{path}.variants.{name}");
            self.id(|| vpath.clone(), "variant name", name);
            names.insert(name.as_str(), variants.len() as u32);
            let value = match typed(f.kind, value) {
                Some(v) => v,
                None => {
                    self.err(
                        vpath,
                        ErrorKind::TypeMismatch {
                            variant: name.clone(),
                            expected: f.kind.as_str(),
                            found: json_type(value),
                        },
                    );
                    value.clone()
                }
            };
            variants.push((Box::<str>::from(name.as_str()), value));
        }
        let variant = |cx: &mut Self, p: String, v: &str| -> u32 {
            names.get(v).copied().unwrap_or_else(|| {
                cx.err(
                    p,
                    ErrorKind::UnknownVariant {
                        flag: f.key.clone(),
                        variant: v.to_owned(),
                    },
                );
                0
            })
        };
        let default = variant(self, format!("{path}.default"), &f.default);
        let mut rules = Vec::with_capacity(f.rules.len());
        for (r, rule) in f.rules.iter().enumerate() {
            let rpath = format!("{path}.rules[{r}]");
            let when = conds.compile_opt(rule.when.as_ref(), || format!("{rpath}.when"));
            let action = match rule {
                RuleConfig {
                    variant: Some(v),
                    rollout: None,
                    ..
                } => Action::Variant(variant(self, format!("{rpath}.variant"), v)),
                RuleConfig {
                    variant: None,
                    rollout: Some(ro),
                    ..
                } => {
                    let spath = format!("{rpath}.rollout.split");
                    if ro.split.is_empty() {
                        self.err(spath.clone(), ErrorKind::EmptyList { what: "split" });
                    }
                    let mut end = 0u64;
                    let mut split = Vec::with_capacity(ro.split.len());
                    for (s, entry) in ro.split.iter().enumerate() {
                        end += u64::from(entry.weight);
                        split.push((
                            end,
                            variant(self, format!("{spath}[{s}].variant"), &entry.variant),
                        ));
                    }
                    if !ro.split.is_empty() && end == 0 {
                        self.err(spath, ErrorKind::ZeroWeight);
                    }
                    let salt = self.salt(
                        || format!("{rpath}.rollout.salt"),
                        ro.salt.as_deref(),
                        &f.key,
                    );
                    Action::Rollout {
                        seed: seed(salt),
                        unit: self.unit(&format!("{rpath}.rollout.unit"), ro.unit.as_deref()),
                        total: end,
                        split: split.into(),
                    }
                }
                _ => {
                    self.err(rpath, ErrorKind::RuleShape);
                    Action::Variant(default)
                }
            };
            rules.push(Rule { when, action });
        }
        let flag = Flag {
            index,
            key: f.key.as_str().into(),
            kind: f.kind,
            variants: variants.into(),
            default,
            enabled: f.enabled,
            layer: None,
            slot: 0,
            direct: None,
            rules: rules.into(),
        };
        (flag, names)
    }
}

/// The [`Direct`] plan of `flag` in layer `li`: when exactly one of the layer's owned ranges
/// belongs to an experiment with a cell that sets the flag. `targeting` is the index of
/// `targetingKey` among the unit keys.
fn direct(
    flag: &Flag,
    layers: &[Layer],
    li: u32,
    bounds: &[(u32, u32)],
    owners: &[Owner],
    cells: &[Cell],
    targeting: Option<u32>,
) -> Option<Direct> {
    let layer = layers.get(li as usize)?;
    let range = layer.first as usize..(layer.first + layer.len) as usize;
    let cells_of = |o: &Owner| {
        let first = o.first_cell as usize;
        cells
            .get(first..first + o.cell_count as usize)
            .unwrap_or_default()
    };
    let mut setting = owners
        .get(range.clone())?
        .iter()
        .zip(range)
        .filter(|(o, _)| {
            cells_of(o)
                .iter()
                .any(|c| c.variant_of(flag.index).is_some())
        });
    let (owner, index) = setting.next()?;
    if setting.next().is_some() {
        return None;
    }
    let &(_, end) = bounds.get(index)?;
    let mut variants = [NO_VARIANT; 2];
    let mut named: [Named; 2] = Default::default();
    for ((v, n), cell) in variants.iter_mut().zip(&mut named).zip(cells_of(owner)) {
        *v = cell.variant_of(flag.index).unwrap_or(NO_VARIANT);
        if let Some((name, value)) = flag.variants.get(*v as usize) {
            *n = Named {
                variant: name.clone(),
                value: value.clone(),
                cell: cell.id.clone(),
            };
        }
    }
    Some(Direct {
        owner: owner.clone(),
        index: index as u32,
        end,
        seeds: SeedPair::new(layer.seed, owner.seed),
        layer: li,
        buckets: layer.buckets,
        layer_id: layer.id.clone(),
        quick: flag.enabled && layer.holdouts.is_empty() && Some(layer.unit) == targeting,
        variants,
        named,
    })
}

/// The value as the flag type stores it, or `None` if it does not fit. Float flags store
/// integers as floats so they serialize as `1.0`.
fn typed(kind: FlagType, v: &Value) -> Option<Value> {
    match (kind, v) {
        (FlagType::Bool, Value::Bool(_))
        | (FlagType::String, Value::String(_))
        | (FlagType::Object, Value::Object(_)) => Some(v.clone()),
        (FlagType::Int, Value::Number(n)) if n.is_i64() || (n.is_u64() && n.as_i64().is_some()) => {
            Some(v.clone())
        }
        (FlagType::Float, Value::Number(n)) => {
            n.as_f64().and_then(Number::from_f64).map(Value::Number)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layer `home` with the given experiments (`(ranges, cells' flags)` each) and flag `f`.
    fn snapshot(experiments: &[(&[&str], &[Value])]) -> Snapshot {
        let exps: Vec<Value> = experiments
            .iter()
            .enumerate()
            .map(|(i, (ranges, cells))| {
                let cells: Vec<Value> = cells
                    .iter()
                    .enumerate()
                    .map(|(k, flags)| serde_json::json!({ "id": format!("c{k}"), "flags": flags }))
                    .collect();
                serde_json::json!({ "id": format!("e{i}"), "layer": "home",
                                    "ranges": ranges, "cells": cells })
            })
            .collect();
        let doc = serde_json::json!({
            "layers": [{ "id": "home" }],
            "experiments": exps,
            "flags": [
                { "key": "f", "type": "bool", "variants": { "on": true, "off": false }, "default": "off" },
                { "key": "g", "type": "bool", "variants": { "on": true, "off": false }, "default": "off" },
            ],
        });
        compile(&serde_json::from_value(doc).unwrap(), 1).unwrap()
    }

    fn direct_of(snap: &Snapshot) -> Option<&Direct> {
        snap.flags.first().unwrap().direct.as_ref()
    }

    /// The names of a plan's first two cells' variants of `f` ("" for none).
    fn variants(snap: &Snapshot, d: &Direct) -> [String; 2] {
        let flag = snap.flags.first().unwrap();
        d.variants.map(|v| {
            flag.variants
                .get(v as usize)
                .map_or(String::new(), |(name, _)| name.to_string())
        })
    }

    #[test]
    fn a_flag_set_by_one_range_gets_a_direct_plan() {
        let on = serde_json::json!({ "f": "on" });
        let off = serde_json::json!({ "f": "off" });
        let other = serde_json::json!({ "g": "on" });
        let none = serde_json::json!({});

        let snap = snapshot(&[(&["0..10000"], &[off.clone(), on.clone()])]);
        let d = direct_of(&snap).expect("one experiment, one range");
        assert_eq!((d.owner.start, d.end, d.index), (0, 10_000, 0));
        assert_eq!(variants(&snap, d), ["off", "on"]);

        // Another experiment in the layer that sets another flag; a cell leaving `f` unset.
        let snap = snapshot(&[
            (&["0..5000"], std::slice::from_ref(&other)),
            (&["6000..7000"], &[none.clone(), on.clone(), off.clone()]),
        ]);
        let d = direct_of(&snap).expect("only e1 sets f");
        assert_eq!((d.owner.start, d.end, d.index), (6000, 7000, 1));
        assert_eq!(d.variants[0], NO_VARIANT);
        assert_eq!(variants(&snap, d), ["", "on"]);

        // Two ranges, or two experiments, set `f`: the general path.
        assert!(
            direct_of(&snapshot(&[(
                &["0..10", "20..30"],
                std::slice::from_ref(&on)
            )]))
            .is_none()
        );
        assert!(
            direct_of(&snapshot(&[
                (&["0..10"], std::slice::from_ref(&on)),
                (&["20..30"], &[off])
            ]))
            .is_none()
        );
    }

    /// `resolve`'s short path is taken exactly for enabled flags whose layer hashes
    /// `targetingKey` and has no holdout.
    #[test]
    fn the_short_path_is_for_targeting_key_layers_without_holdouts() {
        let quick = |layer: serde_json::Value, holdouts: serde_json::Value, enabled: bool| {
            let doc = serde_json::json!({
                "layers": [layer],
                "holdouts": holdouts,
                "experiments": [{ "id": "e", "layer": "home", "ranges": ["0..10000"],
                                  "cells": [{ "id": "a", "flags": { "f": "on" } }] }],
                "flags": [{ "key": "f", "type": "bool", "enabled": enabled,
                            "variants": { "on": true, "off": false }, "default": "off" }],
            });
            let snap = compile(&serde_json::from_value(doc).unwrap(), 1).unwrap();
            direct_of(&snap).expect("one range sets f").quick
        };
        let home = serde_json::json!({ "id": "home" });
        let none = serde_json::json!([]);
        assert!(quick(home.clone(), none.clone(), true));
        assert!(!quick(home.clone(), none.clone(), false), "disabled");
        assert!(
            !quick(
                serde_json::json!({ "id": "home", "unit": "device_id" }),
                none,
                true
            ),
            "another unit"
        );
        let held = serde_json::json!([{ "id": "h", "layers": ["home"], "ranges": ["0..100"] }]);
        assert!(!quick(home, held, true), "a holdout covers the layer");
    }
}
