//! Criterion benches of the SDK shells (issue 5, "Speed"); numbers in BENCHMARKS.md.
//!
//! Each target sits beside its floor in the same run:
//! - `sdk/tower_stamp_layer` vs `sdk/tower_noop`: the `StampLayer` around a no-op service vs
//!   the no-op service alone, on the same request (built in both, stamp extension included);
//!   the difference is what the layer adds per outgoing request. `*_no_incoming`: the same
//!   without a `baggage` header on the request (nothing to merge). `stamp_merge_only`: the
//!   engine's `stamp::merge` of the same stamp and header, for attribution.
//! - `sdk/client_resolve` (owned `Resolved`) and `sdk/client_with_snapshot_resolve`
//!   (zero-copy) vs `sdk/engine_resolve`: one flag through `allot::Client` vs the bare
//!   `Snapshot` it holds, rotating through the same 1,024 contexts. `sdk/owned_floor`: one
//!   `Arc` clone and drop of that snapshot, the least an owned answer that keeps its snapshot
//!   can cost on top of the engine (two atomic read-modify-writes).

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::task::{Context as TaskContext, Poll, Waker};

use allot::tower::{Stamp, StampLayer};
use allot::{Client, Context};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service};

/// Distinct contexts rotated per iteration (a power of two so the index is a mask).
const N: usize = 1024;
const MASK: usize = N - 1;

/// One bool flag driven by a 50/50 experiment over the whole layer (engine bench
/// `resolve/one_flag_5050`).
const CONFIG: &str = r#"
layers: [{ id: home }]
experiments:
  - id: prefetch-test
    layer: home
    ranges: ["0..10000"]
    cells:
      - { id: control, flags: { prefetch: "off" } }
      - { id: treatment, flags: { prefetch: "on" } }
flags:
  - { key: prefetch, type: bool, variants: { "on": true, "off": false }, default: "off" }
"#;

/// A realistic stamp and incoming `baggage` header of a service in a few experiments.
const STAMP: &str = "1.42.artwork~bold.prefetch-test~treatment.ranker~b";
const INCOMING: &str = "userId=alice,sessionId=0b6f6a0e-9a41-4c1e-8d0b-2f1c7f3e9a11,\
     tenant=acme;priority=high,sentry-trace_id=4bf92f3577b34da6a3ce929d0e0e4736";

/// A service that does nothing but answer.
#[derive(Clone, Copy)]
struct Noop;

impl<B> Service<http::Request<B>> for Noop {
    type Response = http::Request<B>;
    type Error = std::convert::Infallible;
    type Future = Ready<Result<http::Request<B>, Self::Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        ready(Ok(req))
    }
}

/// Calls `svc` with `req` and drives the (ready) future once.
fn call<S>(svc: &mut S, req: http::Request<()>) -> S::Response
where
    S: Service<http::Request<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = TaskContext::from_waker(Waker::noop());
    let fut = svc.call(req);
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.expect("no-op service"),
        Poll::Pending => unreachable!("the no-op service is always ready"),
    }
}

/// The outgoing request a service would build: the stamp, and the caller's `baggage` header
/// if `incoming`.
fn request(incoming: bool) -> http::Request<()> {
    let mut b = http::Request::builder().uri("http://downstream.internal/v1/recommendations");
    if incoming {
        b = b.header("baggage", INCOMING);
    }
    b.extension(Stamp(STAMP.to_owned()))
        .body(())
        .expect("valid request")
}

fn contexts() -> Vec<Context> {
    (0..N)
        .map(|i| Context::with_targeting_key(format!("member-{i:08x}")).with("country", "SE"))
        .collect()
}

fn sdk(c: &mut Criterion) {
    let mut g = c.benchmark_group("sdk");
    let mut noop = Noop;
    let mut layered = StampLayer::new().layer(Noop);
    // With a 4-member incoming header to merge (most of the cost is `stamp::merge`).
    g.bench_function("tower_noop", |b| {
        b.iter(|| call(&mut noop, black_box(request(true))))
    });
    g.bench_function("tower_stamp_layer", |b| {
        b.iter(|| call(&mut layered, black_box(request(true))))
    });
    // Diagnostic: the engine's merge alone, on the same stamp and header (most of the layer).
    g.bench_function("stamp_merge_only", |b| {
        b.iter(|| allot::stamp::merge(black_box(STAMP), [black_box(INCOMING)]))
    });
    // A request that starts the baggage: only our member.
    g.bench_function("tower_noop_no_incoming", |b| {
        b.iter(|| call(&mut noop, black_box(request(false))))
    });
    g.bench_function("tower_stamp_layer_no_incoming", |b| {
        b.iter(|| call(&mut layered, black_box(request(false))))
    });

    // A current-thread runtime that is never driven: the client's sync task never runs, so
    // the bench measures lookups only (the snapshot comes from the bootstrap).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let client = {
        let _entered = runtime.enter();
        Client::builder("http://127.0.0.1:9")
            .bootstrap_str(CONFIG)
            .connect()
            .expect("client")
    };
    let snapshot = client.snapshot().expect("bootstrapped");
    let ctxs = contexts();
    g.bench_function("engine_resolve", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            // The whole answer, as the client's: once `resolve` is inlined, keeping only the
            // reason would let the compiler skip naming the cell and the variant.
            black_box(snapshot.resolve(black_box("prefetch"), black_box(ctx))).map(|r| r.reason)
        });
    });
    g.bench_function("client_with_snapshot_resolve", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            client.with_snapshot(|s| {
                black_box(s.resolve(black_box("prefetch"), black_box(ctx))).map(|r| r.reason)
            })
        });
    });
    g.bench_function("client_resolve", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let ctx = &ctxs[i & MASK];
            i = i.wrapping_add(1);
            client.resolve(black_box("prefetch"), black_box(ctx))
        });
    });
    g.bench_function("owned_floor", |b| {
        b.iter(|| drop(black_box(std::sync::Arc::clone(black_box(&snapshot)))));
    });
    g.finish();
}

criterion_group!(benches, sdk);
criterion_main!(benches);
