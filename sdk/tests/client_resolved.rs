//! The client's owned answers (`Resolved`) are the engine's answers exactly. (That they stay
//! whole after a config swap is a unit test in `client/mod.rs`, which can swap without a server.)

use std::time::Duration;

use allot::client::{Client, ResolveError};
use allot::{Context, compile};

const V1: &str = r#"{
  "layers": [{"id": "home"}],
  "experiments": [{"id": "prefetch-test", "layer": "home", "ranges": ["0..10000"],
    "cells": [{"id": "control", "flags": {"prefetch": "off"}},
              {"id": "treatment", "flags": {"prefetch": "on"}}]}],
  "flags": [
    {"key": "prefetch", "type": "bool", "variants": {"on": true, "off": false}, "default": "off"},
    {"key": "theme", "type": "string", "variants": {"dark": "dark", "light": "light"},
     "default": "light", "rules": [{"when": {"country": "SE"}, "variant": "dark"}]},
    {"key": "limit", "type": "int", "variants": {"low": 5, "high": 50}, "default": "low",
     "rules": [{"rollout": {"split": [{"variant": "high", "weight": 1}, {"variant": "low", "weight": 1}]}}]}
  ]
}"#;

/// A client serving `V1` from its bootstrap; nothing listens at its URL.
async fn client() -> Client {
    let client = Client::builder("http://127.0.0.1:9")
        .bootstrap_str(V1)
        .connect()
        .unwrap();
    assert!(client.wait_ready(Duration::from_secs(5)).await);
    client
}

fn contexts() -> impl Iterator<Item = Context> {
    (0..500).map(|i| {
        let ctx = Context::with_targeting_key(format!("member-{i}"));
        match i % 3 {
            0 => ctx.with("country", "SE"),
            1 => ctx.with("country", "US"),
            // No unit for the rollout on some: an error answer.
            _ => Context::new().with("country", "SE"),
        }
    })
}

#[tokio::test]
async fn resolved_equals_the_engine_answer_field_by_field() {
    let client = client().await;
    let engine = compile(&serde_json::from_str(V1).unwrap(), 1).unwrap();
    let mut reasons = std::collections::BTreeSet::new();
    for ctx in contexts() {
        for key in ["prefetch", "theme", "limit"] {
            let ours = client.resolve(key, &ctx).unwrap();
            let want = engine.resolve(key, &ctx).unwrap();
            assert_eq!(ours.resolution(), want, "{key} {ctx:?}");
            assert_eq!(ours.key(), want.key);
            assert_eq!(ours.kind(), want.kind);
            assert_eq!(ours.value(), want.value);
            assert_eq!(ours.variant(), want.variant);
            assert_eq!(ours.reason(), want.reason);
            assert_eq!(ours.error(), want.error);
            assert_eq!(ours.assignment(), want.assignment);
            reasons.insert(ours.reason().as_str());
        }
        let all = client.resolve_all(&ctx).unwrap();
        let want = engine.resolve_all(&ctx);
        assert_eq!(all.len(), want.len());
        for (ours, want) in all.iter().zip(&want) {
            assert_eq!(ours.resolution(), *want);
        }
    }
    // Every path through `finish` was exercised.
    for r in ["SPLIT", "TARGETING_MATCH", "DEFAULT", "ERROR"] {
        assert!(reasons.contains(r), "{r} not seen: {reasons:?}");
    }
}

#[tokio::test]
async fn unknown_flag_is_an_error_not_an_answer() {
    let client = client().await;
    let err = client
        .resolve("nope", &Context::with_targeting_key("m"))
        .unwrap_err();
    assert!(matches!(err, ResolveError::FlagNotFound(_)), "{err:?}");
}
