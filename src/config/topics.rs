//! `[topics]` and `[schema_registry]`: logical topic ids, their wire and key
//! formats, and how `avro-confluent` topics use the registry.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, Settings};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistrySettings {
    pub url: String,
    #[serde(default)]
    pub username: Option<Secret>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default = "default_registry_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Register a topic's schema under its subject when it is missing, as
    /// Confluent's serializers do (`auto.register.schemas`). Unset means
    /// true, unless `use_latest_version` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_register: Option<bool>,
    /// Write with the subject's latest registered schema instead of the
    /// topic's own (`use.latest.version`); never registers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_latest_version: Option<bool>,
}

/// How an `avro-confluent` topic finds the schema id it writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryMode {
    /// Registers the topic's schema under the subject (a no-op when it is
    /// there already) and writes with the id the registry answers.
    AutoRegister,
    /// Looks the topic's schema up under the subject (`POST
    /// /subjects/<subject>`, a read) and writes with its id; never
    /// registers.
    LookUp,
    /// Writes with the subject's latest version, our records resolved into
    /// it; never registers.
    UseLatest,
}

impl RegistryMode {
    /// The topic's settings replace the global ones key by key;
    /// `use_latest_version = true` implies `auto_register = false`.
    pub fn of(global: Option<&SchemaRegistrySettings>, topic: &TopicSettings) -> RegistryMode {
        let auto_register = topic.auto_register.or(global.and_then(|g| g.auto_register));
        let use_latest = topic
            .use_latest_version
            .or(global.and_then(|g| g.use_latest_version));
        match (use_latest, auto_register) {
            (Some(true), _) => RegistryMode::UseLatest,
            (_, Some(false)) => RegistryMode::LookUp,
            _ => RegistryMode::AutoRegister,
        }
    }
}

impl fmt::Display for RegistryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegistryMode::AutoRegister => "auto_register = true",
            RegistryMode::LookUp => "auto_register = false",
            RegistryMode::UseLatest => "use_latest_version = true",
        })
    }
}

/// `auto_register = true` next to `use_latest_version = true` in one table
/// asks for two things at once: registering our schema and writing with
/// whatever is latest.
fn validate_registry_modes(
    key: &str,
    auto_register: Option<bool>,
    use_latest_version: Option<bool>,
) -> Result<(), ConfigError> {
    if auto_register == Some(true) && use_latest_version == Some(true) {
        return Err(ConfigError::invalid(
            format!("{key}.use_latest_version"),
            "use_latest_version = true never registers a schema; \
             it cannot be combined with auto_register = true (remove auto_register or set it to false)",
        ));
    }
    Ok(())
}

fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireFormat {
    AvroConfluent,
    AvroSingleObject,
    Json,
}

/// How a topic's record keys are encoded. Keys are decoded to a JSON value
/// like records are; `string` (what Kafka's `StringSerializer` writes) is
/// the default, so a key stays the text it always was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum KeyFormat {
    #[default]
    String,
    Json,
    AvroConfluent,
    AvroSingleObject,
}

impl TryFrom<String> for KeyFormat {
    type Error = String;

    /// By hand, so that a typo is answered with the formats there are.
    fn try_from(name: String) -> Result<Self, String> {
        const ALL: [KeyFormat; 4] = [
            KeyFormat::String,
            KeyFormat::Json,
            KeyFormat::AvroConfluent,
            KeyFormat::AvroSingleObject,
        ];
        ALL.into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown key_format {name:?}; expected one of {}",
                    ALL.map(|f| format!("{:?}", f.name())).join(", ")
                )
            })
    }
}

impl KeyFormat {
    pub fn is_avro(self) -> bool {
        matches!(self, KeyFormat::AvroConfluent | KeyFormat::AvroSingleObject)
    }

    /// As written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            KeyFormat::String => "string",
            KeyFormat::Json => "json",
            KeyFormat::AvroConfluent => "avro-confluent",
            KeyFormat::AvroSingleObject => "avro-single-object",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    pub name: String,
    pub format: WireFormat,
    /// `.avsc` file, relative to the configuration directory. Required for
    /// the Avro formats; optional for `json`.
    #[serde(default)]
    pub schema: Option<String>,
    /// `avro-single-object` only: older (or other producers') `.avsc` files,
    /// relative to the configuration directory, that records on the topic
    /// may have been written with. They are found by fingerprint and
    /// resolved to `schema` by Avro's schema resolution.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writer_schemas: Vec<String>,
    #[serde(default)]
    pub key_format: KeyFormat,
    /// `.avsc` file of the key, relative to the configuration directory;
    /// required for the Avro key formats, refused for the others. For
    /// `avro-confluent` keys the subject is `<topic>-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_schema: Option<String>,
    /// `avro-confluent` only: this topic's `schema_registry.auto_register`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_register: Option<bool>,
    /// `avro-confluent` only: this topic's
    /// `schema_registry.use_latest_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_latest_version: Option<bool>,
}

impl Settings {
    /// `[topics]` and `[schema_registry]` on their own; the stages' topic
    /// references are checked by [`Settings::topic_at`].
    pub(super) fn validate_topics(&self) -> Result<(), ConfigError> {
        for (id, topic) in &self.topics {
            let key = format!("topics.{id}.name");
            validate_topic_name(&topic.name).map_err(|r| ConfigError::invalid(&key, r))?;
            let dlq = format!("{}{}", topic.name, self.kafka.dlq_suffix);
            validate_topic_name(&dlq).map_err(|r| {
                ConfigError::invalid(&key, format!("dead-letter topic {dlq:?}: {r}"))
            })?;
            if topic.format != WireFormat::Json && topic.schema.is_none() {
                return Err(ConfigError::invalid(
                    format!("topics.{id}.schema"),
                    "Avro formats need a schema file",
                ));
            }
            match (topic.key_format.is_avro(), &topic.key_schema) {
                (true, None) => {
                    return Err(ConfigError::invalid(
                        format!("topics.{id}.key_schema"),
                        format!(
                            "key_format = \"{}\" needs a key schema file (.avsc)",
                            topic.key_format.name()
                        ),
                    ))
                }
                (false, Some(_)) => {
                    // Silently ignoring it would hide a key_format typo'd
                    // away or forgotten.
                    return Err(ConfigError::invalid(
                        format!("topics.{id}.key_schema"),
                        format!(
                            "only used with key_format \"avro-confluent\" or \"avro-single-object\" \
                             (key_format is \"{}\")",
                            topic.key_format.name()
                        ),
                    ));
                }
                _ => {}
            }
            if topic.key_format == KeyFormat::AvroConfluent && self.schema_registry.is_none() {
                return Err(ConfigError::invalid(
                    format!("topics.{id}.key_format"),
                    "avro-confluent keys need [schema_registry]",
                ));
            }
            for (name, set) in [
                ("auto_register", topic.auto_register.is_some()),
                ("use_latest_version", topic.use_latest_version.is_some()),
            ] {
                if set && topic.format != WireFormat::AvroConfluent {
                    return Err(ConfigError::invalid(
                        format!("topics.{id}.{name}"),
                        "only for avro-confluent topics (the Schema Registry's modes)",
                    ));
                }
            }
            validate_registry_modes(
                &format!("topics.{id}"),
                topic.auto_register,
                topic.use_latest_version,
            )?;
        }
        if let Some(registry) = &self.schema_registry {
            validate_registry_modes(
                "schema_registry",
                registry.auto_register,
                registry.use_latest_version,
            )?;
        }
        Ok(())
    }
}

/// Kafka's own rules for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name must not be empty".into());
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters, at most 249",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be \".\" or \"..\"".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has {bad:?}; only [a-zA-Z0-9._-] are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("slack-messages.dlq").is_ok());
        assert!(validate_topic_name("bad topic").is_err());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    fn registry(
        auto_register: Option<bool>,
        use_latest_version: Option<bool>,
    ) -> SchemaRegistrySettings {
        SchemaRegistrySettings {
            url: "http://registry".into(),
            username: None,
            password: None,
            timeout: default_registry_timeout(),
            auto_register,
            use_latest_version,
        }
    }

    fn topic(auto_register: Option<bool>, use_latest_version: Option<bool>) -> TopicSettings {
        TopicSettings {
            name: "t".into(),
            format: WireFormat::AvroConfluent,
            schema: Some("s.avsc".into()),
            writer_schemas: Vec::new(),
            key_format: KeyFormat::String,
            key_schema: None,
            auto_register,
            use_latest_version,
        }
    }

    #[test]
    fn registry_modes_resolve_topic_over_global() {
        use RegistryMode::*;
        let mode = |g: &SchemaRegistrySettings, t: &TopicSettings| RegistryMode::of(Some(g), t);
        // Confluent's defaults: register.
        assert_eq!(RegistryMode::of(None, &topic(None, None)), AutoRegister);
        assert_eq!(
            mode(&registry(None, None), &topic(None, None)),
            AutoRegister
        );
        assert_eq!(
            mode(&registry(Some(false), None), &topic(None, None)),
            LookUp
        );
        // use_latest_version implies no registration.
        assert_eq!(
            mode(&registry(None, Some(true)), &topic(None, None)),
            UseLatest
        );
        // A topic's key replaces the global one of the same name.
        assert_eq!(
            mode(&registry(Some(false), None), &topic(Some(true), None)),
            AutoRegister
        );
        assert_eq!(
            mode(&registry(None, Some(true)), &topic(None, Some(false))),
            AutoRegister
        );
        assert_eq!(
            mode(
                &registry(Some(false), Some(true)),
                &topic(None, Some(false))
            ),
            LookUp
        );
        assert_eq!(
            mode(&registry(Some(true), None), &topic(None, Some(true))),
            UseLatest
        );
        assert_eq!(UseLatest.to_string(), "use_latest_version = true");
    }

    #[test]
    fn registering_and_using_the_latest_version_at_once_is_refused() {
        let err = validate_registry_modes("topics.t", Some(true), Some(true)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`topics.t.use_latest_version`: use_latest_version = true never registers a schema; \
             it cannot be combined with auto_register = true (remove auto_register or set it to false)"
        );
        assert!(validate_registry_modes("schema_registry", None, Some(true)).is_ok());
        assert!(validate_registry_modes("schema_registry", Some(false), Some(true)).is_ok());
        assert!(validate_registry_modes("schema_registry", Some(true), Some(false)).is_ok());
    }
}
