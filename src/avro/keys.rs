//! Topic keys: [`KeyCodec`] (`topics.<id>.key_format`) and the key codecs of
//! a whole configuration.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use apache_avro::Schema;
use serde_json::Value as Json;

use super::json::json_kind;
use super::{load_schema_file, AvroError, Codec, Confluent, SchemaFile, SingleObject};
use crate::config::{KeyFormat, RegistryMode, SchemaRegistrySettings, Settings, TopicSettings};

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

    /// The codec of an encoded key format (`None` for `string` keys), for
    /// what every codec needs, such as [`Codec::prepare_writes`].
    pub fn encoded(&self) -> Option<&Codec> {
        match self {
            KeyCodec::Text => None,
            KeyCodec::Encoded(codec) => Some(codec),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::crc64_avro;
    use crate::config::WireFormat;
    use serde_json::json;

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
}
