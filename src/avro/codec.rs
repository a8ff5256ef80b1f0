//! A topic's wire format as one [`Codec`], the [`Compact`] form join tables
//! keep records in, and the codecs of a whole configuration.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use apache_avro::Schema;
use serde::Serialize;
use serde_json::Value as Json;

use super::schema::shipped_predecessors;
use super::{load_schema_file, AvroError, Confluent, Scalar, SchemaFile, SingleObject, SubjectUse};
use crate::config::{RegistryMode, SchemaRegistrySettings, Settings, TopicSettings, WireFormat};

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
pub(super) const COMPACT_DATUM: u8 = 0;
pub(super) const COMPACT_JSON: u8 = 1;

impl Compact {
    pub(super) fn tagged(tag: u8, body: &[u8]) -> Compact {
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

    /// The record's top-level fields as [`Codec::decode`] would give them,
    /// without decoding it, when the codec can vouch that decoding succeeds
    /// (see [`SingleObject::scan`]); `None`: decode it.
    pub fn scan<'a>(&'a self, bytes: &'a [u8]) -> Option<Vec<(&'a str, Scalar<'a>)>> {
        match self {
            Codec::SingleObject(c) => c.scan(bytes),
            Codec::Json | Codec::Confluent(_) => None,
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

    /// [`Codec::encode`] of `serde_json::to_value(record)`: the same bytes,
    /// an `avro-single-object` record written without the JSON value in
    /// between; `size_hint`: the bytes its strings take, roughly.
    pub async fn encode_record<T: Serialize + ?Sized>(
        &self,
        record: &T,
        size_hint: usize,
    ) -> Result<Vec<u8>, AvroError> {
        match self {
            Codec::SingleObject(c) => c.encode_record(record, size_hint),
            Codec::Json | Codec::Confluent(_) => self.encode(&serde_json::to_value(record)?).await,
        }
    }
}

impl Codec {
    /// The schema records are written with (Avro formats only).
    pub(super) fn writer_schema(&self) -> Option<&Schema> {
        match self {
            Codec::Json => None,
            Codec::SingleObject(c) => Some(&c.schema.schema),
            Codec::Confluent(c) => Some(&c.schema.schema),
        }
    }
}

/// Finds, at a stage's start, the schema ids the codecs of the topics it
/// writes (`(label, codec)`: values and encoded keys) will use. A final answer — our schema not
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
    use crate::avro::fixtures::{codec, file, MESSAGE_SCHEMA, OLD_MESSAGE_SCHEMA};
    use serde_json::json;

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
}
