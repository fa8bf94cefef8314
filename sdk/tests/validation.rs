//! Validation (DESIGN §3): every rejection has its own specific error kind and the path of the
//! value at fault, and a config with several problems reports all of them.

use allot::{ConfigError, ErrorKind, compile_str};

/// The errors of a document that must be rejected.
fn errors(doc: &str) -> Vec<ConfigError> {
    match compile_str(doc, 1) {
        Ok(_) => panic!("accepted:\n{doc}"),
        Err(e) => e.errors().to_vec(),
    }
}

/// Exactly one error, at `path`, of the kind `is_kind` accepts; returns it for further checks.
fn check(doc: &str, path: &str, is_kind: impl Fn(&ErrorKind) -> bool) -> ConfigError {
    let errs = errors(doc);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let e = errs.into_iter().next().unwrap();
    assert_eq!(e.path, path, "{e}");
    assert!(is_kind(&e.kind), "wrong kind: {:?}", e.kind);
    e
}

const FLAGS: &str = r#"
flags:
  - { key: prefetch, type: bool, variants: { "on": true, "off": false }, default: "off" }
  - { key: ranker, type: string, variants: { a: "bm25", b: "learned" }, default: a }
"#;

/// A valid document with `body` (layers, experiments, ...) and two flags.
fn doc(body: &str) -> String {
    format!("{body}\n{FLAGS}")
}

#[test]
fn the_base_documents_are_valid() {
    compile_str(&doc("layers: [{ id: home }]"), 1).unwrap();
    compile_str(
        &doc(r#"
layers: [{ id: home }]
experiments:
  - { id: e, layer: home, ranges: ["0..10000"], cells: [{ id: c, flags: { prefetch: "on" } }] }
"#),
        1,
    )
    .unwrap();
}

#[test]
fn overlapping_ranges_in_a_layer() {
    let e = check(
        &doc(r#"
layers: [{ id: home }]
experiments:
  - { id: a, layer: home, ranges: ["0..100", "500..600"], cells: [{ id: c }] }
  - { id: b, layer: home, ranges: ["100..200", "550..700"], cells: [{ id: c }] }
"#),
        "experiments[1].ranges[1]",
        |k| matches!(k, ErrorKind::Overlap { .. }),
    );
    assert_eq!(
        e.to_string(),
        "experiments[1].ranges[1]: 550..700 overlaps 500..600 of experiment a"
    );
    // Adjacent half-open ranges do not overlap; one experiment's own ranges may not overlap.
    check(
        &doc(r#"
layers: [{ id: home }]
experiments:
  - { id: a, layer: home, ranges: ["0..100", "50..60"], cells: [{ id: c }] }
"#),
        "experiments[0].ranges[1]",
        |k| matches!(k, ErrorKind::Overlap { .. }),
    );
    // The same ranges in two layers are fine.
    compile_str(
        &doc(r#"
layers: [{ id: home }, { id: search }]
experiments:
  - { id: a, layer: home, ranges: ["0..100"], cells: [{ id: c }] }
  - { id: b, layer: search, ranges: ["0..100"], cells: [{ id: c }] }
"#),
        1,
    )
    .unwrap();
}

#[test]
fn ranges_outside_the_layer() {
    let e = check(
        &doc(r#"
layers: [{ id: home }, { id: small, buckets: 100 }]
experiments:
  - { id: a, layer: home, ranges: ["0..1000"], cells: [{ id: c }] }
  - { id: b, layer: small, ranges: ["0..100"], cells: [{ id: c }] }
  - { id: c, layer: home, ranges: ["9000..12000"], cells: [{ id: c }] }
"#),
        "experiments[2].ranges[0]",
        |k| {
            matches!(
                k,
                ErrorKind::RangeExceeds {
                    buckets: 10_000,
                    ..
                }
            )
        },
    );
    assert_eq!(
        e.to_string(),
        "experiments[2].ranges[0]: 9000..12000 exceeds layer home (10000 buckets)"
    );
    check(
        &doc(r#"
layers: [{ id: home }]
holdouts: [{ id: h, buckets: 100, ranges: ["50..101"], layers: [home] }]
"#),
        "holdouts[0].ranges[0]",
        |k| matches!(k, ErrorKind::RangeExceeds { buckets: 100, .. }),
    );
}

#[test]
fn malformed_ranges() {
    for range in ["10..5", "5..5", "a..b", "0-10", "-1..5", "0..4294967296"] {
        check(
            &doc(&format!(
                "layers: [{{ id: home }}]\nexperiments:\n  - {{ id: a, layer: home, ranges: [\"{range}\"], cells: [{{ id: c }}] }}"
            )),
            "experiments[0].ranges[0]",
            |k| matches!(k, ErrorKind::InvalidRange { .. }),
        );
    }
}

#[test]
fn unknown_references() {
    let unknown = |what: &'static str, id: &'static str| move |k: &ErrorKind| matches!(k, ErrorKind::Unknown { what: w, id: i } if *w == what && i == id);
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: hom, ranges: ["0..10"], cells: [{ id: c }] }]
"#),
        "experiments[0].layer",
        unknown("layer", "hom"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], cells: [{ id: c, flags: { prefetc: "on" } }] }]
"#),
        "experiments[0].cells[0].flags.prefetc",
        unknown("flag", "prefetc"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
holdouts: [{ id: h, ranges: ["0..10"], layers: [home, serch] }]
"#),
        "holdouts[0].layers[1]",
        unknown("layer", "serch"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], when: { segment: staf }, cells: [{ id: c }] }]
"#),
        "experiments[0].when.segment",
        unknown("segment", "staf"),
    );
}

#[test]
fn unknown_variants() {
    let unknown_variant = |flag: &'static str, variant: &'static str| move |k: &ErrorKind| matches!(k, ErrorKind::UnknownVariant { flag: f, variant: v } if f == flag && v == variant);
    let e = check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], cells: [{ id: c, flags: { ranker: z } }] }]
"#),
        "experiments[0].cells[0].flags.ranker",
        unknown_variant("ranker", "z"),
    );
    assert_eq!(
        e.to_string(),
        "experiments[0].cells[0].flags.ranker: flag `ranker` has no variant `z`"
    );
    check(
        "flags: [{ key: f, type: bool, variants: { t: true }, default: x }]",
        "flags[0].default",
        unknown_variant("f", "x"),
    );
    check(
        "flags: [{ key: f, type: bool, variants: { t: true }, default: t, rules: [{ variant: y }] }]",
        "flags[0].rules[0].variant",
        unknown_variant("f", "y"),
    );
    check(
        r#"
flags:
  - key: f
    type: bool
    variants: { t: true, f: false }
    default: t
    rules: [{ rollout: { split: [{ variant: t, weight: 1 }, { variant: q, weight: 1 }] } }]
"#,
        "flags[0].rules[0].rollout.split[1].variant",
        unknown_variant("f", "q"),
    );
}

#[test]
fn variant_type_mismatches() {
    for (kind, value, found) in [
        ("bool", "\"yes\"", "a string"),
        ("string", "1", "an integer"),
        ("int", "1.5", "a float"),
        ("int", "true", "a bool"),
        ("float", "\"1.5\"", "a string"),
        ("object", "[1]", "an array"),
    ] {
        let e = check(
            &format!("flags: [{{ key: f, type: {kind}, variants: {{ v: {value} }}, default: v }}]"),
            "flags[0].variants.v",
            |k| matches!(k, ErrorKind::TypeMismatch { .. }),
        );
        assert_eq!(
            e.to_string(),
            format!("flags[0].variants.v: variant `v` is {found}, but flag type is {kind}")
        );
    }
    // Integers are valid floats.
    compile_str(
        "flags: [{ key: f, type: float, variants: { v: 1 }, default: v }]",
        1,
    )
    .unwrap();
}

#[test]
fn a_flag_driven_by_two_layers() {
    let e = check(
        &doc(r#"
layers: [{ id: home }, { id: search }]
experiments:
  - { id: a, layer: home, ranges: ["0..10"], cells: [{ id: c, flags: { prefetch: "on" } }] }
  - { id: b, layer: home, ranges: ["10..20"], cells: [{ id: c, flags: { prefetch: "off" } }] }
  - { id: d, layer: search, ranges: ["0..10"], cells: [{ id: c, flags: { ranker: b } }, { id: x, flags: { prefetch: "on" } }] }
"#),
        "experiments[2].cells[1].flags.prefetch",
        |k| matches!(k, ErrorKind::FlagInTwoLayers { .. }),
    );
    assert_eq!(
        e.to_string(),
        "experiments[2].cells[1].flags.prefetch: flag `prefetch` is driven by experiments in \
         layers `home` and `search`; a flag may follow one layer"
    );
}

#[test]
fn zero_total_weight() {
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], cells: [{ id: c, weight: 0 }, { id: d, weight: 0 }] }]
"#),
        "experiments[0].cells",
        |k| matches!(k, ErrorKind::ZeroWeight),
    );
    check(
        r#"
flags:
  - key: f
    type: bool
    variants: { t: true }
    default: t
    rules: [{ rollout: { split: [{ variant: t, weight: 0 }] } }]
"#,
        "flags[0].rules[0].rollout.split",
        |k| matches!(k, ErrorKind::ZeroWeight),
    );
}

#[test]
fn duplicate_ids() {
    let dup = |what: &'static str| move |k: &ErrorKind| matches!(k, ErrorKind::DuplicateId { what: w, .. } if *w == what);
    check(
        &doc("layers: [{ id: home }, { id: search }, { id: home }]"),
        "layers[2].id",
        dup("layer id"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
experiments:
  - { id: a, layer: home, ranges: ["0..10"], cells: [{ id: c }] }
  - { id: a, layer: home, ranges: ["10..20"], cells: [{ id: c }] }
"#),
        "experiments[1].id",
        dup("experiment or holdout id"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], cells: [{ id: c }, { id: d }, { id: c }] }]
"#),
        "experiments[0].cells[2].id",
        dup("cell id"),
    );
    check(
        r#"
flags:
  - { key: f, type: bool, variants: { t: true }, default: t }
  - { key: f, type: bool, variants: { t: true }, default: t }
"#,
        "flags[1].key",
        dup("flag key"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], cells: [{ id: c }] }]
holdouts: [{ id: a, ranges: ["0..10"], layers: [home] }]
"#),
        "holdouts[0].id",
        dup("experiment or holdout id"),
    );
    // Duplicate variant names cannot be written in JSON/YAML maps: the parser refuses them.
    let errs =
        errors("flags: [{ key: f, type: bool, variants: { t: true, t: false }, default: t }]");
    assert!(matches!(errs[0].kind, ErrorKind::Parse { .. }), "{errs:?}");
}

#[test]
fn bad_regex() {
    let e = check(
        r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], when: { email: { matches: "(unclosed" } }, cells: [{ id: c }] }]
"#,
        "experiments[0].when.email.matches",
        |k| matches!(k, ErrorKind::BadRegex { pattern, .. } if pattern == "(unclosed"),
    );
    assert!(
        e.to_string()
            .starts_with("experiments[0].when.email.matches: invalid regex `(unclosed`: "),
        "{e}"
    );
}

#[test]
fn segment_cycle() {
    let errs = errors(
        r#"
segments:
  a: { segment: b }
  b: { all: [{ country: SE }, { segment: a }] }
flags:
  - { key: f, type: bool, variants: { t: true }, default: t, rules: [{ when: { segment: a }, variant: t }] }
"#,
    );
    assert!(!errs.is_empty());
    assert!(
        errs.iter()
            .all(|e| matches!(e.kind, ErrorKind::SegmentCycle { .. })),
        "{errs:#?}"
    );
    let first = &errs[0];
    assert_eq!(first.path, "segments.b.all[1].segment");
    assert_eq!(
        first.to_string(),
        "segments.b.all[1].segment: segment `a` refers to itself through a -> b -> a"
    );
    // A segment referring to itself directly.
    check(
        "segments: { s: { not: { segment: s } } }",
        "segments.s.not.segment",
        |k| matches!(k, ErrorKind::SegmentCycle { id, .. } if id == "s"),
    );
}

#[test]
fn unknown_operator_and_bad_operands() {
    let rule = |when: &str| {
        format!(
            "flags: [{{ key: f, type: bool, variants: {{ t: true }}, default: t, rules: [{{ when: {when}, variant: t }}] }}]"
        )
    };
    let e = check(
        &rule("{ country: { equals: SE } }"),
        "flags[0].rules[0].when.country.equals",
        |k| matches!(k, ErrorKind::UnknownOperator { op, .. } if op == "equals"),
    );
    assert!(e.to_string().contains("unknown operator `equals`"), "{e}");
    for (when, path) in [
        ("{ country: { in: SE } }", "country.in"),
        ("{ country: { eq: [SE] } }", "country.eq"),
        ("{ n: { lt: [1] } }", "n.lt"),
        ("{ v: { semver_ge: 5 } }", "v.semver_ge"),
        ("{ s: { starts_with: 1 } }", "s.starts_with"),
        ("{ s: { matches: 1 } }", "s.matches"),
        ("{ s: { exists: yes-please } }", "s.exists"),
        ("{ all: { country: SE } }", "all"),
        ("{ segment: [a] }", "segment"),
        ("{ country: [SE] }", "country"),
    ] {
        check(
            &rule(when),
            &format!("flags[0].rules[0].when.{path}"),
            |k| matches!(k, ErrorKind::Operand { .. }),
        );
    }
    check(
        &rule("{ v: { semver_ge: \"five\" } }"),
        "flags[0].rules[0].when.v.semver_ge",
        |k| matches!(k, ErrorKind::InvalidSemver { value } if value == "five"),
    );
    check(&rule("[1, 2]"), "flags[0].rules[0].when", |k| {
        matches!(k, ErrorKind::ConditionShape { .. })
    });
}

#[test]
fn invalid_id_characters() {
    let invalid = |what: &'static str| move |k: &ErrorKind| matches!(k, ErrorKind::InvalidId { what: w, .. } if *w == what);
    check(
        &doc("layers: [{ id: \"home page\" }]"),
        "layers[0].id",
        invalid("layer id"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: "a.b", layer: home, ranges: ["0..10"], cells: [{ id: c }] }]
"#),
        "experiments[0].id",
        invalid("experiment id"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], cells: [{ id: "c~1" }] }]
"#),
        "experiments[0].cells[0].id",
        invalid("cell id"),
    );
    check(
        &doc(r#"
layers: [{ id: home }]
holdouts: [{ id: "höld", ranges: ["0..10"], layers: [home] }]
"#),
        "holdouts[0].id",
        invalid("holdout id"),
    );
    check(
        "flags: [{ key: \"a/b\", type: bool, variants: { t: true }, default: t }]",
        "flags[0].key",
        invalid("flag key"),
    );
    let long = "x".repeat(65);
    check(
        &doc(&format!("layers: [{{ id: {long} }}]")),
        "layers[0].id",
        invalid("layer id"),
    );
    // 64 characters and flag keys with dots are fine.
    compile_str(
        &format!(
            "layers: [{{ id: {} }}]\nflags: [{{ key: checkout.new-flow_v2, type: bool, variants: {{ t: true }}, default: t }}]",
            "x".repeat(64)
        ),
        1,
    )
    .unwrap();
}

#[test]
fn bucket_counts() {
    for (buckets, ok) in [
        (0u64, false),
        (1, true),
        (1_000_000, true),
        (1_000_001, false),
    ] {
        let text = doc(&format!("layers: [{{ id: home, buckets: {buckets} }}]"));
        if ok {
            compile_str(&text, 1).unwrap();
        } else {
            let e = check(
                &text,
                "layers[0].buckets",
                |k| matches!(k, ErrorKind::InvalidBuckets { buckets: b, max: 1_000_000 } if *b == buckets),
            );
            assert_eq!(
                e.to_string(),
                format!("layers[0].buckets: buckets must be between 1 and 1000000, got {buckets}")
            );
        }
    }
    check(
        &doc(
            "layers: [{ id: home }]\nholdouts: [{ id: h, buckets: 0, ranges: [], layers: [home] }]",
        ),
        "holdouts[0].buckets",
        |k| matches!(k, ErrorKind::InvalidBuckets { buckets: 0, .. }),
    );
}

#[test]
fn empty_salts_and_units() {
    check(
        &doc("layers: [{ id: home, salt: \"\" }]"),
        "layers[0].salt",
        |k| matches!(k, ErrorKind::Empty { what: "salt" }),
    );
    check(
        &doc("layers: [{ id: home, unit: \"\" }]"),
        "layers[0].unit",
        |k| matches!(k, ErrorKind::Empty { what: "unit" }),
    );
    // Whitespace is a valid, non-empty salt.
    compile_str(&doc("layers: [{ id: home, salt: \" \" }]"), 1).unwrap();
}

#[test]
fn empty_lists_and_rule_shapes() {
    check(
        &doc(r#"
layers: [{ id: home }]
experiments: [{ id: a, layer: home, ranges: ["0..10"], cells: [] }]
"#),
        "experiments[0].cells",
        |k| matches!(k, ErrorKind::EmptyList { what: "cells" }),
    );
    let errs = errors("flags: [{ key: f, type: bool, variants: {}, default: t }]");
    assert_eq!(errs.len(), 2, "{errs:?}"); // no variants, and so no default either
    assert_eq!(errs[0].path, "flags[0].variants");
    assert!(matches!(
        errs[0].kind,
        ErrorKind::EmptyList { what: "variants" }
    ));
    assert_eq!(errs[1].path, "flags[0].default");
    check(
        "flags: [{ key: f, type: bool, variants: { t: true }, default: t, rules: [{ when: { a: 1 } }] }]",
        "flags[0].rules[0]",
        |k| matches!(k, ErrorKind::RuleShape),
    );
}

#[test]
fn parse_errors_have_paths() {
    let parse = |doc: &str, path: &str| {
        let e = check(doc, path, |k| matches!(k, ErrorKind::Parse { .. }));
        assert!(e.to_string().starts_with(&format!("{path}: ")), "{e}");
    };
    // YAML
    parse(
        r#"
layers: [{ id: home }]
experiments:
  - { id: a, layer: home, ranges: ["0..10"], cells: [{ id: c, weight: heavy }] }
"#,
        "experiments[0].cells[0].weight",
    );
    // JSON, a string weight
    parse(
        r#"{"layers": [{"id": "home"}],
            "experiments": [{"id": "a", "layer": "home", "ranges": ["0..10"],
                             "cells": [{"id": "c", "weight": "1"}]}]}"#,
        "experiments[0].cells[0].weight",
    );
    // a negative weight and a weight past u32
    parse(
        "experiments: [{ id: a, layer: home, cells: [{ id: c, weight: -1 }] }]",
        "experiments[0].cells[0].weight",
    );
    parse(
        "experiments: [{ id: a, layer: home, cells: [{ id: c, weight: 4294967296 }] }]",
        "experiments[0].cells[0].weight",
    );
    // unknown fields (deny_unknown_fields), at every level
    parse("layers: [{ id: home, bucket: 100 }]", "layers[0].bucket");
    parse("layer: [{ id: home }]", "layer");
    parse(
        "flags: [{ key: f, type: bool, variants: { t: true }, default: t, rules: [{ variant: t, weight: 1 }] }]",
        "flags[0].rules[0].weight",
    );
    // an unknown flag type, and a missing required field
    parse(
        "flags: [{ key: f, type: boolean, variants: { t: true }, default: t }]",
        "flags[0].type",
    );
    parse("experiments: [{ id: a, cells: [] }]", "experiments[0]");
    // syntax errors
    let errs = errors("layers: [{ id: home");
    assert!(matches!(errs[0].kind, ErrorKind::Parse { .. }));
    let errs = errors(r#"{"layers": [}"#);
    assert!(matches!(errs[0].kind, ErrorKind::Parse { .. }));
}

#[test]
fn several_errors_are_all_reported_in_document_order_by_section() {
    let errs = errors(
        r#"
layers:
  - { id: home }
  - { id: home, buckets: 0 }
experiments:
  - { id: a, layer: home, ranges: ["0..20000"], cells: [{ id: c, weight: 0 }] }
  - { id: b, layer: nowhere, ranges: ["0..10"], cells: [{ id: c, flags: { nope: x } }] }
  - { id: d, layer: home, ranges: ["0..10", "5..8"], when: { x: { matches: "[" } }, cells: [{ id: c }] }
flags:
  - { key: f, type: int, variants: { one: "1" }, default: two }
"#,
    );
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "layers[1].id",
            "layers[1].buckets",
            "flags[0].variants.one",
            "flags[0].default",
            "experiments[0].ranges[0]",
            "experiments[0].cells",
            "experiments[1].layer",
            "experiments[1].cells[0].flags.nope",
            "experiments[2].ranges[1]",
            "experiments[2].when.x.matches",
        ],
        "{errs:#?}"
    );
    let rendered = allot::compile_str("layers: [{ id: \"a b\" }, { id: \"c d\" }]", 1)
        .unwrap_err()
        .to_string();
    assert_eq!(
        rendered,
        "config rejected (2 errors)\n  layers[0].id: `a b` is not a valid layer id (expected [A-Za-z0-9_-]{1,64})\n  layers[1].id: `c d` is not a valid layer id (expected [A-Za-z0-9_-]{1,64})"
    );
}
