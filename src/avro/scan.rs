//! A validating scan of an Avro datum that builds nothing: it checks the
//! bytes as strictly as a full decode would accept them and hands out the
//! top-level fields' scalar values borrowed from the bytes. Enrich's filters
//! read a few fields; building the whole record (every string copied, a
//! JSON tree) only for records that pass costs less than building it for
//! every record.
//!
//! The scan only ever says yes when a full decode would succeed and give the
//! same values; anything it is not sure of (a truncated datum, an unknown
//! union branch, a type it does not model) is `None`, and the caller decodes
//! the record fully, so a bad record still fails with the decoder's error.

use std::borrow::Cow;
use std::collections::HashMap;

use apache_avro::schema::Name;
use apache_avro::Schema;

pub use de::from_fields;

/// The most items a scan walks in one array or map; beyond it the full
/// decode decides (it has its own, larger, allocation limit).
const MAX_ITEMS: u64 = 1 << 20;
/// apache-avro's default allocation limit for one string or byte array.
const MAX_LEN: u64 = 512 * 1024 * 1024;
/// Named types nested deeper than this (a recursive schema) are not scanned.
const MAX_DEPTH: usize = 32;

/// A top-level field's value as [`super::avro_to_json`] would give it, not
/// yet turned into JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    /// `int`, `long` and the date/time types stored as them.
    Long(i64),
    /// `float` (widened) and `double`; JSON has no NaN or infinity, so
    /// those read as `null` (as decoding makes them).
    Double(f64),
    /// `string`, an `enum`'s symbol, `bytes` and `fixed` (as lossy UTF-8).
    Str(Cow<'a, str>),
    /// An array, map or record: checked, not read.
    Complex,
}

/// A schema reduced to what a scan needs, named types followed.
#[derive(Debug, Clone)]
pub(super) enum Shape {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Fixed(usize),
    Enum(Vec<String>),
    Array(Box<Shape>),
    Map(Box<Shape>),
    Union(Vec<Shape>),
    Record(Vec<(String, Shape)>),
}

impl Shape {
    /// `None` for a schema holding a type the scan does not model (decimal,
    /// uuid, duration, …) or a recursive one.
    pub(super) fn of(schema: &Schema, names: &HashMap<Name, Schema>) -> Option<Shape> {
        Shape::build(schema, names, 0)
    }

    fn build(schema: &Schema, names: &HashMap<Name, Schema>, depth: usize) -> Option<Shape> {
        if depth > MAX_DEPTH {
            return None;
        }
        let inner = |s: &Schema| Shape::build(s, names, depth + 1);
        Some(match schema {
            Schema::Null => Shape::Null,
            Schema::Boolean => Shape::Bool,
            Schema::Int | Schema::Date | Schema::TimeMillis => Shape::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Shape::Long,
            Schema::Float => Shape::Float,
            Schema::Double => Shape::Double,
            Schema::Bytes => Shape::Bytes,
            Schema::String => Shape::Str,
            Schema::Fixed(f) => Shape::Fixed(f.size),
            Schema::Enum(e) => Shape::Enum(e.symbols.clone()),
            Schema::Array(a) => Shape::Array(Box::new(inner(&a.items)?)),
            Schema::Map(m) => Shape::Map(Box::new(inner(&m.types)?)),
            Schema::Union(u) => {
                Shape::Union(u.variants().iter().map(inner).collect::<Option<_>>()?)
            }
            Schema::Record(r) => Shape::Record(
                r.fields
                    .iter()
                    .map(|f| Some((f.name.clone(), inner(&f.schema)?)))
                    .collect::<Option<_>>()?,
            ),
            Schema::Ref { name } => inner(names.get(name)?)?,
            _ => return None,
        })
    }

    /// The top-level fields of `datum` (a record of this shape), or `None`
    /// unless the whole datum is well formed and nothing follows it.
    pub(super) fn scan<'a>(&'a self, datum: &'a [u8]) -> Option<Vec<(&'a str, Scalar<'a>)>> {
        let Shape::Record(fields) = self else {
            return None;
        };
        let mut reader = Reader { bytes: datum };
        let mut out = Vec::with_capacity(fields.len());
        for (name, shape) in fields {
            out.push((name.as_str(), reader.scalar(shape)?));
        }
        reader.bytes.is_empty().then_some(out)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    /// A zig-zag varint of at most ten bytes, as the decoder reads it.
    fn long(&mut self) -> Option<i64> {
        let mut z = 0u64;
        for j in 0..10 {
            let (&byte, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            z |= u64::from(byte & 0x7F) << (j * 7);
            if byte & 0x80 == 0 {
                return Some(if z & 1 == 0 {
                    (z >> 1) as i64
                } else {
                    !(z >> 1) as i64
                });
            }
        }
        None
    }

    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    fn len(&mut self) -> Option<usize> {
        let len = u64::try_from(self.long()?).ok().filter(|&l| l <= MAX_LEN)?;
        usize::try_from(len).ok()
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = self.len()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// Walks the blocks of an array or map, `item` reading each item.
    fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        let mut total = 0u64;
        loop {
            let count = match self.long()? {
                0 => return Some(()),
                n if n < 0 => {
                    self.long()?;
                    n.checked_neg()?
                }
                n => n,
            };
            total = total.checked_add(u64::try_from(count).ok()?)?;
            if total > MAX_ITEMS {
                return None;
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    fn scalar(&mut self, shape: &'a Shape) -> Option<Scalar<'a>> {
        Some(match shape {
            Shape::Null => Scalar::Null,
            Shape::Bool => match self.take(1)? {
                [0] => Scalar::Bool(false),
                [1] => Scalar::Bool(true),
                _ => return None,
            },
            Shape::Int => Scalar::Long(i64::from(self.int()?)),
            Shape::Long => Scalar::Long(self.long()?),
            Shape::Float => {
                let bytes = self.take(4)?.try_into().ok()?;
                Scalar::Double(f64::from(f32::from_le_bytes(bytes)))
            }
            Shape::Double => Scalar::Double(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            Shape::Bytes => {
                let len = self.len()?;
                Scalar::Str(String::from_utf8_lossy(self.take(len)?))
            }
            Shape::Str => Scalar::Str(Cow::Borrowed(self.string()?)),
            Shape::Fixed(size) => Scalar::Str(String::from_utf8_lossy(self.take(*size)?)),
            Shape::Enum(symbols) => {
                let index = usize::try_from(self.int()?).ok()?;
                Scalar::Str(Cow::Borrowed(symbols.get(index)?.as_str()))
            }
            Shape::Union(variants) => {
                let index = usize::try_from(self.long()?).ok()?;
                self.scalar(variants.get(index)?)?
            }
            Shape::Array(items) => {
                self.blocks(|r| r.scalar(items).map(drop))?;
                Scalar::Complex
            }
            Shape::Map(values) => {
                self.blocks(|r| {
                    r.string()?;
                    r.scalar(values).map(drop)
                })?;
                Scalar::Complex
            }
            Shape::Record(fields) => {
                for (_, field) in fields {
                    self.scalar(field)?;
                }
                Scalar::Complex
            }
        })
    }
}

mod de;
mod json;
#[cfg(test)]
mod tests;
