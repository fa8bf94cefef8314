//! The hot path allocates no heap memory in the common case (issue 2): `resolve` (an
//! experiment-driven flag, a rule with `eq`, a rollout), `allocate` for a unit in up to 8
//! layers and `resolve_all_into` a pre-sized Vec, after warm-up.
//!
//! A counting global allocator counts only allocations made on a thread that switched counting
//! on, so the test harness's other threads (and other tests running in parallel) do not
//! interfere.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use allot::{Allocation, Context, Reason, Snapshot, compile_str};

struct Counting;

thread_local! {
    /// Whether this thread counts its allocations.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// This thread's allocations while counting.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting only touches
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations `f` makes on this thread.
fn allocations(mut f: impl FnMut()) -> usize {
    f(); // warm-up: lazily initialised state (regex caches and the like) may allocate once
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    for _ in 0..100 {
        f();
    }
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

const CONFIG: &str = r#"
segments:
  staff: { email: { ends_with: "@example.com" } }
layers:
  - { id: l1, salt: home-2026q4 }
  - { id: l2 }
  - { id: l3, buckets: 1000 }
  - { id: l4 }
  - { id: l5 }
  - { id: l6 }
  - { id: l7, buckets: 1000000 }
  - { id: l8, unit: device_id }
experiments:
  - id: prefetch-test
    layer: l1
    ranges: ["0..10000"]
    when: { country: { in: [US, CA, SE] } }
    cells:
      - { id: control,   flags: { prefetch: "off" } }
      - { id: treatment, flags: { prefetch: "on" } }
  - { id: e2, layer: l2, ranges: ["0..10000"], cells: [{ id: a, weight: 3 }, { id: b }] }
  - { id: e3, layer: l3, ranges: ["0..1000"], cells: [{ id: a }, { id: b }, { id: c }] }
  - { id: e4, layer: l4, ranges: ["0..10000"], when: { platform: { matches: "^(tv|web)$" } }, cells: [{ id: a }] }
  - { id: e5, layer: l5, ranges: ["0..5000", "5000..10000"], cells: [{ id: a }, { id: b }] }
  - { id: e6, layer: l6, ranges: ["0..10000"], when: { not: { segment: staff } }, cells: [{ id: a }] }
  - { id: e7, layer: l7, ranges: ["0..1000000"], cells: [{ id: a, weight: 4294967295 }, { id: b }] }
  - { id: e8, layer: l8, ranges: ["0..10000"], cells: [{ id: a }, { id: b }] }
holdouts:
  - { id: far-away, ranges: ["0..1"], layers: [l2, l3] }
flags:
  - { key: prefetch, type: bool, variants: { "on": true, "off": false }, default: "off" }
  - key: tv-ui
    type: string
    variants: { classic: classic, grid: grid }
    default: classic
    rules: [{ when: { platform: { eq: tv } }, variant: grid }]
  - key: ramp
    type: int
    variants: { low: 1, high: 2 }
    default: low
    rules:
      - { rollout: { salt: ramp-1, split: [{ variant: low, weight: 50 }, { variant: high, weight: 50 }] } }
  - key: semver-gated
    type: float
    variants: { old: 1.0, new: 2.5 }
    default: old
    rules: [{ when: { app_version: { semver_ge: "5.2" }, country: { in: [SE, NO] } }, variant: new }]
  - { key: static, type: object, variants: { v: { a: 1 } }, default: v }
  - { key: off, type: bool, variants: { t: true }, default: t, enabled: false }
"#;

fn setup() -> (Snapshot, Context) {
    let snapshot = compile_str(CONFIG, 1).unwrap();
    // Find a unit in the experiment of every layer, and outside the holdout.
    let ctx = (0..)
        .map(|i| {
            Context::with_targeting_key(format!("member-{i}"))
                .with("device_id", format!("tv-{i}"))
                .with("country", "SE")
                .with("platform", "tv")
                .with("email", "someone@example.org")
                .with("app_version", "5.10.1")
        })
        .find(|ctx| snapshot.allocate(ctx).assignments().len() == 8)
        .unwrap();
    (snapshot, ctx)
}

#[test]
fn resolve_allocates_nothing() {
    let (snapshot, ctx) = setup();
    let r = snapshot.resolve("prefetch", &ctx).unwrap();
    assert_eq!(r.reason, Reason::Split);
    assert_eq!(
        snapshot.resolve("tv-ui", &ctx).unwrap().reason,
        Reason::TargetingMatch
    );
    assert_eq!(
        snapshot.resolve("ramp", &ctx).unwrap().reason,
        Reason::Split
    );
    assert_eq!(
        snapshot.resolve("semver-gated", &ctx).unwrap().reason,
        Reason::TargetingMatch
    );
    for key in ["prefetch", "tv-ui", "ramp", "semver-gated", "static", "off"] {
        let n = allocations(|| {
            black_box(snapshot.resolve(black_box(key), &ctx).unwrap());
        });
        assert_eq!(n, 0, "resolve({key}) allocated {n} times in 100 calls");
    }
}

#[test]
fn allocate_in_eight_layers_allocates_nothing() {
    let (snapshot, ctx) = setup();
    assert_eq!(snapshot.allocate(&ctx).assignments().len(), 8);
    let n = allocations(|| {
        let a = snapshot.allocate(black_box(&ctx));
        assert_eq!(black_box(&a).assignments().len(), 8);
    });
    assert_eq!(n, 0, "allocate allocated {n} times in 100 calls");
    let mut out = Allocation::default();
    let n = allocations(|| snapshot.allocate_into(black_box(&ctx), &mut out));
    assert_eq!(n, 0, "allocate_into allocated {n} times in 100 calls");
}

#[test]
fn resolve_all_into_a_presized_vec_allocates_nothing() {
    let (snapshot, ctx) = setup();
    let mut out = Vec::with_capacity(snapshot.flag_keys().len());
    let n = allocations(|| snapshot.resolve_all_into(black_box(&ctx), &mut out));
    assert_eq!(n, 0, "resolve_all_into allocated {n} times in 100 calls");
    assert_eq!(out.len(), 6);
    assert_eq!(out, snapshot.resolve_all(&ctx));
}

#[test]
fn allocate_into_a_reused_buffer_allocates_nothing_in_many_layers() {
    let mut doc = String::from("layers:\n");
    for i in 0..40 {
        doc += &format!("  - {{ id: l{i} }}\n");
    }
    doc += "experiments:\n";
    for i in 0..40 {
        doc += &format!(
            "  - {{ id: e{i}, layer: l{i}, ranges: [\"0..10000\"], cells: [{{ id: a }}, {{ id: b }}] }}\n"
        );
    }
    let snapshot = compile_str(&doc, 1).unwrap();
    let ctx = Context::with_targeting_key("member-1");
    let mut out = Allocation::default();
    let n = allocations(|| snapshot.allocate_into(black_box(&ctx), &mut out));
    assert_eq!(n, 0, "allocate_into allocated {n} times in 100 calls");
    assert_eq!(out.assignments().len(), 40);
}

#[test]
fn the_counter_counts() {
    let n = allocations(|| {
        black_box(vec![1u8; 16]);
    });
    assert_eq!(n, 100);
}
