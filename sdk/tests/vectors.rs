//! The golden vectors in `testdata/vectors.json`, produced by the independent Python
//! implementation in `scripts/vectors.py`, run through the engine's public API.
//!
//! Every case must agree exactly: hashes and seeds, buckets, weighted cells, and whole configs
//! (allocations, holdouts, flag values, variants, reasons and the deciding experiment cell).

use allot::bucket;
use allot::{Config, Context, Reason, compile};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/vectors.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn list<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not a list"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

fn int(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{v} is not an unsigned integer"))
}

#[test]
fn header() {
    let doc = vectors();
    assert_eq!(doc["version"], 1);
    assert!(text(&doc["algorithm"]).contains("xxh3_64"));
}

#[test]
fn seeds_and_hashes() {
    let doc = vectors();
    let cases = list(&doc, "hashes");
    assert!(cases.len() >= 20, "only {} hash cases", cases.len());
    for c in cases {
        let (salt, unit) = (text(&c["salt"]), text(&c["unit"]));
        let seed = bucket::seed(salt);
        assert_eq!(format!("{seed:016x}"), text(&c["seed"]), "seed of {salt:?}");
        let h = bucket::hash(seed, unit);
        assert_eq!(format!("{h:016x}"), text(&c["hash"]), "{c}");
    }
}

#[test]
fn buckets() {
    let doc = vectors();
    let cases = list(&doc, "buckets");
    for c in cases {
        let n = u32::try_from(int(&c["buckets"])).unwrap();
        let got = bucket::bucket(text(&c["salt"]), text(&c["unit"]), n);
        assert_eq!(u64::from(got), int(&c["bucket"]), "{c}");
    }
    let cells = list(&doc, "cells").len();
    assert!(
        cases.len() + cells >= 1_000,
        "{} bucket + {cells} cell cases",
        cases.len()
    );
    assert!(cases.len() >= 500, "only {} bucket cases", cases.len());
    // The edges the spec promises are covered.
    let has = |f: &dyn Fn(&Value) -> bool| cases.iter().any(f);
    assert!(has(&|c| text(&c["unit"]).len() == 1));
    assert!(has(&|c| text(&c["unit"]).len() == 256));
    assert!(has(&|c| !text(&c["unit"]).is_ascii()));
    for n in [1, 2, 100, 10_000, 65_536, 999_999, 1_000_000] {
        assert!(
            has(&|c| int(&c["buckets"]) == n),
            "no case with {n} buckets"
        );
    }
}

#[test]
fn cells() {
    let doc = vectors();
    let cases = list(&doc, "cells");
    assert!(cases.len() >= 400, "only {} cell cases", cases.len());
    let mut max_weight = 0;
    for c in cases {
        let weights: Vec<u32> = c["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| u32::try_from(int(w)).unwrap())
            .collect();
        max_weight = max_weight.max(weights.iter().copied().max().unwrap());
        let got = bucket::pick(text(&c["salt"]), text(&c["unit"]), &weights);
        assert_eq!(got.map(|i| i as u64), Some(int(&c["cell"])), "{c}");
    }
    assert_eq!(max_weight, u32::MAX);
}

#[test]
fn configs() {
    let doc = vectors();
    let configs = list(&doc, "configs");
    assert!(configs.len() >= 5, "only {} configs", configs.len());
    let mut checked = 0;
    let mut reasons = std::collections::BTreeSet::new();
    for cfg in configs {
        let name = text(&cfg["name"]);
        let config: Config =
            serde_json::from_value(cfg["config"].clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let snapshot = compile(&config, 1).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cases = list(cfg, "cases");
        assert!(!cases.is_empty(), "{name}: no cases");
        for case in cases {
            let ctx: Context = serde_json::from_value(case["context"].clone()).unwrap();
            let what = format!("{name} / {}", case["context"]);

            let alloc = snapshot.allocate(&ctx);
            let got: Vec<Value> = alloc
                .assignments()
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "layer": a.layer, "experiment": a.experiment,
                        "cell": a.cell, "bucket": a.bucket,
                    })
                })
                .collect();
            assert_eq!(got, list(case, "allocations"), "allocations of {what}");
            let held: Vec<&str> = list(case, "holdouts").iter().map(text).collect();
            assert_eq!(alloc.holdouts(), held.as_slice(), "holdouts of {what}");

            let expected = case["flags"].as_object().unwrap();
            let all = snapshot.resolve_all(&ctx);
            assert_eq!(all.len(), expected.len(), "flag count of {what}");
            for r in &all {
                let want = &expected[r.key];
                let one = snapshot.resolve(r.key, &ctx).unwrap();
                assert_eq!(
                    &one, r,
                    "resolve and resolve_all disagree on {} for {what}",
                    r.key
                );
                let flag = format!("flag {} of {what}", r.key);
                assert_eq!(r.value, &want["value"], "value of {flag}");
                assert_eq!(r.variant, text(&want["variant"]), "variant of {flag}");
                assert_eq!(r.reason.as_str(), text(&want["reason"]), "reason of {flag}");
                assert_eq!(
                    r.error.map(|e| e.as_str()),
                    want.get("error").map(text),
                    "error code of {flag}"
                );
                let decided_by = r.assignment.map(|a| (a.experiment, a.cell));
                let want_by = want
                    .get("experiment")
                    .map(|e| (text(e), text(&want["cell"])));
                assert_eq!(decided_by, want_by, "deciding cell of {flag}");
                reasons.insert(r.reason.as_str());
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "only {checked} config cases");
    for reason in [
        Reason::Static,
        Reason::Default,
        Reason::TargetingMatch,
        Reason::Split,
        Reason::Disabled,
        Reason::Error,
    ] {
        assert!(
            reasons.contains(reason.as_str()),
            "no case ends in {reason:?}"
        );
    }
}
