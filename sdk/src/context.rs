//! The evaluation context: the attributes of one request, OpenFeature-shaped.
//!
//! A context is a JSON object. `targetingKey` is the default unit; layers, holdouts and
//! rollouts may name another key (`device_id`, `household_id`). The engine only reads it.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::id::MAX_UNIT_LEN;

/// The context key that holds the unit id unless a layer names another one.
pub const TARGETING_KEY: &str = "targetingKey";

/// Contexts up to this size are searched linearly (comparing lengths first), larger ones by
/// binary search.
const LINEAR: usize = 16;

/// The attributes a flag or experiment is evaluated against: a JSON object.
///
/// Stored as a vector sorted by key: request contexts are small, and a length-first scan over
/// a contiguous vector beats a tree or hash map on every lookup the engine makes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// Sorted by key, keys unique.
    attrs: Vec<(Box<str>, Value)>,
    /// Position of `targetingKey` in `attrs`: the unit of nearly every layer, read without
    /// comparing keys.
    targeting: Option<u32>,
}

/// Why a context has no usable unit for a layer, holdout or rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitError {
    /// The unit attribute is absent (or JSON `null`).
    Missing,
    /// The unit attribute is not a string of 1 to 256 bytes.
    Invalid,
}

// === impl Context ===

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context holding only a `targetingKey`.
    pub fn with_targeting_key(key: impl Into<String>) -> Self {
        Self::new().with(TARGETING_KEY, key.into())
    }

    /// Adds (or replaces) an attribute, builder style.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds (or replaces) an attribute.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key: Box<str> = key.into().into_boxed_str();
        match self.attrs.binary_search_by(|(k, _)| (**k).cmp(&*key)) {
            Ok(i) => {
                if let Some(slot) = self.attrs.get_mut(i) {
                    slot.1 = value.into();
                }
            }
            Err(i) => {
                self.attrs.insert(i, (key, value.into()));
                self.index_targeting();
            }
        }
    }

    fn index_targeting(&mut self) {
        self.targeting = self
            .attrs
            .binary_search_by(|(k, _)| (**k).cmp(TARGETING_KEY))
            .ok()
            .map(|i| i as u32);
    }

    /// The attribute `key`; JSON `null` counts as absent.
    #[inline(always)]
    pub fn get(&self, key: &str) -> Option<&Value> {
        if self.attrs.len() > LINEAR {
            return self.search(key).map(|(_, v)| v).filter(|v| !v.is_null());
        }
        // A plain loop rather than `Iterator::find`, which the compiler keeps out of line.
        for (k, v) in &self.attrs {
            if short_eq(k, key) {
                return (!v.is_null()).then_some(v);
            }
        }
        None
    }

    /// [`Context::get`]'s search of a large context, out of line.
    #[inline(never)]
    fn search(&self, key: &str) -> Option<&(Box<str>, Value)> {
        self.attrs
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .and_then(|i| self.attrs.get(i))
    }

    /// The `targetingKey` attribute, if it is a string.
    pub fn targeting_key(&self) -> Option<&str> {
        self.targeting_value().and_then(Value::as_str)
    }

    /// The unit named by `key`: a string of 1 to 256 bytes.
    #[inline]
    pub fn unit(&self, key: &str) -> Result<&str, UnitError> {
        if key == TARGETING_KEY {
            return self.targeting_unit();
        }
        as_unit(self.get(key))
    }

    /// [`Context::unit`] for `targetingKey`, without a key search.
    #[inline(always)]
    pub fn targeting_unit(&self) -> Result<&str, UnitError> {
        as_unit(self.targeting_value())
    }

    #[inline(always)]
    fn targeting_value(&self) -> Option<&Value> {
        let i = self.targeting? as usize;
        self.attrs.get(i).map(|(_, v)| v).filter(|v| !v.is_null())
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    /// Whether the context has no attributes.
    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    /// The attributes, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.attrs.iter().map(|(k, v)| (&**k, v))
    }

    /// The attributes as a JSON object.
    pub fn into_map(self) -> Map<String, Value> {
        self.attrs
            .into_iter()
            .map(|(k, v)| (k.into_string(), v))
            .collect()
    }

    /// Builds from unsorted pairs; for a repeated key the last value wins, as in JSON.
    fn from_pairs(mut attrs: Vec<(Box<str>, Value)>) -> Self {
        // Stable sort keeps equal keys in input order; then keep the last of each run.
        attrs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Box<str>, Value)> = Vec::with_capacity(attrs.len());
        for (k, v) in attrs {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        let mut ctx = Self {
            attrs: out,
            targeting: None,
        };
        ctx.index_targeting();
        ctx
    }
}

/// String equality for the short strings of contexts and conditions (attribute names, country
/// codes, platforms): lengths first, then at most two overlapping word compares for 4 to 16
/// bytes, instead of a call to `memcmp` for every candidate.
#[inline(always)]
pub(crate) fn short_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 16 {
        return a == b;
    }
    ends_eq::<8>(a, b)
        .or_else(|| ends_eq::<4>(a, b))
        .unwrap_or_else(|| a.iter().zip(b).all(|(x, y)| x == y))
}

/// For equal-length `a` and `b` of `N..=2N` bytes: whether their first and last `N` bytes
/// (overlapping, so together every byte) are equal; `None` when shorter than `N`.
#[inline(always)]
fn ends_eq<const N: usize>(a: &[u8], b: &[u8]) -> Option<bool> {
    Some(
        a.first_chunk::<N>()? == b.first_chunk::<N>()?
            && a.last_chunk::<N>()? == b.last_chunk::<N>()?,
    )
}

#[inline(always)]
fn as_unit(v: Option<&Value>) -> Result<&str, UnitError> {
    match v {
        None => Err(UnitError::Missing),
        Some(Value::String(s)) if (1..=MAX_UNIT_LEN).contains(&s.len()) => Ok(s),
        Some(_) => Err(UnitError::Invalid),
    }
}

impl From<Map<String, Value>> for Context {
    fn from(map: Map<String, Value>) -> Self {
        Self::from_pairs(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Context {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_pairs(
            iter.into_iter()
                .map(|(k, v)| (k.into().into_boxed_str(), v.into()))
                .collect(),
        )
    }
}

impl Serialize for Context {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.attrs.len()))?;
        for (k, v) in &self.attrs {
            m.serialize_entry(&**k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Context {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Attrs;
        impl<'de> Visitor<'de> for Attrs {
            type Value = Context;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of context attributes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Context, A::Error> {
                let mut attrs = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    attrs.push((k.into_boxed_str(), v));
                }
                Ok(Context::from_pairs(attrs))
            }
        }
        d.deserialize_map(Attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_small_and_large() {
        let small: Context = (0..10).map(|i| (format!("k{i}"), i)).collect();
        let large: Context = (0..100).rev().map(|i| (format!("k{i}"), i)).collect();
        for ctx in [&small, &large] {
            assert_eq!(ctx.get("k7"), Some(&Value::from(7)));
            assert_eq!(ctx.get("k"), None);
            assert_eq!(ctx.get("k77").is_some(), ctx.len() == 100);
        }
        let keys: Vec<&str> = large.iter().map(|(k, _)| k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    }

    #[test]
    fn json_round_trip_and_last_duplicate_wins() {
        let ctx: Context = serde_json::from_str(r#"{"b": 1, "a": "x", "b": 2}"#).unwrap();
        assert_eq!(ctx.len(), 2);
        assert_eq!(ctx.get("b"), Some(&Value::from(2)));
        assert_eq!(serde_json::to_string(&ctx).unwrap(), r#"{"a":"x","b":2}"#);
        let mut ctx = ctx.with("a", "y");
        ctx.insert("c", true);
        assert_eq!(ctx.into_map().len(), 3);
    }

    #[test]
    fn unit_rules() {
        let ctx = Context::with_targeting_key("m-1")
            .with("n", 5)
            .with("empty", "")
            .with("long", "x".repeat(257))
            .with("max", "x".repeat(256))
            .with("nul", Value::Null);
        assert_eq!(ctx.unit(TARGETING_KEY), Ok("m-1"));
        assert_eq!(ctx.unit("n"), Err(UnitError::Invalid));
        assert_eq!(ctx.unit("empty"), Err(UnitError::Invalid));
        assert_eq!(ctx.unit("long"), Err(UnitError::Invalid));
        assert!(ctx.unit("max").is_ok());
        assert_eq!(ctx.unit("nul"), Err(UnitError::Missing));
        assert_eq!(ctx.unit("absent"), Err(UnitError::Missing));
    }
}
