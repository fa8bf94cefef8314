//! The config document (docs/spec.md §3): layers, experiments, holdouts, flags and segments, as
//! written by people in YAML or JSON (one schema).
//!
//! These types only describe the document. Validation and compilation live in `compile`, which
//! is the single place that decides whether a document is acceptable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ConfigError, ConfigErrors, ErrorKind};

/// Default bucket count of layers and holdouts.
pub const DEFAULT_BUCKETS: u32 = 10_000;

/// A whole config document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Named reusable conditions, referenced as `{ segment: <id> }`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_keys"
    )]
    pub segments: BTreeMap<String, Value>,
    /// Layers in order; allocations are reported in this order.
    #[serde(default)]
    pub layers: Vec<LayerConfig>,
    /// Experiments, each in one layer.
    #[serde(default)]
    pub experiments: Vec<ExperimentConfig>,
    /// Holdouts, evaluated before any layer they cover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holdouts: Vec<HoldoutConfig>,
    /// Flags in order; bulk evaluation reports them in this order.
    #[serde(default)]
    pub flags: Vec<FlagConfig>,
}

/// A layer: one salt, a bucket space, and the unit attribute it hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// Layer id.
    pub id: String,
    /// Salt of the layer hash; defaults to the id. Changing it reshuffles the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Number of buckets, 1..=1,000,000; defaults to 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<u64>,
    /// Context key holding the unit; defaults to `targetingKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// An experiment: bucket ranges in a layer, an eligibility condition and weighted cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Experiment id.
    pub id: String,
    /// The layer it lives in.
    pub layer: String,
    /// Salt of the cell hash; defaults to the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Half-open bucket ranges `"start..end"` owned in the layer.
    #[serde(default)]
    pub ranges: Vec<String>,
    /// Eligibility condition; a unit that fails it gets no experiment in this layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Value>,
    /// Weighted cells (arms, variants).
    pub cells: Vec<CellConfig>,
}

/// A cell of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellConfig {
    /// Cell id.
    pub id: String,
    /// Integer weight; defaults to 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// The flag variants this cell selects: flag key → variant name.
    #[serde(default, deserialize_with = "unique_keys")]
    pub flags: BTreeMap<String, String>,
}

/// A holdout: units in its ranges get no experiment in the layers it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldoutConfig {
    /// Holdout id.
    pub id: String,
    /// Salt of the holdout hash; defaults to the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Number of buckets, 1..=1,000,000; defaults to 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<u64>,
    /// Context key holding the unit; defaults to `targetingKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Half-open bucket ranges of held-out units.
    pub ranges: Vec<String>,
    /// The layers it covers.
    pub layers: Vec<String>,
}

/// The type of a flag's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagType {
    /// `true` / `false`.
    Bool,
    /// A string.
    String,
    /// A 64-bit signed integer.
    Int,
    /// A 64-bit float.
    Float,
    /// A JSON object.
    Object,
}

impl FlagType {
    /// The config spelling: `bool`, `string`, `int`, `float`, `object`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagType::Bool => "bool",
            FlagType::String => "string",
            FlagType::Int => "int",
            FlagType::Float => "float",
            FlagType::Object => "object",
        }
    }
}

/// A flag: typed variants, a default, and ordered rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagConfig {
    /// Flag key.
    pub key: String,
    /// Value type.
    #[serde(rename = "type")]
    pub kind: FlagType,
    /// Named values.
    #[serde(deserialize_with = "unique_keys")]
    pub variants: BTreeMap<String, Value>,
    /// The variant served when nothing else decides.
    pub default: String,
    /// `false` serves the default with reason `DISABLED`; defaults to `true`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// Human description, carried but not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Rules, tried in order after experiments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
}

/// A flag rule: when the condition holds, a fixed variant or a salted rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Condition; absent means always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Value>,
    /// Variant to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Percentage rollout to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutConfig>,
}

/// A salted percentage rollout over variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Salt; defaults to the flag key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Context key holding the unit; defaults to `targetingKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Variants and integer weights, walked in order.
    pub split: Vec<SplitConfig>,
}

/// One entry of a rollout split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Variant name.
    pub variant: String,
    /// Integer weight.
    pub weight: u32,
}

/// A map whose keys are ids (segments, variants, a cell's flags): a repeated key is an error
/// instead of the last one silently winning.
fn unique_keys<'de, D, V>(de: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map with unique keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate key `{key}`"
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    de.deserialize_map(Unique(std::marker::PhantomData))
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

// === impl Config ===

impl Config {
    /// Parses a document, JSON if it starts with `{`, YAML otherwise.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Self::from_yaml(text)
        }
    }

    /// Parses a JSON document; a schema error names the path of the offending value.
    pub fn from_json(text: &str) -> Result<Self, ConfigErrors> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            parse_error(path, e.into_inner().to_string())
        })
    }

    /// Parses a YAML document; a schema error names the path of the offending value.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        if flow_depth_exceeds(text, MAX_YAML_FLOW_DEPTH) {
            return Err(parse_error(
                String::new(),
                format!(
                    "flow collections (`[`, `{{`) nest deeper than {MAX_YAML_FLOW_DEPTH} levels"
                ),
            ));
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            parse_error(path, e.into_inner().to_string())
        })
    }

    /// The canonical JSON form: keys sorted, defaults omitted. Its hash is the content hash.
    pub fn to_canonical_json(&self) -> String {
        // Serializing plain structs, maps with string keys and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `xxh3_64` of the canonical JSON form: equal documents hash equal however they were
    /// written (YAML or JSON, key order, comments).
    pub fn content_hash(&self) -> u64 {
        // Streamed into the hasher: the same bytes as `to_canonical_json`, without building
        // (and growing) the string.
        let mut hasher = HashWriter(xxhash_rust::xxh3::Xxh3::new());
        // Writing into the hasher cannot fail, nor can serializing the config (see above).
        let _ = serde_json::to_writer(&mut hasher, self);
        hasher.0.digest()
    }
}

/// An `io::Write` that feeds an XXH3 hasher.
struct HashWriter(xxhash_rust::xxh3::Xxh3);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// YAML flow collections nested deeper than this are refused before the YAML parser runs. The
/// scanner (libyaml) takes time quadratic in the flow depth, and the deserializer's own depth
/// limit (128) applies only once the whole document has been scanned: 100,000 `[` took minutes.
/// Anything nested past 128 levels is rejected anyway; the margin is for brackets in scalars.
const MAX_YAML_FLOW_DEPTH: usize = 1_000;

/// Whether `[`/`{` open more than `max` levels, not counting quoted scalars and comments.
fn flow_depth_exceeds(text: &str, max: usize) -> bool {
    let (mut depth, mut quote, mut comment, mut prev) = (0usize, None, false, b'\n');
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match quote {
            Some(b'"') if b == b'\\' => {
                // An escape: the next byte cannot close the scalar.
                bytes.next();
            }
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if comment => comment = b != b'\n',
            None => match b {
                b'#' if prev.is_ascii_whitespace() => comment = true,
                b'"' | b'\'' if !prev.is_ascii_alphanumeric() => quote = Some(b),
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = b;
    }
    false
}

fn parse_error(path: String, message: String) -> ConfigErrors {
    // serde_path_to_error renders the root as ".".
    let path = if path == "." { String::new() } else { path };
    // The YAML parser prefixes its own location ("layers[0]: unknown field ..."); the path
    // already says where, so keep the reason only.
    let message = match message.split_once(": ") {
        Some((prefix, rest)) if !path.is_empty() && path.starts_with(prefix) => rest.to_owned(),
        _ => message,
    };
    ConfigError::new(path, ErrorKind::Parse { message }).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_path_once() {
        let e = Config::parse("layers:\n  - { id: a, bucket: 3 }\n").unwrap_err();
        let e = &e.errors()[0];
        assert_eq!(e.path, "layers[0].bucket");
        assert!(
            e.kind.to_string().starts_with("unknown field `bucket`"),
            "{}",
            e.kind
        );
        let e = Config::parse(r#"{"layers": [{"id": "a", "buckets": "x"}]}"#).unwrap_err();
        assert_eq!(e.errors()[0].path, "layers[0].buckets");
    }

    #[test]
    fn deep_yaml_flow_nesting_is_refused_before_scanning() {
        // Found by tests/fuzz_config.rs: 100,000 `[` kept libyaml's scanner busy for minutes.
        let deep = format!(
            "segments:\n  s: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = Config::parse(&deep).unwrap_err();
        assert_eq!(e.errors()[0].path, "");
        assert!(e.errors()[0].kind.to_string().contains("deeper than 1000"));
        // Brackets in quoted scalars and comments do not count.
        let brackets = "[{".repeat(1_000);
        let double = format!("segments: {{ s: {{ x: {{ matches: \"\\\"{brackets}\" }} }} }}\n");
        assert!(Config::parse(&double).is_ok(), "{double}");
        let single =
            format!("segments: {{ s: {{ x: {{ matches: '''{brackets}' }} }} }} # {brackets}\n");
        assert!(Config::parse(&single).is_ok(), "{single}");
        assert!(!flow_depth_exceeds(&"[".repeat(1_000), 1_000));
        assert!(flow_depth_exceeds(&"[".repeat(1_001), 1_000));
        assert!(!flow_depth_exceeds(&"[]".repeat(5_000), 1_000));
    }

    #[test]
    fn content_hash_ignores_format_and_key_order() {
        let yaml = Config::parse("layers: [{ id: a, salt: s }]\nflags: []\n").unwrap();
        let json = Config::parse(r#"{"flags": [], "layers": [{"salt": "s", "id": "a"}]}"#).unwrap();
        assert_eq!(yaml.content_hash(), json.content_hash());
        let other = Config::parse("layers: [{ id: a, salt: t }]").unwrap();
        assert_ne!(yaml.content_hash(), other.content_hash());
        // The streamed hash is the hash of the canonical JSON text, short (one block of the
        // streaming hasher) or long (many stripes, written in many pieces).
        let layers: Vec<String> = (0..300)
            .map(|i| format!(r#"{{"id": "layer-{i}", "salt": "salt-{i}"}}"#))
            .collect();
        let long = Config::parse(&format!(r#"{{"layers": [{}]}}"#, layers.join(","))).unwrap();
        assert!(long.to_canonical_json().len() > 10_000);
        for c in [&yaml, &other, &long] {
            let text = c.to_canonical_json();
            assert_eq!(
                c.content_hash(),
                xxhash_rust::xxh3::xxh3_64(text.as_bytes())
            );
        }
    }

    /// A float means the same number in YAML, in JSON and in the canonical JSON that followers
    /// and SDKs receive. `6.794225748631921e-32` is one that serde_json's default (fast, not
    /// correctly rounded) parser read one ULP low, so the same config hashed differently read
    /// from YAML and from its own canonical form (found by `fuzz_config`).
    #[test]
    fn floats_mean_the_same_number_in_every_format() {
        for x in [
            "6.794225748631921e-32",
            "0.1",
            "1.5e300",
            "2.2250738585072014e-308",
        ] {
            let expected: f64 = x.parse().unwrap();
            let doc = |open: &str, close: &str| {
                format!(
                    r#"{open}"flags": [{{"key": "f", "type": "float", "variants": {{"x": {x}}},
                    "default": "x", "rules": [{{"when": {{"n": {{"gte": {x}}}}}, "variant": "x"}}]}}]{close}"#
                )
            };
            let json = Config::parse(&doc("{", "}")).unwrap();
            let yaml = Config::parse(&doc("", "")).unwrap();
            let again = Config::from_json(&json.to_canonical_json()).unwrap();
            assert_eq!(json.content_hash(), yaml.content_hash(), "{x}");
            assert_eq!(again.content_hash(), yaml.content_hash(), "{x}");
            let value: serde_json::Value = serde_json::from_str(x).unwrap();
            assert_eq!(
                value.as_f64().map(f64::to_bits),
                Some(expected.to_bits()),
                "{x}"
            );
        }
    }
}
