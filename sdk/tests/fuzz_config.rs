//! Fuzzing of config parse and compile (docs/spec.md §5): arbitrary bytes, and structure-aware
//! mutations of valid documents (the server's demo config, the configs of
//! `testdata/vectors.json`, the seed corpus), written as JSON or YAML and sometimes damaged
//! byte-wise afterwards.
//!
//! Whatever comes in: parse and compile never panic; a rejection lists at least one error, each
//! with a message, and a path unless the whole document is at fault; an accepted config
//! round-trips through its canonical JSON (what `--upstream` followers receive) and allocates
//! and resolves any context without panicking, with answers drawn from the config.
//!
//! Bounded for CI; `PROPTEST_CASES=20000 cargo test -p allot --test fuzz_config` runs longer
//! (docs/fuzzing.md). The seed corpus `testdata/fuzz/config/` is replayed first.

mod fuzz_support;

use std::cell::Cell;
use std::collections::BTreeSet;

use allot::{Config, ConfigErrors, Context, ErrorKind, Snapshot, compile, stamp};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

/// What one input led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    ParseError,
    CompileError,
    Accepted,
}

/// Runs `text` through parse and compile and checks every invariant; `contexts` are evaluated
/// against an accepted config.
fn check(text: &str, contexts: &[Context]) -> Result<Outcome, TestCaseError> {
    let config = match Config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            check_errors(&e, true)?;
            return Ok(Outcome::ParseError);
        }
    };
    let snapshot = match compile(&config, 7) {
        Ok(s) => s,
        Err(e) => {
            check_errors(&e, false)?;
            return Ok(Outcome::CompileError);
        }
    };
    // The canonical form is what followers and SDKs receive: it must mean the same config.
    let canonical = config.to_canonical_json();
    let again = Config::from_json(&canonical).map_err(|e| {
        TestCaseError::fail(format!("canonical JSON does not parse: {e}\n{canonical}"))
    })?;
    prop_assert_eq!(again.content_hash(), config.content_hash(), "{}", canonical);
    prop_assert!(
        compile(&again, 7).is_ok(),
        "canonical form rejected: {}",
        canonical
    );

    for ctx in contexts {
        evaluate(&snapshot, &config, ctx)?;
        for key in snapshot.unit_keys().collect::<Vec<_>>() {
            // Also with every unit key of the config set, so experiments are reached.
            let mut ctx = ctx.clone();
            ctx.insert(key, format!("unit-{}", ctx.len()));
            evaluate(&snapshot, &config, &ctx)?;
        }
    }
    Ok(Outcome::Accepted)
}

fn check_errors(errors: &ConfigErrors, parsing: bool) -> Result<(), TestCaseError> {
    prop_assert!(!errors.errors().is_empty(), "a rejection without errors");
    for e in errors.errors() {
        let message = e.kind.to_string();
        prop_assert!(!message.trim().is_empty(), "empty message at `{}`", e.path);
        prop_assert_eq!(parsing, matches!(e.kind, ErrorKind::Parse { .. }), "{}", e);
        // Only a problem with the document as a whole (not YAML/JSON, not a mapping) has no
        // path; everything compile finds names the value at fault.
        if !parsing {
            prop_assert!(!e.path.is_empty(), "compile error without a path: {}", e);
        }
        // The root is the empty path, not serde_path_to_error's `.` (a key may start with `.`).
        prop_assert_ne!(e.path.as_str(), ".");
    }
    Ok(())
}

/// Allocates and resolves `ctx`; every answer must come from the config.
fn evaluate(snapshot: &Snapshot, config: &Config, ctx: &Context) -> Result<(), TestCaseError> {
    let allocation = snapshot.allocate(ctx);
    let mut layers_seen = BTreeSet::new();
    for a in allocation.assignments() {
        let layer = config.layers.iter().find(|l| l.id == a.layer);
        let layer =
            layer.ok_or_else(|| TestCaseError::fail(format!("unknown layer {}", a.layer)))?;
        prop_assert!(
            u64::from(a.bucket) < layer.buckets.unwrap_or(10_000),
            "{:?}",
            a
        );
        prop_assert!(
            layers_seen.insert(a.layer),
            "two experiments in layer {}",
            a.layer
        );
        let exp = config.experiments.iter().find(|e| e.id == a.experiment);
        let exp = exp.ok_or_else(|| TestCaseError::fail(format!("unknown experiment {a:?}")))?;
        prop_assert_eq!(&exp.layer, a.layer);
        prop_assert!(exp.cells.iter().any(|c| c.id == a.cell), "{:?}", a);
    }
    for h in allocation.holdouts() {
        prop_assert!(
            config.holdouts.iter().any(|c| c.id == *h),
            "unknown holdout {}",
            h
        );
    }
    let all = snapshot.resolve_all(ctx);
    prop_assert_eq!(all.len(), config.flags.len());
    for (r, flag) in all.iter().zip(&config.flags) {
        prop_assert_eq!(r.key, flag.key.as_str());
        prop_assert!(flag.variants.contains_key(r.variant), "{:?}", r);
        let one = snapshot
            .resolve(r.key, ctx)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(one, *r);
    }
    let value = stamp::stamp(snapshot.revision(), &allocation, stamp::DEFAULT_BUDGET);
    prop_assert!(stamp::parse(&value).is_some(), "{}", value);
    Ok(())
}

// === inputs ===

/// The valid documents mutations start from, as JSON values.
fn seeds() -> Vec<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let demo = std::fs::read_to_string(root.join("server/src/demo.yaml")).unwrap();
    let mut seeds = vec![serde_yaml_ng::from_str::<Value>(&demo).unwrap()];
    let vectors: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("testdata/vectors.json")).unwrap())
            .unwrap();
    for case in vectors["configs"].as_array().unwrap() {
        seeds.push(case["config"].clone());
    }
    for (_, bytes) in fuzz_support::corpus("config") {
        // Only valid documents (checked through `Config::parse`, which refuses what would
        // keep the YAML scanner busy) become mutation seeds.
        if let Ok(text) = std::str::from_utf8(&bytes)
            && Config::parse(text).is_ok_and(|c| compile(&c, 1).is_ok())
            && let Ok(v @ Value::Object(_)) = serde_yaml_ng::from_str::<Value>(text)
        {
            seeds.push(v);
        }
    }
    seeds
}

/// Values a mutation may put anywhere: wrong types, edge numbers, bad ranges and ids,
/// unicode and NUL, deep nesting, operators.
fn interesting() -> impl Strategy<Value = Value> {
    let deep = (
        1usize..48,
        prop_oneof![Just("not"), Just("all"), Just("any")],
    )
        .prop_map(|(n, op)| {
            let mut v = json!({ "country": "SE" });
            for _ in 0..n {
                v = if op == "not" {
                    json!({ "not": v })
                } else {
                    json!({ op: [v] })
                };
            }
            v
        });
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        prop::sample::select(vec![
            0i64,
            -1,
            1,
            2,
            10_000,
            1_000_000,
            1_000_001,
            4_294_967_295,
            4_294_967_296
        ])
        .prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "0..10000",
            "0..0",
            "5..2",
            "..",
            "0..",
            "-1..5",
            "9000..12000",
            "0..1000001",
            "a.b",
            "x~y",
            "targetingKey",
            "home",
            "control",
            "é",
            "\u{0}",
            "on",
            "off",
            "semver_ge",
            "matches",
            "segment",
            "(",
            "[",
            "1.2.3",
            "v5",
            "*",
        ])
        .prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::from),
        (1usize..400).prop_map(|n| Value::from("x".repeat(n))),
        Just(json!([])),
        Just(json!({})),
        Just(json!({ "matches": "(" })),
        Just(json!({ "matches": "a{99999}" })),
        Just(json!({ "semver_gt": "not.a.version" })),
        Just(json!({ "in": "not a list" })),
        Just(json!({ "segment": "missing" })),
        Just(json!({ "exists": 1 })),
        deep,
    ]
}

/// One edit of a JSON tree, addressed by an index into its nodes.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, Value),
    Remove(Index),
    /// Copies an array element next to itself (duplicate ids, overlapping ranges).
    Duplicate(Index),
    RenameKey(Index, String),
    /// Copies the subtree at the first node over the second (right shape, wrong place).
    Transplant(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "id",
            "layer",
            "salt",
            "buckets",
            "unit",
            "ranges",
            "when",
            "cells",
            "weight",
            "flags",
            "key",
            "type",
            "variants",
            "default",
            "enabled",
            "rules",
            "rollout",
            "split",
            "variant",
            "segments",
            "holdouts",
            "layers",
            "not",
            "all",
            "any",
            "segment",
            "eq",
            "matches",
            "semver_lt",
            "exists",
            "unknown_field",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,12}",
    ];
    prop_oneof![
        4 => (any::<Index>(), interesting()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        2 => any::<Index>().prop_map(Mutation::Duplicate),
        1 => (any::<Index>(), key).prop_map(|(i, k)| Mutation::RenameKey(i, k)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Transplant(a, b)),
    ]
}

/// JSON pointers of every node below the root.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

/// Splits a pointer into its parent and last token.
fn parent_of(p: &str) -> (&str, String) {
    let (parent, last) = p.rsplit_once('/').unwrap_or(("", p));
    (parent, last.replace("~1", "/").replace("~0", "~"))
}

fn apply(doc: &mut Value, m: &Mutation) {
    let mut ps = Vec::new();
    pointers(doc, String::new(), &mut ps);
    if ps.is_empty() {
        return;
    }
    let pick = |i: &Index| ps[i.index(ps.len())].clone();
    match m {
        Mutation::Replace(i, v) => {
            if let Some(slot) = doc.pointer_mut(&pick(i)) {
                *slot = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let p = pick(i);
            let (parent, last) = parent_of(&p);
            match doc.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&last);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = last.parse::<usize>() {
                        a.remove(i);
                    }
                }
                _ => {}
            }
        }
        Mutation::Duplicate(i) => {
            let p = pick(i);
            let (parent, last) = parent_of(&p);
            if let Some(Value::Array(a)) = doc.pointer_mut(parent)
                && let Ok(i) = last.parse::<usize>()
            {
                let copy = a[i].clone();
                a.insert(i + 1, copy);
            }
        }
        Mutation::RenameKey(i, k) => {
            let p = pick(i);
            let (parent, last) = parent_of(&p);
            if let Some(Value::Object(m)) = doc.pointer_mut(parent)
                && let Some(v) = m.remove(&last)
            {
                m.insert(k.clone(), v);
            }
        }
        Mutation::Transplant(from, to) => {
            let (from, to) = (pick(from), pick(to));
            // Not into its own subtree (the copy is taken first, so this is only about sizes).
            if to.starts_with(&from) {
                return;
            }
            if let Some(v) = doc.pointer(&from).cloned()
                && let Some(slot) = doc.pointer_mut(&to)
            {
                *slot = v;
            }
        }
    }
}

/// How a mutated tree is written out.
#[derive(Debug, Clone, Copy)]
enum Format {
    Json,
    PrettyJson,
    Yaml,
}

/// Byte-level damage after writing: truncation, insertion, deletion.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(Index),
    Insert(Index, String),
    Delete(Index, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<Index>().prop_map(Damage::Truncate),
        (
            any::<Index>(),
            prop_oneof![
                prop::sample::select(vec![
                    "{", "}", "[", "]", ",", ":", "\"", "'", "-", "&a", "*a", "!!binary", "\t",
                    "\n  ", "\u{0}", "\u{feff}", "#", "? ", "|", ">", "\\u0000", "\\ud800",
                    "1e999",
                ])
                .prop_map(str::to_owned),
                "\\PC{1,8}",
            ]
        )
            .prop_map(|(i, s)| Damage::Insert(i, s)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Damage::Delete(i, n)),
    ]
}

fn write(doc: &Value, format: Format, damage: &[Damage]) -> String {
    let mut text = match format {
        Format::Json => doc.to_string(),
        Format::PrettyJson => serde_json::to_string_pretty(doc).unwrap(),
        Format::Yaml => serde_yaml_ng::to_string(doc).unwrap(),
    };
    for d in damage {
        // Edits land on char boundaries: the input of `Config::parse` is a `&str`.
        let at = |i: &Index, text: &str| {
            let mut at = i.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        match d {
            Damage::Truncate(i) => text.truncate(at(i, &text)),
            Damage::Insert(i, s) => text.insert_str(at(i, &text), s),
            Damage::Delete(i, n) => {
                let start = at(i, &text);
                let mut end = (start + n).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(start..end, "");
            }
        }
    }
    text
}

/// A leaf JSON value for a context attribute.
fn attr_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,12}".prop_map(Value::from),
        prop::sample::select(vec!["SE", "US", "tv", "web", "5.0.0", "4.9", "v6.1.2-beta"])
            .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        (1usize..300).prop_map(|n| Value::from("u".repeat(n))),
        Just(json!(["SE", 1, null])),
        Just(json!({ "nested": true })),
    ]
}

/// Contexts touching the attributes the seed configs condition on, plus random ones.
fn contexts() -> impl Strategy<Value = Vec<Context>> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "targetingKey",
            "device_id",
            "household_id",
            "country",
            "platform",
            "app_version",
            "tenure_months",
            "email",
            "plan",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,8}",
    ];
    prop::collection::vec(prop::collection::vec((key, attr_value()), 0..10), 1..4).prop_map(|cs| {
        cs.into_iter()
            .map(|pairs| Context::from(pairs.into_iter().collect::<Map<String, Value>>()))
            .collect()
    })
}

// === targets ===

/// Replays the seed corpus; every generated run starts with it.
fn replay_corpus() {
    let contexts = vec![
        Context::new(),
        Context::with_targeting_key("member-1")
            .with("country", "SE")
            .with("platform", "tv"),
    ];
    let mut outcomes = Vec::new();
    for (name, bytes) in fuzz_support::corpus("config") {
        let text = String::from_utf8_lossy(&bytes);
        let outcome = check(&text, &contexts).unwrap_or_else(|e| panic!("{name}: {e}"));
        outcomes.push(outcome);
    }
    // The corpus holds valid documents (mutation seeds) and rejected ones.
    assert!(outcomes.contains(&Outcome::Accepted));
    assert!(outcomes.contains(&Outcome::ParseError));
    assert!(outcomes.contains(&Outcome::CompileError));
}

#[test]
fn seeds_are_valid() {
    let seeds = seeds();
    assert!(seeds.len() >= 8, "{} seeds", seeds.len());
    for seed in seeds {
        assert_eq!(
            check(&seed.to_string(), &[Context::new()]).unwrap(),
            Outcome::Accepted
        );
    }
}

#[test]
fn mutated_configs_never_panic_and_explain_every_rejection() {
    replay_corpus();
    let seeds = seeds();
    let mut runner = fuzz_support::runner(384, file!());
    let counts = [Cell::new(0u32), Cell::new(0u32), Cell::new(0u32)];
    let strategy = (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 0..4),
        prop::sample::select(vec![Format::Json, Format::PrettyJson, Format::Yaml]),
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(damage(), 1..3)],
        contexts(),
    );
    runner
        .run(
            &strategy,
            |(mut doc, mutations, format, damage, contexts)| {
                for m in &mutations {
                    apply(&mut doc, m);
                }
                let text = write(&doc, format, &damage);
                let outcome = check(&text, &contexts)?;
                counts[outcome as usize].set(counts[outcome as usize].get() + 1);
                Ok(())
            },
        )
        .unwrap();
    // Every outcome must be common, or the mutations are too weak or too destructive.
    let [parse, compile, accepted] = counts.each_ref().map(Cell::get);
    let n = runner.config().cases;
    eprintln!("{n} mutated configs: {parse} unparsable, {compile} rejected, {accepted} accepted");
    assert!(parse > n / 20, "{parse} parse errors");
    assert!(compile > n / 20, "{compile} compile errors");
    assert!(accepted > n / 20, "{accepted} accepted");
}

#[test]
fn arbitrary_text_never_panics() {
    let mut runner = fuzz_support::runner(2_000, file!());
    let text = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "\\PC{0,300}",
        // YAML and JSON punctuation, dense.
        "[-{}\\[\\]:,\"'&*!|>#?% \n\ta-z0-9.~]{0,300}",
    ];
    runner
        .run(&(text, contexts()), |(text, contexts)| {
            check(&text, &contexts)?;
            Ok(())
        })
        .unwrap();
}
