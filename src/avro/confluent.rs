//! The `avro-confluent` wire format: Confluent framing, and the Schema
//! Registry client that finds the writer's schema and the id writes use,
//! by the topic's registry mode.

use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{perform_sr_call, SrSettings};
use schema_registry_converter::schema_registry_common::SrCall;
use serde_json::Value as Json;

use super::registry::{http_status, registry_detail, registry_error};
use super::{avro_to_json, writable_as, AvroError, TypedSchema};
use crate::config::{RegistryMode, SchemaRegistrySettings};

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
    pub(super) schema: TypedSchema,
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
        // An unnamed schema (a key's `"string"`) is named by its text.
        let name = schema
            .name()
            .map_or_else(|| schema.canonical_form(), |n| n.fullname(None));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confluent_frames_carry_the_id_big_endian() {
        assert_eq!(confluent_frame(0x0102_0304, &[9, 8]), [0, 1, 2, 3, 4, 9, 8]);
    }
}
