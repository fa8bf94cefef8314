//! The evaluation context: the attributes of one request, OpenFeature-shaped.
//!
//! A context is a JSON object. `targetingKey` is the default unit; layers, holdouts and
//! rollouts may name another key (`device_id`, `household_id`). The engine only reads it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::id::MAX_UNIT_LEN;

/// The context key that holds the unit id unless a layer names another one.
pub const TARGETING_KEY: &str = "targetingKey";

/// The attributes a flag or experiment is evaluated against.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(Map<String, Value>);

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
        self.0.insert(key.into(), value.into());
        self
    }

    /// Adds (or replaces) an attribute.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.0.insert(key.into(), value.into());
    }

    /// The attribute `key`; JSON `null` counts as absent.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// The `targetingKey` attribute, if it is a string.
    pub fn targeting_key(&self) -> Option<&str> {
        self.get(TARGETING_KEY).and_then(Value::as_str)
    }

    /// The unit named by `key`: a string of 1 to 256 bytes.
    #[inline]
    pub fn unit(&self, key: &str) -> Result<&str, UnitError> {
        match self.get(key) {
            None => Err(UnitError::Missing),
            Some(Value::String(s)) if (1..=MAX_UNIT_LEN).contains(&s.len()) => Ok(s),
            Some(_) => Err(UnitError::Invalid),
        }
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the context has no attributes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The attributes as a JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Consumes the context into its JSON object.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

impl From<Map<String, Value>> for Context {
    fn from(map: Map<String, Value>) -> Self {
        Self(map)
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Context {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
