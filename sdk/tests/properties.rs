//! Invariants of the allocation algorithm (DESIGN §1-2) over generated configs and units.
//!
//! The generated configs have layers of random sizes cut into random segments, each owned by one
//! of a few experiments or left free; every experiment's cells select a variant of the layer's
//! flag, so flag resolution can be checked against allocation.

use allot::{Context, Reason, Snapshot, bucket, compile};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct LayerSpec {
    salt: String,
    buckets: u32,
    /// Half-open segments covering `0..buckets`, each owned by an experiment index or free.
    segments: Vec<(u32, u32, Option<usize>)>,
    /// Salt and cell weights of each experiment.
    experiments: Vec<(String, Vec<u32>)>,
    /// Each experiment's `when`, an index into [`WHEN`] (by experiment position, modulo).
    when: Vec<usize>,
}

/// The experiments' conditions, shared across layers so that equal conditions share one
/// evaluation per `allocate` call; 0 is none.
const WHEN: [&str; 4] = [
    "",
    r#"{"country": {"eq": "SE"}}"#,
    r#"{"country": {"in": ["SE", "NO"]}}"#,
    r#"{"plan": {"eq": "pro"}}"#,
];

/// The unit's context: `targetingKey` plus a country and a plan derived from the unit.
fn context(unit: &str) -> Context {
    let b = bucket::bucket("attrs", unit, 6) as usize;
    Context::with_targeting_key(unit)
        .with("country", ["SE", "NO", "US"][b % 3])
        .with("plan", ["pro", "free"][b / 3])
}

/// Whether `unit` satisfies condition `WHEN[w]` (the oracle's own reading of it).
fn holds(w: usize, unit: &str) -> bool {
    let b = bucket::bucket("attrs", unit, 6) as usize;
    match w {
        1 => b.is_multiple_of(3),
        2 => b % 3 < 2,
        3 => b / 3 == 0,
        _ => true,
    }
}

fn salt() -> impl Strategy<Value = String> {
    "\\PC{1,12}"
}

fn unit() -> impl Strategy<Value = String> {
    // Up to 64 chars of at most 4 bytes: always a valid unit of 1 to 256 bytes.
    "\\PC{1,64}"
}

fn layer_spec() -> impl Strategy<Value = LayerSpec> {
    let buckets = prop_oneof![
        Just(1u32),
        Just(7),
        Just(100),
        Just(10_000),
        Just(1_000_000),
        1..=1_000_000u32,
    ];
    (
        salt(),
        buckets,
        // Up to 40 cuts: layers of more than 8 ranges are searched through their slot table.
        prop::collection::vec(any::<u64>(), 0..40),
        prop::collection::vec(any::<u8>(), 41),
        prop::collection::vec((salt(), prop::collection::vec(0..5u32, 1..4)), 1..4),
        prop::collection::vec(0..WHEN.len(), 4),
    )
        .prop_map(|(salt, buckets, cuts, owners, mut experiments, when)| {
            let mut cuts: Vec<u32> = cuts
                .into_iter()
                .map(|c| bucket::scale(c, u64::from(buckets)) as u32)
                .filter(|&c| c > 0)
                .collect();
            cuts.push(0);
            cuts.push(buckets);
            cuts.sort_unstable();
            cuts.dedup();
            let n = experiments.len();
            let segments = cuts
                .windows(2)
                .zip(owners)
                .map(|(w, o)| {
                    let o = usize::from(o) % (n + 1);
                    (w[0], w[1], (o < n).then_some(o))
                })
                .collect();
            for (_, weights) in &mut experiments {
                if weights.iter().sum::<u32>() == 0 {
                    weights[0] = 1;
                }
            }
            LayerSpec {
                salt,
                buckets,
                segments,
                experiments,
                when,
            }
        })
}

/// The config document of `layers`: layer `l{i}`, experiments `l{i}e{j}` with cells `c{k}`
/// selecting variant `e{j}c{k}` of flag `f{i}` (default `none`).
fn config(layers: &[LayerSpec]) -> Value {
    config_with(layers, |_, _, _| true)
}

/// [`config`], where cell `k` of experiment `j` in layer `i` sets flag `f{i}` only if
/// `sets(i, j, k)`.
fn config_with(layers: &[LayerSpec], sets: impl Fn(usize, usize, usize) -> bool) -> Value {
    let mut ls = Vec::new();
    let mut exps = Vec::new();
    let mut flags = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        ls.push(json!({"id": format!("l{i}"), "salt": l.salt, "buckets": l.buckets}));
        let mut variants = serde_json::Map::new();
        variants.insert("none".into(), json!("none"));
        for (j, (salt, weights)) in l.experiments.iter().enumerate() {
            let ranges: Vec<String> = l
                .segments
                .iter()
                .filter(|s| s.2 == Some(j))
                .map(|s| format!("{}..{}", s.0, s.1))
                .collect();
            let cells: Vec<Value> = weights
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let v = format!("e{j}c{k}");
                    variants.insert(v.clone(), json!(format!("l{i}{v}")));
                    let flags = if sets(i, j, k) {
                        json!({format!("f{i}"): v})
                    } else {
                        json!({})
                    };
                    json!({"id": format!("c{k}"), "weight": w, "flags": flags})
                })
                .collect();
            let mut exp = json!({
                "id": format!("l{i}e{j}"), "layer": format!("l{i}"), "salt": salt,
                "ranges": ranges, "cells": cells,
            });
            let w = l.when[j % l.when.len()];
            if w != 0 {
                exp["when"] = serde_json::from_str(WHEN[w]).unwrap();
            }
            exps.push(exp);
        }
        flags.push(json!({
            "key": format!("f{i}"), "type": "string", "variants": variants, "default": "none",
        }));
    }
    json!({"layers": ls, "experiments": exps, "flags": flags})
}

fn snapshot(layers: &[LayerSpec]) -> Snapshot {
    let config = serde_json::from_value(config(layers)).unwrap();
    compile(&config, 1).unwrap_or_else(|e| panic!("{e}"))
}

/// The independent oracle: (layer, experiment, cell, bucket) from the spec's formulas.
fn expected(layers: &[LayerSpec], unit: &str) -> Vec<(String, String, String, u32)> {
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let b = bucket::bucket(&l.salt, unit, l.buckets);
        let owner = l.segments.iter().find(|s| s.0 <= b && b < s.1).unwrap().2;
        if let Some(j) = owner
            && holds(l.when[j % l.when.len()], unit)
        {
            let (salt, weights) = &l.experiments[j];
            let cell = bucket::pick(salt, unit, weights).unwrap();
            out.push((format!("l{i}"), format!("l{i}e{j}"), format!("c{cell}"), b));
        }
    }
    out
}

fn actual(snapshot: &Snapshot, unit: &str) -> Vec<(String, String, String, u32)> {
    let ctx = context(unit);
    snapshot
        .allocate(&ctx)
        .assignments()
        .iter()
        .map(|a| {
            (
                a.layer.to_owned(),
                a.experiment.to_owned(),
                a.cell.to_owned(),
                a.bucket,
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bucket_is_below_buckets(salt in salt(), unit in any::<String>(), buckets in 1..=u32::MAX) {
        prop_assert!(bucket::bucket(&salt, &unit, buckets) < buckets);
    }

    #[test]
    fn scale_is_below_n_and_monotone(h1 in any::<u64>(), h2 in any::<u64>(), n in 1..=u64::MAX) {
        let (lo, hi) = if h1 <= h2 { (h1, h2) } else { (h2, h1) };
        prop_assert!(bucket::scale(lo, n) < n);
        prop_assert!(bucket::scale(lo, n) <= bucket::scale(hi, n));
    }

    #[test]
    fn pick_chooses_a_nonzero_weight(salt in salt(), unit in unit(),
                                     weights in prop::collection::vec(0..=u32::MAX, 1..12)) {
        let got = bucket::pick(&salt, &unit, &weights);
        if weights.iter().all(|&w| w == 0) {
            prop_assert_eq!(got, None);
        } else {
            let i = got.unwrap();
            prop_assert!(weights[i] > 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// At most one experiment per layer, in layer order, and the unit's experiment owns the
    /// unit's bucket; the whole allocation equals the oracle built from `bucket`/`pick`.
    #[test]
    fn one_experiment_per_layer_owning_the_bucket(
        layers in prop::collection::vec(layer_spec(), 1..5),
        units in prop::collection::vec(unit(), 1..40),
    ) {
        let snap = snapshot(&layers);
        for unit in &units {
            let got = actual(&snap, unit);
            let mut seen: Vec<&str> = got.iter().map(|a| a.0.as_str()).collect();
            let in_order = seen.windows(2).all(|w| w[0][1..].parse::<usize>().unwrap() < w[1][1..].parse::<usize>().unwrap());
            prop_assert!(in_order, "{:?}", got);
            seen.dedup();
            prop_assert_eq!(seen.len(), got.len());
            prop_assert_eq!(&got, &expected(&layers, unit));
        }
    }

    /// Widening experiments' ranges into free buckets, and adding experiments there, never moves
    /// a unit that was enrolled to another experiment or cell.
    #[test]
    fn ramping_up_never_moves_enrolled_units(
        layers in prop::collection::vec(layer_spec(), 1..4),
        grow in prop::collection::vec(any::<u8>(), 8),
        new_salt in salt(),
        units in prop::collection::vec(unit(), 1..60),
    ) {
        let mut after = layers.clone();
        for l in &mut after {
            let n = l.experiments.len();
            l.experiments.push((new_salt.clone(), vec![1, 2]));
            for (s, g) in l.segments.iter_mut().zip(&grow) {
                if s.2.is_none() {
                    // Give a free segment to an existing experiment, the new one, or nobody.
                    let g = usize::from(*g) % (n + 2);
                    s.2 = (g <= n).then_some(g);
                }
            }
        }
        let (before_snap, after_snap) = (snapshot(&layers), snapshot(&after));
        for unit in &units {
            let before = actual(&before_snap, unit);
            let later = actual(&after_snap, unit);
            for a in &before {
                prop_assert!(later.contains(a), "{:?} moved: before {:?}, after {:?}", unit, before, later);
            }
        }
    }

    /// `resolve` and `resolve_all` serve exactly the cell's variant of the layer's flag for a
    /// unit the layer allocates, and the default otherwise.
    #[test]
    fn resolve_agrees_with_allocate(
        layers in prop::collection::vec(layer_spec(), 1..4),
        units in prop::collection::vec(unit(), 1..30),
    ) {
        let snap = snapshot(&layers);
        for unit in &units {
            let ctx = context(unit);
            let alloc = snap.allocate(&ctx);
            let all = snap.resolve_all(&ctx);
            prop_assert_eq!(all.len(), layers.len());
            for (i, r) in all.iter().enumerate() {
                prop_assert_eq!(&snap.resolve(r.key, &ctx).unwrap(), r);
                let layer = format!("l{i}");
                match alloc.assignments().iter().find(|a| a.layer == layer) {
                    Some(a) => {
                        prop_assert_eq!(r.reason, Reason::Split);
                        prop_assert_eq!(r.assignment.as_ref(), Some(a));
                        let variant = format!("{}{}", &a.experiment[layer.len()..], a.cell);
                        prop_assert_eq!(r.variant, variant.as_str());
                        prop_assert_eq!(r.value, &json!(format!("{layer}{variant}")));
                    }
                    None => {
                        prop_assert_eq!(r.reason, Reason::Default);
                        prop_assert_eq!(r.variant, "none");
                        prop_assert!(r.assignment.is_none());
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A flag that one owned range alone sets (the shape `resolve` hashes for directly): the
    /// unit's cell's variant when the unit is in that range, eligible, and its cell sets the
    /// flag; the default otherwise. Other experiments share the layer without setting the flag,
    /// and some of the experiment's cells leave it unset.
    #[test]
    fn flag_set_by_one_range_resolves_like_allocation(
        layers in prop::collection::vec(layer_spec(), 1..4),
        masks in prop::collection::vec(any::<u8>(), 3),
        units in prop::collection::vec(unit(), 1..30),
    ) {
        // Experiment 0 keeps its first segment only, and only it sets the flag.
        let layers: Vec<LayerSpec> = layers
            .into_iter()
            .map(|mut l| {
                let mut first = true;
                for s in l.segments.iter_mut().filter(|s| s.2 == Some(0)) {
                    if !first {
                        s.2 = None;
                    }
                    first = false;
                }
                l
            })
            .collect();
        let sets = |i: usize, j: usize, k: usize| j == 0 && (masks[i] >> k) & 1 == 1;
        let snap = compile(&serde_json::from_value(config_with(&layers, sets)).unwrap(), 1)
            .unwrap_or_else(|e| panic!("{e}"));
        for unit in &units {
            let ctx = context(unit);
            let all = snap.resolve_all(&ctx);
            let expected = expected(&layers, unit);
            for (i, r) in all.iter().enumerate() {
                prop_assert_eq!(&snap.resolve(r.key, &ctx).unwrap(), r);
                let layer = format!("l{i}");
                let cells = layers[i].experiments[0].1.len();
                let decided = expected.iter().find(|a| {
                    a.0 == layer && a.1 == format!("l{i}e0") && sets(i, 0, a.2[1..].parse().unwrap())
                });
                match decided {
                    Some((_, experiment, cell, bucket)) => {
                        prop_assert_eq!(r.reason, Reason::Split);
                        let variant = format!("e0{cell}");
                        prop_assert_eq!(r.variant, variant.as_str());
                        let a = r.assignment.unwrap();
                        prop_assert_eq!(
                            (a.layer, a.experiment, a.cell, a.bucket),
                            (layer.as_str(), experiment.as_str(), cell.as_str(), *bucket)
                        );
                    }
                    None => {
                        // A flag no cell sets has no experiment behind it: it is static.
                        let driven = (0..cells).any(|k| sets(i, 0, k));
                        let reason = if driven { Reason::Default } else { Reason::Static };
                        prop_assert_eq!(r.reason, reason);
                        prop_assert_eq!(r.variant, "none");
                        prop_assert!(r.assignment.is_none());
                    }
                }
            }
        }
    }
}

/// `|observed - n p| <= 5 sigma` of a Binomial(n, p): a false alarm has probability < 10^-6.
fn assert_binomial(observed: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let dev = (observed as f64 - mean).abs();
    assert!(
        dev <= 5.0 * sigma,
        "{what}: {observed} of {n}, expected {mean:.1} +- 5 * {sigma:.1}"
    );
}

fn one_experiment(layer_salt: &str, exp_salt: &str, owned: u32) -> Snapshot {
    allot::compile_str(
        &format!(
            r#"{{"layers": [{{"id": "home", "salt": "{layer_salt}"}}],
                "experiments": [{{"id": "e", "layer": "home", "salt": "{exp_salt}",
                                  "ranges": ["0..{owned}"],
                                  "cells": [{{"id": "a"}}, {{"id": "b"}}]}}]}}"#
        ),
        1,
    )
    .unwrap()
}

/// Changing a layer's salt reshuffles it. With one experiment owning a fraction f of the
/// buckets, a unit's old and new buckets come from independent hashes, so it is in the
/// experiment both before and after with probability f^2, and enrolled only before with
/// probability f(1 - f): of the units enrolled before, a fraction 1 - f moves out.
/// The experiment's own salt is unchanged, so units enrolled both times keep their cell.
#[test]
fn changing_a_layer_salt_reshuffles() {
    const N: usize = 20_000;
    let units: Vec<Context> = (0..N)
        .map(|i| Context::with_targeting_key(format!("member-{i}")))
        .collect();
    for owned in [1_000u32, 2_500, 5_000, 9_000] {
        let f = f64::from(owned) / 10_000.0;
        let before = one_experiment("home-2026q3", "e", owned);
        let after = one_experiment("home-2026q4", "e", owned);
        let (mut both, mut only_before, mut only_after) = (0, 0, 0);
        for ctx in &units {
            let b = before.allocate(ctx);
            let a = after.allocate(ctx);
            match (b.assignments().first(), a.assignments().first()) {
                (Some(x), Some(y)) => {
                    both += 1;
                    assert_eq!(x.cell, y.cell, "a layer salt change moved a cell");
                }
                (Some(_), None) => only_before += 1,
                (None, Some(_)) => only_after += 1,
                (None, None) => {}
            }
        }
        assert_binomial(both, N, f * f, &format!("f={f}: in both"));
        assert_binomial(only_before, N, f * (1.0 - f), &format!("f={f}: moved out"));
        assert_binomial(only_after, N, f * (1.0 - f), &format!("f={f}: moved in"));
    }
}

/// Changing an experiment's salt reshuffles its cells (two equal cells: a unit keeps its cell
/// with probability 1/2) and never its bucket or enrolment.
#[test]
fn changing_an_experiment_salt_reshuffles_cells_only() {
    const N: usize = 20_000;
    let before = one_experiment("home", "e-1", 10_000);
    let after = one_experiment("home", "e-2", 10_000);
    let mut same = 0;
    for i in 0..N {
        let ctx = Context::with_targeting_key(format!("member-{i}"));
        let (b, a) = (before.allocate(&ctx), after.allocate(&ctx));
        let (b, a) = (b.assignments()[0], a.assignments()[0]);
        assert_eq!(b.bucket, a.bucket);
        same += usize::from(b.cell == a.cell);
    }
    assert_binomial(same, N, 0.5, "kept their cell");
}
