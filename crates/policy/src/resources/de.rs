//! Deserializes a parsed document into typed structs while tracking where in
//! the document each error arose, so a refusal says `spec.meshTLS: unknown
//! field "identty"` rather than only the message.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;

/// A deserialization error and the path of the innermost value it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", .path.as_deref().map(|p| format!("{p}: ")).unwrap_or_default(), .message)]
pub(crate) struct FieldError {
    pub path: Option<String>,
    pub message: String,
}

impl FieldError {
    /// Attaches `path` unless a deeper one is already known.
    fn at(mut self, path: &str) -> Self {
        if self.path.is_none() && !path.is_empty() {
            self.path = Some(path.to_string());
        }
        self
    }
}

impl de::Error for FieldError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        FieldError {
            path: None,
            message: msg.to_string(),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = if expected.is_empty() {
            format!("unknown field {field:?}; no fields are allowed here")
        } else {
            let list: Vec<String> = expected.iter().map(|e| format!("{e:?}")).collect();
            format!(
                "unknown field {field:?}, expected one of {}",
                list.join(", ")
            )
        };
        FieldError {
            path: None,
            message,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        FieldError {
            path: None,
            message: format!("missing field {field:?}"),
        }
    }
}

/// Deserializes `value`, whose own path in the document is `path` ("" for
/// the document root).
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T, FieldError> {
    T::deserialize(At {
        value,
        path: path.to_string(),
    })
}

/// `parent.key`, or `parent["odd.key"]` when the key is not a plain word
/// (annotation keys hold dots and slashes).
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!("{parent}[{key:?}]"),
    }
}

struct At<'v> {
    value: &'v Value,
    path: String,
}

impl<'de> de::Deserializer<'de> for At<'_> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        let result = match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else if let Some(f) = n.as_f64() {
                    visitor.visit_f64(f)
                } else {
                    Err(de::Error::custom(format!("number {n} is out of range")))
                }
            }
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter(),
                index: 0,
                path: &self.path,
            }),
            Value::Object(map) => visitor.visit_map(Map {
                entries: map.iter(),
                pending: None,
                path: &self.path,
            }),
        };
        result.map_err(|e| e.at(&self.path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        let result = match self.value {
            Value::String(s) => {
                let d: de::value::StrDeserializer<'_, FieldError> = s.as_str().into_deserializer();
                visitor.visit_enum(d)
            }
            other => Err(de::Error::custom(format!(
                "expected a string, found {}",
                type_name(other)
            ))),
        };
        result.map_err(|e| e.at(&self.path))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

struct Seq<'p, 'v> {
    items: std::slice::Iter<'v, Value>,
    index: usize,
    path: &'p str,
}

impl<'de> SeqAccess<'de> for Seq<'_, '_> {
    type Error = FieldError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, FieldError> {
        let Some(value) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        seed.deserialize(At { value, path }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'p, 'v> {
    entries: serde_json::map::Iter<'v>,
    pending: Option<(&'v str, &'v Value)>,
    path: &'p str,
}

impl<'de> MapAccess<'de> for Map<'_, '_> {
    type Error = FieldError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FieldError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((key.as_str(), value));
        let d: de::value::StrDeserializer<'_, FieldError> = key.as_str().into_deserializer();
        seed.deserialize(d).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, FieldError> {
        let Some((key, value)) = self.pending.take() else {
            return Err(de::Error::custom("a map value was read before its key"));
        };
        seed.deserialize(At {
            value,
            path: child_path(self.path, key),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// How a value reads in an error message.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
