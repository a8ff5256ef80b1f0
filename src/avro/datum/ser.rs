//! A record written straight from its `Serialize` impl to an Avro datum,
//! without the `serde_json::Value` in between: building that value copied
//! every string of the record (a message's ~2 KB of blocks included) and
//! allocated a map entry per field before the datum writer read it back.
//!
//! The bytes are those [`TypedSchema::write_datum`] writes for
//! `serde_json::to_value(record)`, rule for rule. The writer declines, and
//! the caller takes that JSON path, wherever following the value's own
//! serialization could differ from it: a struct whose fields come in an
//! order other than its record schema's, a union with more than one branch
//! a compound value could take (the JSON path tries them in turn), and
//! serde shapes the JSON path maps in ways not modelled here (tuples,
//! bytes, enum variants with data, maps into records).

use std::fmt;

use apache_avro::schema::{RecordSchema, Schema};
use serde::ser::{self, Impossible, Serialize};
use serde_json::Value as Json;

use super::{write_bytes, write_long, write_symbol, writes_itself, Miss};
use crate::avro::json::{accepts_null, TypedSchema};

impl TypedSchema {
    /// Appends the datum of `value` to `out`, as [`TypedSchema::write_datum`]
    /// writes `serde_json::to_value(value)`; `false` (with `out` as it was)
    /// when that path must decide (see the module documentation).
    pub fn write_serialized<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> bool {
        let mark = out.len();
        let written = value
            .serialize(Writer {
                typed: self,
                schema: &self.schema,
                out,
            })
            .is_ok();
        if !written {
            out.truncate(mark);
        }
        written
    }
}

/// Why a value was not written; `Miss` as a serde error.
#[derive(Debug)]
struct Declined(Miss);

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Miss::Mismatch => f.write_str("the value does not map onto the schema"),
            Miss::Unsupported => f.write_str("left to the JSON path"),
        }
    }
}

impl std::error::Error for Declined {}

impl ser::Error for Declined {
    // A `Serialize` impl's own error: `to_value` fails the same way, so the
    // JSON path gives the error.
    fn custom<T: fmt::Display>(_: T) -> Self {
        Declined(Miss::Unsupported)
    }
}

impl From<Miss> for Declined {
    fn from(miss: Miss) -> Self {
        Declined(miss)
    }
}

/// A JSON scalar as `to_value` would make it, borrowed.
#[derive(Clone, Copy)]
enum Scalar<'v> {
    Null,
    Bool(bool),
    Int(i64),
    /// Above `i64::MAX`: a JSON number `as_i64` refuses.
    Big(u64),
    Float(f64),
    Str(&'v str),
}

/// The shapes of compound values, for choosing a union's branch.
#[derive(Clone, Copy, PartialEq)]
enum Compound {
    Seq,
    Struct,
    Map,
}

/// Serializes one value against one schema node.
struct Writer<'s, 'o> {
    typed: &'s TypedSchema,
    schema: &'s Schema,
    out: &'o mut Vec<u8>,
}

impl<'s> Writer<'s, '_> {
    /// A `Ref` followed to its named type.
    fn resolve(&self, schema: &'s Schema) -> Result<&'s Schema, Miss> {
        match schema {
            Schema::Ref { name } => self.typed.names.get(name).ok_or(Miss::Mismatch),
            other => Ok(other),
        }
    }

    /// `write_datum`'s rules for a JSON scalar, unions tried branch by
    /// branch as it tries them.
    fn scalar(&mut self, schema: &'s Schema, value: Scalar<'_>) -> Result<(), Miss> {
        let schema = self.resolve(schema)?;
        let out = &mut *self.out;
        match (schema, value) {
            (Schema::Union(union), _) => {
                let mark = out.len();
                for (index, variant) in union.variants().iter().enumerate() {
                    write_long(index as i64, self.out);
                    match self.scalar(variant, value) {
                        Ok(()) => return Ok(()),
                        Err(Miss::Mismatch) => self.out.truncate(mark),
                        Err(Miss::Unsupported) => return Err(Miss::Unsupported),
                    }
                }
                Err(Miss::Mismatch)
            }
            (Schema::Null, Scalar::Null) => Ok(()),
            (Schema::Boolean, Scalar::Bool(b)) => {
                out.push(u8::from(b));
                Ok(())
            }
            (Schema::Int, Scalar::Int(v)) => {
                let v = i32::try_from(v).map_err(|_| Miss::Mismatch)?;
                write_long(i64::from(v), out);
                Ok(())
            }
            (Schema::Long | Schema::TimestampMillis | Schema::TimestampMicros, Scalar::Int(v)) => {
                write_long(v, out);
                Ok(())
            }
            (Schema::Float, Scalar::Int(v)) => {
                out.extend_from_slice(&(v as f64 as f32).to_le_bytes());
                Ok(())
            }
            (Schema::Float, Scalar::Big(v)) => {
                out.extend_from_slice(&(v as f64 as f32).to_le_bytes());
                Ok(())
            }
            (Schema::Float, Scalar::Float(v)) => {
                out.extend_from_slice(&(v as f32).to_le_bytes());
                Ok(())
            }
            (Schema::Double, Scalar::Int(v)) => {
                out.extend_from_slice(&(v as f64).to_le_bytes());
                Ok(())
            }
            (Schema::Double, Scalar::Big(v)) => {
                out.extend_from_slice(&(v as f64).to_le_bytes());
                Ok(())
            }
            (Schema::Double, Scalar::Float(v)) => {
                out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            (Schema::String, Scalar::Str(s)) => {
                write_bytes(s.as_bytes(), out);
                Ok(())
            }
            (Schema::Enum(e), Scalar::Str(s)) => write_symbol(&e.symbols, s, out),
            (schema, _) if writes_itself(schema) => Err(Miss::Mismatch),
            _ => Err(Miss::Unsupported),
        }
    }

    /// The schema node a compound value is written against: through a
    /// union only when exactly one branch could take its shape.
    fn compound(&mut self, shape: Compound) -> Result<&'s Schema, Miss> {
        let schema = self.resolve(self.schema)?;
        let Schema::Union(union) = schema else {
            return match (shape, schema) {
                (Compound::Seq, Schema::Array(_))
                | (Compound::Struct, Schema::Record(_))
                | (Compound::Map, Schema::Map(_)) => Ok(schema),
                // The JSON path writes an object into either.
                (Compound::Struct, Schema::Map(_)) | (Compound::Map, Schema::Record(_)) => {
                    Err(Miss::Unsupported)
                }
                (_, schema) if writes_itself(schema) => Err(Miss::Mismatch),
                _ => Err(Miss::Unsupported),
            };
        };
        let mut taker = None;
        for (index, variant) in union.variants().iter().enumerate() {
            let variant = self.resolve(variant)?;
            let takes = match variant {
                Schema::Array(_) => shape == Compound::Seq,
                Schema::Record(_) | Schema::Map(_) => shape != Compound::Seq,
                schema if writes_itself(schema) => false,
                _ => return Err(Miss::Unsupported),
            };
            if takes {
                if taker.is_some() {
                    return Err(Miss::Unsupported);
                }
                taker = Some((index, variant));
            }
        }
        let (index, variant) = taker.ok_or(Miss::Mismatch)?;
        write_long(index as i64, self.out);
        self.schema = variant;
        self.compound(shape)
    }
}

type Done = Result<(), Declined>;

impl<'s, 'o> ser::Serializer for Writer<'s, 'o> {
    type Ok = ();
    type Error = Declined;
    type SerializeSeq = Items<'s, 'o>;
    type SerializeTuple = Impossible<(), Declined>;
    type SerializeTupleStruct = Impossible<(), Declined>;
    type SerializeTupleVariant = Impossible<(), Declined>;
    type SerializeMap = Entries<'s, 'o>;
    type SerializeStruct = Fields<'s, 'o>;
    type SerializeStructVariant = Impossible<(), Declined>;

    fn serialize_bool(mut self, v: bool) -> Done {
        Ok(self.scalar(self.schema, Scalar::Bool(v))?)
    }
    fn serialize_i8(self, v: i8) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(mut self, v: i64) -> Done {
        Ok(self.scalar(self.schema, Scalar::Int(v))?)
    }
    fn serialize_u8(self, v: u8) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_u64(mut self, v: u64) -> Done {
        let value = i64::try_from(v).map_or(Scalar::Big(v), Scalar::Int);
        Ok(self.scalar(self.schema, value)?)
    }
    fn serialize_f32(self, v: f32) -> Done {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(mut self, v: f64) -> Done {
        // `to_value` makes a float that is not finite JSON's null.
        let value = if v.is_finite() {
            Scalar::Float(v)
        } else {
            Scalar::Null
        };
        Ok(self.scalar(self.schema, value)?)
    }
    fn serialize_char(self, v: char) -> Done {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(mut self, v: &str) -> Done {
        Ok(self.scalar(self.schema, Scalar::Str(v))?)
    }
    fn serialize_bytes(self, _: &[u8]) -> Done {
        Err(Declined(Miss::Unsupported))
    }
    fn serialize_none(mut self) -> Done {
        Ok(self.scalar(self.schema, Scalar::Null)?)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_unit(mut self) -> Done {
        Ok(self.scalar(self.schema, Scalar::Null)?)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Done {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Done {
        Err(Declined(Miss::Unsupported))
    }
    fn serialize_seq(mut self, len: Option<usize>) -> Result<Items<'s, 'o>, Declined> {
        // A block's count comes first: without the length, decline.
        let len = len.ok_or(Miss::Unsupported)?;
        let Schema::Array(array) = self.compound(Compound::Seq)? else {
            return Err(Declined(Miss::Unsupported));
        };
        if len > 0 {
            write_long(len as i64, self.out);
        }
        Ok(Items {
            typed: self.typed,
            items: &array.items,
            left: len,
            out: self.out,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Declined> {
        Err(Declined(Miss::Unsupported))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Declined> {
        Err(Declined(Miss::Unsupported))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Declined> {
        Err(Declined(Miss::Unsupported))
    }
    fn serialize_map(mut self, len: Option<usize>) -> Result<Entries<'s, 'o>, Declined> {
        let len = len.ok_or(Miss::Unsupported)?;
        let Schema::Map(map) = self.compound(Compound::Map)? else {
            return Err(Declined(Miss::Unsupported));
        };
        if len > 0 {
            write_long(len as i64, self.out);
        }
        Ok(Entries {
            typed: self.typed,
            values: &map.types,
            left: len,
            out: self.out,
        })
    }
    fn serialize_struct(mut self, _: &'static str, _: usize) -> Result<Fields<'s, 'o>, Declined> {
        let Schema::Record(record) = self.compound(Compound::Struct)? else {
            return Err(Declined(Miss::Unsupported));
        };
        Ok(Fields {
            typed: self.typed,
            record,
            next: 0,
            out: self.out,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Declined> {
        Err(Declined(Miss::Unsupported))
    }
}

/// An array's items, in one block.
struct Items<'s, 'o> {
    typed: &'s TypedSchema,
    items: &'s Schema,
    /// Items the block's count still promises.
    left: usize,
    out: &'o mut Vec<u8>,
}

impl ser::SerializeSeq for Items<'_, '_> {
    type Ok = ();
    type Error = Declined;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        self.left = self.left.checked_sub(1).ok_or(Miss::Unsupported)?;
        value.serialize(Writer {
            typed: self.typed,
            schema: self.items,
            out: self.out,
        })
    }

    fn end(self) -> Done {
        end_block(self.left, self.out)
    }
}

/// Ends a block of array items or map entries: as many as its count
/// promised (a `Serialize` impl whose length hint was wrong is left to the
/// JSON path).
fn end_block(left: usize, out: &mut Vec<u8>) -> Done {
    if left != 0 {
        return Err(Declined(Miss::Unsupported));
    }
    out.push(0);
    Ok(())
}

/// A map's entries, in one block; keys must be strings (`to_value` turns
/// others into strings, not modelled here).
struct Entries<'s, 'o> {
    typed: &'s TypedSchema,
    values: &'s Schema,
    /// Entries the block's count still promises.
    left: usize,
    out: &'o mut Vec<u8>,
}

impl ser::SerializeMap for Entries<'_, '_> {
    type Ok = ();
    type Error = Declined;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Done {
        self.left = self.left.checked_sub(1).ok_or(Miss::Unsupported)?;
        key.serialize(Key { out: self.out })
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(Writer {
            typed: self.typed,
            schema: self.values,
            out: self.out,
        })
    }

    fn end(self) -> Done {
        end_block(self.left, self.out)
    }
}

/// A record's fields, which must come in the schema's order; those the
/// value does not serialize take their defaults, as the JSON path's
/// missing members do.
struct Fields<'s, 'o> {
    typed: &'s TypedSchema,
    record: &'s RecordSchema,
    /// The schema's next field to write.
    next: usize,
    out: &'o mut Vec<u8>,
}

impl Fields<'_, '_> {
    /// The schema's fields before `until` that the value left out.
    fn defaults(&mut self, until: usize) -> Result<(), Miss> {
        for field in &self.record.fields[self.next..until] {
            match &field.default {
                Some(default) => self.typed.write(&field.schema, default, self.out)?,
                None if accepts_null(&field.schema) => {
                    self.typed.write(&field.schema, &Json::Null, self.out)?
                }
                None => return Err(Miss::Mismatch),
            }
        }
        self.next = until;
        Ok(())
    }
}

impl ser::SerializeStruct for Fields<'_, '_> {
    type Ok = ();
    type Error = Declined;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Done {
        // Mostly the schema's next field: one comparison instead of a
        // search of the names.
        let at = match self.record.fields.get(self.next) {
            Some(field) if field.name == name => Some(&self.next),
            _ => self.record.lookup.get(name),
        };
        match at.copied() {
            Some(at) if at >= self.next => {
                if at > self.next {
                    self.defaults(at)?;
                }
                self.next = at + 1;
                value.serialize(Writer {
                    typed: self.typed,
                    schema: &self.record.fields[at].schema,
                    out: self.out,
                })
            }
            // Out of the schema's order: bytes are written in order.
            Some(_) => Err(Declined(Miss::Unsupported)),
            // The JSON path never reads a member the schema lacks.
            None => Ok(()),
        }
    }

    fn end(mut self) -> Done {
        let fields = self.record.fields.len();
        Ok(self.defaults(fields)?)
    }
}

/// A map key: a string, written as Avro writes map keys.
struct Key<'o> {
    out: &'o mut Vec<u8>,
}

fn unsupported<T>() -> Result<T, Declined> {
    Err(Declined(Miss::Unsupported))
}

/// `Serializer` methods of one scalar argument that decline.
macro_rules! decline {
    ($($method:ident($arg:ty)),*) => {
        $(fn $method(self, _: $arg) -> Done {
            unsupported()
        })*
    };
}

impl ser::Serializer for Key<'_> {
    type Ok = ();
    type Error = Declined;
    type SerializeSeq = Impossible<(), Declined>;
    type SerializeTuple = Impossible<(), Declined>;
    type SerializeTupleStruct = Impossible<(), Declined>;
    type SerializeTupleVariant = Impossible<(), Declined>;
    type SerializeMap = Impossible<(), Declined>;
    type SerializeStruct = Impossible<(), Declined>;
    type SerializeStructVariant = Impossible<(), Declined>;

    fn serialize_str(self, v: &str) -> Done {
        write_bytes(v.as_bytes(), self.out);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Done {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Done {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Done {
        value.serialize(self)
    }
    decline!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_bytes(&[u8])
    );
    fn serialize_none(self) -> Done {
        unsupported()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Done {
        unsupported()
    }
    fn serialize_unit(self) -> Done {
        unsupported()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        unsupported()
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Done {
        unsupported()
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Declined> {
        unsupported()
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Declined> {
        unsupported()
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Declined> {
        unsupported()
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Declined> {
        unsupported()
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Declined> {
        unsupported()
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Declined> {
        unsupported()
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Declined> {
        unsupported()
    }
}

#[cfg(test)]
mod tests;
