//! A scanned record's fields read straight into a Rust type by serde, with
//! the rules `serde_json::from_value` applies to the JSON the full decode
//! gives: notify decoded every message into a `serde_json::Value` (a
//! `String` per field name, a copy per string) only to move it into its
//! struct at once (~15k instructions per message, PERFORMANCE.md notify's
//! fifteenth round).
//!
//! Each [`Scalar`] deserializes as the JSON value it stands for; a
//! [`Scalar::Complex`] value was checked but not read, so asking for one is
//! an error. An error here says nothing final: the caller decodes the
//! record the old way, whose value or error is the one that counts.

use serde::de::value::{CowStrDeserializer, Error, MapDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

use super::Scalar;

/// The record whose top-level fields are `fields` as a `T`, as
/// `serde_json::from_value` would give it from the decoded record.
pub fn from_fields<'a, T: DeserializeOwned>(
    fields: Vec<(&'a str, Scalar<'a>)>,
) -> Result<T, Error> {
    T::deserialize(MapDeserializer::new(fields.into_iter()))
}

impl<'de, 'a> IntoDeserializer<'de, Error> for Scalar<'a> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Scalar<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Scalar::Null => visitor.visit_unit(),
            Scalar::Bool(value) => visitor.visit_bool(value),
            Scalar::Long(value) => visitor.visit_i64(value),
            Scalar::Double(value) => visitor.visit_f64(value),
            Scalar::Str(text) => CowStrDeserializer::<Error>::new(text).deserialize_any(visitor),
            Scalar::Complex => Err(de::Error::custom(
                "an array, map or record field is not read by a scan",
            )),
        }
    }

    /// JSON's `null` is `None`, anything else `Some`.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Scalar::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    /// A string names a unit variant, as serde_json reads one.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Scalar::Str(text) => {
                CowStrDeserializer::<Error>::new(text).deserialize_enum(name, variants, visitor)
            }
            other => other.deserialize_any(visitor),
        }
    }

    /// A field the type does not name is passed over, whatever it holds.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier
    }
}
