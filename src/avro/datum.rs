//! JSON written straight to an Avro datum by the schema, without the
//! `apache_avro` value tree in between: building that tree copied every
//! string of a message (its ~2 KB of blocks included) and hashed each
//! record's field names before writing a byte.
//!
//! The mapping is [`TypedSchema::json_to_avro`]'s, rule for rule: a value
//! it maps is written as `apache_avro::to_avro_datum` writes the mapped
//! value. Anything it refuses, and the few schema types this writer leaves
//! to `apache_avro` (bytes, fixed, uuid, decimals, …), make
//! [`TypedSchema::write_datum`] decline; the caller then takes the tree
//! path, which gives the same bytes or the error it always gave.

use apache_avro::Schema;
use serde_json::Value as Json;

use super::json::{accepts_null, TypedSchema};

mod ser;

/// Why a value was not written.
#[derive(Debug)]
enum Miss {
    /// The mapping refuses the value here (a union tries its next branch).
    Mismatch,
    /// A schema type left to `apache_avro`.
    Unsupported,
}

impl TypedSchema {
    /// Appends `json`'s datum to `out`; `false` (with `out` as it was) when
    /// the tree path must decide (see the module documentation).
    pub fn write_datum(&self, json: &Json, out: &mut Vec<u8>) -> bool {
        let mark = out.len();
        let written = self.write(&self.schema, json, out).is_ok();
        if !written {
            out.truncate(mark);
        }
        written
    }

    fn write(&self, schema: &Schema, json: &Json, out: &mut Vec<u8>) -> Result<(), Miss> {
        match (schema, json) {
            (Schema::Null, Json::Null) => {}
            (Schema::Boolean, Json::Bool(b)) => out.push(u8::from(*b)),
            (Schema::Int, Json::Number(n)) => {
                let v = n
                    .as_i64()
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or(Miss::Mismatch)?;
                write_long(i64::from(v), out);
            }
            (Schema::Long | Schema::TimestampMillis | Schema::TimestampMicros, Json::Number(n)) => {
                write_long(n.as_i64().ok_or(Miss::Mismatch)?, out);
            }
            (Schema::Float, Json::Number(n)) => {
                let v = n.as_f64().ok_or(Miss::Mismatch)? as f32;
                out.extend_from_slice(&v.to_le_bytes());
            }
            (Schema::Double, Json::Number(n)) => {
                out.extend_from_slice(&n.as_f64().ok_or(Miss::Mismatch)?.to_le_bytes());
            }
            (Schema::String, Json::String(s)) => write_bytes(s.as_bytes(), out),
            (Schema::Enum(e), Json::String(s)) => write_symbol(&e.symbols, s, out)?,
            (Schema::Array(a), Json::Array(items)) => {
                if !items.is_empty() {
                    write_long(items.len() as i64, out);
                    for item in items {
                        self.write(&a.items, item, out)?;
                    }
                }
                out.push(0);
            }
            (Schema::Map(m), Json::Object(entries)) => {
                if !entries.is_empty() {
                    write_long(entries.len() as i64, out);
                    for (k, v) in entries {
                        write_bytes(k.as_bytes(), out);
                        self.write(&m.types, v, out)?;
                    }
                }
                out.push(0);
            }
            (Schema::Record(record), Json::Object(entries)) => {
                for field in &record.fields {
                    match entries.get(&field.name) {
                        Some(v) => self.write(&field.schema, v, out)?,
                        None => match &field.default {
                            Some(default) => self.write(&field.schema, default, out)?,
                            None if accepts_null(&field.schema) => {
                                self.write(&field.schema, &Json::Null, out)?
                            }
                            None => return Err(Miss::Mismatch),
                        },
                    }
                }
            }
            (Schema::Union(union), _) => {
                let mark = out.len();
                for (index, variant) in union.variants().iter().enumerate() {
                    write_long(index as i64, out);
                    match self.write(variant, json, out) {
                        Ok(()) => return Ok(()),
                        Err(Miss::Mismatch) => out.truncate(mark),
                        Err(Miss::Unsupported) => return Err(Miss::Unsupported),
                    }
                }
                return Err(Miss::Mismatch);
            }
            (Schema::Ref { name }, _) => {
                let target = self.names.get(name).ok_or(Miss::Mismatch)?;
                return self.write(target, json, out);
            }
            (schema, _) if writes_itself(schema) => return Err(Miss::Mismatch),
            _ => return Err(Miss::Unsupported),
        }
        Ok(())
    }
}

/// The schema types this writer writes itself (others it leaves to
/// `apache_avro`): a value of another kind there is a mismatch.
fn writes_itself(schema: &Schema) -> bool {
    matches!(
        schema,
        Schema::Null
            | Schema::Boolean
            | Schema::Int
            | Schema::Long
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::Float
            | Schema::Double
            | Schema::String
            | Schema::Enum(_)
            | Schema::Array(_)
            | Schema::Map(_)
            | Schema::Record(_)
    )
}

/// An enum's symbol, as its index; a string not among them mismatches.
fn write_symbol(symbols: &[String], symbol: &str, out: &mut Vec<u8>) -> Result<(), Miss> {
    let index = symbols
        .iter()
        .position(|s| s == symbol)
        .ok_or(Miss::Mismatch)?;
    write_long(index as i64, out);
    Ok(())
}

/// Avro's `long`: zig-zag, then 7 bits a byte, low first.
fn write_long(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    write_long(bytes.len() as i64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    // The tree path as `SingleObject::encode` takes it (see there).
    #[allow(deprecated)]
    fn tree_datum(schema: &TypedSchema, json: &Json) -> Option<Vec<u8>> {
        let value = schema.json_to_avro(json).ok()?;
        apache_avro::to_avro_datum(&schema.schema, value).ok()
    }

    /// A record of every type the writer writes, unions of scalars and of
    /// a record, an array and a map; every field but `s` optional.
    pub(super) fn wide_schema() -> TypedSchema {
        TypedSchema::new(
            Schema::parse_str(
                r#"{"type": "record", "name": "R", "namespace": "t", "fields": [
                {"name": "s", "type": "string"},
                {"name": "i", "type": "int", "default": -1},
                {"name": "l", "type": "long", "default": 0},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 5},
                {"name": "f", "type": "float", "default": 0.5},
                {"name": "d", "type": "double", "default": 0.25},
                {"name": "b", "type": "boolean", "default": false},
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"]}, "default": "x"},
                {"name": "e2", "type": "E", "default": "y"},
                {"name": "o", "type": ["null", "string"], "default": null},
                {"name": "u", "type": ["null", "long", {"type": "record", "name": "In",
                    "fields": [{"name": "a", "type": "string"}]}], "default": null},
                {"name": "n", "type": ["null", "int"]},
                {"name": "a", "type": {"type": "array", "items": "long"}, "default": []},
                {"name": "m", "type": {"type": "map", "values": ["null", "string"]}, "default": {}},
                {"name": "r", "type": ["null", "In"], "default": null}
            ]}"#,
            )
            .unwrap(),
        )
    }

    /// Every value is written as the tree path writes it, and every value
    /// the tree path refuses is declined.
    #[test]
    fn writes_what_the_tree_path_writes_and_declines_what_it_refuses() {
        let schema = wide_schema();
        let cases = [
            json!({"s": "plain"}),
            json!({"s": "é 🚀 \u{0}", "i": 2147483647, "l": -9223372036854775808_i64, "ts": 1_700_000_000_000_i64,
                   "f": 1.1, "d": -2.5e300, "b": true, "e": "y", "e2": "x", "o": "x",
                   "u": {"a": "in"}, "n": 7, "a": [1, -1, 300, 1_i64 << 40], "m": {"k": "v"}}),
            json!({"s": "s", "u": 3, "n": null, "a": [], "m": {"a": null}}),
            json!({"s": "s", "i": 2147483648_i64}),
            json!({"s": "s", "l": 1.5}),
            json!({"s": "s", "e": "z"}),
            json!({"s": 5}),
            json!({"i": 1}),
            json!({"s": "s", "u": "str"}),
            json!({"s": "s", "u": {"b": 1}}),
            json!({"s": "s", "a": [1, "x"]}),
            json!({"s": "s", "m": {"a": 1}}),
            json!({"s": "s", "f": 1e40}),
            json!(["not", "a", "record"]),
            json!({"s": "s", "extra": "ignored"}),
        ];
        for case in cases {
            let mut out = vec![0xAA];
            let written = schema.write_datum(&case, &mut out);
            match tree_datum(&schema, &case) {
                Some(datum) => {
                    assert!(written, "{case}");
                    assert_eq!(out[1..], datum[..], "{case}");
                }
                None => assert!(!written && out == [0xAA], "{case}"),
            }
        }
    }

    #[test]
    fn leaves_types_it_does_not_write_to_the_tree_path() {
        let schema = TypedSchema::new(
            Schema::parse_str(
                r#"{"type": "record", "name": "R", "fields": [
                {"name": "o", "type": ["null", "string"]},
                {"name": "b", "type": ["null", "bytes"]}]}"#,
            )
            .unwrap(),
        );
        let mut out = Vec::new();
        assert!(!schema.write_datum(&json!({"o": "x", "b": "raw"}), &mut out));
        assert!(out.is_empty());
        // A union decides on its first branch that maps, before the one it
        // cannot write.
        assert!(schema.write_datum(&json!({"o": null, "b": null}), &mut out));
        assert_eq!(out, [0, 0]);
    }
}
