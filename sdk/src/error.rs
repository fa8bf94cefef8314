//! Config errors: every problem found in a config document, each with the path of the value
//! at fault (`experiments[2].ranges[0]`) and a specific reason.
//!
//! Compilation never stops at the first error: a person fixing a config sees all of them.

use std::fmt;

/// One problem in a config document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ConfigError {
    /// Where the problem is, e.g. `experiments[2].cells[1].weight` (empty for the whole document).
    pub path: String,
    /// What the problem is.
    pub kind: ErrorKind,
}

/// Every problem found in a config document (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The specific reasons a config is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The document is not valid YAML/JSON or does not fit the schema.
    #[error("{message}")]
    Parse {
        /// The parser's message.
        message: String,
    },
    /// An id or flag key breaks the id rules.
    #[error("`{id}` is not a valid {what} (expected {pattern})")]
    InvalidId {
        /// What kind of id.
        what: &'static str,
        /// The offending id.
        id: String,
        /// The rule it must match.
        pattern: &'static str,
    },
    /// Two items of one kind share an id.
    #[error("duplicate {what} `{id}`")]
    DuplicateId {
        /// What kind of id.
        what: &'static str,
        /// The repeated id.
        id: String,
    },
    /// A salt, or a unit attribute name, is the empty string.
    #[error("{what} must not be empty")]
    Empty {
        /// What is empty.
        what: &'static str,
    },
    /// A bucket count outside 1..=1,000,000.
    #[error("buckets must be between 1 and {max}, got {buckets}")]
    InvalidBuckets {
        /// The configured count.
        buckets: u64,
        /// The largest accepted count.
        max: u32,
    },
    /// A range string that is not `start..end` with `start < end`.
    #[error("`{range}` is not a bucket range `start..end`: {reason}")]
    InvalidRange {
        /// The range as written.
        range: String,
        /// Why it does not parse.
        reason: &'static str,
    },
    /// A range reaching past the buckets of its layer or holdout.
    #[error("{range} exceeds {scope} ({buckets} buckets)")]
    RangeExceeds {
        /// The range, normalised to `start..end`.
        range: String,
        /// `layer <id>` or `holdout <id>`.
        scope: String,
        /// The bucket count of that scope.
        buckets: u32,
    },
    /// Two ranges in one layer (or one holdout) share buckets.
    #[error("{range} overlaps {other_range} of {other}")]
    Overlap {
        /// This range.
        range: String,
        /// The range it collides with.
        other_range: String,
        /// `experiment <id>` or `holdout <id>` owning the other range.
        other: String,
    },
    /// A reference to an item that does not exist.
    #[error("unknown {what} `{id}`")]
    Unknown {
        /// What kind of item.
        what: &'static str,
        /// The missing id.
        id: String,
    },
    /// A cell, rule or default naming a variant the flag does not have.
    #[error("flag `{flag}` has no variant `{variant}`")]
    UnknownVariant {
        /// The flag key.
        flag: String,
        /// The missing variant.
        variant: String,
    },
    /// A variant value that does not fit the flag's type.
    #[error("variant `{variant}` is {found}, but flag type is {expected}")]
    TypeMismatch {
        /// The variant.
        variant: String,
        /// The flag's declared type.
        expected: &'static str,
        /// What the value is.
        found: &'static str,
    },
    /// Experiments in two different layers select variants of one flag.
    #[error(
        "flag `{flag}` is driven by experiments in layers `{first}` and `{second}`; a flag may follow one layer"
    )]
    FlagInTwoLayers {
        /// The flag key.
        flag: String,
        /// The first layer found driving it.
        first: String,
        /// The second one.
        second: String,
    },
    /// Cell or split weights that sum to zero.
    #[error("weights sum to 0")]
    ZeroWeight,
    /// A list that must have at least one entry.
    #[error("{what} must not be empty")]
    EmptyList {
        /// What is empty.
        what: &'static str,
    },
    /// A regular expression that does not compile.
    #[error("invalid regex `{pattern}`: {reason}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// The regex engine's message.
        reason: String,
    },
    /// Segments that refer to each other in a loop.
    #[error("segment `{id}` refers to itself through {chain}")]
    SegmentCycle {
        /// The segment.
        id: String,
        /// The loop, e.g. `a -> b -> a`.
        chain: String,
    },
    /// A condition operator that does not exist.
    #[error("unknown operator `{op}` (expected one of {expected})")]
    UnknownOperator {
        /// The operator as written.
        op: String,
        /// The accepted operators.
        expected: &'static str,
    },
    /// A condition operand of the wrong shape.
    #[error("`{op}` expects {expected}")]
    Operand {
        /// The operator.
        op: String,
        /// What it accepts.
        expected: &'static str,
    },
    /// A semver operand that is not a version.
    #[error("`{value}` is not a semantic version")]
    InvalidSemver {
        /// The operand.
        value: String,
    },
    /// A rule that is neither a variant nor a rollout, or both.
    #[error("a rule needs exactly one of `variant` or `rollout`")]
    RuleShape,
    /// Conditions nested deeper than the engine evaluates.
    #[error("conditions nest deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A condition that is not a JSON object.
    #[error("a condition must be a mapping of attributes or all/any/not/segment, found {found}")]
    ConditionShape {
        /// What was found.
        found: &'static str,
    },
}

// === impl ConfigError ===

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, kind: ErrorKind) -> Self {
        Self {
            path: path.into(),
            kind,
        }
    }
}

// === impl ConfigErrors ===

impl ConfigErrors {
    /// The errors, in document order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "config rejected ({n} error{})",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// The name of a JSON value's type, for messages.
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
