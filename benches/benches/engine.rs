//! Criterion benches of the engine's hot paths (issue 2, "Speed"); numbers in BENCHMARKS.md.
//!
//! Every input is built outside `b.iter` and every argument is `black_box`ed. Each iteration
//! takes the next of [`N`] precomputed contexts (or units), so the branch predictor and caches
//! see as many distinct units as a server would and no bench is flattered by a single hot unit.
//! The floors (`floor/*`) rotate through the same units, so the ratios to them are fair.

use std::hint::black_box;

use allot::bucket::{hash, scale, seed};
use allot::stamp::{self, DEFAULT_BUDGET};
use allot::{Allocation, Context};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

mod fixtures;
use fixtures::*;

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
    // Layer hash + bucket, cell hash + 2-cell cumulative pick: the least one experiment-driven
    // flag can cost.
    let ends = [1u64, 2];
    g.bench_function("xxh3_bucket_cell", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let u = black_box(units[i & MASK]);
            i = i.wrapping_add(1);
            let bucket = scale(hash(black_box(layer_seed), u), 10_000);
            let p = scale(hash(black_box(exp_seed), u), 2);
            // Counted, not searched: no branch on the hash, as the engine picks a cell.
            let cell = black_box(&ends).iter().filter(|&&end| end <= p).count();
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
