//! The schema-guided mapping between the JSON records stages work on and
//! Avro values.

use std::collections::HashMap;

use apache_avro::schema::{Name, RecordSchema};
use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use serde_json::{Map, Number, Value as Json};

use super::AvroError;

/// Named types of a schema, so `Ref`s can be followed.
fn collect_names(schema: &Schema, names: &mut HashMap<Name, Schema>) {
    match schema {
        Schema::Record(RecordSchema { name, fields, .. }) => {
            names.insert(name.clone(), schema.clone());
            for field in fields {
                collect_names(&field.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(f) => {
            names.insert(f.name.clone(), schema.clone());
        }
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|s| collect_names(s, names)),
        _ => {}
    }
}

/// A schema with its named types indexed.
#[derive(Debug, Clone)]
pub struct TypedSchema {
    pub schema: Schema,
    pub(super) names: HashMap<Name, Schema>,
}

impl TypedSchema {
    pub fn new(schema: Schema) -> Self {
        let mut names = HashMap::new();
        collect_names(&schema, &mut names);
        TypedSchema { schema, names }
    }

    /// The named types, by name.
    pub(super) fn names(&self) -> &HashMap<Name, Schema> {
        &self.names
    }

    /// Maps a JSON value onto the schema: objects become records (missing
    /// fields take their defaults), nullable unions pick their branch,
    /// integers become `timestamp-millis` where the schema says so.
    pub fn json_to_avro(&self, json: &Json) -> Result<AvroValue, AvroError> {
        self.to_avro(&self.schema, json, "$")
    }

    fn to_avro(&self, schema: &Schema, json: &Json, path: &str) -> Result<AvroValue, AvroError> {
        let mismatch = |expected: &str| AvroError::Mapping {
            path: path.to_owned(),
            reason: format!("expected {expected}, found {}", json_kind(json)),
        };
        Ok(match (schema, json) {
            (Schema::Null, Json::Null) => AvroValue::Null,
            (Schema::Boolean, Json::Bool(b)) => AvroValue::Boolean(*b),
            (Schema::Int, Json::Number(n)) => AvroValue::Int(
                n.as_i64()
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or_else(|| mismatch("a 32-bit integer"))?,
            ),
            (Schema::Long, Json::Number(n)) => {
                AvroValue::Long(n.as_i64().ok_or_else(|| mismatch("an integer"))?)
            }
            (Schema::TimestampMillis, Json::Number(n)) => {
                AvroValue::TimestampMillis(n.as_i64().ok_or_else(|| mismatch("an integer"))?)
            }
            (Schema::TimestampMicros, Json::Number(n)) => {
                AvroValue::TimestampMicros(n.as_i64().ok_or_else(|| mismatch("an integer"))?)
            }
            (Schema::Float, Json::Number(n)) => {
                AvroValue::Float(n.as_f64().ok_or_else(|| mismatch("a number"))? as f32)
            }
            (Schema::Double, Json::Number(n)) => {
                AvroValue::Double(n.as_f64().ok_or_else(|| mismatch("a number"))?)
            }
            (Schema::String, Json::String(s)) => AvroValue::String(s.clone()),
            (Schema::Uuid(_), Json::String(s)) => AvroValue::String(s.clone()),
            (Schema::Bytes, Json::String(s)) => AvroValue::Bytes(s.as_bytes().to_vec()),
            // Like bytes: the string's UTF-8 bytes, which must fill the size.
            (Schema::Fixed(f), Json::String(s)) if s.len() == f.size => {
                AvroValue::Fixed(f.size, s.as_bytes().to_vec())
            }
            (Schema::Fixed(f), _) => {
                return Err(mismatch(&format!("a string of {} bytes", f.size)))
            }
            (Schema::Enum(e), Json::String(s)) => {
                let index = e
                    .symbols
                    .iter()
                    .position(|sym| sym == s)
                    .ok_or_else(|| mismatch(&format!("one of {:?}", e.symbols)))?;
                AvroValue::Enum(index as u32, s.clone())
            }
            (Schema::Array(a), Json::Array(items)) => AvroValue::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.to_avro(&a.items, item, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            (Schema::Map(m), Json::Object(entries)) => AvroValue::Map(
                entries
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            self.to_avro(&m.types, v, &format!("{path}.{k}"))?,
                        ))
                    })
                    .collect::<Result<_, AvroError>>()?,
            ),
            (Schema::Record(record), Json::Object(entries)) => {
                let mut fields = Vec::with_capacity(record.fields.len());
                for field in &record.fields {
                    let field_path = format!("{path}.{}", field.name);
                    let value = match entries.get(&field.name) {
                        Some(v) => self.to_avro(&field.schema, v, &field_path)?,
                        None => match &field.default {
                            Some(default) => self.to_avro(&field.schema, default, &field_path)?,
                            None if accepts_null(&field.schema) => {
                                self.to_avro(&field.schema, &Json::Null, &field_path)?
                            }
                            None => {
                                return Err(AvroError::Mapping {
                                    path: field_path,
                                    reason: "required field is missing".into(),
                                })
                            }
                        },
                    };
                    fields.push((field.name.clone(), value));
                }
                AvroValue::Record(fields)
            }
            (Schema::Union(union), _) => {
                let mut last_error = None;
                for (index, variant) in union.variants().iter().enumerate() {
                    match self.to_avro(variant, json, path) {
                        Ok(v) => return Ok(AvroValue::Union(index as u32, Box::new(v))),
                        Err(e) => last_error = Some(e),
                    }
                }
                return Err(last_error.unwrap_or_else(|| mismatch("a union branch")));
            }
            (Schema::Ref { name }, _) => {
                let target = self.names.get(name).ok_or_else(|| AvroError::Mapping {
                    path: path.to_owned(),
                    reason: format!("unknown named type {name}"),
                })?;
                return self.to_avro(target, json, path);
            }
            (Schema::Null, _) => return Err(mismatch("null")),
            (Schema::Boolean, _) => return Err(mismatch("a boolean")),
            (Schema::String | Schema::Uuid(_) | Schema::Bytes | Schema::Enum(_), _) => {
                return Err(mismatch("a string"))
            }
            (Schema::Record(_) | Schema::Map(_), _) => return Err(mismatch("an object")),
            (Schema::Array(_), _) => return Err(mismatch("an array")),
            (Schema::Int | Schema::Long | Schema::Float | Schema::Double, _)
            | (Schema::TimestampMillis | Schema::TimestampMicros, _) => {
                return Err(mismatch("a number"))
            }
            (other, _) => {
                return Err(AvroError::Mapping {
                    path: path.to_owned(),
                    reason: format!("schema type {other:?} is not supported"),
                })
            }
        })
    }
}

pub(super) fn accepts_null(schema: &Schema) -> bool {
    match schema {
        Schema::Null => true,
        Schema::Union(u) => u.variants().iter().any(|v| matches!(v, Schema::Null)),
        _ => false,
    }
}

pub(super) fn json_kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Avro → JSON: records become objects, unions their branch's value,
/// timestamps their integer.
pub fn avro_to_json(value: AvroValue) -> Json {
    match value {
        AvroValue::Null => Json::Null,
        AvroValue::Boolean(b) => Json::Bool(b),
        AvroValue::Int(i) | AvroValue::Date(i) | AvroValue::TimeMillis(i) => Json::from(i),
        AvroValue::Long(i)
        | AvroValue::TimestampMillis(i)
        | AvroValue::TimestampMicros(i)
        | AvroValue::TimestampNanos(i)
        | AvroValue::LocalTimestampMillis(i)
        | AvroValue::LocalTimestampMicros(i)
        | AvroValue::LocalTimestampNanos(i)
        | AvroValue::TimeMicros(i) => Json::from(i),
        AvroValue::Float(f) => Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number),
        AvroValue::Double(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        AvroValue::String(s) | AvroValue::Enum(_, s) => Json::String(s),
        AvroValue::Bytes(b) | AvroValue::Fixed(_, b) => {
            Json::String(String::from_utf8_lossy(&b).into_owned())
        }
        AvroValue::Uuid(u) => Json::String(u.to_string()),
        AvroValue::Union(_, inner) => avro_to_json(*inner),
        AvroValue::Array(items) => Json::Array(items.into_iter().map(avro_to_json).collect()),
        AvroValue::Map(entries) => Json::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, avro_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        AvroValue::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, avro_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::fixtures::message_schema;
    use serde_json::json;

    #[test]
    fn fixed_maps_from_strings_of_its_size() {
        let schema =
            TypedSchema::new(Schema::parse_str(r#"{"type":"fixed","name":"H","size":2}"#).unwrap());
        assert_eq!(
            schema.json_to_avro(&json!("ab")).unwrap(),
            AvroValue::Fixed(2, b"ab".to_vec())
        );
        let err = schema.json_to_avro(&json!("abc")).unwrap_err();
        assert!(err.to_string().contains("2 bytes"), "{err}");
    }

    #[test]
    fn mapping_errors_name_the_field() {
        let schema = TypedSchema::new(message_schema());
        let err = schema.json_to_avro(&json!({"at": 1})).unwrap_err();
        assert_eq!(err.to_string(), "$.id: required field is missing");
        let err = schema.json_to_avro(&json!({"id": 3, "at": 1})).unwrap_err();
        assert_eq!(err.to_string(), "$.id: expected a string, found a number");
    }
}
