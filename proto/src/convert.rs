//! Conversions between protobuf's `google.protobuf.Struct` / `Value` ([`prost_types`]) and
//! JSON ([`serde_json`]).
//!
//! Evaluation contexts arrive as `Struct`s on gRPC and as JSON objects on HTTP; these functions
//! let both paths share one representation.
//!
//! # Numbers
//!
//! A protobuf `Value` holds every number as an `f64` (`number_value`), so:
//!
//! - JSON → protobuf: every JSON number becomes the nearest `f64`. Integers beyond ±2^53 lose
//!   precision.
//! - protobuf → JSON: a finite `f64` with no fractional part and `|x| <= 2^53` becomes a JSON
//!   integer (`i64`; `-0.0` becomes `0`); any other finite number stays a JSON float; NaN and
//!   ±infinity, which JSON cannot represent, become `null`.
//!
//! A `Value` with no kind set is treated as `null`.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number};

/// Largest magnitude up to which every integer is exactly representable in an `f64` (2^53).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Converts a JSON value to a protobuf `Value`.
///
/// Numbers become `f64` (see the [module docs](self) on precision); arrays become
/// `ListValue`s and objects `Struct`s, recursively.
pub fn json_to_prost_value(json: &serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_prost_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(json_map_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// Converts a protobuf `Value` to JSON.
///
/// Integral finite numbers with `|x| <= 2^53` become JSON integers, other finite numbers JSON
/// floats, non-finite numbers and unset kinds `null` (see the [module docs](self)).
pub fn prost_value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(x)) => number_to_json(*x),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(prost_value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json_map(s)),
    }
}

/// Converts a protobuf `Struct` to a JSON object's map, converting each field with
/// [`prost_value_to_json`].
pub fn struct_to_json_map(s: &Struct) -> Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), prost_value_to_json(v)))
        .collect()
}

/// Converts a JSON object's map to a protobuf `Struct`, converting each member with
/// [`json_to_prost_value`].
pub fn json_map_to_struct(map: &Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_prost_value(v)))
            .collect(),
    }
}

/// Maps an `f64` to a JSON number: integral values within ±2^53 as `i64`, other finite values
/// as floats, non-finite values as `null`.
fn number_to_json(x: f64) -> serde_json::Value {
    if !x.is_finite() {
        return serde_json::Value::Null;
    }
    if x.fract() == 0.0 && x.abs() <= MAX_SAFE_INTEGER {
        // Exact: |x| <= 2^53 fits in i64 and x has no fractional part.
        return serde_json::Value::Number(Number::from(x as i64));
    }
    Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(x: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(x)),
        }
    }

    #[test]
    fn round_trips_nested_json() {
        let doc = json!({
            "targetingKey": "m-123",
            "country": "SE",
            "age": 42,
            "score": 0.25,
            "beta": true,
            "nothing": null,
            "tags": ["a", 1, 2.5, false, null, {"deep": [[]]}],
            "nested": {"inner": {"list": [1, 2, 3], "empty": {}}},
        });
        let map = doc.as_object().unwrap();
        let s = json_map_to_struct(map);
        assert_eq!(&struct_to_json_map(&s), map);
        assert_eq!(prost_value_to_json(&json_to_prost_value(&doc)), doc);
    }

    #[test]
    fn nested_structure_has_expected_kinds() {
        let v = json_to_prost_value(&json!({"l": [1, {"k": "v"}], "n": null}));
        let Some(Kind::StructValue(s)) = &v.kind else {
            panic!("expected a struct, got {v:?}");
        };
        let Some(Kind::ListValue(list)) = &s.fields["l"].kind else {
            panic!("expected a list");
        };
        assert_eq!(list.values[0].kind, Some(Kind::NumberValue(1.0)));
        assert!(matches!(list.values[1].kind, Some(Kind::StructValue(_))));
        assert_eq!(s.fields["n"].kind, Some(Kind::NullValue(0)));
    }

    #[test]
    fn integral_numbers_become_json_integers() {
        assert_eq!(prost_value_to_json(&num(3.0)), json!(3));
        assert!(prost_value_to_json(&num(3.0)).is_i64());
        assert_eq!(prost_value_to_json(&num(-7.0)), json!(-7));
        assert_eq!(prost_value_to_json(&num(0.0)), json!(0));
        assert!(prost_value_to_json(&num(-0.0)).is_i64());
        assert_eq!(
            prost_value_to_json(&num(MAX_SAFE_INTEGER)),
            json!(9_007_199_254_740_992_i64)
        );
        assert_eq!(
            prost_value_to_json(&num(-MAX_SAFE_INTEGER)),
            json!(-9_007_199_254_740_992_i64)
        );
    }

    #[test]
    fn fractional_and_huge_numbers_stay_floats() {
        assert_eq!(prost_value_to_json(&num(1.5)), json!(1.5));
        assert!(prost_value_to_json(&num(1.5)).is_f64());
        let huge = 2.0 * MAX_SAFE_INTEGER;
        let j = prost_value_to_json(&num(huge));
        assert!(j.is_f64(), "{j}");
        assert_eq!(j.as_f64(), Some(huge));
        assert!(prost_value_to_json(&num(1e300)).is_f64());
    }

    #[test]
    fn non_finite_numbers_become_null() {
        assert_eq!(prost_value_to_json(&num(f64::NAN)), json!(null));
        assert_eq!(prost_value_to_json(&num(f64::INFINITY)), json!(null));
        assert_eq!(prost_value_to_json(&num(f64::NEG_INFINITY)), json!(null));
    }

    #[test]
    fn null_and_unset_kinds_become_null() {
        assert_eq!(prost_value_to_json(&Value { kind: None }), json!(null));
        assert_eq!(
            prost_value_to_json(&json_to_prost_value(&json!(null))),
            json!(null)
        );
    }

    #[test]
    fn json_integers_become_f64() {
        assert_eq!(
            json_to_prost_value(&json!(7)).kind,
            Some(Kind::NumberValue(7.0))
        );
        assert_eq!(
            json_to_prost_value(&json!(u64::MAX)).kind,
            Some(Kind::NumberValue(u64::MAX as f64))
        );
        assert_eq!(
            json_to_prost_value(&json!(-2.5)).kind,
            Some(Kind::NumberValue(-2.5))
        );
    }

    #[test]
    fn empty_struct_round_trips() {
        let s = Struct::default();
        let map = struct_to_json_map(&s);
        assert!(map.is_empty());
        assert_eq!(json_map_to_struct(&map), s);
    }
}
