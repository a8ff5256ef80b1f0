//! Layered, strict configuration (DESIGN §3).
//!
//! `config/default.toml` → `config/$ALERTSVC_ENV.toml` → `--config FILE` →
//! `ALERTSVC__A__B` environment variables, deserialized into structs that
//! refuse unknown keys. Secrets are [`Secret`]s: they serialize and debug-print
//! as `[REDACTED]`, so printing the resolved config can never leak them.
//!
//! Where settings live: the parts every stage shares (Kafka, topics, the
//! registry, secrets, logs, databases, the rules in `checks`) are here; a
//! stage's own settings and their validation live next to the stage
//! (`enrich::config`, `notify::config`; produce's and the demo's are still
//! in this directory) and are re-exported here, so `crate::config::X`
//! names every settings type.
//!
//! The dependency rule: `config` imports from a stage only its `config`
//! module — settings are data plus the checks that need nothing but the
//! configuration. Stage logic (compiling pipelines, clients, Slack) imports
//! `config`, never the other way round.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod checks;
mod demo;
mod kafka;
mod produce;
mod replicas;
mod secret;
mod sources;
mod topics;

pub use crate::enrich::config::*;
pub use crate::notify::config::*;
pub use checks::*;
pub use demo::*;
pub use kafka::*;
pub use produce::*;
pub use replicas::*;
pub use secret::*;
pub use sources::*;
pub use topics::*;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration directory {0} has no default.toml")]
    MissingDefault(PathBuf),
    #[error(transparent)]
    Load(#[from] ::config::ConfigError),
    #[error("`{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("cannot serialize the resolved configuration: {0}")]
    Render(#[from] toml::ser::Error),
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, reason: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub log: LogSettings,
    pub kafka: KafkaSettings,
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistrySettings>,
    /// Logical topic id → topic settings. Stages refer to topics by id.
    pub topics: BTreeMap<String, TopicSettings>,
    #[serde(default)]
    pub enrich: Option<EnrichSettings>,
    #[serde(default)]
    pub notify: Option<NotifySettings>,
    #[serde(default)]
    pub produce: Option<ProduceSettings>,
    #[serde(default)]
    pub demo: Option<DemoSettings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(default)]
    pub format: LogFormat,
    /// Used when `RUST_LOG` is not set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Human,
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

pub(crate) fn default_true() -> bool {
    true
}

impl Settings {
    /// Cross-field checks that the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.validate_topics()?;
        if let Some(enrich) = &self.enrich {
            enrich.validate(self)?;
        }
        if let Some(notify) = &self.notify {
            notify.validate(self)?;
        }
        if let Some(produce) = &self.produce {
            self.validate_produce(produce)?;
        }
        Ok(())
    }

    pub fn topic(&self, id: &str) -> Result<&TopicSettings, String> {
        self.topics
            .get(id)
            .ok_or_else(|| format!("no topic {id:?} in [topics]"))
    }

    /// The topic a setting at config path `key` refers to by id: the one
    /// check of every topic reference, at load time and when stages start.
    pub fn topic_at(&self, key: &str, id: &str) -> Result<&TopicSettings, ConfigError> {
        self.topic(id).map_err(|r| ConfigError::invalid(key, r))
    }

    /// Topic id → what in alertsvc writes record keys to it (config key
    /// paths). Those keys are always text (a key column, a channel id, an
    /// alert id), so the topic's key format must be able to hold text.
    /// Dead-letter topics are not here: they keep the original key bytes.
    pub fn key_writers(&self) -> BTreeMap<&str, Vec<String>> {
        let mut writers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        if let Some(produce) = &self.produce {
            for (name, job) in &produce.jobs {
                writers
                    .entry(job.topic.as_str())
                    .or_default()
                    .push(format!("produce.jobs.{name}"));
            }
        }
        if let Some(enrich) = &self.enrich {
            for (name, pipeline) in &enrich.pipelines {
                writers
                    .entry(pipeline.output.as_str())
                    .or_default()
                    .push(format!("enrich.pipelines.{name}.output"));
            }
        }
        if let Some(notify) = &self.notify {
            for (key, id) in [
                ("notify.responses", &notify.responses),
                ("notify.interactions", &notify.interactions),
            ] {
                writers.entry(id.as_str()).or_default().push(key.to_owned());
            }
            if let Some(id) = &notify.alert_state {
                writers
                    .entry(id.as_str())
                    .or_default()
                    .push("notify.alert_state".to_owned());
            }
        }
        writers
    }

    pub fn dlq_topic(&self, topic_name: &str) -> String {
        format!("{topic_name}{}", self.kafka.dlq_suffix)
    }

    /// The resolved configuration as TOML, secrets redacted.
    pub fn render_redacted(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// Resolves a path from the configuration against the configuration directory.
pub fn resolve_path(dir: &Path, relative: &str) -> PathBuf {
    let path = Path::new(relative);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}
