//! Conversions between `google.protobuf.Value` (the contract's JSON payload) and
//! `serde_json::Value`.
//!
//! Protobuf JSON numbers are `f64`: an integer beyond 2^53 loses precision on the
//! way in, as it would in any JSON parser that follows the protobuf mapping. An
//! integral `f64` comes back out as a JSON integer, so `[1,2]` round-trips as
//! `[1,2]`, not `[1.0,2.0]`.

use prost_types::{value::Kind, ListValue, Struct, Value};

/// Why a payload could not be read as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The payload carries raw bytes, not a JSON value.
    #[error(
        "the body holds raw bytes, expected a JSON value (send {{\"body\":{{\"json\":...}}}})"
    )]
    NotJson,
    /// There is no payload at all.
    #[error("the request has no body, expected a JSON value (send {{\"body\":{{\"json\":...}}}})")]
    Empty,
}

/// Converts a serde JSON value into a protobuf `Value`.
pub fn to_proto(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_proto).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_proto(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// Converts a protobuf `Value` into a serde JSON value.
///
/// A `Value` with no kind set reads as `null`; a non-finite number (which JSON
/// cannot hold) reads as `null` too.
pub fn from_proto(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(from_proto).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), from_proto(v)))
                .collect(),
        ),
    }
}

fn number(n: f64) -> serde_json::Value {
    // Integral values within the exactly-representable range print as integers.
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        if n < 0.0 {
            return serde_json::Value::from(n as i64);
        }
        return serde_json::Value::from(n as u64);
    }
    serde_json::Number::from_f64(n)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_json() {
        let v = json!({"a": [1, 2.5, -3, null, true, "x"], "b": {"c": {}}, "d": []});
        assert_eq!(from_proto(&to_proto(v.clone())), v);
    }

    #[test]
    fn integers_stay_integers() {
        assert_eq!(from_proto(&to_proto(json!(1000))).to_string(), "1000");
        assert_eq!(from_proto(&to_proto(json!(-7))).to_string(), "-7");
        assert_eq!(from_proto(&to_proto(json!(0.5))).to_string(), "0.5");
    }

    #[test]
    fn non_finite_is_null() {
        let v = Value {
            kind: Some(Kind::NumberValue(f64::INFINITY)),
        };
        assert_eq!(from_proto(&v), serde_json::Value::Null);
    }
}
