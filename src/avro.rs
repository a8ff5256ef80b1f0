//! Avro schemas, the schema-guided JSON ⇄ Avro mapping, and the three wire
//! formats of DESIGN §4.
//!
//! Every stage works on records as JSON values; a topic's [`Codec`] turns
//! them into bytes and back. Keeping one record model means a pipeline never
//! depends on whether its input arrives as Confluent-framed Avro, single-object
//! Avro or plain JSON.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use apache_avro::rabin::Rabin;
use apache_avro::schema::{Name, RecordSchema};
use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::{Map, Number, Value as Json};

use crate::config::{resolve_path, SchemaRegistrySettings, Settings, TopicSettings, WireFormat};

#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("cannot read schema file {path}: {source}")]
    ReadSchema {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid Avro schema in {path}: {source}")]
    ParseSchema {
        path: String,
        source: Box<apache_avro::Error>,
    },
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{path}: {reason}")]
    Mapping { path: String, reason: String },
    #[error("Avro encoding failed: {0}")]
    Encode(Box<apache_avro::Error>),
    #[error("Avro decoding failed: {0}")]
    Decode(Box<apache_avro::Error>),
    #[error("not single-object encoded: {0}")]
    SingleObjectHeader(String),
    /// The registry answered about the record: an unknown schema id or
    /// subject (404), a schema it refused. Retrying cannot help.
    #[error("schema registry: {0}")]
    Registry(String),
    /// The registry could not answer: unreachable, timed out, 5xx, rate
    /// limited or refusing our credentials. Nothing is wrong with the
    /// record; the same call can succeed later.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("topic {topic} uses avro-confluent but [schema_registry] is not configured")]
    NoRegistry { topic: String },
    #[error("trailing {0} bytes after the Avro datum")]
    TrailingBytes(usize),
    /// The schema JSON has no Parsing Canonical Form (the parser accepted
    /// something the specification does not define, e.g. an unknown name).
    #[error("no parsing canonical form for {path}: {reason}")]
    Canonical { path: String, reason: String },
    /// A single-object record whose schema is neither the topic's nor one of
    /// its `writer_schemas`.
    #[error(
        "unknown schema fingerprint {fingerprint}: not the topic's schema ({known}) \
         nor one of its writer_schemas; add the writer's .avsc to topics.<id>.writer_schemas"
    )]
    UnknownFingerprint { fingerprint: String, known: String },
    #[error("writer schema {path} cannot be resolved to the reader schema {reader}: {reason}")]
    Incompatible {
        path: String,
        reader: String,
        reason: String,
    },
    #[error("topic {topic}: writer_schemas are only for avro-single-object topics")]
    WriterSchemasUnused { topic: String },
}

impl AvroError {
    /// Whether the error is the registry's, not the record's: the caller
    /// waits and retries instead of dead-lettering the record.
    pub fn is_transient(&self) -> bool {
        matches!(self, AvroError::RegistryUnavailable(_))
    }
}

pub fn load_schema(dir: &Path, relative: &str) -> Result<Schema, AvroError> {
    load_schema_file(dir, relative).map(|file| file.schema)
}

/// A schema file as written and as parsed. The spec's fingerprint is
/// computed from the JSON as written: apache-avro's parsed [`Schema`] no
/// longer tells `"long"` from `{"type":"long","logicalType":...}` the way
/// the canonical form needs.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// Where it came from, for error messages.
    pub path: String,
    pub json: Json,
    pub schema: Schema,
}

impl SchemaFile {
    pub fn parse(path: impl Into<String>, text: &str) -> Result<SchemaFile, AvroError> {
        let path = path.into();
        let schema = Schema::parse_str(text).map_err(|source| AvroError::ParseSchema {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let json = serde_json::from_str(text)?;
        Ok(SchemaFile { path, json, schema })
    }
}

pub fn load_schema_file(dir: &Path, relative: &str) -> Result<SchemaFile, AvroError> {
    let path = resolve_path(dir, relative);
    let text = std::fs::read_to_string(&path).map_err(|source| AvroError::ReadSchema {
        path: path.display().to_string(),
        source,
    })?;
    SchemaFile::parse(path.display().to_string(), &text)
}

/// The Avro specification's Parsing Canonical Form of a schema given as
/// JSON: the rules [PRIMITIVES], [FULLNAMES], [STRIP], [ORDER], [STRINGS],
/// [INTEGERS] and [WHITESPACE], written the way Java's `SchemaNormalization`
/// writes them (names and symbols unescaped; valid Avro names need no
/// escaping). A logical type is dropped with the other attributes, so
/// `{"type":"long","logicalType":"timestamp-millis"}` becomes `"long"`.
pub fn parsing_canonical_form(schema: &Json) -> Result<String, String> {
    let mut out = String::new();
    let mut defined = std::collections::HashSet::new();
    canonical(schema, "", &mut defined, &mut out)?;
    Ok(out)
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The fullname of a named type: a dotted name is already full; otherwise
/// the type's own `namespace`, else the enclosing one ([FULLNAMES]).
fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    match namespace.unwrap_or(enclosing) {
        "" => name.to_owned(),
        ns => format!("{ns}.{name}"),
    }
}

fn canonical(
    schema: &Json,
    enclosing: &str,
    defined: &mut std::collections::HashSet<String>,
    out: &mut String,
) -> Result<(), String> {
    use std::fmt::Write;
    match schema {
        Json::String(name) if PRIMITIVES.contains(&name.as_str()) => {
            write!(out, "\"{name}\"").map_err(|e| e.to_string())
        }
        Json::String(name) => {
            // A reference to a named type defined earlier: its fullname.
            // A short name is looked up in the enclosing namespace first,
            // then in the null namespace (as Java's parser does).
            let candidates = [full_name(name, None, enclosing), name.clone()];
            let found = candidates
                .into_iter()
                .find(|c| defined.contains(c))
                .ok_or_else(|| format!("unknown type {name:?}"))?;
            write!(out, "\"{found}\"").map_err(|e| e.to_string())
        }
        Json::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(branch, enclosing, defined, out)?;
            }
            out.push(']');
            Ok(())
        }
        Json::Object(attrs) => {
            let kind = match attrs.get("type") {
                Some(Json::String(kind)) => kind.as_str(),
                // `{"type": {...}}` or `{"type": [...]}` wraps a schema.
                Some(inner @ (Json::Object(_) | Json::Array(_))) => {
                    return canonical(inner, enclosing, defined, out)
                }
                _ => return Err("a schema object needs a \"type\"".into()),
            };
            match kind {
                // [PRIMITIVES]: every other attribute, logicalType
                // included, is stripped.
                k if PRIMITIVES.contains(&k) => write!(out, "\"{k}\"").map_err(|e| e.to_string()),
                "array" | "map" => {
                    let key = if kind == "array" { "items" } else { "values" };
                    let inner = attrs
                        .get(key)
                        .ok_or_else(|| format!("{kind} without \"{key}\""))?;
                    write!(out, "{{\"type\":\"{kind}\",\"{key}\":").map_err(|e| e.to_string())?;
                    canonical(inner, enclosing, defined, out)?;
                    out.push('}');
                    Ok(())
                }
                "record" | "error" | "enum" | "fixed" => {
                    let name = attrs
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| format!("{kind} without a name"))?;
                    let namespace = attrs.get("namespace").and_then(Json::as_str);
                    let full = full_name(name, namespace, enclosing);
                    // Nested types inherit the namespace of the fullname.
                    let inner_ns = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_owned();
                    defined.insert(full.clone());
                    // Java's parser reads a protocol's "error" as a record.
                    let written = if kind == "error" { "record" } else { kind };
                    write!(out, "{{\"name\":\"{full}\",\"type\":\"{written}\"")
                        .map_err(|e| e.to_string())?;
                    match kind {
                        "enum" => {
                            let symbols = attrs
                                .get("symbols")
                                .and_then(Json::as_array)
                                .ok_or_else(|| format!("enum {full} without symbols"))?;
                            out.push_str(",\"symbols\":[");
                            for (i, symbol) in symbols.iter().enumerate() {
                                let symbol = symbol
                                    .as_str()
                                    .ok_or_else(|| format!("enum {full}: symbols are strings"))?;
                                if i > 0 {
                                    out.push(',');
                                }
                                write!(out, "\"{symbol}\"").map_err(|e| e.to_string())?;
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            // [INTEGERS]: a plain decimal integer.
                            let size = match attrs.get("size") {
                                Some(Json::Number(n)) => n.as_u64(),
                                Some(Json::String(s)) => s.trim().parse().ok(),
                                _ => None,
                            }
                            .ok_or_else(|| format!("fixed {full} without an integer size"))?;
                            write!(out, ",\"size\":{size}").map_err(|e| e.to_string())?;
                        }
                        _ => {
                            let fields = attrs
                                .get("fields")
                                .and_then(Json::as_array)
                                .ok_or_else(|| format!("record {full} without fields"))?;
                            out.push_str(",\"fields\":[");
                            for (i, field) in fields.iter().enumerate() {
                                let field_name =
                                    field.get("name").and_then(Json::as_str).ok_or_else(|| {
                                        format!("record {full}: a field without a name")
                                    })?;
                                let field_type = field.get("type").ok_or_else(|| {
                                    format!("record {full}: field {field_name} without a type")
                                })?;
                                if i > 0 {
                                    out.push(',');
                                }
                                write!(out, "{{\"name\":\"{field_name}\",\"type\":")
                                    .map_err(|e| e.to_string())?;
                                canonical(field_type, &inner_ns, defined, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                    Ok(())
                }
                // A named type referenced as {"type": "Name"}.
                other => canonical(&Json::String(other.to_owned()), enclosing, defined, out),
            }
        }
        other => Err(format!("not a schema: {other}")),
    }
}

/// CRC-64-AVRO, the specification's 64-bit Rabin fingerprint.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize]
    })
}

/// The 8 bytes a single-object record carries after `C3 01`: CRC-64-AVRO of
/// the Parsing Canonical Form, little-endian.
pub fn spec_fingerprint(file: &SchemaFile) -> Result<[u8; 8], AvroError> {
    let form = parsing_canonical_form(&file.json).map_err(|reason| AvroError::Canonical {
        path: file.path.clone(),
        reason,
    })?;
    Ok(crc64_avro(form.as_bytes()).to_le_bytes())
}

/// apache-avro 0.22's own fingerprint, which differs from the spec's for
/// every schema with a logical type (it keeps `{"type":"long"}`). What
/// alertsvc wrote before it computed the spec's.
fn legacy_fingerprint(schema: &Schema) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (slot, byte) in out
        .iter_mut()
        .zip(schema.fingerprint::<Rabin>().bytes.iter())
    {
        *slot = *byte;
    }
    out
}

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
    names: HashMap<Name, Schema>,
}

impl TypedSchema {
    pub fn new(schema: Schema) -> Self {
        let mut names = HashMap::new();
        collect_names(&schema, &mut names);
        TypedSchema { schema, names }
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

fn accepts_null(schema: &Schema) -> bool {
    match schema {
        Schema::Null => true,
        Schema::Union(u) => u.variants().iter().any(|v| matches!(v, Schema::Null)),
        _ => false,
    }
}

fn json_kind(json: &Json) -> &'static str {
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

/// Avro single-object encoding: `C3 01`, the CRC-64-AVRO fingerprint of the
/// schema's Parsing Canonical Form (little-endian), then the datum.
///
/// Decoding looks the record's fingerprint up among the topic's schema and
/// its writer schemas, decodes with the writer's schema and resolves the
/// value to the topic's (reader) schema by Avro's rules.
#[derive(Debug, Clone)]
pub struct SingleObject {
    schema: TypedSchema,
    header: [u8; 10],
    /// Fingerprint → the writer's schema; `None` is the reader schema
    /// itself, decoded without resolution.
    writers: HashMap<[u8; 8], Option<Schema>>,
}

impl SingleObject {
    /// `reader` is the topic's schema; `writers` are older (or other)
    /// schemas records on the topic may have been written with. Each must
    /// resolve to `reader`, or this is an error naming its file.
    pub fn new(reader: &SchemaFile, writers: &[SchemaFile]) -> Result<Self, AvroError> {
        let fingerprint = spec_fingerprint(reader)?;
        let mut header = [0u8; 10];
        header[0] = 0xC3;
        header[1] = 0x01;
        header[2..].copy_from_slice(&fingerprint);
        let mut keys = HashMap::new();
        keys.insert(fingerprint, None);
        let mut legacy = vec![(legacy_fingerprint(&reader.schema), None)];
        for writer in writers {
            match apache_avro::schema_compatibility::SchemaCompatibility::can_read(
                &writer.schema,
                &reader.schema,
            ) {
                Ok(_) => {}
                Err(e) => {
                    return Err(AvroError::Incompatible {
                        path: writer.path.clone(),
                        reader: reader.path.clone(),
                        reason: e.to_string(),
                    })
                }
            }
            keys.entry(spec_fingerprint(writer)?)
                .or_insert_with(|| Some(writer.schema.clone()));
            legacy.push((
                legacy_fingerprint(&writer.schema),
                Some(writer.schema.clone()),
            ));
        }
        // TRANSITIONAL, for one release: alertsvc up to 0.1 wrote
        // apache-avro 0.22's fingerprint (which keeps a logical type's base
        // as `{"type":"long"}`), so records already on the topics carry it.
        // Accept it as another key for the same schema until those records
        // have aged out of retention; remove `legacy_fingerprint` and this
        // loop in the release after next (issue 10). Spec keys win a clash.
        for (key, schema) in legacy {
            keys.entry(key).or_insert(schema);
        }
        Ok(SingleObject {
            schema: TypedSchema::new(reader.schema.clone()),
            header,
            writers: keys,
        })
    }

    /// The fingerprint written after `C3 01` (little-endian, as on the wire).
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.header[2..]);
        out
    }

    // The datum helpers are deprecated for builder types that borrow the
    // schema; they do the same work, and keep this type free of lifetimes.
    #[allow(deprecated)]
    pub fn encode(&self, json: &Json) -> Result<Vec<u8>, AvroError> {
        let value = self.schema.json_to_avro(json)?;
        let datum = apache_avro::to_avro_datum(&self.schema.schema, value)
            .map_err(|e| AvroError::Encode(Box::new(e)))?;
        let mut out = Vec::with_capacity(self.header.len() + datum.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&datum);
        Ok(out)
    }

    #[allow(deprecated)]
    pub fn decode(&self, bytes: &[u8]) -> Result<Json, AvroError> {
        let (fingerprint, mut body) = match bytes {
            [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => rest.split_at(8),
            _ => {
                return Err(AvroError::SingleObjectHeader(
                    "missing the C3 01 marker".into(),
                ))
            }
        };
        let mut key = [0u8; 8];
        key.copy_from_slice(fingerprint);
        let writer = self
            .writers
            .get(&key)
            .ok_or_else(|| AvroError::UnknownFingerprint {
                fingerprint: hex(fingerprint),
                known: hex(&self.header[2..]),
            })?;
        let value = match writer {
            None => apache_avro::from_avro_datum(&self.schema.schema, &mut body, None),
            Some(writer) => {
                apache_avro::from_avro_datum(writer, &mut body, Some(&self.schema.schema))
            }
        }
        .map_err(|e| AvroError::Decode(Box::new(e)))?;
        if !body.is_empty() {
            return Err(AvroError::TrailingBytes(body.len()));
        }
        Ok(avro_to_json(value))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Confluent Schema Registry framing (magic 0, schema id, datum), subjects by
/// TopicNameStrategy. The converter caches ids both ways.
pub struct Confluent {
    topic: String,
    schema: TypedSchema,
    schema_text: String,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

impl Confluent {
    pub fn new(
        registry: &SchemaRegistrySettings,
        topic: &str,
        schema: Schema,
    ) -> Result<Self, AvroError> {
        let mut builder = SrSettings::new_builder(registry.url.clone());
        builder.set_timeout(registry.timeout);
        if let Some(user) = &registry.username {
            let password = registry.password.as_ref().map(|p| p.expose());
            builder.set_basic_authorization(user.expose(), password);
        }
        let sr = builder
            .build()
            .map_err(|e| AvroError::Registry(e.error.clone()))?;
        Ok(Confluent {
            topic: topic.to_owned(),
            // The full schema, not the canonical form: that would drop
            // logical types, defaults and docs from the registered schema.
            schema_text: serde_json::to_string(&schema)?,
            schema: TypedSchema::new(schema),
            encoder: AvroEncoder::new(sr.clone()),
            decoder: AvroDecoder::new(sr),
        })
    }

    pub async fn encode(&self, json: &Json) -> Result<Vec<u8>, AvroError> {
        let value = self.schema.json_to_avro(json)?;
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            self.topic.clone(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, self.schema_text.clone()),
        );
        self.encoder
            .encode_value(value, &strategy)
            .await
            .map_err(|e| {
                let error = registry_error(&e, String::new());
                if error.is_transient() {
                    // The converter caches some failures (a 500, a 504) as
                    // if they were final; the next attempt must ask again.
                    self.encoder.remove_errors_from_cache();
                }
                error
            })
    }

    pub async fn decode(&self, bytes: &[u8]) -> Result<Json, AvroError> {
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|e| {
            let id = match bytes {
                [0, a, b, c, d, ..] => {
                    format!("schema id {}: ", u32::from_be_bytes([*a, *b, *c, *d]))
                }
                _ => String::new(),
            };
            let error = registry_error(&e, id);
            if error.is_transient() {
                // As in `encode`: a cached 500 would otherwise outlive the
                // outage.
                self.decoder.remove_errors_from_cache();
            }
            error
        })?;
        Ok(avro_to_json(decoded.value))
    }
}

/// Sorts a converter error into "the registry cannot answer now"
/// ([`AvroError::RegistryUnavailable`]) and "the answer is no"
/// ([`AvroError::Registry`]). `prefix` names the schema id, if any.
fn registry_error(e: &SRCError, prefix: String) -> AvroError {
    let text = match &e.cause {
        Some(cause) => format!("{prefix}{}: {cause}", e.error),
        None => format!("{prefix}{}", e.error),
    };
    if registry_unavailable(e) {
        AvroError::RegistryUnavailable(text)
    } else {
        AvroError::Registry(text)
    }
}

fn registry_unavailable(e: &SRCError) -> bool {
    // The converter marks failed HTTP calls and 502/503 as retriable.
    if e.retriable {
        return true;
    }
    // Other statuses are only in its message ("... failed with status 500
    // Internal Server Error"). 5xx, 408 and 429 are the registry's trouble;
    // 401/403 are too (rotated or revoked credentials): dead-lettering
    // every record until someone fixes them would be worse than waiting.
    // 404 (unknown id or subject), 409 and 422 are answers about the
    // schema: final.
    if let Some(status) = http_status(&e.error) {
        return matches!(status, 401 | 403 | 408 | 429 | 500..=599);
    }
    // A response cut off or timed out while its body was read is reported
    // as non-retriable "could not parse"; the reqwest error underneath
    // tells the truth.
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(http) = error.downcast_ref::<reqwest::Error>() {
            return http.is_timeout() || http.is_connect() || http.is_request() || http.is_body();
        }
        source = error.source();
    }
    false
}

/// The status in the converter's "failed with status NNN ..." message.
fn http_status(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("failed with status ")?;
    rest.get(..3)?.parse().ok()
}

/// A topic's wire format.
pub enum Codec {
    Json,
    SingleObject(Box<SingleObject>),
    Confluent(Box<Confluent>),
}

impl Codec {
    pub fn build(
        dir: &Path,
        topic: &TopicSettings,
        registry: Option<&SchemaRegistrySettings>,
    ) -> Result<Codec, AvroError> {
        let schema = topic
            .schema
            .as_deref()
            .map(|s| load_schema_file(dir, s))
            .transpose()?;
        if topic.format != WireFormat::AvroSingleObject && !topic.writer_schemas.is_empty() {
            // The registry names a Confluent record's writer schema, and
            // JSON has none: a list here would be silently ignored.
            return Err(AvroError::WriterSchemasUnused {
                topic: topic.name.clone(),
            });
        }
        Ok(match (topic.format, schema) {
            (WireFormat::Json, _) => Codec::Json,
            (WireFormat::AvroSingleObject, Some(schema)) => {
                let writers = topic
                    .writer_schemas
                    .iter()
                    .map(|s| load_schema_file(dir, s))
                    .collect::<Result<Vec<_>, _>>()?;
                Codec::SingleObject(Box::new(SingleObject::new(&schema, &writers)?))
            }
            (WireFormat::AvroConfluent, Some(SchemaFile { schema, .. })) => {
                let registry = registry.ok_or_else(|| AvroError::NoRegistry {
                    topic: topic.name.clone(),
                })?;
                Codec::Confluent(Box::new(Confluent::new(registry, &topic.name, schema)?))
            }
            (_, None) => {
                return Err(AvroError::Mapping {
                    path: topic.name.clone(),
                    reason: "Avro formats need a schema".into(),
                })
            }
        })
    }

    pub async fn decode(&self, bytes: &[u8]) -> Result<Json, AvroError> {
        match self {
            Codec::Json => Ok(serde_json::from_slice(bytes)?),
            Codec::SingleObject(c) => c.decode(bytes),
            Codec::Confluent(c) => c.decode(bytes).await,
        }
    }

    pub async fn encode(&self, json: &Json) -> Result<Vec<u8>, AvroError> {
        match self {
            Codec::Json => Ok(serde_json::to_vec(json)?),
            Codec::SingleObject(c) => c.encode(json),
            Codec::Confluent(c) => c.encode(json).await,
        }
    }
}

/// Codecs for every topic of the configuration, by logical topic id.
pub type Codecs = HashMap<String, Arc<Codec>>;

pub fn build_codecs(dir: &Path, settings: &Settings) -> Result<Codecs, (String, AvroError)> {
    settings
        .topics
        .iter()
        .map(|(id, topic)| {
            Codec::build(dir, topic, settings.schema_registry.as_ref())
                .map(|codec| (id.clone(), Arc::new(codec)))
                .map_err(|e| (id.clone(), e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MESSAGE_SCHEMA: &str = r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}}
            ]}"#;

    fn message_schema() -> Schema {
        Schema::parse_str(MESSAGE_SCHEMA).unwrap()
    }

    fn file(name: &str, text: &str) -> SchemaFile {
        SchemaFile::parse(name, text).unwrap()
    }

    fn codec(text: &str) -> SingleObject {
        SingleObject::new(&file("reader.avsc", text), &[]).unwrap()
    }

    fn fingerprint_hex(text: &str) -> String {
        hex(&spec_fingerprint(&file("s.avsc", text)).unwrap())
    }

    #[test]
    fn crc64_avro_matches_the_specification() {
        // The empty input is the table's seed, EMPTY.
        assert_eq!(crc64_avro(b""), 0xc15d_213a_a4d7_a795);
        // Java's SchemaNormalization.parsingFingerprint64("int"), as a
        // signed long: 8247732601305521295 (the spec's test data).
        assert_eq!(crc64_avro(b"\"int\"") as i64, 8247732601305521295);
    }

    #[test]
    fn fingerprints_are_the_specifications() {
        // Little-endian hex as on the wire, computed by Java's Apache Avro
        // 1.8.2 (SchemaNormalization.parsingFingerprint64) and fastavro 1.13.
        for (text, expected) in [
            (
                include_str!("../config/schemas/slack_message.avsc"),
                "09ea0f340cdcc90e",
            ),
            (
                include_str!("../config/schemas/slack_message_v1.avsc"),
                "c948d99891b15dc8",
            ),
            (
                include_str!("../config/schemas/slack_response.avsc"),
                "8c28ce6ad921c449",
            ),
            (
                include_str!("../config/schemas/slack_response_v1.avsc"),
                "ac78933e9ba82821",
            ),
            (
                include_str!("../config/schemas/slack_user.avsc"),
                "8e0e1fb9291aed41",
            ),
            (
                include_str!("../tests/fixtures/avro/interop_kitchen_sink.avsc"),
                "cc84fdfc3ae55b5f",
            ),
            (
                include_str!("../tests/fixtures/avro/canonical_edge_cases.avsc"),
                "3bd969950a18772f",
            ),
        ] {
            assert_eq!(fingerprint_hex(text), expected, "{text}");
        }
        // What alertsvc wrote with apache-avro 0.22's fingerprint.
        let legacy = Schema::parse_str(include_str!("../config/schemas/slack_message_v1.avsc"));
        assert_eq!(
            hex(&legacy_fingerprint(&legacy.unwrap())),
            "39b1b5249868a03e"
        );
    }

    #[test]
    fn canonical_form_follows_the_rules() {
        let json: Json =
            serde_json::from_str(include_str!("../config/schemas/slack_message_v1.avsc")).unwrap();
        // fastavro's to_parsing_canonical_form of the same file.
        assert_eq!(
            parsing_canonical_form(&json).unwrap(),
            r#"{"name":"io.alertsvc.SlackMessage","type":"record","fields":[{"name":"alertId","type":"string"},{"name":"channelId","type":"string"},{"name":"text","type":"string"},{"name":"blocks","type":"string"},{"name":"createdAt","type":"long"},{"name":"pipeline","type":"string"},{"name":"sourceTopic","type":"string"},{"name":"sourcePartition","type":"int"},{"name":"sourceOffset","type":"long"}]}"#
        );
        // An explicit empty namespace puts a type, and the types nested in
        // it, in the null namespace (as the spec and fastavro say; Java
        // 1.8.2 wrongly keeps the outer namespace for `Mood`).
        let json = serde_json::json!({"type": "record", "name": "Outer", "namespace": "a.b",
            "fields": [{"name": "r", "type": {"type": "record", "name": "Rootless", "namespace": "",
                "fields": [{"name": "m", "type": {"type": "enum", "name": "Mood", "symbols": ["X"]}}]}},
                {"name": "again", "type": "Mood"},
                {"name": "size", "type": {"type": "fixed", "name": "F", "size": "016"}}]});
        assert_eq!(
            parsing_canonical_form(&json).unwrap(),
            r#"{"name":"a.b.Outer","type":"record","fields":[{"name":"r","type":{"name":"Rootless","type":"record","fields":[{"name":"m","type":{"name":"Mood","type":"enum","symbols":["X"]}}]}},{"name":"again","type":"Mood"},{"name":"size","type":{"name":"a.b.F","type":"fixed","size":16}}]}"#
        );
        let err = parsing_canonical_form(&serde_json::json!({"type": "record", "name": "R",
            "fields": [{"name": "x", "type": "Nowhere"}]}))
        .unwrap_err();
        assert!(err.contains("Nowhere"), "{err}");
    }

    #[test]
    fn single_object_round_trip_fills_defaults() {
        let codec = codec(MESSAGE_SCHEMA);
        let bytes = codec.encode(&json!({"id": "a", "at": 5})).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(&bytes[2..10], &codec.fingerprint());
        assert_eq!(
            bytes[2..10],
            spec_fingerprint(&file("m", MESSAGE_SCHEMA)).unwrap()
        );
        let back = codec.decode(&bytes).unwrap();
        assert_eq!(back, json!({"id": "a", "at": 5, "note": null, "tags": {}}));
    }

    #[test]
    fn single_object_rejects_foreign_bytes() {
        let codec = codec(MESSAGE_SCHEMA);
        let err = codec.decode(b"not avro at all").unwrap_err();
        assert!(err.to_string().contains("C3 01"), "{err}");
        let mut other = codec.encode(&json!({"id": "a", "at": 5})).unwrap();
        other[5] ^= 0xff;
        let err = codec.decode(&other).unwrap_err();
        assert!(matches!(err, AvroError::UnknownFingerprint { .. }), "{err}");
        // The record's fingerprint in hex, as on the wire.
        assert!(err.to_string().contains(&hex(&other[2..10])), "{err}");
    }

    /// The old schema of `MESSAGE_SCHEMA`: no `note`, no `tags`, and a field
    /// the new one dropped.
    const OLD_MESSAGE_SCHEMA: &str = r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"legacy","type":"int"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}}
            ]}"#;

    #[test]
    fn records_of_writer_schemas_resolve_to_the_reader_schema() {
        let old = codec(OLD_MESSAGE_SCHEMA);
        let bytes = old
            .encode(&json!({"id": "a", "legacy": 7, "at": 5}))
            .unwrap();
        let reader = file("reader.avsc", MESSAGE_SCHEMA);
        let writers = [file("old.avsc", OLD_MESSAGE_SCHEMA)];
        // Without the writer schema: an unknown fingerprint, named.
        let err = SingleObject::new(&reader, &[])
            .unwrap()
            .decode(&bytes)
            .unwrap_err();
        assert!(err.to_string().contains(&hex(&old.fingerprint())), "{err}");
        let new = SingleObject::new(&reader, &writers).unwrap();
        assert_eq!(
            new.decode(&bytes).unwrap(),
            json!({"id": "a", "at": 5, "note": null, "tags": {}})
        );
        // The reader's own records still decode without resolution.
        let current = new
            .encode(&json!({"id": "b", "at": 6, "note": "n"}))
            .unwrap();
        assert_eq!(
            new.decode(&current).unwrap(),
            json!({"id": "b", "at": 6, "note": "n", "tags": {}})
        );
    }

    #[test]
    fn unresolvable_writer_schemas_are_refused_by_name() {
        let reader = file("reader.avsc", MESSAGE_SCHEMA);
        // `id` became a long and `at` has no default in the reader.
        let writer = file(
            "schemas/broken.avsc",
            r#"{"type":"record","name":"M","namespace":"t","fields":[{"name":"id","type":"long"}]}"#,
        );
        let err = SingleObject::new(&reader, &[writer]).unwrap_err();
        assert!(matches!(err, AvroError::Incompatible { .. }), "{err}");
        assert!(err.to_string().contains("schemas/broken.avsc"), "{err}");
    }

    #[test]
    fn legacy_fingerprints_are_still_read() {
        let reader = file("reader.avsc", MESSAGE_SCHEMA);
        let codec = SingleObject::new(&reader, &[file("old.avsc", OLD_MESSAGE_SCHEMA)]).unwrap();
        let mut bytes = codec.encode(&json!({"id": "a", "at": 5})).unwrap();
        // As alertsvc 0.1 wrote it: apache-avro's fingerprint.
        let legacy = legacy_fingerprint(&reader.schema);
        assert_ne!(legacy, codec.fingerprint(), "the schema has a logical type");
        bytes[2..10].copy_from_slice(&legacy);
        assert_eq!(codec.decode(&bytes).unwrap()["id"], "a");
        // And an old writer schema's legacy fingerprint resolves too.
        let old = file("old.avsc", OLD_MESSAGE_SCHEMA);
        let mut bytes = SingleObject::new(&old, &[])
            .unwrap()
            .encode(&json!({"id": "c", "legacy": 1, "at": 2}))
            .unwrap();
        bytes[2..10].copy_from_slice(&legacy_fingerprint(&old.schema));
        assert_eq!(
            codec.decode(&bytes).unwrap(),
            json!({"id": "c", "at": 2, "note": null, "tags": {}})
        );
    }

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
    fn registry_errors_are_sorted_by_who_is_at_fault() {
        let unavailable = |e: SRCError| registry_error(&e, String::new()).is_transient();
        let status = |code: &str| {
            SRCError::non_retryable_with_cause(
                "{\"error_code\":0}",
                &format!("HTTP request to schema registry failed with status {code}"),
            )
        };
        assert!(unavailable(SRCError::new(
            "http call to schema registry failed",
            None,
            true
        )));
        assert!(unavailable(status("500 Internal Server Error")));
        assert!(unavailable(status("504 Gateway Timeout")));
        assert!(unavailable(status("429 Too Many Requests")));
        assert!(unavailable(status("401 Unauthorized")));
        assert!(!unavailable(status("404 Not Found")));
        assert!(!unavailable(status("422 Unprocessable Entity")));
        assert!(!unavailable(SRCError::non_retryable_without_cause(
            "Could not transform bytes using schema"
        )));
        let cached = status("503 Service Unavailable").into_cache();
        assert!(unavailable(cached));
        assert_eq!(
            registry_error(&status("404 Not Found"), "schema id 7: ".into()).to_string(),
            "schema registry: schema id 7: HTTP request to schema registry failed with status 404 Not Found: {\"error_code\":0}"
        );
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
