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
}

impl AvroError {
    /// Whether the error is the registry's, not the record's: the caller
    /// waits and retries instead of dead-lettering the record.
    pub fn is_transient(&self) -> bool {
        matches!(self, AvroError::RegistryUnavailable(_))
    }
}

pub fn load_schema(dir: &Path, relative: &str) -> Result<Schema, AvroError> {
    let path = resolve_path(dir, relative);
    let text = std::fs::read_to_string(&path).map_err(|source| AvroError::ReadSchema {
        path: path.display().to_string(),
        source,
    })?;
    Schema::parse_str(&text).map_err(|source| AvroError::ParseSchema {
        path: path.display().to_string(),
        source: Box::new(source),
    })
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

/// Avro single-object encoding: `C3 01`, the schema's 8-byte Rabin
/// fingerprint, then the datum.
#[derive(Debug, Clone)]
pub struct SingleObject {
    schema: TypedSchema,
    header: [u8; 10],
}

impl SingleObject {
    pub fn new(schema: Schema) -> Self {
        let fingerprint = schema.fingerprint::<Rabin>();
        let mut header = [0u8; 10];
        header[0] = 0xC3;
        header[1] = 0x01;
        for (slot, byte) in header[2..].iter_mut().zip(fingerprint.bytes.iter()) {
            *slot = *byte;
        }
        SingleObject {
            schema: TypedSchema::new(schema),
            header,
        }
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
        if bytes.len() < self.header.len() || bytes[..2] != self.header[..2] {
            return Err(AvroError::SingleObjectHeader(
                "missing the C3 01 marker".into(),
            ));
        }
        if bytes[2..10] != self.header[2..10] {
            return Err(AvroError::SingleObjectHeader(format!(
                "schema fingerprint {} is not the topic's schema {}",
                hex(&bytes[2..10]),
                hex(&self.header[2..10])
            )));
        }
        let mut body = &bytes[10..];
        let value = apache_avro::from_avro_datum(&self.schema.schema, &mut body, None)
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
            .map(|s| load_schema(dir, s))
            .transpose()?;
        Ok(match (topic.format, schema) {
            (WireFormat::Json, _) => Codec::Json,
            (WireFormat::AvroSingleObject, Some(schema)) => {
                Codec::SingleObject(Box::new(SingleObject::new(schema)))
            }
            (WireFormat::AvroConfluent, Some(schema)) => {
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

    fn message_schema() -> Schema {
        Schema::parse_str(
            r#"{"type":"record","name":"M","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}}
            ]}"#,
        )
        .unwrap()
    }

    #[test]
    fn single_object_round_trip_fills_defaults() {
        let codec = SingleObject::new(message_schema());
        let bytes = codec.encode(&json!({"id": "a", "at": 5})).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        let back = codec.decode(&bytes).unwrap();
        assert_eq!(back, json!({"id": "a", "at": 5, "note": null, "tags": {}}));
    }

    #[test]
    fn single_object_rejects_foreign_bytes() {
        let codec = SingleObject::new(message_schema());
        let err = codec.decode(b"not avro at all").unwrap_err();
        assert!(err.to_string().contains("C3 01"), "{err}");
        let mut other = codec.encode(&json!({"id": "a", "at": 5})).unwrap();
        other[5] ^= 0xff;
        let err = codec.decode(&other).unwrap_err();
        assert!(err.to_string().contains("fingerprint"), "{err}");
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
