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
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{perform_sr_call, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SrCall;
use serde_json::{Map, Number, Value as Json};

use crate::config::{
    resolve_path, KeyFormat, RegistryMode, SchemaRegistrySettings, Settings, TopicSettings,
    WireFormat,
};

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
    /// The registry answered 403 to registering the topic's schema. Waited
    /// out like [`AvroError::RegistryUnavailable`] (keys get rotated), but
    /// named, because a read-only key is the usual cause.
    #[error(
        "the registry refused to register schema {schema} under subject {subject} \
         (auto_register = true): {detail}; set schema_registry.auto_register = false \
         if schemas are registered by your pipeline"
    )]
    RegistrationRefused {
        subject: String,
        schema: String,
        detail: String,
    },
    /// `auto_register = false` and the subject does not have our schema.
    #[error(
        "schema {schema} is not registered under subject {subject} ({detail}); with \
         auto_register = false alertsvc only looks it up: register it under that subject \
         (as the pipeline that owns the subject does), or set auto_register = true"
    )]
    NotRegistered {
        subject: String,
        schema: String,
        detail: String,
    },
    /// `use_latest_version` and the latest schema cannot take our records.
    #[error(
        "{latest} cannot be written with records of schema {schema}: {reason} \
         (use_latest_version = true writes our records as the latest version)"
    )]
    LatestIncompatible {
        latest: String,
        schema: String,
        reason: String,
    },
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
    /// A `string` key that is not text.
    #[error("not UTF-8 text (key_format \"string\"): {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// alertsvc writes this topic's keys, which are always text (a channel
    /// id, an alert id, a key column), and the key schema cannot hold one.
    #[error(
        "key_schema {path} is {kind}, but alertsvc writes string keys to this topic \
         ({writers}): it needs an Avro key schema of type \"string\""
    )]
    KeyNotWritable {
        path: String,
        kind: String,
        writers: String,
    },
}

impl AvroError {
    /// Whether the error is the registry's, not the record's: the caller
    /// waits and retries instead of dead-lettering the record.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AvroError::RegistryUnavailable(_) | AvroError::RegistrationRefused { .. }
        )
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

/// A record held in memory in a compact, already validated form: what
/// enrich's join tables keep (a million rows must fit a small pod), turned
/// back into the value [`Codec::decode`] gives by [`Codec::expand`] on each
/// lookup. An `avro-single-object` record is kept as its datum in the
/// topic's (reader) schema, without the header (a record of an older writer
/// schema is resolved and written again in the reader schema once, when
/// stored); a `json` or `avro-confluent` record as compact JSON text (a
/// Confluent record is decoded with its writer's schema from the registry,
/// which a lookup must not wait for).
#[derive(Clone, PartialEq, Eq)]
pub struct Compact(Box<[u8]>);

/// First byte of a [`Compact`]: what follows.
const COMPACT_DATUM: u8 = 0;
const COMPACT_JSON: u8 = 1;

impl Compact {
    fn tagged(tag: u8, body: &[u8]) -> Compact {
        let mut bytes = Vec::with_capacity(1 + body.len());
        bytes.push(tag);
        bytes.extend_from_slice(body);
        Compact(bytes.into_boxed_slice())
    }

    /// Bytes held, for memory accounting.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Compact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compact({} bytes)", self.0.len())
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

    pub fn decode(&self, bytes: &[u8]) -> Result<Json, AvroError> {
        let (writer, body) = self.split(bytes)?;
        Ok(avro_to_json(self.read_datum(writer, body)?))
    }

    /// The writer's schema (`None`: the reader's) and the datum.
    fn split<'b>(&self, bytes: &'b [u8]) -> Result<(Option<&Schema>, &'b [u8]), AvroError> {
        let (fingerprint, body) = match bytes {
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
        Ok((writer.as_ref(), body))
    }

    /// The whole datum, resolved to the reader schema.
    #[allow(deprecated)]
    fn read_datum(&self, writer: Option<&Schema>, mut body: &[u8]) -> Result<AvroValue, AvroError> {
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
        Ok(value)
    }

    /// [`SingleObject::decode`]'s checks; keeps the datum in the reader
    /// schema.
    #[allow(deprecated)]
    fn compact(&self, bytes: &[u8]) -> Result<Compact, AvroError> {
        let (writer, body) = self.split(bytes)?;
        let value = self.read_datum(writer, body)?;
        if writer.is_none() {
            return Ok(Compact::tagged(COMPACT_DATUM, body));
        }
        let datum = apache_avro::to_avro_datum(&self.schema.schema, value)
            .map_err(|e| AvroError::Encode(Box::new(e)))?;
        Ok(Compact::tagged(COMPACT_DATUM, &datum))
    }

    /// A datum [`SingleObject::compact`] kept, decoded.
    fn expand(&self, datum: &[u8]) -> Result<Json, AvroError> {
        Ok(avro_to_json(self.read_datum(None, datum)?))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Confluent Schema Registry framing (magic 0, schema id, datum), subjects by
/// TopicNameStrategy (`<topic>-value`, or `<topic>-key` for keys).
///
/// Decoding asks the registry for the writer's schema by the record's id
/// (the converter caches it). Encoding writes with one id per topic, found
/// once by the topic's [`RegistryMode`] and kept for the life of the
/// process: registered (`auto_register`), looked up (`auto_register =
/// false`), or the subject's latest version (`use_latest_version`).
pub struct Confluent {
    subject: String,
    mode: RegistryMode,
    /// The topic schema's full name, for messages.
    name: String,
    schema: TypedSchema,
    schema_text: String,
    sr: SrSettings,
    decoder: AvroDecoder,
    /// Errors are not kept: a failed resolution is tried again next time.
    writer: tokio::sync::OnceCell<Writer>,
}

/// What a Confluent topic's records are written with.
#[derive(Debug, Clone)]
struct Writer {
    id: u32,
    version: Option<u32>,
    /// The subject's latest schema when it is not the topic's own
    /// (`use_latest_version`): records are resolved into it.
    schema: Option<Schema>,
}

/// Which subject a topic writes under, how, and with which schema id and
/// version (as far as the registry said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectUse {
    pub subject: String,
    pub mode: RegistryMode,
    /// `None`: not registered yet (`auto_register` registers it at the
    /// first write).
    pub id: Option<u32>,
    /// The registry's answer to a registration carries no version.
    pub version: Option<u32>,
}

/// The registry's answer to "is this schema registered under the subject?".
enum LookUp {
    Found(Writer),
    /// 404: the subject (40401) or the schema under it (40403) is missing.
    Missing(String),
}

impl Confluent {
    /// `is_key`: the codec of the topic's keys, registered under
    /// `<topic>-key`.
    pub fn new(
        registry: &SchemaRegistrySettings,
        topic: &str,
        schema: Schema,
        mode: RegistryMode,
        is_key: bool,
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
        let name = schema
            .name()
            .map_or_else(|| "(unnamed)".to_owned(), |n| n.fullname(None));
        Ok(Confluent {
            subject: format!("{topic}-{}", if is_key { "key" } else { "value" }),
            mode,
            name,
            // The full schema, not the canonical form: that would drop
            // logical types, defaults and docs from the registered schema.
            schema_text: serde_json::to_string(&schema)?,
            schema: TypedSchema::new(schema),
            decoder: AvroDecoder::new(sr.clone()),
            sr,
            writer: tokio::sync::OnceCell::new(),
        })
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn mode(&self) -> RegistryMode {
        self.mode
    }

    // The datum helpers are deprecated for builder types that borrow the
    // schema; they do the same work (see `SingleObject::encode`).
    #[allow(deprecated)]
    pub async fn encode(&self, json: &Json) -> Result<Vec<u8>, AvroError> {
        // The record is checked against the topic's schema first, so a
        // record's own mistake is named as such whatever the registry says.
        let value = self.schema.json_to_avro(json)?;
        let writer = self.writer().await?;
        let encode = |e| AvroError::Encode(Box::new(e));
        let mut datum = apache_avro::to_avro_datum(&self.schema.schema, value).map_err(encode)?;
        if let Some(latest) = &writer.schema {
            // Avro's own resolution (writer = ours, reader = latest): fields
            // the latest schema added take their defaults.
            let resolved = apache_avro::from_avro_datum(
                &self.schema.schema,
                &mut datum.as_slice(),
                Some(latest),
            )
            .map_err(encode)?;
            datum = apache_avro::to_avro_datum(latest, resolved).map_err(encode)?;
        }
        Ok(confluent_frame(writer.id, &datum))
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
                // A cached 500 would otherwise outlive the outage.
                self.decoder.remove_errors_from_cache();
            }
            error
        })?;
        Ok(avro_to_json(decoded.value))
    }

    /// Finds (and keeps) the schema id writes use, so that a stage can
    /// learn at startup what its first record would: a schema missing from
    /// a read-only subject, or a latest version ours cannot be written as.
    pub async fn prepare(&self) -> Result<SubjectUse, AvroError> {
        let writer = self.writer().await?;
        Ok(self.subject_use(Some(writer)))
    }

    /// What [`Confluent::prepare`] would find, without registering anything
    /// and without keeping the answer: `config check`'s view.
    pub async fn probe(&self) -> Result<SubjectUse, AvroError> {
        let writer = match self.mode {
            RegistryMode::AutoRegister => match self.look_up().await? {
                LookUp::Found(writer) => Some(writer),
                LookUp::Missing(_) => None,
            },
            RegistryMode::LookUp => match self.look_up().await? {
                LookUp::Found(writer) => Some(writer),
                LookUp::Missing(detail) => return Err(self.not_registered(detail)),
            },
            RegistryMode::UseLatest => Some(self.latest().await?),
        };
        Ok(self.subject_use(writer.as_ref()))
    }

    fn subject_use(&self, writer: Option<&Writer>) -> SubjectUse {
        SubjectUse {
            subject: self.subject.clone(),
            mode: self.mode,
            id: writer.map(|w| w.id),
            version: writer.and_then(|w| w.version),
        }
    }

    async fn writer(&self) -> Result<&Writer, AvroError> {
        self.writer
            .get_or_try_init(|| async {
                match self.mode {
                    RegistryMode::AutoRegister => self.register().await,
                    RegistryMode::LookUp => match self.look_up().await? {
                        LookUp::Found(writer) => Ok(writer),
                        LookUp::Missing(detail) => Err(self.not_registered(detail)),
                    },
                    RegistryMode::UseLatest => self.latest().await,
                }
            })
            .await
    }

    /// The request body of registration and lookup.
    fn schema_body(&self) -> String {
        serde_json::json!({"schema": self.schema_text, "schemaType": "AVRO"}).to_string()
    }

    /// `POST /subjects/<subject>/versions`: the id of our schema, registered
    /// now if it was not.
    async fn register(&self) -> Result<Writer, AvroError> {
        let body = self.schema_body();
        let answer = perform_sr_call(&self.sr, SrCall::PostNew(&self.subject, &body))
            .await
            .map_err(|e| match http_status(&e.error) {
                // A key that may read but not write: waiting is right when
                // credentials are being rotated, but the usual cause is a
                // read-only key, so the fix goes into the message.
                Some(403) => AvroError::RegistrationRefused {
                    subject: self.subject.clone(),
                    schema: self.name.clone(),
                    detail: registry_detail(&e),
                },
                _ => registry_error(&e, format!("registering under subject {}: ", self.subject)),
            })?;
        Ok(Writer {
            id: self.answered_id(answer.id)?,
            version: answer.version,
            schema: None,
        })
    }

    /// `POST /subjects/<subject>`: the id and version of our schema under
    /// the subject, if it is registered there. A read: read-only keys may.
    async fn look_up(&self) -> Result<LookUp, AvroError> {
        let body = self.schema_body();
        match perform_sr_call(&self.sr, SrCall::PostForVersion(&self.subject, &body)).await {
            Ok(answer) => Ok(LookUp::Found(Writer {
                id: self.answered_id(answer.id)?,
                version: answer.version,
                schema: None,
            })),
            Err(e) if http_status(&e.error) == Some(404) => {
                Ok(LookUp::Missing(registry_detail(&e)))
            }
            Err(e) => Err(registry_error(
                &e,
                format!("looking up the schema under subject {}: ", self.subject),
            )),
        }
    }

    /// `GET /subjects/<subject>/versions/latest`, checked to take our
    /// records.
    async fn latest(&self) -> Result<Writer, AvroError> {
        let answer = perform_sr_call(&self.sr, SrCall::GetLatest(&self.subject))
            .await
            .map_err(|e| match http_status(&e.error) {
                Some(404) => AvroError::Registry(format!(
                    "subject {} has no registered version to write with \
                     (use_latest_version = true): {}",
                    self.subject,
                    registry_detail(&e)
                )),
                _ => registry_error(&e, format!("latest version of subject {}: ", self.subject)),
            })?;
        let id = self.answered_id(answer.id)?;
        let describe = format!(
            "the latest version of subject {} ({}id {id})",
            self.subject,
            answer
                .version
                .map(|v| format!("version {v}, "))
                .unwrap_or_default()
        );
        match answer.schema_type.as_deref() {
            None | Some("AVRO") => {}
            Some(other) => {
                return Err(AvroError::Registry(format!(
                    "{describe} is a {other} schema, not Avro"
                )))
            }
        }
        if answer.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(AvroError::Registry(format!(
                "{describe} references other schemas, which alertsvc does not resolve"
            )));
        }
        let text = answer
            .schema
            .ok_or_else(|| AvroError::Registry(format!("{describe}: the answer has no schema")))?;
        let latest = Schema::parse_str(&text).map_err(|e| {
            AvroError::Registry(format!("{describe} is not a valid Avro schema: {e}"))
        })?;
        let schema = writable_as(&self.schema.schema, &latest).map_err(|reason| {
            AvroError::LatestIncompatible {
                latest: describe.clone(),
                schema: self.name.clone(),
                reason,
            }
        })?;
        Ok(Writer {
            id,
            version: answer.version,
            schema,
        })
    }

    fn answered_id(&self, id: Option<u32>) -> Result<u32, AvroError> {
        id.ok_or_else(|| {
            AvroError::Registry(format!(
                "subject {}: the registry's answer has no schema id",
                self.subject
            ))
        })
    }

    fn not_registered(&self, detail: String) -> AvroError {
        AvroError::NotRegistered {
            subject: self.subject.clone(),
            schema: self.name.clone(),
            detail,
        }
    }
}

/// Magic byte 0, the schema id big-endian, the datum.
fn confluent_frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// Whether records of `ours` can be written as `latest`: `None` when they
/// are the same schema, `Some(latest)` when Avro's resolution turns ours
/// into it, or why not. Like Confluent's `latest.compatibility.strict`,
/// `latest` must read what `ours` writes; unlike it, a field of ours that
/// `latest` dropped is refused too, since its values would be lost on the
/// way (and alertsvc's own readers need every field it writes).
pub fn writable_as(ours: &Schema, latest: &Schema) -> Result<Option<Schema>, String> {
    if ours.canonical_form() == latest.canonical_form() {
        return Ok(None);
    }
    let mut dropped = Vec::new();
    dropped_fields(ours, latest, "", &mut dropped);
    if !dropped.is_empty() {
        return Err(format!(
            "it has no field {} (fields alertsvc writes)",
            dropped.join(", ")
        ));
    }
    apache_avro::schema_compatibility::SchemaCompatibility::can_read(ours, latest)
        .map_err(|e| format!("it cannot read records of ours: {e}"))?;
    Ok(Some(latest.clone()))
}

/// Paths of record fields in `ours` that `latest` has under neither their
/// name nor an alias; nested records are compared where both have one.
fn dropped_fields(ours: &Schema, latest: &Schema, path: &str, out: &mut Vec<String>) {
    let (Schema::Record(ours), Schema::Record(latest)) = (ours, latest) else {
        return;
    };
    for field in &ours.fields {
        let field_path = if path.is_empty() {
            field.name.clone()
        } else {
            format!("{path}.{}", field.name)
        };
        let found = latest
            .fields
            .iter()
            .find(|f| f.name == field.name || f.aliases.contains(&field.name));
        match found {
            Some(other) => dropped_fields(&field.schema, &other.schema, &field_path, out),
            None => out.push(field_path),
        }
    }
}

/// The converter's error and the registry's answer, as one text.
fn registry_detail(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// Sorts a converter error into "the registry cannot answer now"
/// ([`AvroError::RegistryUnavailable`]) and "the answer is no"
/// ([`AvroError::Registry`]). `prefix` names the schema id, if any.
fn registry_error(e: &SRCError, prefix: String) -> AvroError {
    let text = format!("{prefix}{}", registry_detail(e));
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

/// Earlier versions of the shipped schemas, built in. Records the previous
/// release wrote (with these schemas' spec fingerprints, or with the
/// TRANSITIONAL apache-avro ones) are still on the topics after an upgrade
/// and must be read without anyone listing `writer_schemas`: notify would
/// otherwise dead-letter every alert in flight during the rollout.
const SHIPPED_PREDECESSORS: &[(&str, &str)] = &[
    (
        "(built in) schemas/slack_message_v1.avsc",
        include_str!("../config/schemas/slack_message_v1.avsc"),
    ),
    (
        "(built in) schemas/slack_message_v2.avsc",
        include_str!("../config/schemas/slack_message_v2.avsc"),
    ),
    (
        "(built in) schemas/slack_response_v1.avsc",
        include_str!("../config/schemas/slack_response_v1.avsc"),
    ),
];

/// The built-in predecessors of a topic's schema: those with its full name
/// that Avro can resolve to it. A schema an operator changed so far that an
/// old version no longer resolves simply does not get it (old records then
/// need `writer_schemas`, which says why when they do not resolve).
fn shipped_predecessors(reader: &SchemaFile) -> Result<Vec<SchemaFile>, AvroError> {
    let Some(name) = reader.schema.name() else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for (path, text) in SHIPPED_PREDECESSORS {
        let old = SchemaFile::parse(*path, text)?;
        let same_name = old
            .schema
            .name()
            .is_some_and(|n| n.fullname(None) == name.fullname(None));
        if same_name
            && spec_fingerprint(&old)? != spec_fingerprint(reader)?
            && apache_avro::schema_compatibility::SchemaCompatibility::can_read(
                &old.schema,
                &reader.schema,
            )
            .is_ok()
        {
            found.push(old);
        }
    }
    Ok(found)
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
                let mut writers = topic
                    .writer_schemas
                    .iter()
                    .map(|s| load_schema_file(dir, s))
                    .collect::<Result<Vec<_>, _>>()?;
                writers.extend(shipped_predecessors(&schema)?);
                Codec::SingleObject(Box::new(SingleObject::new(&schema, &writers)?))
            }
            (WireFormat::AvroConfluent, Some(SchemaFile { schema, .. })) => {
                let mode = RegistryMode::of(registry, topic);
                let registry = registry.ok_or_else(|| AvroError::NoRegistry {
                    topic: topic.name.clone(),
                })?;
                Codec::Confluent(Box::new(Confluent::new(
                    registry,
                    &topic.name,
                    schema,
                    mode,
                    false,
                )?))
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

    /// Checks a record as [`Codec::decode`] does and returns it in its
    /// [`Compact`] form, which [`Codec::expand`] decodes without waiting
    /// for anything.
    pub async fn compact(&self, bytes: &[u8]) -> Result<Compact, AvroError> {
        match self {
            Codec::Json => {
                serde_json::from_slice::<Json>(bytes)?;
                Ok(Compact::tagged(COMPACT_JSON, bytes))
            }
            Codec::SingleObject(c) => c.compact(bytes),
            Codec::Confluent(c) => {
                let value = c.decode(bytes).await?;
                Ok(Compact::tagged(COMPACT_JSON, &serde_json::to_vec(&value)?))
            }
        }
    }

    /// The value [`Codec::decode`] gives for the record `compact` was made
    /// of (by this codec).
    pub fn expand(&self, compact: &Compact) -> Result<Json, AvroError> {
        match (compact.0.split_first(), self) {
            (Some((&COMPACT_JSON, text)), _) => Ok(serde_json::from_slice(text)?),
            (Some((&COMPACT_DATUM, datum)), Codec::SingleObject(c)) => c.expand(datum),
            _ => Err(AvroError::Mapping {
                path: "stored record".into(),
                reason: "not kept by this topic's codec".into(),
            }),
        }
    }

    /// For `avro-confluent`: finds and keeps the schema id writes use (see
    /// [`Confluent::prepare`]). Other formats need nothing.
    pub async fn prepare_writes(&self) -> Result<Option<SubjectUse>, AvroError> {
        match self {
            Codec::Confluent(c) => c.prepare().await.map(Some),
            Codec::Json | Codec::SingleObject(_) => Ok(None),
        }
    }

    pub fn confluent(&self) -> Option<&Confluent> {
        match self {
            Codec::Confluent(c) => Some(c),
            Codec::Json | Codec::SingleObject(_) => None,
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

impl Codec {
    /// The schema records are written with (Avro formats only).
    fn writer_schema(&self) -> Option<&Schema> {
        match self {
            Codec::Json => None,
            Codec::SingleObject(c) => Some(&c.schema.schema),
            Codec::Confluent(c) => Some(&c.schema.schema),
        }
    }
}

/// A topic's key format (`topics.<id>.key_format`). A key decodes to a JSON
/// value, as a record does: a `string` key is a JSON string, a `json` key
/// any JSON document, an Avro key whatever its schema describes.
pub enum KeyCodec {
    /// UTF-8 text, as Kafka's `StringSerializer` writes it.
    Text,
    /// `json`, `avro-single-object` or `avro-confluent` (subject
    /// `<topic>-key`), with the key schema.
    Encoded(Codec),
}

impl KeyCodec {
    pub fn build(
        dir: &Path,
        topic: &TopicSettings,
        registry: Option<&SchemaRegistrySettings>,
    ) -> Result<KeyCodec, AvroError> {
        let schema = topic
            .key_schema
            .as_deref()
            .map(|s| load_schema_file(dir, s))
            .transpose()?;
        Ok(match (topic.key_format, schema) {
            (KeyFormat::String, _) => KeyCodec::Text,
            (KeyFormat::Json, _) => KeyCodec::Encoded(Codec::Json),
            (KeyFormat::AvroSingleObject, Some(schema)) => KeyCodec::Encoded(Codec::SingleObject(
                Box::new(SingleObject::new(&schema, &[])?),
            )),
            (KeyFormat::AvroConfluent, Some(SchemaFile { schema, .. })) => {
                // The topic's registry mode covers its key subject too.
                let mode = RegistryMode::of(registry, topic);
                let registry = registry.ok_or_else(|| AvroError::NoRegistry {
                    topic: topic.name.clone(),
                })?;
                KeyCodec::Encoded(Codec::Confluent(Box::new(Confluent::new(
                    registry,
                    &topic.name,
                    schema,
                    mode,
                    true,
                )?)))
            }
            (_, None) => {
                return Err(AvroError::Mapping {
                    path: topic.name.clone(),
                    reason: "Avro key formats need a key_schema".into(),
                })
            }
        })
    }

    /// The key as a JSON value. Errors are the key's (or, when transient,
    /// the registry's: see [`AvroError::is_transient`]).
    pub async fn decode(&self, bytes: &[u8]) -> Result<Json, AvroError> {
        match self {
            KeyCodec::Text => Ok(Json::String(std::str::from_utf8(bytes)?.to_owned())),
            KeyCodec::Encoded(codec) => codec.decode(bytes).await,
        }
    }

    pub async fn encode(&self, key: &Json) -> Result<Vec<u8>, AvroError> {
        match (self, key) {
            (KeyCodec::Text, Json::String(text)) => Ok(text.as_bytes().to_vec()),
            (KeyCodec::Text, other) => Err(AvroError::Mapping {
                path: "key".into(),
                reason: format!("key_format \"string\" holds text, not {}", json_kind(other)),
            }),
            (KeyCodec::Encoded(codec), key) => codec.encode(key).await,
        }
    }

    /// The keys alertsvc writes (a channel id, an alert id, a key column)
    /// are text: a JSON string for `json`, an Avro string for Avro keys.
    pub async fn encode_str(&self, key: &str) -> Result<Vec<u8>, AvroError> {
        match self {
            KeyCodec::Text => Ok(key.as_bytes().to_vec()),
            KeyCodec::Encoded(codec) => codec.encode(&Json::String(key.to_owned())).await,
        }
    }

    /// Refuses a key schema [`KeyCodec::encode_str`] cannot write every key
    /// with: one that is neither `"string"` nor a union with a string
    /// branch. `writers` names what writes the keys, for the error.
    pub fn check_string_keys(&self, topic: &TopicSettings, writers: &str) -> Result<(), AvroError> {
        self.string_keys_fit()
            .map_err(|kind| AvroError::KeyNotWritable {
                path: topic.key_schema.clone().unwrap_or_default(),
                kind,
                writers: writers.to_owned(),
            })
    }

    /// `Err` holds the key schema's type.
    fn string_keys_fit(&self) -> Result<(), String> {
        let Some(schema) = (match self {
            KeyCodec::Text => None,
            KeyCodec::Encoded(codec) => codec.writer_schema(),
        }) else {
            return Ok(());
        };
        let holds_text = match schema {
            Schema::String => true,
            Schema::Union(union) => union
                .variants()
                .iter()
                .any(|variant| matches!(variant, Schema::String)),
            _ => false,
        };
        if holds_text {
            Ok(())
        } else {
            let kind = format!("{:?}", apache_avro::schema::SchemaKind::from(schema));
            Err(format!("of type {}", kind.to_lowercase()))
        }
    }
}

/// Finds, at a stage's start, the schema ids the codecs of the topics it
/// writes (`(label, codec)`) will use. A final answer — our schema not
/// registered under a subject alertsvc may only read, a latest version our
/// records cannot be written as — is returned, so the stage stops with it
/// instead of failing every record. A registry that cannot answer now is
/// logged and left to the first write, which asks again.
pub async fn check_writes(codecs: &[(&str, &Codec)]) -> Result<(), (String, AvroError)> {
    for &(label, codec) in codecs {
        match codec.prepare_writes().await {
            Ok(Some(used)) => {
                tracing::info!(topic = label, subject = %used.subject, mode = %used.mode,
                    id = ?used.id, version = ?used.version, "output schema");
            }
            Ok(None) => {}
            Err(error) if error.is_transient() => {
                tracing::warn!(topic = label, %error, "cannot find the output's schema id yet; the first write asks again");
            }
            Err(error) => return Err((label.to_owned(), error)),
        }
    }
    Ok(())
}

/// Codecs for every topic of the configuration, by logical topic id.
pub type Codecs = HashMap<String, Arc<Codec>>;

/// Key codecs for every topic of the configuration, by logical topic id.
pub type KeyCodecs = HashMap<String, Arc<KeyCodec>>;

/// Builds every topic's key codec, and refuses a key schema that cannot
/// hold the string keys alertsvc writes to that topic (see
/// [`Settings::key_writers`]).
pub fn build_key_codecs(dir: &Path, settings: &Settings) -> Result<KeyCodecs, (String, AvroError)> {
    let writers = settings.key_writers();
    settings
        .topics
        .iter()
        .map(|(id, topic)| {
            let codec = KeyCodec::build(dir, topic, settings.schema_registry.as_ref())
                .map_err(|e| (id.clone(), e))?;
            if let Some(who) = writers.get(id.as_str()) {
                codec
                    .check_string_keys(topic, &who.join(", "))
                    .map_err(|e| (id.clone(), e))?;
            }
            Ok((id.clone(), Arc::new(codec)))
        })
        .collect()
}

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
                "993bd42a1549f9a3",
            ),
            (
                include_str!("../config/schemas/slack_message_v2.avsc"),
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
    fn the_previous_releases_slack_messages_are_read_without_configuration() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let topic = TopicSettings {
            name: "slack-messages".into(),
            format: WireFormat::AvroSingleObject,
            schema: Some("config/schemas/slack_message.avsc".into()),
            writer_schemas: Vec::new(),
            key_format: KeyFormat::String,
            key_schema: None,
            auto_register: None,
            use_latest_version: None,
        };
        let Codec::SingleObject(current) = Codec::build(repo, &topic, None).unwrap() else {
            panic!("single-object codec");
        };
        let v1 = SchemaFile::parse(
            "v1",
            include_str!("../config/schemas/slack_message_v1.avsc"),
        )
        .unwrap();
        let old = json!({"alertId": "a-1", "channelId": "C1", "text": "t", "blocks": "[]",
            "createdAt": 5, "pipeline": "p", "sourceTopic": "s", "sourcePartition": 0,
            "sourceOffset": 1});
        let mut bytes = SingleObject::new(&v1, &[]).unwrap().encode(&old).unwrap();
        let read = current.decode(&bytes).unwrap();
        assert_eq!(read["status"], "firing");
        assert_eq!(read["alertId"], "a-1");
        // And with the fingerprint releases before issue 10 wrote.
        bytes[2..10].copy_from_slice(&legacy_fingerprint(&v1.schema));
        assert_eq!(current.decode(&bytes).unwrap(), read);
        // The release before grouping: read with no group.
        let v2 = SchemaFile::parse(
            "v2",
            include_str!("../config/schemas/slack_message_v2.avsc"),
        )
        .unwrap();
        let mut before_groups = old.clone();
        before_groups["status"] = json!("resolved");
        let bytes = SingleObject::new(&v2, &[])
            .unwrap()
            .encode(&before_groups)
            .unwrap();
        let read = current.decode(&bytes).unwrap();
        assert_eq!(read["status"], "resolved");
        assert_eq!(read["groupKey"], Json::Null);
        assert_eq!(read["groupWindowMs"], 0);
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

    /// Table rows are kept compact and expanded on lookup: the value must
    /// be exactly what decoding the record gives, for the reader's own
    /// records, an older writer's (resolved once, when kept) and JSON.
    #[tokio::test]
    async fn compact_records_expand_to_what_decode_gives() {
        let reader = file("reader.avsc", MESSAGE_SCHEMA);
        let writers = [file("old.avsc", OLD_MESSAGE_SCHEMA)];
        let old = codec(OLD_MESSAGE_SCHEMA)
            .encode(&json!({"id": "a", "legacy": 7, "at": 5}))
            .unwrap();
        let codec = Codec::SingleObject(Box::new(SingleObject::new(&reader, &writers).unwrap()));
        let current = codec
            .encode(&json!({"id": "b", "at": 6, "note": "n", "tags": {"k": "v"}}))
            .await
            .unwrap();
        for bytes in [&old, &current] {
            let compact = codec.compact(bytes).await.unwrap();
            assert_eq!(
                codec.expand(&compact).unwrap(),
                codec.decode(bytes).await.unwrap()
            );
            assert!(compact.len() < bytes.len(), "no header kept: {compact:?}");
        }
        // Refused as decode refuses it.
        let mut truncated = current.clone();
        truncated.pop();
        assert!(codec.compact(&truncated).await.is_err());
        let mut longer = current.clone();
        longer.push(0);
        assert!(matches!(
            codec.compact(&longer).await,
            Err(AvroError::TrailingBytes(1))
        ));
        assert!(matches!(
            codec.compact(b"{}").await,
            Err(AvroError::SingleObjectHeader(_))
        ));

        let text = br#"{"b": [1, 2.5, "x"], "a": null}"#;
        let compact = Codec::Json.compact(text).await.unwrap();
        assert_eq!(
            Codec::Json.expand(&compact).unwrap(),
            json!({"a": null, "b": [1, 2.5, "x"]})
        );
        assert!(Codec::Json.compact(b"{\"a\": ").await.is_err());
        // A datum is only read by the codec that kept it.
        let datum = codec.compact(&current).await.unwrap();
        assert!(Codec::Json.expand(&datum).is_err());
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

    fn key_topic(format: KeyFormat, key_schema: Option<&str>) -> TopicSettings {
        TopicSettings {
            name: "keyed".into(),
            format: WireFormat::Json,
            schema: None,
            writer_schemas: Vec::new(),
            key_format: format,
            key_schema: key_schema.map(|s| format!("tests/fixtures/keys/{s}")),
            auto_register: None,
            use_latest_version: None,
        }
    }

    fn key_codec(format: KeyFormat, key_schema: Option<&str>) -> KeyCodec {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        KeyCodec::build(repo, &key_topic(format, key_schema), None).unwrap()
    }

    #[tokio::test]
    async fn string_keys_are_text() {
        let codec = key_codec(KeyFormat::String, None);
        assert_eq!(codec.decode(b"org-1").await.unwrap(), json!("org-1"));
        assert_eq!(codec.encode_str("org-1").await.unwrap(), b"org-1");
        let err = codec.decode(b"\xffkey").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "not UTF-8 text (key_format \"string\"): invalid utf-8 sequence of 1 bytes from index 0"
        );
        let err = codec.encode(&json!({"org": 1})).await.unwrap_err();
        assert!(
            err.to_string().contains("holds text, not an object"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn json_keys_are_documents() {
        let codec = key_codec(KeyFormat::Json, None);
        assert_eq!(codec.encode_str("org-1").await.unwrap(), b"\"org-1\"");
        assert_eq!(
            codec.decode(br#"{"org":"o","n":2}"#).await.unwrap(),
            json!({"org": "o", "n": 2})
        );
        let err = codec.decode(b"org-1").await.unwrap_err();
        assert!(err.to_string().starts_with("not valid JSON"), "{err}");
    }

    #[tokio::test]
    async fn avro_single_object_keys_round_trip() {
        let codec = key_codec(KeyFormat::AvroSingleObject, Some("org_region_key.avsc"));
        let key = json!({"org_id": "org-1", "region": "eu"});
        let bytes = codec.encode(&key).await.unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(codec.decode(&bytes).await.unwrap(), key);

        let strings = key_codec(KeyFormat::AvroSingleObject, Some("string_key.avsc"));
        let bytes = strings.encode_str("org-1").await.unwrap();
        // C3 01, the fingerprint of "string", then the Avro string.
        let fingerprint = crc64_avro(b"\"string\"").to_le_bytes();
        assert_eq!(bytes[2..10], fingerprint);
        assert_eq!(&bytes[10..], b"\x0aorg-1");
        assert_eq!(strings.decode(&bytes).await.unwrap(), json!("org-1"));
    }

    #[test]
    fn written_keys_need_a_key_schema_that_holds_text() {
        for (format, schema) in [
            (KeyFormat::String, None),
            (KeyFormat::Json, None),
            (KeyFormat::AvroSingleObject, Some("string_key.avsc")),
        ] {
            let codec = key_codec(format, schema);
            assert!(codec
                .check_string_keys(&key_topic(format, schema), "w")
                .is_ok());
        }
        let topic = key_topic(KeyFormat::AvroSingleObject, Some("org_region_key.avsc"));
        let codec = key_codec(KeyFormat::AvroSingleObject, Some("org_region_key.avsc"));
        let err = codec
            .check_string_keys(&topic, "produce.jobs.j, notify.responses")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "key_schema tests/fixtures/keys/org_region_key.avsc is of type record, but alertsvc \
             writes string keys to this topic (produce.jobs.j, notify.responses): it needs an \
             Avro key schema of type \"string\""
        );
    }

    #[test]
    fn confluent_frames_carry_the_id_big_endian() {
        assert_eq!(confluent_frame(0x0102_0304, &[9, 8]), [0, 1, 2, 3, 4, 9, 8]);
    }

    #[test]
    fn the_latest_version_must_take_our_records() {
        let ours = message_schema();
        assert!(
            writable_as(&ours, &ours).unwrap().is_none(),
            "the same schema: no resolution"
        );
        // A field added with a default: resolved into, the default filled.
        let newer = Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}},
                {"name":"level","type":"int","default":3}]}"#,
        )
        .unwrap();
        assert_eq!(writable_as(&ours, &newer).unwrap(), Some(newer.clone()));
        // A field renamed with an alias still takes ours.
        let renamed = Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"ident","aliases":["id"],"type":"string"},
                {"name":"at","type":"long"},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}}]}"#,
        )
        .unwrap();
        let mut dropped = Vec::new();
        dropped_fields(&ours, &renamed, "", &mut dropped);
        assert!(dropped.is_empty(), "{dropped:?}");
        // Dropped fields are named.
        let fewer = Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},{"name":"at","type":"long"}]}"#,
        )
        .unwrap();
        assert_eq!(
            writable_as(&ours, &fewer).unwrap_err(),
            "it has no field note, tags (fields alertsvc writes)"
        );
        // A new field without a default cannot be filled from ours.
        let required = Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"at","type":"long"},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}},
                {"name":"owner","type":"string"}]}"#,
        )
        .unwrap();
        let err = writable_as(&ours, &required).unwrap_err();
        assert!(err.starts_with("it cannot read records of ours: "), "{err}");
    }

    #[test]
    fn nested_dropped_fields_are_named_by_path() {
        let nested = |inner: &str| {
            Schema::parse_str(&format!(
                r#"{{"type":"record","name":"O","fields":[{{"name":"inner","type":
                    {{"type":"record","name":"I","fields":[{inner}]}}}}]}}"#
            ))
            .unwrap()
        };
        let ours = nested(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#);
        let latest = nested(r#"{"name":"a","type":"int"}"#);
        let mut dropped = Vec::new();
        dropped_fields(&ours, &latest, "", &mut dropped);
        assert_eq!(dropped, ["inner.b"]);
    }

    #[test]
    fn a_refused_registration_waits_and_names_the_fix() {
        let refused = AvroError::RegistrationRefused {
            subject: "s-value".into(),
            schema: "t.M".into(),
            detail: "HTTP 403".into(),
        };
        assert!(refused.is_transient(), "keys get rotated");
        assert_eq!(
            refused.to_string(),
            "the registry refused to register schema t.M under subject s-value \
             (auto_register = true): HTTP 403; set schema_registry.auto_register = false \
             if schemas are registered by your pipeline"
        );
        let missing = AvroError::NotRegistered {
            subject: "s-value".into(),
            schema: "t.M".into(),
            detail: "40401".into(),
        };
        assert!(!missing.is_transient(), "a configuration error, final");
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
