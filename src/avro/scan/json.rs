//! A whole datum read straight to JSON by its [`Shape`], without the
//! `apache_avro` value tree in between: a join-table row is decoded on every
//! lookup and an input record once it passed the filter, and building the
//! tree (a `String` per field name, a union box per optional field) then
//! converting it cost more than reading the bytes.
//!
//! The value is [`crate::avro::avro_to_json`]'s of the decoded datum, rule
//! for rule; like the scan it says `None` for anything it is not sure a
//! decode accepts, and the caller decodes the record the old way (same
//! value, or the decoder's error).

use serde_json::{Map, Number, Value as Json};

use super::{Reader, Shape};

impl Shape {
    /// `datum` (of this shape, nothing after it) as JSON, or `None`: decode
    /// it with `apache_avro`.
    pub(in crate::avro) fn to_json(&self, datum: &[u8]) -> Option<Json> {
        let mut reader = Reader { bytes: datum };
        let value = reader.json(self)?;
        reader.bytes.is_empty().then_some(value)
    }
}

impl Reader<'_> {
    fn json(&mut self, shape: &Shape) -> Option<Json> {
        Some(match shape {
            Shape::Null => Json::Null,
            Shape::Bool => match self.take(1)? {
                [0] => Json::Bool(false),
                [1] => Json::Bool(true),
                _ => return None,
            },
            Shape::Int => Json::from(self.int()?),
            Shape::Long => Json::from(self.long()?),
            Shape::Float => {
                let bytes = self.take(4)?.try_into().ok()?;
                let value = f64::from(f32::from_le_bytes(bytes));
                Number::from_f64(value).map_or(Json::Null, Json::Number)
            }
            Shape::Double => {
                let value = f64::from_le_bytes(self.take(8)?.try_into().ok()?);
                Number::from_f64(value).map_or(Json::Null, Json::Number)
            }
            Shape::Bytes => {
                let len = self.len()?;
                Json::String(String::from_utf8_lossy(self.take(len)?).into_owned())
            }
            Shape::Str => Json::String(self.string()?.to_owned()),
            Shape::Fixed(size) => {
                Json::String(String::from_utf8_lossy(self.take(*size)?).into_owned())
            }
            Shape::Enum(symbols) => {
                let index = usize::try_from(self.int()?).ok()?;
                Json::String(symbols.get(index)?.clone())
            }
            Shape::Union(variants) => {
                let index = usize::try_from(self.long()?).ok()?;
                self.json(variants.get(index)?)?
            }
            Shape::Array(items) => {
                let mut out = Vec::new();
                self.blocks(|r| {
                    out.push(r.json(items)?);
                    Some(())
                })?;
                Json::Array(out)
            }
            Shape::Map(values) => {
                // A key written twice keeps its last value, as decoding
                // into a map and converting it does.
                let mut out = Map::new();
                self.blocks(|r| {
                    let key = r.string()?.to_owned();
                    let value = r.json(values)?;
                    out.insert(key, value);
                    Some(())
                })?;
                Json::Object(out)
            }
            Shape::Record(fields) => {
                let mut out = Map::new();
                for (name, field) in fields {
                    let value = self.json(field)?;
                    out.insert(name.clone(), value);
                }
                Json::Object(out)
            }
        })
    }
}
