//! Flag handles: `resolve_id` answers exactly as `resolve`, works across recompiles of the same
//! document, and refuses a handle from another config instead of reading another flag.

use allot::{Context, compile_str};

const CONFIG: &str = r#"
layers: [{ id: home }]
experiments:
  - id: prefetch-test
    layer: home
    ranges: ["0..6000"]
    cells:
      - { id: control,   flags: { prefetch: "off" } }
      - { id: treatment, flags: { prefetch: "on" } }
flags:
  - key: prefetch
    type: bool
    variants: { "on": true, "off": false }
    default: "off"
    rules: [ { when: { platform: tv }, variant: "on" } ]
  - key: theme
    type: string
    variants: { dark: dark, light: light }
    default: light
    rules: [ { rollout: { split: [ { variant: dark, weight: 1 }, { variant: light, weight: 3 } ] } } ]
"#;

#[test]
fn resolve_id_equals_resolve() {
    let snapshot = compile_str(CONFIG, 1).unwrap();
    for key in ["prefetch", "theme"] {
        let id = snapshot.flag_id(key).unwrap();
        for i in 0..2_000 {
            let mut ctx = Context::with_targeting_key(format!("member-{i}"));
            if i % 3 == 0 {
                ctx.insert("platform", "tv");
            }
            assert_eq!(
                snapshot.resolve_id(id, &ctx).unwrap(),
                snapshot.resolve(key, &ctx).unwrap()
            );
        }
    }
    assert_eq!(snapshot.flag_id("missing"), None);
}

#[test]
fn handles_survive_recompiles_of_the_same_document_only() {
    let first = compile_str(CONFIG, 1).unwrap();
    let id = first.flag_id("theme").unwrap();
    let ctx = Context::with_targeting_key("member-7");

    let same = compile_str(CONFIG, 2).unwrap();
    assert_eq!(
        same.resolve_id(id, &ctx).unwrap(),
        same.resolve("theme", &ctx).unwrap()
    );

    // Another document (here `prefetch` renamed): the old handle is refused, a fresh one works.
    let other = compile_str(&CONFIG.replace("prefetch", "preload"), 3).unwrap();
    assert!(other.resolve_id(id, &ctx).is_err());
    let fresh = other.flag_id("theme").unwrap();
    assert_eq!(other.resolve_id(fresh, &ctx).unwrap().key, "theme");
}

mod key_index {
    use allot::{Context, compile};
    use proptest::collection::btree_set;
    use proptest::prelude::*;
    use serde_json::json;

    /// Keys of every length up to the 64-byte maximum, from a two-letter alphabet so that many
    /// share a length and differ in one byte: near misses for the word-compare key lookup.
    fn key() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[ab.]{1,64}").expect("valid regex")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every configured key resolves to itself; every other key is not found.
        #[test]
        fn each_key_finds_its_flag_and_no_other(
            keys in btree_set(key(), 1..40),
            probes in proptest::collection::vec(key(), 40),
        ) {
            let flags: Vec<_> = keys
                .iter()
                .map(|k| json!({ "key": k, "type": "string",
                                 "variants": { "v": k }, "default": "v" }))
                .collect();
            let config = serde_json::from_value(json!({ "flags": flags })).unwrap();
            let snapshot = compile(&config, 1).unwrap();
            let ctx = Context::new();
            for k in &keys {
                let r = snapshot.resolve(k, &ctx).unwrap();
                prop_assert_eq!(r.key, k.as_str());
                prop_assert_eq!(r.value, &json!(k));
            }
            for p in probes.iter().filter(|p| !keys.contains(*p)) {
                prop_assert!(snapshot.resolve(p, &ctx).is_err(), "{} found", p);
                prop_assert!(snapshot.flag_id(p).is_none());
            }
        }
    }
}

/// `prefetch` takes `resolve`'s short path (one range sets it). A unit outside the range, or
/// one without a usable `targetingKey`, falls through to the flag's rules and then its default,
/// exactly as `resolve_all` (which has no short path) answers.
#[test]
fn the_short_path_falls_through_to_rules() {
    let snapshot = compile_str(CONFIG, 1).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut contexts: Vec<Context> = (0..2_000)
        .map(|i| {
            let mut ctx = Context::with_targeting_key(format!("member-{i}"));
            if i % 2 == 0 {
                ctx.insert("platform", "tv");
            }
            ctx
        })
        .collect();
    let mut no_unit = Context::new();
    no_unit.insert("platform", "tv");
    contexts.push(no_unit);
    let mut bad_unit = Context::new();
    bad_unit.insert("targetingKey", 7);
    contexts.push(bad_unit);
    for ctx in &contexts {
        let one = snapshot.resolve("prefetch", ctx).unwrap();
        let all = snapshot.resolve_all(ctx);
        assert_eq!(Some(&one), all.iter().find(|r| r.key == "prefetch"));
        let tv = ctx.get("platform").is_some();
        match one.assignment {
            Some(a) => {
                assert!(a.bucket < 6000, "{a:?}");
                assert_eq!(one.reason, allot::Reason::Split);
            }
            None if tv => assert_eq!(
                (one.reason, one.variant),
                (allot::Reason::TargetingMatch, "on")
            ),
            None => assert_eq!((one.reason, one.variant), (allot::Reason::Default, "off")),
        }
        seen.insert((one.reason, tv));
    }
    // Every branch was taken: split, rule, default.
    assert!(seen.contains(&(allot::Reason::Split, true)));
    assert!(seen.contains(&(allot::Reason::TargetingMatch, true)));
    assert!(seen.contains(&(allot::Reason::Default, false)));
}
