//! Prints the `baggage` header that [`allot::tower::StampLayer`] puts on an outgoing request,
//! for a real allocation (experiments in three layers and a holdout) merged with a caller's
//! baggage, plus the experiment→cell pairs it carries. `e2e/test_baggage.py` parses the header
//! with Python OpenTelemetry's `W3CBaggagePropagator` and checks it reads the same pairs.
//!
//! Output: one JSON object `{"header", "stamp", "cells": [[experiment, cell], ...], "others"}`
//! per member id given as an argument (default `m-1 m-2 m-3`), one per line.
//!
//! ```text
//! cargo run -q -p allot --example print_baggage --features tower -- m-1 m-2
//! ```

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::task::{Context as TaskContext, Poll, Waker};

use allot::tower::{Stamp, StampLayer};
use allot::{Context, stamp};
use serde_json::json;
use tower::{Layer, Service};

/// Experiments in three layers (ids with `-` and `_`), one holdout over one of them.
const CONFIG: &str = r#"
layers: [{ id: home }, { id: search_v2 }, { id: playback }]
experiments:
  - id: artwork-2026
    layer: home
    ranges: ["0..10000"]
    cells: [{ id: control }, { id: bold_v2 }]
  - id: ranker
    layer: search_v2
    ranges: ["0..10000"]
    cells: [{ id: a }, { id: b }, { id: c-3 }]
  - id: abr
    layer: playback
    ranges: ["0..10000"]
    cells: [{ id: base }, { id: aggressive }]
holdouts:
  - { id: holdout-q4, ranges: ["0..3000"], layers: [playback] }
"#;

/// The caller's baggage: a forged `allot` member (replaced), members with properties and
/// percent-encoded values (kept).
const INCOMING: &str =
    "userId=alice,allot=1.9.forged~x,tenant=acme;priority=high,release=web%401.42.0";

/// Captures the request's `baggage` header.
struct Capture;

impl Service<http::Request<()>> for Capture {
    type Response = String;
    type Error = Infallible;
    type Future = Ready<Result<String, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<()>) -> Self::Future {
        let header = req
            .headers()
            .get("baggage")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ready(Ok(header))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let snapshot = allot::compile_str(CONFIG, 7)?;
    let mut members: Vec<String> = std::env::args().skip(1).collect();
    if members.is_empty() {
        members = vec!["m-1".into(), "m-2".into(), "m-3".into()];
    }
    let mut svc = StampLayer::new().layer(Capture);
    for member in members {
        let allocation = snapshot.allocate(&Context::with_targeting_key(member));
        let value = stamp::stamp(snapshot.revision(), &allocation, stamp::DEFAULT_BUDGET);
        let request = http::Request::get("http://downstream/")
            .header("baggage", INCOMING)
            .extension(Stamp(value.clone()))
            .body(())?;
        let mut fut = std::pin::pin!(svc.call(request));
        let Poll::Ready(Ok(header)) = fut
            .as_mut()
            .poll(&mut TaskContext::from_waker(Waker::noop()))
        else {
            return Err("the capture service is always ready".into());
        };
        let cells = stamp::parse(&value).ok_or("a stamp parses")?.entries;
        let line = json!({
            "header": header,
            "stamp": value,
            "cells": cells,
            "others": { "userId": "alice", "tenant": "acme", "release": "web@1.42.0" },
        });
        println!("{line}");
    }
    Ok(())
}
