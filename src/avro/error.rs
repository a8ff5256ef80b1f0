//! What goes wrong with schemas, records and the registry, and which of it
//! is the registry's (transient) rather than the record's.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
