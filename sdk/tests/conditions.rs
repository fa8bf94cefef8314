//! Conditions (DESIGN §3) through the public API: every operator, `all`/`any`/`not`, segments
//! and missing-attribute semantics, evaluated as a flag rule (`resolve`) and as an experiment's
//! eligibility (`allocate`).

use allot::{Context, Reason, compile_str};
use serde_json::{Value, json};

const SEGMENTS: &str = r#"{
    "nordics": {"country": {"in": ["SE", "NO", "DK", "FI"]}},
    "tv": {"platform": "tv"},
    "nordic-tv": {"all": [{"segment": "nordics"}, {"segment": "tv"}]}
}"#;

/// Whether `cond` holds for `ctx`, asked twice: as a flag rule and as experiment eligibility.
fn holds(cond: &Value, ctx: &Value) -> bool {
    let doc = format!(
        r#"{{
        "segments": {SEGMENTS},
        "layers": [{{"id": "home"}}],
        "experiments": [{{"id": "e", "layer": "home", "ranges": ["0..10000"], "when": {cond},
                          "cells": [{{"id": "c", "flags": {{"gated": "on"}}}}]}}],
        "flags": [
            {{"key": "f", "type": "bool", "variants": {{"on": true, "off": false}}, "default": "off",
              "rules": [{{"when": {cond}, "variant": "on"}}]}},
            {{"key": "gated", "type": "bool", "variants": {{"on": true, "off": false}}, "default": "off"}}
        ]}}"#
    );
    let snapshot = compile_str(&doc, 1).unwrap_or_else(|e| panic!("{cond}: {e}"));
    let mut ctx: Context = serde_json::from_value(ctx.clone()).unwrap();
    if ctx.get("targetingKey").is_none() {
        ctx.insert("targetingKey", "member-1");
    }
    let rule = snapshot.resolve("f", &ctx).unwrap();
    let as_rule = match rule.reason {
        Reason::TargetingMatch => true,
        Reason::Default => false,
        other => panic!("{cond}: unexpected reason {other:?}"),
    };
    assert_eq!(rule.value, &json!(as_rule));
    let enrolled = !snapshot.allocate(&ctx).assignments().is_empty();
    assert_eq!(
        enrolled, as_rule,
        "{cond} on {ctx:?}: rule and eligibility disagree"
    );
    let gated = snapshot.resolve("gated", &ctx).unwrap();
    assert_eq!(gated.reason == Reason::Split, as_rule);
    as_rule
}

/// Checks `cond` against each (context, expected) pair.
fn check(cond: Value, cases: &[(Value, bool)]) {
    for (ctx, expected) in cases {
        assert_eq!(holds(&cond, ctx), *expected, "{cond} on {ctx}");
    }
}

#[test]
fn eq_and_ne() {
    check(
        json!({"country": {"eq": "SE"}}),
        &[
            (json!({"country": "SE"}), true),
            (json!({"country": "se"}), false),
            (json!({"country": "SE "}), false),
            (json!({"country": ["SE"]}), false),
            (json!({}), false),
        ],
    );
    // A scalar is shorthand for eq.
    check(
        json!({"country": "SE", "beta": true, "n": 3}),
        &[
            (json!({"country": "SE", "beta": true, "n": 3}), true),
            (json!({"country": "SE", "beta": true, "n": 3.0}), true),
            (json!({"country": "SE", "beta": "true", "n": 3}), false),
            (json!({"country": "SE", "beta": true, "n": "3"}), false),
        ],
    );
    check(
        json!({"country": {"ne": "SE"}}),
        &[
            (json!({"country": "NO"}), true),
            (json!({"country": "SE"}), false),
            (json!({"country": 1}), true),
            // Absent fails every operator but `exists: false`, `ne` included.
            (json!({}), false),
            (json!({"country": null}), false),
        ],
    );
    check(
        json!({"n": {"eq": 1}}),
        &[
            (json!({"n": 1}), true),
            (json!({"n": 1.0}), true),
            (json!({"n": true}), false),
            (json!({"n": "1"}), false),
        ],
    );
}

#[test]
fn in_and_not_in() {
    check(
        json!({"country": {"in": ["US", "CA", 7]}}),
        &[
            (json!({"country": "US"}), true),
            (json!({"country": "CA"}), true),
            (json!({"country": 7}), true),
            (json!({"country": "SE"}), false),
            (json!({"country": "us"}), false),
            (json!({}), false),
        ],
    );
    check(
        json!({"country": {"not_in": ["US", "CA"]}}),
        &[
            (json!({"country": "SE"}), true),
            (json!({"country": "US"}), false),
            (json!({}), false),
        ],
    );
    check(
        json!({"country": {"in": []}}),
        &[(json!({"country": "SE"}), false)],
    );
    check(
        json!({"country": {"not_in": []}}),
        &[(json!({"country": "SE"}), true)],
    );
}

#[test]
fn ordering() {
    check(
        json!({"age": {"gte": 18, "lt": 65}}),
        &[
            (json!({"age": 18}), true),
            (json!({"age": 64.5}), true),
            (json!({"age": 17}), false),
            (json!({"age": 65}), false),
            (json!({"age": "30"}), false),
            (json!({}), false),
        ],
    );
    check(
        json!({"n": {"gt": 1.5}}),
        &[(json!({"n": 2}), true), (json!({"n": 1.5}), false)],
    );
    check(
        json!({"n": {"lte": -1}}),
        &[(json!({"n": -1}), true), (json!({"n": 0}), false)],
    );
    // Strings compare by bytes; a string operand never matches a number and vice versa.
    check(
        json!({"tier": {"lt": "m"}}),
        &[
            (json!({"tier": "gold"}), true),
            (json!({"tier": "silver"}), false),
            (json!({"tier": 1}), false),
        ],
    );
}

#[test]
fn semver() {
    let v = |s: &str| json!({ "app": s });
    check(
        json!({"app": {"semver_ge": "5.2.0"}}),
        &[
            (v("5.2.0"), true),
            (v("5.10.0"), true),
            (v("v5.2"), true),
            (v("6"), true),
            (v("5.1.9"), false),
            (v("5.2.0-beta.1"), false),
            (v("not-a-version"), false),
            (json!({"app": 5}), false),
            (json!({}), false),
        ],
    );
    check(
        json!({"app": {"semver_lt": "5.10"}}),
        &[(v("5.9.99"), true), (v("5.10.0"), false)],
    );
    check(
        json!({"app": {"semver_le": "5.10.0"}}),
        &[(v("5.10.0"), true), (v("5.10.1"), false)],
    );
    check(
        json!({"app": {"semver_gt": "1.0.0-rc.1"}}),
        &[(v("1.0.0"), true), (v("1.0.0-rc.1"), false)],
    );
    check(
        json!({"app": {"semver_eq": "2.0.0"}}),
        &[
            (v("2.0.0"), true),
            (v("v2.0"), true),
            (v("2.0.0+build.5"), true), // build metadata has no precedence
            (v("2.0.1"), false),
        ],
    );
}

#[test]
fn strings() {
    check(
        json!({"email": {"ends_with": "@example.com"}}),
        &[
            (json!({"email": "a@example.com"}), true),
            (json!({"email": "a@example.com.evil"}), false),
            (json!({"email": 5}), false),
        ],
    );
    check(
        json!({"path": {"starts_with": "/tv/"}}),
        &[
            (json!({"path": "/tv/home"}), true),
            (json!({"path": "/web/tv/"}), false),
        ],
    );
    check(
        json!({"name": {"contains": "会员"}}),
        &[
            (json!({"name": "新会员-42"}), true),
            (json!({"name": "member"}), false),
        ],
    );
    // On a list, contains tests membership.
    check(
        json!({"tags": {"contains": "beta"}}),
        &[
            (json!({"tags": ["alpha", "beta"]}), true),
            (json!({"tags": ["betamax"]}), false),
            (json!({"tags": "beta-tester"}), true),
            (json!({"tags": {"beta": true}}), false),
        ],
    );
    check(
        json!({"ids": {"contains": 3}}),
        &[
            (json!({"ids": [1, 2, 3]}), true),
            (json!({"ids": [1, 2]}), false),
        ],
    );
    check(
        json!({"email": {"matches": "^[a-z]+@(example|test)\\.com$"}}),
        &[
            (json!({"email": "ann@test.com"}), true),
            (json!({"email": "Ann@test.com"}), false),
            (json!({"email": "ann@testxcom"}), false),
            (json!({"email": 1}), false),
        ],
    );
    // Unanchored patterns match anywhere.
    check(
        json!({"ua": {"matches": "Tizen|webOS"}}),
        &[(json!({"ua": "Mozilla/5.0 (webOS)"}), true)],
    );
}

#[test]
fn exists_and_missing_attributes() {
    check(
        json!({"beta": {"exists": true}}),
        &[
            (json!({"beta": false}), true),
            (json!({"beta": ""}), true),
            (json!({"beta": null}), false),
            (json!({}), false),
        ],
    );
    check(
        json!({"beta": {"exists": false}}),
        &[
            (json!({}), true),
            (json!({"beta": null}), true),
            (json!({"beta": 0}), false),
        ],
    );
    // Every other operator fails on an absent attribute.
    for op in [
        json!({"eq": "x"}),
        json!({"ne": "x"}),
        json!({"in": ["x"]}),
        json!({"not_in": ["x"]}),
        json!({"lt": 1}),
        json!({"lte": 1}),
        json!({"gt": 1}),
        json!({"gte": 1}),
        json!({"semver_lt": "1.0.0"}),
        json!({"starts_with": ""}),
        json!({"ends_with": ""}),
        json!({"contains": "x"}),
        json!({"matches": ".*"}),
    ] {
        check(json!({ "missing": op }), &[(json!({}), false)]);
        // ... and `not` of it holds.
        check(json!({"not": { "missing": op }}), &[(json!({}), true)]);
    }
}

#[test]
fn combinators() {
    check(
        json!({"all": [{"country": "SE"}, {"platform": "tv"}]}),
        &[
            (json!({"country": "SE", "platform": "tv"}), true),
            (json!({"country": "SE", "platform": "web"}), false),
        ],
    );
    check(
        json!({"any": [{"country": "SE"}, {"platform": "tv"}]}),
        &[
            (json!({"country": "NO", "platform": "tv"}), true),
            (json!({"country": "NO", "platform": "web"}), false),
        ],
    );
    check(
        json!({"not": {"country": "SE"}}),
        &[
            (json!({"country": "NO"}), true),
            (json!({"country": "SE"}), false),
        ],
    );
    // Several keys, and several operators on one attribute, must all hold.
    check(
        json!({"country": {"in": ["SE", "NO"], "ne": "NO"}, "platform": "tv"}),
        &[
            (json!({"country": "SE", "platform": "tv"}), true),
            (json!({"country": "NO", "platform": "tv"}), false),
            (json!({"country": "SE"}), false),
        ],
    );
    // Empty combinators: all of nothing holds, any of nothing does not, {} always holds.
    check(json!({"all": []}), &[(json!({}), true)]);
    check(json!({"any": []}), &[(json!({}), false)]);
    check(json!({}), &[(json!({}), true)]);
    check(
        json!({"any": [{"not": {"all": [{"a": 1}, {"b": 2}]}}, {"c": {"exists": true}}]}),
        &[
            (json!({"a": 1, "b": 2}), false),
            (json!({"a": 1, "b": 2, "c": 0}), true),
            (json!({"a": 1}), true),
        ],
    );
}

#[test]
fn segments() {
    check(
        json!({"segment": "nordics"}),
        &[
            (json!({"country": "FI"}), true),
            (json!({"country": "DE"}), false),
        ],
    );
    check(
        json!({"segment": "nordic-tv"}),
        &[
            (json!({"country": "SE", "platform": "tv"}), true),
            (json!({"country": "SE", "platform": "web"}), false),
            (json!({"country": "DE", "platform": "tv"}), false),
        ],
    );
    check(
        json!({"not": {"segment": "tv"}, "segment": "nordics"}),
        &[
            (json!({"country": "SE", "platform": "web"}), true),
            (json!({"country": "SE", "platform": "tv"}), false),
        ],
    );
}

#[test]
fn a_rule_condition_never_moves_a_rollout_or_experiment() {
    // Conditions gate; they do not change the hash. The same unit gets the same rollout variant
    // whether it reached the rollout rule first or after a non-matching rule.
    let snapshot = compile_str(
        r#"
flags:
  - key: f
    type: string
    variants: { a: a, b: b, staff: staff }
    default: a
    rules:
      - { when: { employee: true }, variant: staff }
      - { rollout: { split: [{ variant: a, weight: 1 }, { variant: b, weight: 1 }] } }
  - key: g
    type: string
    variants: { a: a, b: b }
    default: a
    rules:
      - { rollout: { salt: f, split: [{ variant: a, weight: 1 }, { variant: b, weight: 1 }] } }
"#,
        1,
    )
    .unwrap();
    for i in 0..200 {
        let ctx = Context::with_targeting_key(format!("member-{i}")).with("employee", false);
        let f = snapshot.resolve("f", &ctx).unwrap();
        let g = snapshot.resolve("g", &ctx).unwrap();
        assert_eq!(f.reason, Reason::Split);
        assert_eq!(
            f.variant, g.variant,
            "the default rollout salt is the flag key"
        );
        let staff = snapshot
            .resolve("f", &ctx.clone().with("employee", true))
            .unwrap();
        assert_eq!(
            (staff.variant, staff.reason),
            ("staff", Reason::TargetingMatch)
        );
    }
}

/// `allocate` evaluates each distinct experiment condition once per call and remembers the
/// answer for the first 128 of them; past that it evaluates every time. Either way each layer's
/// experiment sees its own condition: 200 layers, experiment `i` eligible only for `n == i`, and
/// the same condition again in a second layer so that some classes are shared.
#[test]
fn many_distinct_experiment_conditions_each_gate_their_own_experiment() {
    let n = 200;
    let mut layers = Vec::new();
    let mut experiments = Vec::new();
    for i in 0..n {
        layers.push(json!({ "id": format!("l{i}") }));
        experiments.push(json!({
            "id": format!("e{i}"), "layer": format!("l{i}"), "ranges": ["0..10000"],
            // Layer i's experiment repeats layer (i - 100)'s condition from i = 150 on.
            "when": { "n": { "eq": if i >= 150 { i - 100 } else { i } } },
            "cells": [{ "id": "c", "flags": {} }],
        }));
    }
    let doc = json!({ "layers": layers, "experiments": experiments, "flags": [] });
    let snapshot = compile_str(&doc.to_string(), 1).unwrap();
    for k in [0, 1, 49, 50, 99, 127, 128, 129, 149, 150, 199, 200] {
        let ctx = Context::with_targeting_key("member-1").with("n", k);
        let got: Vec<&str> = snapshot
            .allocate(&ctx)
            .assignments()
            .iter()
            .map(|a| a.experiment)
            .collect();
        let e = |i: i32| format!("e{i}");
        let want: Vec<String> = match k {
            50..=99 => vec![e(k), e(k + 100)],
            0..=149 => vec![e(k)],
            _ => vec![],
        };
        assert_eq!(got, want, "n = {k}");
    }
}
