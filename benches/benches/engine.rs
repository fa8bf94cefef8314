//! Criterion benches of the engine's hot paths (issue 2, "Speed"); numbers in BENCHMARKS.md.
//!
//! Every input is built outside `b.iter` and every argument is `black_box`ed. Each iteration
//! takes the next of [`N`] precomputed contexts (or units), so the branch predictor and caches
//! see as many distinct units as a server would and no bench is flattered by a single hot unit.
//! The floors (`floor/*`) rotate through the same units, so the ratios to them are fair.

use std::hint::black_box;

use allot::bucket::{hash, scale, seed};
use allot::stamp::{self, DEFAULT_BUDGET};
use allot::{Allocation, Config, Context, Snapshot};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

/// Distinct contexts rotated per iteration (a power of two so the index is a mask).
const N: usize = 1024;
const MASK: usize = N - 1;

/// Countries of the contexts: 3 in 8 are `SE`, so an `eq SE` condition goes both ways.
const COUNTRIES: [&str; 8] = ["SE", "US", "DE", "SE", "GB", "FR", "SE", "NO"];
const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
const PLANS: [&str; 3] = ["free", "pro", "team"];
const LOCALES: [&str; 5] = ["sv-SE", "en-US", "de-DE", "en-GB", "nb-NO"];

/// A realistic incoming `baggage` header: tracing vendors' members, a property, and a forged
/// `allot` member that the merge must drop.
const INCOMING: &str = "userId=alice,sessionId=0b6f6a0e-9a41-4c1e-8d0b-2f1c7f3e9a11,\
     tenant=acme;priority=high,allot=1.3.forged~x,sentry-environment=production,\
     sentry-release=web%401.42.0,sentry-public_key=9f4c2b1d0e8a4f7c,\
     sentry-trace_id=4bf92f3577b34da6a3ce929d0e0e4736,sentry-sample_rate=0.1";

/// SplitMix64: spreads `i` so unit ids look like UUIDs rather than a counter.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The unit id of context `i`: a 36-byte UUID-shaped string, as member or device ids are.
fn unit(i: usize) -> String {
    let a = mix(i as u64);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// [`N`] contexts of 6 attributes each: the unit plus country, platform, app version, plan, locale.
fn contexts() -> Vec<Context> {
    (0..N)
        .map(|i| {
            Context::with_targeting_key(unit(i))
                .with("country", COUNTRIES[i % COUNTRIES.len()])
                .with("platform", PLATFORMS[i % PLATFORMS.len()])
                .with("app_version", format!("5.{}.{}", i % 7, i % 3))
                .with("plan", PLANS[i % PLANS.len()])
                .with("locale", LOCALES[i % LOCALES.len()])
        })
        .collect()
}

fn config(doc: Value) -> Config {
    serde_json::from_value(doc).expect("bench config matches the schema")
}

fn snapshot(doc: Value) -> Snapshot {
    allot::compile(&config(doc), 1).expect("bench config compiles")
}

fn bool_flag(key: &str) -> Value {
    json!({ "key": key, "type": "bool", "variants": { "on": true, "off": false }, "default": "off" })
}

/// One bool flag driven by a 50/50 experiment over the whole layer, whose eligibility is `when`.
fn one_flag_experiment(when: Option<Value>) -> Snapshot {
    let mut exp = json!({
        "id": "prefetch-test",
        "layer": "home",
        "ranges": ["0..10000"],
        "cells": [
            { "id": "control", "flags": { "prefetch": "off" } },
            { "id": "treatment", "flags": { "prefetch": "on" } },
        ],
    });
    if let Some(when) = when {
        exp["when"] = when;
    }
    snapshot(json!({
        "layers": [{ "id": "home" }],
        "experiments": [exp],
        "flags": [bool_flag("prefetch")],
    }))
}

/// One bool flag with a single 10/90 salted rollout rule.
fn rollout() -> Snapshot {
    let mut flag = bool_flag("new-checkout");
    flag["rules"] = json!([{ "rollout": {
        "salt": "new-checkout-2026-11",
        "split": [{ "variant": "on", "weight": 10 }, { "variant": "off", "weight": 90 }],
    } }]);
    snapshot(json!({ "flags": [flag] }))
}

/// 100 flags: 50 driven by experiments in 5 layers (5 experiments of 2,000 buckets per layer,
/// each 50/50 and driving 2 flags), 25 salted rollouts (5 of them behind a platform condition)
/// and 25 targeting rules (`eq`, `in`, `semver_ge` on context attributes).
fn hundred_flags() -> Snapshot {
    let mut layers = Vec::new();
    let mut experiments = Vec::new();
    let mut flags = Vec::new();
    for l in 0..5 {
        layers.push(json!({ "id": format!("surface-{l}") }));
        for e in 0..5 {
            let keys = [format!("s{l}.feature-{e}a"), format!("s{l}.feature-{e}b")];
            let cell = |variant: &str| {
                keys.iter()
                    .map(|k| (k.clone(), json!(variant)))
                    .collect::<serde_json::Map<_, _>>()
            };
            experiments.push(json!({
                "id": format!("surface-{l}-test-{e}"),
                "layer": format!("surface-{l}"),
                "ranges": [format!("{}..{}", e * 2_000, (e + 1) * 2_000)],
                "cells": [
                    { "id": "control", "flags": cell("off") },
                    { "id": "treatment", "flags": cell("on") },
                ],
            }));
            flags.extend(keys.iter().map(|k| bool_flag(k)));
        }
    }
    for r in 0..25u32 {
        let mut flag = bool_flag(&format!("rollout.feature-{r}"));
        let on = 4 * r;
        let mut rule = json!({ "rollout": {
            "split": [{ "variant": "on", "weight": on }, { "variant": "off", "weight": 100 - on }],
        } });
        if r % 5 == 0 {
            rule["when"] = json!({ "platform": { "in": ["ios", "android"] } });
        }
        flag["rules"] = json!([rule]);
        flags.push(flag);
    }
    for t in 0..25 {
        let mut flag = bool_flag(&format!("rule.feature-{t}"));
        let when = match t % 5 {
            0 | 1 => json!({ "country": "SE" }),
            2 => json!({ "country": { "in": ["SE", "NO", "DK", "FI"] } }),
            3 => json!({ "plan": { "eq": "pro" } }),
            _ => json!({ "app_version": { "semver_ge": "5.3.0" } }),
        };
        flag["rules"] = json!([{ "when": when, "variant": "on" }]);
        flags.push(flag);
    }
    let doc = json!({ "layers": layers, "experiments": experiments, "flags": flags });
    let snap = snapshot(doc);
    assert_eq!(snap.flag_keys().len(), 100);
    snap
}

/// 500 layers of 20 experiments each (10,000 experiments), every experiment owning 500 buckets
/// with two cells; each layer drives one flag and every fourth experiment has a condition.
fn ten_thousand_experiments() -> Config {
    let mut layers = Vec::new();
    let mut experiments = Vec::new();
    let mut flags = Vec::new();
    for l in 0..500 {
        let layer = format!("layer-{l:03}");
        let flag = format!("layer-{l:03}.flag");
        for e in 0..20 {
            let mut exp = json!({
                "id": format!("layer-{l:03}-experiment-{e:02}"),
                "layer": layer,
                "ranges": [format!("{}..{}", e * 500, (e + 1) * 500)],
                "cells": [
                    { "id": "control", "weight": 1, "flags": { &flag: "off" } },
                    { "id": "treatment", "weight": 1, "flags": { &flag: "on" } },
                ],
            });
            if e % 4 == 0 {
                exp["when"] = json!({ "country": { "in": ["SE", "NO", "DK", "FI", "US"] } });
            }
            experiments.push(exp);
        }
        layers.push(json!({ "id": layer }));
        flags.push(bool_flag(&flag));
    }
    config(json!({ "layers": layers, "experiments": experiments, "flags": flags }))
}

fn floor(c: &mut Criterion, ctxs: &[Context]) {
    let units: Vec<&str> = ctxs
        .iter()
        .map(|c| c.targeting_key().expect("contexts have a unit"))
        .collect();
    let layer_seed = seed("home");
    let exp_seed = seed("prefetch-test");
    let mut g = c.benchmark_group("floor");
    g.bench_function("xxh3_bucket", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let u = units[i & MASK];
            i = i.wrapping_add(1);
            scale(hash(black_box(layer_seed), black_box(u)), 10_000)
        });
    });
    // Layer hash + bucket, cell hash + 2-cell cumulative walk: the least one experiment-driven
    // flag can cost.
    let ends = [1u64, 2];
    g.bench_function("xxh3_bucket_cell", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let u = black_box(units[i & MASK]);
            i = i.wrapping_add(1);
            let bucket = scale(hash(black_box(layer_seed), u), 10_000);
            let p = scale(hash(black_box(exp_seed), u), 2);
            let cell = black_box(&ends).iter().position(|&end| p < end);
            (bucket, cell)
        });
    });
    g.finish();
}

fn resolve(c: &mut Criterion, ctxs: &[Context]) {
    let mut g = c.benchmark_group("resolve");
    let split = one_flag_experiment(None);
    g.bench_function("one_flag_5050", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            split.resolve(black_box("prefetch"), black_box(ctx))
        });
    });
    // The same flag through a handle looked up once (`Snapshot::flag_id`): no key hashing.
    let id = split.flag_id("prefetch").expect("flag exists");
    g.bench_function("one_flag_5050_by_id", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            split.resolve_id(black_box(id), black_box(ctx))
        });
    });
    let eq = one_flag_experiment(Some(json!({ "country": { "eq": "SE" } })));
    g.bench_function("one_flag_eq_constraint", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            eq.resolve(black_box("prefetch"), black_box(ctx))
        });
    });
    let ro = rollout();
    g.bench_function("rollout", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            ro.resolve(black_box("new-checkout"), black_box(ctx))
        });
    });
    g.finish();

    let mut g = c.benchmark_group("diag");
    // Diagnostic, not a target: contexts holding only `targetingKey` (smaller, so fewer cache
    // misses reading them).
    let bare: Vec<Context> = ctxs
        .iter()
        .map(|c| Context::with_targeting_key(c.targeting_key().expect("contexts have a unit")))
        .collect();
    g.bench_function("one_flag_5050_unit_only_context", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &bare[i & MASK];
            i = i.wrapping_add(1);
            split.resolve(black_box("prefetch"), black_box(ctx))
        });
    });
    // Eight rotating contexts stay in L1, as a context parsed for the current request does; the
    // 1,024-context benches also pay cache misses to read the caller's attributes.
    g.bench_function("one_flag_5050_hot_contexts", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & 7];
            i = i.wrapping_add(1);
            split.resolve(black_box("prefetch"), black_box(ctx))
        });
    });
    let id = split.flag_id("prefetch").expect("flag exists");
    g.bench_function("one_flag_5050_hot_contexts_by_id", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & 7];
            i = i.wrapping_add(1);
            split.resolve_id(black_box(id), black_box(ctx))
        });
    });
    g.finish();
}

fn resolve_all(c: &mut Criterion, ctxs: &[Context]) {
    let snap = hundred_flags();
    let mut out = Vec::with_capacity(100);
    let mut g = c.benchmark_group("resolve_all");
    g.bench_function("100_flags", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            snap.resolve_all_into(black_box(ctx), &mut out);
            out.len()
        });
    });
    g.finish();
}

fn allocate_and_compile(c: &mut Criterion, ctxs: &[Context]) {
    let config = ten_thousand_experiments();
    let snap = allot::compile(&config, 1).expect("bench config compiles");
    assert_eq!(snap.experiment_count(), 10_000);
    let mut out = Allocation::default();
    // Grow the reused buffer to its working size before measuring.
    snap.allocate_into(&ctxs[0], &mut out);
    let mut g = c.benchmark_group("allocate");
    g.bench_function("500_layers", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            snap.allocate_into(black_box(ctx), &mut out);
            out.assignments().len()
        });
    });
    g.finish();

    // Diagnostic, not a target: the same unit every iteration, so the layers, owners, experiments
    // and cells it touches stay in cache. The gap to `allocate/500_layers` is memory stalls.
    let mut g = c.benchmark_group("diag");
    g.bench_function("allocate_500_layers_one_unit", |b| {
        b.iter(|| {
            snap.allocate_into(black_box(&ctxs[0]), &mut out);
            out.assignments().len()
        });
    });
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    // Includes dropping the snapshot: a server swapping configs pays for that too.
    g.bench_function("10k_experiments", |b| {
        b.iter(|| allot::compile(black_box(&config), black_box(1)));
    });
    g.finish();
}

fn stamps(c: &mut Criterion, ctxs: &[Context]) {
    // Five fully covered layers: every context has exactly 5 assignments.
    let snap = hundred_flags();
    let allocations: Vec<Allocation<'_>> = ctxs.iter().map(|ctx| snap.allocate(ctx)).collect();
    assert!(allocations.iter().all(|a| a.assignments().len() == 5));
    let values: Vec<String> = allocations
        .iter()
        .map(|a| stamp::stamp(42, a, DEFAULT_BUDGET))
        .collect();
    let mut g = c.benchmark_group("stamp");
    g.bench_function("5_allocations", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let a = &allocations[i & MASK];
            i = i.wrapping_add(1);
            stamp::stamp(black_box(42), black_box(a), black_box(DEFAULT_BUDGET))
        });
    });
    g.bench_function("merge_with_incoming", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let v = &values[i & MASK];
            i = i.wrapping_add(1);
            stamp::merge(black_box(v), [black_box(INCOMING)])
        });
    });
    g.finish();
}

fn engine(c: &mut Criterion) {
    let ctxs = contexts();
    floor(c, &ctxs);
    resolve(c, &ctxs);
    resolve_all(c, &ctxs);
    allocate_and_compile(c, &ctxs);
    stamps(c, &ctxs);
}

criterion_group!(benches, engine);
criterion_main!(benches);
