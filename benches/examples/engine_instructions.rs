//! Instruction-count driver for the engine's hot paths: runs one of them N times over the
//! engine bench's rotating contexts and configs, each call through an `#[inline(never)]`
//! function named `step_*` so callgrind can count exactly those instructions:
//!
//! ```sh
//! cargo build --release -p allot-benches --example engine_instructions
//! valgrind --tool=callgrind --toggle-collect='engine_instructions::step_*' \
//!     target/release/examples/engine_instructions one 20000
//! # instructions per call = the "I refs" total / 20000
//! ```
//!
//! Paths: `one` (one 50/50 flag), `eq` (the same with an `eq` constraint), `rollout`, `all`
//! (`resolve_all` over 100 flags), `alloc` (`allocate` across 500 layers), `compile` (10,000
//! experiments; run it for a few iterations, not 20,000), `dump` (not counted: prints every
//! context's allocation across the 500 layers, to diff the answers of two builds), and `client` (the
//! one-flag config through `allot::Client::resolve`, the owned answer, issue 5's ratio). Instruction counts do
//! not depend on the machine's load, unlike the criterion benches' times.

use std::hint::black_box;

use allot::{Allocation, Context, Resolution, Snapshot};
use serde_json::json;

#[path = "../benches/fixtures/mod.rs"]
mod fixtures;
use fixtures::{
    MASK, contexts, hundred_flags, one_flag_doc, one_flag_experiment, rollout,
    ten_thousand_experiments,
};

#[inline(never)]
fn step_resolve(s: &Snapshot, key: &str, ctx: &Context) -> bool {
    let r = s.resolve(black_box(key), black_box(ctx));
    black_box(&r);
    r.is_ok()
}

#[inline(never)]
fn step_client_resolve(client: &allot::Client, key: &str, ctx: &Context) -> bool {
    let r = client.resolve(black_box(key), black_box(ctx));
    black_box(&r);
    r.is_ok()
}

#[inline(never)]
fn step_resolve_all<'s>(s: &'s Snapshot, ctx: &Context, out: &mut Vec<Resolution<'s>>) -> usize {
    s.resolve_all_into(black_box(ctx), out);
    out.len()
}

#[inline(never)]
fn step_compile(config: &allot::Config) -> usize {
    allot::compile(black_box(config), 1).map_or(0, |s| s.experiment_count())
}

#[inline(never)]
fn step_allocate<'s>(s: &'s Snapshot, ctx: &Context, out: &mut Allocation<'s>) -> usize {
    s.allocate_into(black_box(ctx), out);
    out.assignments().len()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "one".to_owned());
    let iterations: usize = match args.next().map(|n| n.parse()) {
        None => 20_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("iterations: {e}");
            std::process::exit(2);
        }
    };
    let ctxs = contexts();
    let mut total = 0usize;
    match path.as_str() {
        "one" | "eq" | "rollout" => {
            let (snapshot, key) = match path.as_str() {
                "one" => (one_flag_experiment(None), "prefetch"),
                "eq" => (
                    one_flag_experiment(Some(json!({ "country": { "eq": "SE" } }))),
                    "prefetch",
                ),
                _ => (rollout(), "new-checkout"),
            };
            for i in 0..iterations {
                total += usize::from(step_resolve(&snapshot, key, &ctxs[i & MASK]));
            }
        }
        "client" => {
            // A runtime that is never driven: the client serves its bootstrap, no I/O.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let _entered = runtime.enter();
            let client = allot::Client::builder("http://127.0.0.1:9")
                .bootstrap_str(one_flag_doc(None).to_string())
                .connect()
                .expect("client");
            for i in 0..iterations {
                total += usize::from(step_client_resolve(&client, "prefetch", &ctxs[i & MASK]));
            }
        }
        "all" => {
            let snapshot = hundred_flags();
            let mut out = Vec::with_capacity(100);
            for i in 0..iterations {
                total += step_resolve_all(&snapshot, &ctxs[i & MASK], &mut out);
            }
        }
        "alloc" => {
            let snapshot = allot::compile(&ten_thousand_experiments(), 1).expect("compiles");
            let mut out = Allocation::default();
            // Grow the reused buffer before counting, as the bench does.
            step_allocate(&snapshot, &ctxs[0], &mut out);
            for i in 0..iterations {
                total += step_allocate(&snapshot, &ctxs[i & MASK], &mut out);
            }
        }
        "dump" => {
            let snapshot = allot::compile(&ten_thousand_experiments(), 1).expect("compiles");
            for ctx in &ctxs {
                let a = snapshot.allocate(ctx);
                println!("{:?} {:?}", a.holdouts(), a.assignments());
            }
        }
        "compile" => {
            // Counts the build and the drop of each snapshot (the bench drops it too).
            let config = ten_thousand_experiments();
            for _ in 0..iterations {
                total += step_compile(&config);
            }
        }
        other => {
            eprintln!(
                "unknown path `{other}`: one, eq, rollout, all, alloc, dump, compile or client"
            );
            std::process::exit(2);
        }
    }
    println!("{path}: {iterations} calls ({total} answers)");
}
