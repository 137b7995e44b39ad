//! Reading request bodies. Each body is a `Deserialize + ToSchema` struct: its schema is
//! what the OpenAPI document shows, and a `TryFrom` checks it into what the service takes.
//! Fields are read leniently ([`Sent`]) and unknown keys are kept ([`Fields`]) so that
//! the `TryFrom` can name every bad field at once, by JSON pointer, as the cart parser
//! does, instead of serde's first error in serde's words.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};
use serde_json::{Map, Value};

use super::problem::ApiError;
use crate::domain::FieldError;

/// One field of a request body as the client sent it.
#[derive(Debug, Default)]
pub enum Sent<T> {
    /// Left out, or `null`.
    #[default]
    Absent,
    /// Of the field's JSON type; whether it is in range is the `TryFrom`'s to say.
    Typed(T),
    /// Of another JSON type.
    WrongType,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Sent<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a `Value`, so that a value of the wrong type is a finding about this
        // field rather than the end of the whole body.
        let value = Value::deserialize(deserializer)?;
        if value.is_null() {
            return Ok(Sent::Absent);
        }
        Ok(T::deserialize(value).map_or(Sent::WrongType, Sent::Typed))
    }
}

/// The fields of a JSON object: those the request type `T` has, read into it, and the
/// keys it does not have, which are refused, each by its pointer, beside the other errors.
#[derive(Debug)]
pub struct Fields<T> {
    pub known: T,
    pub unknown: Vec<String>,
}

impl<T: DeserializeOwned> Fields<T> {
    /// Reads a request body; anything but a JSON object is refused.
    pub fn read(body: Value) -> Result<Fields<T>, ApiError> {
        if !body.is_object() {
            return Err(ApiError::field("", "must be a JSON object"));
        }
        Fields::deserialize(body).map_err(|e| ApiError::field("", e.to_string()))
    }

    /// Reads a body that may be left out: none at all reads as `{}`.
    pub fn read_optional(body: Option<Value>) -> Result<Fields<T>, ApiError> {
        Fields::read(body.unwrap_or_else(|| Value::Object(Map::new())))
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Fields<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        let names = field_names::<T>();
        let unknown = map
            .keys()
            .filter(|key| !names.contains(&key.as_str()))
            .cloned()
            .collect();
        let known = T::deserialize(Value::Object(map)).map_err(de::Error::custom)?;
        Ok(Fields { known, unknown })
    }
}

/// The keys that `T`'s derived `Deserialize` reads: the list serde's derive hands to
/// `deserialize_struct`, asked of a deserializer that only listens for it. (Empty for a
/// type that is not a struct with named fields.)
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Listener<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Listener<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct with named fields"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names were wanted"))
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // Always an error: the listener never builds a `T`.
    let _ = T::deserialize(Listener(&mut fields));
    fields
}

/// Every bad field of one body, in the order found.
#[derive(Debug, Default)]
pub struct Findings(Vec<FieldError>);

impl Findings {
    pub fn add(&mut self, pointer: impl Into<String>, detail: impl Into<String>) {
        self.0.push(FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        });
    }

    /// Refuses each key of `unknown`, found in the object at `at` (a JSON pointer).
    pub fn unknown(&mut self, at: &str, unknown: &[String]) {
        for key in unknown {
            // RFC 6901: `~` and `/` in a key are escaped.
            let key = key.replace('~', "~0").replace('/', "~1");
            self.add(format!("{at}/{key}"), "is not a known field");
        }
    }

    /// Adds each error of a parser that points into the object at `at`.
    pub fn extend_at(&mut self, at: &str, errors: Vec<FieldError>) {
        self.0.extend(errors.into_iter().map(|e| FieldError {
            pointer: format!("{at}{}", e.pointer),
            detail: e.detail,
        }));
    }

    /// Whether a finding points at `pointer`.
    pub fn about(&self, pointer: &str) -> bool {
        self.0.iter().any(|e| e.pointer == pointer)
    }

    /// Ends a check: `value` when nothing was found, else every finding. (`value` is
    /// `None` only when something was.)
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldError>> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(self.0),
        }
    }

    /// The findings, when there are any.
    pub fn into_result(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn append(&mut self, other: Findings) {
        self.0.extend(other.0);
    }
}

impl Sent<bool> {
    /// An optional flag, false when left out.
    pub fn flag(self, pointer: &str, found: &mut Findings) -> bool {
        match self {
            Sent::Absent => false,
            Sent::Typed(flag) => flag,
            Sent::WrongType => {
                found.add(pointer, "must be true or false");
                false
            }
        }
    }
}

impl Sent<String> {
    /// A required string of at most `max` characters and not blank, trimmed; `missing`
    /// says what to answer when it is left out.
    pub fn required_text(
        self,
        pointer: &str,
        max: usize,
        missing: &str,
        found: &mut Findings,
    ) -> Option<String> {
        if let Sent::Absent = self {
            found.add(pointer, missing);
            return None;
        }
        let text = self.optional_text(pointer, max, found)?;
        if text.trim().is_empty() {
            found.add(pointer, "must not be empty");
            return None;
        }
        Some(text.trim().to_string())
    }

    /// An optional string of at most `max` characters, kept as sent.
    pub fn optional_text(self, pointer: &str, max: usize, found: &mut Findings) -> Option<String> {
        match self {
            Sent::Absent => None,
            Sent::Typed(s) if s.chars().count() <= max => Some(s),
            Sent::Typed(_) => {
                found.add(pointer, format!("must be at most {max} characters"));
                None
            }
            Sent::WrongType => {
                found.add(pointer, "must be a string");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Example {
        name: Sent<String>,
        #[serde(rename = "max")]
        limit: Sent<u64>,
        inner: Sent<Fields<Inner>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Inner {
        since: Sent<String>,
    }

    #[test]
    fn field_names_are_those_serde_reads() {
        assert_eq!(field_names::<Example>(), ["name", "max", "inner"]);
        assert!(field_names::<String>().is_empty());
    }

    #[test]
    fn every_field_is_read_whatever_its_neighbours_hold() {
        let body = json!({"name": 5, "max": null, "inner": {"since": "x", "a/b": 1}, "x~": 2});
        let Fields { known, unknown } = Fields::<Example>::read(body).expect("an object");
        assert_eq!(unknown, ["x~"]);
        assert!(matches!(known.name, Sent::WrongType));
        assert!(matches!(known.limit, Sent::Absent));
        let Sent::Typed(inner) = known.inner else {
            panic!("inner is an object: {:?}", known.inner);
        };
        assert_eq!(inner.unknown, ["a/b"]);
        assert!(matches!(inner.known.since, Sent::Typed(ref s) if s == "x"));

        let mut found = Findings::default();
        found.unknown("/inner", &inner.unknown);
        found.unknown("", &unknown);
        assert!(found.about("/inner/a~1b") && found.about("/x~0"));
    }

    #[test]
    fn only_an_object_is_a_body() {
        assert!(Fields::<Example>::read(json!([1])).is_err());
        let empty = Fields::<Example>::read_optional(None).expect("no body reads as {}");
        assert!(empty.unknown.is_empty() && matches!(empty.known.name, Sent::Absent));
        let Sent::WrongType = Sent::<Fields<Inner>>::deserialize(json!("x")).expect("lenient")
        else {
            panic!("a string is not an object");
        };
    }
}
