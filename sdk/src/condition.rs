//! Conditions (docs/spec.md §3.4): compiled once per config, evaluated per request.
//!
//! A condition is a mapping. Each key is either a combinator (`all`, `any`, `not`, `segment`)
//! or an attribute name mapped to operators (`{ country: { in: [US, CA] } }`) or to a scalar,
//! which is shorthand for `eq`. Several keys, or several operators, must all hold.
//! An absent attribute fails every operator except `exists: false`.
//!
//! Evaluation allocates nothing: operands are parsed (numbers, versions, regexes) at compile time.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use foldhash::fast::FixedState;
use serde_json::Value;

use crate::context::{Context, short_eq};
use crate::error::{ConfigError, ErrorKind, json_type};

/// Deepest nesting of `all`/`any`/`not`/segments accepted, so evaluation cannot overflow the stack.
pub const MAX_DEPTH: usize = 32;

const OPERATORS: &str = "eq, ne, in, not_in, lt, lte, gt, gte, semver_lt, semver_le, semver_gt, \
     semver_ge, semver_eq, starts_with, ends_with, contains, matches, exists";

/// A compiled condition.
#[derive(Debug, Clone)]
pub(crate) enum Condition {
    True,
    All(Box<[Condition]>),
    Any(Box<[Condition]>),
    Not(Box<Condition>),
    Attr(Box<str>, Op),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

#[derive(Debug, Clone)]
pub(crate) enum Operand {
    Num(f64),
    Str(Box<str>),
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `eq` of a string (the common case), compared without JSON dispatch.
    EqStr(Box<str>),
    NeStr(Box<str>),
    /// `in` of a list of strings only.
    InStr(StrSet),
    NotInStr(StrSet),
    Eq(Value),
    Ne(Value),
    In(Box<[Value]>),
    NotIn(Box<[Value]>),
    Order(Cmp, Operand),
    Semver(Cmp, semver::Version),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    Contains(Value),
    Matches(regex::Regex),
    Exists(bool),
}

/// The strings of an all-string `in` / `not_in` list.
#[derive(Debug, Clone)]
pub(crate) enum StrSet {
    /// Up to [`StrSet::FEW`] strings, scanned.
    Few(Box<[Box<str>]>),
    /// Longer lists, looked up by hash (fixed seed: the engine has no per-process randomness).
    Many(HashSet<Box<str>, FixedState>),
}

// === impl Condition ===

impl Condition {
    /// Whether the context satisfies the condition.
    /// Inlined for the common shapes (none, one attribute); combinators recurse out of line.
    #[inline(always)]
    pub(crate) fn eval(&self, ctx: &Context) -> bool {
        match self {
            Condition::True => true,
            Condition::Attr(name, op) => match ctx.get(name) {
                None => matches!(op, Op::Exists(false)),
                Some(v) => op.eval(v),
            },
            _ => self.eval_combinator(ctx),
        }
    }

    #[inline(never)]
    fn eval_combinator(&self, ctx: &Context) -> bool {
        match self {
            Condition::All(cs) => cs.iter().all(|c| c.eval(ctx)),
            Condition::Any(cs) => cs.iter().any(|c| c.eval(ctx)),
            Condition::Not(c) => !c.eval(ctx),
            Condition::True | Condition::Attr(..) => self.eval(ctx),
        }
    }
}

// === impl Op ===

impl Op {
    /// The string operators (nearly every condition) inline; the rest out of line.
    #[inline(always)]
    fn eval(&self, v: &Value) -> bool {
        match self {
            Op::EqStr(x) => matches!(v, Value::String(s) if short_eq(s, x)),
            Op::NeStr(x) => !matches!(v, Value::String(s) if short_eq(s, x)),
            Op::InStr(set) => matches!(v, Value::String(s) if set.contains(s)),
            Op::NotInStr(set) => !matches!(v, Value::String(s) if set.contains(s)),
            _ => self.eval_other(v),
        }
    }

    #[inline(never)]
    fn eval_other(&self, v: &Value) -> bool {
        match self {
            Op::EqStr(_) | Op::NeStr(_) | Op::InStr(_) | Op::NotInStr(_) => self.eval(v),
            Op::Eq(x) => json_eq(v, x),
            Op::Ne(x) => !json_eq(v, x),
            Op::In(xs) => xs.iter().any(|x| json_eq(v, x)),
            Op::NotIn(xs) => !xs.iter().any(|x| json_eq(v, x)),
            Op::Order(cmp, operand) => {
                let ord = match (v, operand) {
                    (Value::Number(n), Operand::Num(x)) => {
                        n.as_f64().and_then(|n| n.partial_cmp(x))
                    }
                    (Value::String(s), Operand::Str(x)) => Some(s.as_str().cmp(x)),
                    _ => None,
                };
                ord.is_some_and(|o| cmp.holds(o))
            }
            Op::Semver(cmp, x) => v
                .as_str()
                .and_then(|s| version_precedence(s, x))
                .is_some_and(|o| cmp.holds(o)),
            Op::StartsWith(x) => v.as_str().is_some_and(|s| s.starts_with(&**x)),
            Op::EndsWith(x) => v.as_str().is_some_and(|s| s.ends_with(&**x)),
            Op::Contains(x) => match (v, x) {
                (Value::String(s), Value::String(x)) => s.contains(x.as_str()),
                (Value::Array(items), x) => items.iter().any(|i| json_eq(i, x)),
                _ => false,
            },
            Op::Matches(re) => v.as_str().is_some_and(|s| re.is_match(s)),
            Op::Exists(want) => *want,
        }
    }

    /// `eq` (or `ne`) of a scalar.
    fn eq(x: &Value, negated: bool) -> Op {
        match (x, negated) {
            (Value::String(s), false) => Op::EqStr(s.as_str().into()),
            (Value::String(s), true) => Op::NeStr(s.as_str().into()),
            (_, false) => Op::Eq(x.clone()),
            (_, true) => Op::Ne(x.clone()),
        }
    }

    /// `in` (or `not_in`) of a list of scalars.
    fn one_of(items: &[Value], negated: bool) -> Op {
        let strings: Option<Vec<Box<str>>> =
            items.iter().map(|x| x.as_str().map(Box::from)).collect();
        match (strings, negated) {
            (Some(strings), false) => Op::InStr(StrSet::new(strings)),
            (Some(strings), true) => Op::NotInStr(StrSet::new(strings)),
            (None, false) => Op::In(items.into()),
            (None, true) => Op::NotIn(items.into()),
        }
    }
}

// === impl StrSet ===

impl StrSet {
    /// Lists up to this long are scanned: a few length-first compares beat hashing the string.
    const FEW: usize = 8;

    fn new(items: Vec<Box<str>>) -> Self {
        if items.len() <= Self::FEW {
            StrSet::Few(items.into())
        } else {
            StrSet::Many(items.into_iter().collect())
        }
    }

    #[inline]
    fn contains(&self, s: &str) -> bool {
        match self {
            StrSet::Few(items) => items.iter().any(|x| short_eq(x, s)),
            StrSet::Many(items) => items.contains(s),
        }
    }
}

impl Cmp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            Cmp::Lt => o.is_lt(),
            Cmp::Le => o.is_le(),
            Cmp::Gt => o.is_gt(),
            Cmp::Ge => o.is_ge(),
            Cmp::Eq => o.is_eq(),
        }
    }
}

/// JSON equality where numbers compare by value (`1 == 1.0`).
#[inline]
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        // The common case first, lengths before bytes.
        (Value::String(x), Value::String(y)) => x.len() == y.len() && x == y,
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// How version `s` (parsed as [`parse_version`] does) compares with `x` by precedence, if `s`
/// is a version. Plain `MAJOR[.MINOR[.PATCH]]` versions, what apps report, are read without
/// building a `semver::Version`; anything else goes through `parse_version`.
#[inline]
fn version_precedence(s: &str, x: &semver::Version) -> Option<Ordering> {
    if let Some(core) = plain_version(s)
        && x.pre.is_empty()
    {
        return Some(core.cmp(&(x.major, x.minor, x.patch)));
    }
    parse_version(s).map(|v| v.cmp_precedence(x))
}

/// `MAJOR[.MINOR[.PATCH]]` with missing parts zero, if `s` is exactly that: 1 to 3 dot-separated
/// decimal numbers, each fitting a u64, without leading zeros, and nothing else (no `v`, no
/// pre-release or build suffix). Every string it accepts, `parse_version` reads the same way.
fn plain_version(s: &str) -> Option<(u64, u64, u64)> {
    let mut parts = [0u64; 3];
    let mut count = 0usize;
    let mut n = 0u64;
    let mut digits = 0usize;
    let mut leading_zero = false;
    for &b in s.as_bytes().iter().chain(std::iter::once(&b'.')) {
        if b == b'.' {
            // End of a part: 1+ digits, no leading zero unless it is just "0".
            if digits == 0 || (leading_zero && digits > 1) {
                return None;
            }
            *parts.get_mut(count)? = n;
            count += 1;
            (n, digits) = (0, 0);
        } else if b.is_ascii_digit() {
            if digits == 0 {
                leading_zero = b == b'0';
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            digits += 1;
        } else {
            return None;
        }
    }
    let [major, minor, patch] = parts;
    Some((major, minor, patch))
}

/// Parses a version leniently: a leading `v` is dropped and missing minor/patch parts are
/// zero (`5.1` is `5.1.0`), so app versions as clients report them compare as people expect.
pub(crate) fn parse_version(s: &str) -> Option<semver::Version> {
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    if let Ok(v) = semver::Version::parse(s) {
        return Some(v);
    }
    let core_end = s.find(['-', '+']).unwrap_or(s.len());
    let (core, rest) = s.split_at(core_end);
    let parts = core.split('.').count();
    if !(1..=2).contains(&parts)
        || core
            .split('.')
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let padded = format!("{core}{}{rest}", ".0".repeat(3 - parts));
    semver::Version::parse(&padded).ok()
}

// === compile ===

/// Compiles conditions against a config's segments, recording every error with its path.
pub(crate) struct Compiler<'a> {
    segments: &'a BTreeMap<String, Value>,
    compiled: BTreeMap<String, Condition>,
    visiting: Vec<String>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'a> Compiler<'a> {
    pub(crate) fn new(segments: &'a BTreeMap<String, Value>) -> Self {
        Self {
            segments,
            compiled: BTreeMap::new(),
            visiting: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Compiles every segment once, so errors inside a segment are reported at `segments.<id>`
    /// even when nothing uses it.
    pub(crate) fn compile_segments(&mut self) {
        for id in self.segments.keys() {
            if !crate::id::is_valid_id(id) {
                self.errors.push(ConfigError::new(
                    format!("segments.{id}"),
                    ErrorKind::InvalidId {
                        what: "segment id",
                        id: id.clone(),
                        pattern: "[A-Za-z0-9_-]{1,64}",
                    },
                ));
            }
            self.segment(id, &format!("segments.{id}"), 0);
        }
    }

    /// Compiles an optional condition; absent is `True`.
    /// Compiles an optional condition; absent is `True`. `path` is only built when present.
    pub(crate) fn compile_opt(
        &mut self,
        v: Option<&Value>,
        path: impl FnOnce() -> String,
    ) -> Condition {
        match v {
            None => Condition::True,
            Some(v) => self.compile(v, &path(), 0),
        }
    }

    fn segment(&mut self, id: &str, path: &str, depth: usize) -> Condition {
        if let Some(c) = self.compiled.get(id) {
            return c.clone();
        }
        let Some(def) = self.segments.get(id) else {
            self.errors.push(ConfigError::new(
                path,
                ErrorKind::Unknown {
                    what: "segment",
                    id: id.to_owned(),
                },
            ));
            return Condition::Any(Box::new([]));
        };
        if let Some(pos) = self.visiting.iter().position(|s| s == id) {
            let mut chain: Vec<&str> = self.visiting.iter().skip(pos).map(String::as_str).collect();
            chain.push(id);
            self.errors.push(ConfigError::new(
                path,
                ErrorKind::SegmentCycle {
                    id: id.to_owned(),
                    chain: chain.join(" -> "),
                },
            ));
            return Condition::Any(Box::new([]));
        }
        self.visiting.push(id.to_owned());
        let c = self.compile(def, &format!("segments.{id}"), depth);
        self.visiting.pop();
        self.compiled.insert(id.to_owned(), c.clone());
        c
    }

    fn compile(&mut self, v: &Value, path: &str, depth: usize) -> Condition {
        if depth > MAX_DEPTH {
            self.errors.push(ConfigError::new(
                path,
                ErrorKind::TooDeep { max: MAX_DEPTH },
            ));
            return Condition::Any(Box::new([]));
        }
        let Value::Object(map) = v else {
            self.errors.push(ConfigError::new(
                path,
                ErrorKind::ConditionShape {
                    found: json_type(v),
                },
            ));
            return Condition::Any(Box::new([]));
        };
        let mut parts = Vec::with_capacity(map.len());
        for (key, val) in map {
            let p = format!("{path}.{key}");
            let c = match key.as_str() {
                "all" | "any" => {
                    let items = match val {
                        Value::Array(items) => items
                            .iter()
                            .enumerate()
                            .map(|(i, item)| self.compile(item, &format!("{p}[{i}]"), depth + 1))
                            .collect(),
                        _ => {
                            self.operand::<()>(&p, key, "a list of conditions");
                            Vec::new()
                        }
                    };
                    if key == "all" {
                        Condition::All(items.into())
                    } else {
                        Condition::Any(items.into())
                    }
                }
                "not" => Condition::Not(Box::new(self.compile(val, &p, depth + 1))),
                "segment" => match val.as_str() {
                    Some(id) => self.segment(id, &p, depth + 1),
                    None => {
                        self.operand::<()>(&p, key, "a segment id");
                        Condition::Any(Box::new([]))
                    }
                },
                attr => self.attribute(attr, val, &p),
            };
            parts.push(c);
        }
        match parts.len() {
            0 => Condition::True,
            1 => parts.pop().unwrap_or(Condition::True),
            _ => Condition::All(parts.into()),
        }
    }

    fn attribute(&mut self, attr: &str, val: &Value, path: &str) -> Condition {
        let ops = match val {
            Value::Object(ops) => ops,
            // `{ platform: tv }` is shorthand for `{ platform: { eq: tv } }`.
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                return Condition::Attr(attr.into(), Op::eq(val, false));
            }
            _ => {
                self.errors.push(ConfigError::new(
                    path,
                    ErrorKind::Operand {
                        op: attr.to_owned(),
                        expected: "a mapping of operators or a scalar",
                    },
                ));
                return Condition::Any(Box::new([]));
            }
        };
        let mut parts: Vec<Condition> = ops
            .iter()
            .filter_map(|(op, x)| self.op(op, x, &format!("{path}.{op}")))
            .map(|op| Condition::Attr(attr.into(), op))
            .collect();
        if parts.len() != ops.len() {
            // An invalid operator was reported; the document is rejected anyway.
            return Condition::Any(Box::new([]));
        }
        match parts.len() {
            0 => Condition::True,
            1 => parts.pop().unwrap_or(Condition::True),
            _ => Condition::All(parts.into()),
        }
    }

    fn op(&mut self, op: &str, x: &Value, path: &str) -> Option<Op> {
        let scalar = |x: &Value| matches!(x, Value::String(_) | Value::Number(_) | Value::Bool(_));
        Some(match op {
            "eq" | "ne" => {
                if !scalar(x) {
                    return self.operand(path, op, "a string, number or bool");
                }
                Op::eq(x, op == "ne")
            }
            "in" | "not_in" => match x {
                Value::Array(items) if items.iter().all(scalar) => {
                    Op::one_of(items, op == "not_in")
                }
                _ => return self.operand(path, op, "a list of strings, numbers or bools"),
            },
            "lt" | "lte" | "gt" | "gte" => {
                let cmp = match op {
                    "lt" => Cmp::Lt,
                    "lte" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                match x {
                    Value::Number(n) => {
                        Op::Order(cmp, Operand::Num(n.as_f64().unwrap_or(f64::NAN)))
                    }
                    Value::String(s) => Op::Order(cmp, Operand::Str(s.as_str().into())),
                    _ => return self.operand(path, op, "a number or a string"),
                }
            }
            "semver_lt" | "semver_le" | "semver_gt" | "semver_ge" | "semver_eq" => {
                let cmp = match op {
                    "semver_lt" => Cmp::Lt,
                    "semver_le" => Cmp::Le,
                    "semver_gt" => Cmp::Gt,
                    "semver_ge" => Cmp::Ge,
                    _ => Cmp::Eq,
                };
                let Some(s) = x.as_str() else {
                    return self.operand(path, op, "a version string such as \"5.2.0\"");
                };
                match parse_version(s) {
                    Some(v) => Op::Semver(cmp, v),
                    None => {
                        self.errors.push(ConfigError::new(
                            path,
                            ErrorKind::InvalidSemver {
                                value: s.to_owned(),
                            },
                        ));
                        return None;
                    }
                }
            }
            "starts_with" | "ends_with" => {
                let Some(s) = x.as_str() else {
                    return self.operand(path, op, "a string");
                };
                if op == "starts_with" {
                    Op::StartsWith(s.into())
                } else {
                    Op::EndsWith(s.into())
                }
            }
            "contains" => {
                if !scalar(x) {
                    return self.operand(path, op, "a string, number or bool");
                }
                Op::Contains(x.clone())
            }
            "matches" => {
                let Some(pattern) = x.as_str() else {
                    return self.operand(path, op, "a regular expression string");
                };
                match regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                {
                    Ok(re) => Op::Matches(re),
                    Err(e) => {
                        self.errors.push(ConfigError::new(
                            path,
                            ErrorKind::BadRegex {
                                pattern: pattern.to_owned(),
                                reason: e.to_string(),
                            },
                        ));
                        return None;
                    }
                }
            }
            "exists" => match x {
                Value::Bool(b) => Op::Exists(*b),
                _ => return self.operand(path, op, "true or false"),
            },
            other => {
                self.errors.push(ConfigError::new(
                    path,
                    ErrorKind::UnknownOperator {
                        op: other.to_owned(),
                        expected: OPERATORS,
                    },
                ));
                return None;
            }
        })
    }

    fn operand<T>(&mut self, path: &str, op: &str, expected: &'static str) -> Option<T> {
        self.errors.push(ConfigError::new(
            path,
            ErrorKind::Operand {
                op: op.to_owned(),
                expected,
            },
        ));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(cond: Value, ctx: Value, expected: bool) {
        let segments = BTreeMap::from([("tv".to_owned(), json!({"platform": "tv"}))]);
        let mut c = Compiler::new(&segments);
        let compiled = c.compile_opt(Some(&cond), || "when".to_owned());
        assert!(c.errors.is_empty(), "{cond}: {:?}", c.errors);
        let ctx: Context = serde_json::from_value(ctx).unwrap();
        assert_eq!(compiled.eval(&ctx), expected, "{cond} on {ctx:?}");
    }

    #[test]
    fn operators() {
        let c = json!({"country": "SE", "n": 5, "v": "5.1", "tags": ["a", "b"], "ok": true});
        check(json!({"country": {"eq": "SE"}}), c.clone(), true);
        check(json!({"country": "SE"}), c.clone(), true);
        check(json!({"country": {"ne": "SE"}}), c.clone(), false);
        check(json!({"country": {"in": ["US", "SE"]}}), c.clone(), true);
        check(
            json!({"country": {"not_in": ["US", "SE"]}}),
            c.clone(),
            false,
        );
        check(json!({"n": {"eq": 5.0}}), c.clone(), true);
        check(json!({"n": {"lt": 6}}), c.clone(), true);
        check(json!({"n": {"lte": 5}}), c.clone(), true);
        check(json!({"n": {"gt": 5}}), c.clone(), false);
        check(json!({"n": {"gte": 5, "lt": 10}}), c.clone(), true);
        check(json!({"country": {"lt": "US"}}), c.clone(), true);
        check(json!({"n": {"lt": "6"}}), c.clone(), false);
        check(json!({"v": {"semver_ge": "5.1.0"}}), c.clone(), true);
        check(json!({"v": {"semver_lt": "5.10"}}), c.clone(), true);
        check(json!({"v": {"semver_eq": "v5.1.0"}}), c.clone(), true);
        check(json!({"v": {"semver_gt": "5.1.0"}}), c.clone(), false);
        check(json!({"country": {"starts_with": "S"}}), c.clone(), true);
        check(json!({"country": {"ends_with": "E"}}), c.clone(), true);
        check(json!({"country": {"contains": "E"}}), c.clone(), true);
        check(json!({"tags": {"contains": "b"}}), c.clone(), true);
        check(json!({"tags": {"contains": "c"}}), c.clone(), false);
        check(json!({"country": {"matches": "^S[A-Z]$"}}), c.clone(), true);
        check(json!({"ok": true}), c.clone(), true);
        check(json!({"country": {"exists": true}}), c.clone(), true);
        check(json!({"nope": {"exists": false}}), c.clone(), true);
    }

    #[test]
    fn absent_attributes_fail_every_operator_but_exists_false() {
        for cond in [
            json!({"x": {"eq": 1}}),
            json!({"x": {"ne": 1}}),
            json!({"x": {"not_in": [1]}}),
            json!({"x": {"lt": 1}}),
            json!({"x": {"exists": true}}),
        ] {
            check(cond, json!({}), false);
        }
        check(json!({"x": {"exists": false}}), json!({"x": null}), true);
    }

    #[test]
    fn combinators_and_segments() {
        let c = json!({"platform": "tv", "country": "SE"});
        check(
            json!({"all": [{"platform": "tv"}, {"country": "SE"}]}),
            c.clone(),
            true,
        );
        check(
            json!({"any": [{"platform": "web"}, {"country": "SE"}]}),
            c.clone(),
            true,
        );
        check(json!({"not": {"platform": "tv"}}), c.clone(), false);
        check(json!({"segment": "tv"}), c.clone(), true);
        check(json!({"segment": "tv", "country": "US"}), c.clone(), false);
        check(json!({}), c.clone(), true);
        check(json!({"any": []}), c.clone(), false);
    }

    #[test]
    fn lenient_versions() {
        assert_eq!(parse_version("5").unwrap(), semver::Version::new(5, 0, 0));
        assert_eq!(
            parse_version("v5.2").unwrap(),
            semver::Version::new(5, 2, 0)
        );
        assert_eq!(parse_version("5.2-beta.1").unwrap().pre.as_str(), "beta.1");
        assert!(parse_version("5..2").is_none());
        assert!(parse_version("five").is_none());
        assert!(parse_version("").is_none());
    }

    #[test]
    fn plain_version_fast_path_equals_parse_version() {
        // Every shape near the fast path's edges, against operands with and without pre-release.
        let parts = [
            "",
            "0",
            "1",
            "5",
            "10",
            "01",
            "00",
            "007",
            "18446744073709551615",
            "18446744073709551616",
            "x",
            "1a",
            " 1",
            "-1",
            "+1",
        ];
        let suffixes = ["", "-beta", "-beta.1", "+build", "-rc.1+b", ".", "..", " "];
        let mut inputs = Vec::new();
        for a in parts {
            inputs.push(a.to_owned());
            for b in parts {
                inputs.push(format!("{a}.{b}"));
                for c in ["0", "3", "01", ""] {
                    for suffix in suffixes {
                        inputs.push(format!("{a}.{b}.{c}{suffix}"));
                        inputs.push(format!("v{a}.{b}.{c}{suffix}"));
                    }
                    inputs.push(format!("{a}.{b}.{c}.4"));
                }
            }
        }
        let operands = [
            "0.0.0",
            "5.3.0",
            "5.3.0-beta.2",
            "10.0.1",
            "18446744073709551615.0.0",
        ];
        for x in operands.map(|x| semver::Version::parse(x).unwrap()) {
            for s in &inputs {
                assert_eq!(
                    version_precedence(s, &x),
                    parse_version(s).map(|v| v.cmp_precedence(&x)),
                    "{s:?} vs {x}"
                );
            }
        }
        assert_eq!(plain_version("5.3"), Some((5, 3, 0)));
        assert_eq!(plain_version("5.3.1.2"), None);
    }

    /// The string-specialised operators (`EqStr`, `InStr`, ... and `short_eq` under them)
    /// answer exactly what the generic JSON ones do, for every length class of `short_eq`
    /// (0-3, 4-7, 8-16, 17+ bytes), lists short enough to scan and long enough to hash, and
    /// values that are not strings.
    mod string_ops {
        use super::*;
        use proptest::prelude::*;

        fn word() -> impl Strategy<Value = String> {
            // A small alphabet so equal strings and near misses (same length, one byte off,
            // shared prefix or suffix) are common.
            prop::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '0']), 0..20)
                .prop_map(|cs| cs.into_iter().collect())
        }

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                6 => word().prop_map(Value::from),
                1 => any::<i64>().prop_map(|n| json!(n % 4)),
                1 => any::<bool>().prop_map(Value::from),
            ]
        }

        proptest! {
            #[test]
            fn agree_with_the_generic_operators(
                v in value(),
                items in prop::collection::vec(word(), 0..20),
                x in word(),
                near in (any::<prop::sample::Index>(), 0..3u8),
            ) {
                // Often compare `x` with itself, or with `x` one byte off at any position
                // (a near miss that only the last word compare can catch).
                let (at, how) = near;
                let v = match (&v, how) {
                    (Value::String(_), 0) => json!(x),
                    (Value::String(_), 1) if !x.is_empty() => {
                        let mut b = x.clone().into_bytes();
                        let i = at.index(b.len());
                        b[i] ^= 1;
                        Value::from(String::from_utf8_lossy(&b).into_owned())
                    }
                    _ => v,
                };
                let mut items = items;
                if how == 2
                    && let Value::String(s) = &v
                {
                    items.push(s.clone());
                }
                let list: Vec<Value> = items.iter().map(|s| json!(s)).collect();
                let generic_in = list.iter().any(|i| json_eq(&v, i));
                let generic_eq = json_eq(&v, &json!(x));
                for (negated, want) in [(false, generic_in), (true, !generic_in)] {
                    let op = Op::one_of(&list, negated);
                    prop_assert!(matches!(op, Op::InStr(_) | Op::NotInStr(_)));
                    prop_assert_eq!(op.eval(&v), want, "{:?} in {:?}", v, items);
                }
                for (negated, want) in [(false, generic_eq), (true, !generic_eq)] {
                    let op = Op::eq(&json!(x), negated);
                    prop_assert!(matches!(op, Op::EqStr(_) | Op::NeStr(_)));
                    prop_assert_eq!(op.eval(&v), want, "{:?} eq {:?}", v, x);
                }
                if let Value::String(s) = &v {
                    prop_assert_eq!(short_eq(s, &x), *s == x);
                }
            }
        }

        #[test]
        fn long_lists_are_hashed_and_mixed_lists_stay_generic() {
            let long: Vec<Value> = (0..20).map(|i| json!(format!("c{i}"))).collect();
            let op = Op::one_of(&long, false);
            assert!(matches!(op, Op::InStr(StrSet::Many(_))));
            assert!(op.eval(&json!("c19")) && !op.eval(&json!("c20")) && !op.eval(&json!(19)));
            let mixed = [json!("1"), json!(1)];
            let op = Op::one_of(&mixed, false);
            assert!(matches!(op, Op::In(_)));
            assert!(op.eval(&json!(1.0)) && op.eval(&json!("1")) && !op.eval(&json!(2)));
            assert!(matches!(Op::eq(&json!(1), false), Op::Eq(_)));
        }
    }
}
