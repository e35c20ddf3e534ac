//! JSON values as a QMP client sends them: member order kept, duplicate keys refused.
//!
//! serde_json parses; this module only decides what a value is. Keeping member order
//! lets a reply echo the client's `id` as the same JSON (an object id comes back with
//! its members in the order sent; numbers are re-printed by serde_json, so `1.50` comes
//! back as `1.5`). Duplicate keys are an error, as in QEMU's parser, so that
//! `{"execute":"stop","execute":"cont"}` cannot mean two things.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
pub use serde_json::Number;

/// A parsed JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

/// A JSON object's members, in the order they were sent; keys are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object {
    members: Vec<(String, Value)>,
}

impl Object {
    /// The value of member `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.members.iter().find(|(name, _)| name == key).map(|(_, value)| value)
    }

    /// The members in the order they were sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.members.iter().map(|(name, value)| (name.as_str(), value))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// An object from members; a key that repeats keeps its first value.
    pub fn from_members(members: impl IntoIterator<Item = (String, Value)>) -> Object {
        let mut object = Object::default();
        for (name, value) in members {
            if object.get(&name).is_none() {
                object.members.push((name, value));
            }
        }
        object
    }
}

impl Value {
    /// The JSON type's name as QEMU's input visitor words it ("expected: string").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(flag) => Some(*flag),
            _ => None,
        }
    }

    /// The value as a signed 64-bit integer: only integers written without a fraction or
    /// exponent that fit (QEMU's qnum_get_try_int).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(number) => number.as_i64(),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(object) => Some(object),
            _ => None,
        }
    }
}

/// Parses exactly one JSON value from `bytes`.
///
/// Returns serde_json's description of the first problem (invalid UTF-8 in a string,
/// bad syntax, trailing characters, a duplicate key, a number out of range). Nesting is
/// limited by the caller: the framer refuses deep messages before they get here.
pub fn from_slice(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|error| error.to_string())
}

/// Serialises `value` compactly.
pub fn to_vec(value: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail: keys are strings and numbers are finite.
    serde_json::to_vec(value).unwrap_or_default()
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Value, E> {
        Ok(Value::Bool(flag))
    }

    fn visit_i64<E>(self, number: i64) -> Result<Value, E> {
        Ok(Value::Number(number.into()))
    }

    fn visit_u64<E>(self, number: u64) -> Result<Value, E> {
        Ok(Value::Number(number.into()))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Value, E> {
        Number::from_f64(number).map(Value::Number).ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value, E> {
        Ok(Value::String(text.into()))
    }

    fn visit_string<E>(self, text: String) -> Result<Value, E> {
        Ok(Value::String(text))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Vec::new();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key '{key}'")));
            }
            let value = map.next_value()?;
            members.push((key, value));
        }
        Ok(Value::Object(Object { members }))
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(flag) => serializer.serialize_bool(*flag),
            Value::Number(number) => number.serialize(serializer),
            Value::String(text) => serializer.serialize_str(text),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(object) => object.serialize(serializer),
        }
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.members.len()))?;
        for (name, value) in &self.members {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_member_order_when_echoed() {
        let value = from_slice(br#"{"z":1,"a":[true,null,"x"],"m":{"b":2,"a":1}}"#).unwrap();
        assert_eq!(to_vec(&value), br#"{"z":1,"a":[true,null,"x"],"m":{"b":2,"a":1}}"#);
    }

    #[test]
    fn refuses_duplicate_keys() {
        let error = from_slice(br#"{"execute":"stop","execute":"cont"}"#).unwrap_err();
        assert!(error.contains("duplicate key 'execute'"), "{error}");
    }

    #[test]
    fn integers_and_floats_stay_apart() {
        assert_eq!(from_slice(b"7").unwrap().as_i64(), Some(7));
        assert_eq!(from_slice(b"7.0").unwrap().as_i64(), None);
        assert_eq!(from_slice(b"-9223372036854775808").unwrap().as_i64(), Some(i64::MIN));
        assert_eq!(from_slice(b"18446744073709551615").unwrap().as_i64(), None);
    }

    #[test]
    fn refuses_invalid_utf8_and_trailing_bytes() {
        assert!(from_slice(b"\"\xff\"").is_err());
        assert!(from_slice(b"{} x").is_err());
        assert!(from_slice(b"").is_err());
    }
}
