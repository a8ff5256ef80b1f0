//! `[enrich]`: tables, pipelines and their message templates, and the
//! checks that need nothing but the configuration itself. Compiling the
//! expressions and templates is the pipeline's (`enrich::pipeline`); it
//! reuses the checks here rather than repeating them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{default_true, validate_at_least_one, ConfigError, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    ExactlyOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichSettings {
    pub group_id: String,
    /// The producer's `transactional.id` is this prefix plus the host name
    /// (the pod name on Kubernetes), stable across restarts of one replica.
    pub transactional_id_prefix: String,
    pub processing_guarantee: ProcessingGuarantee,
    /// Records per transaction at most.
    pub max_batch_records: usize,
    /// Threads that process one batch's records (blocks of 16 taken in
    /// turn, outputs in input order); 1 processes them on the consumer's
    /// task.
    pub workers: usize,
    /// How long a transaction may collect records before it commits.
    #[serde(with = "humantime_serde")]
    pub max_batch_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    pub http_addr: SocketAddr,
    /// Table id → table. Every table is a GlobalKTable over its topic.
    pub tables: BTreeMap<String, TableSettings>,
    /// Pipeline name → pipeline.
    pub pipelines: BTreeMap<String, PipelineSettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSettings {
    /// Logical topic id (a key of `[topics]`).
    pub topic: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinKind {
    Inner,
    Left,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSettings {
    /// The variable the joined value is bound to in later joins and templates.
    pub name: String,
    /// Table id (a key of `[enrich.tables]`).
    pub table: String,
    /// CEL expression giving the lookup key; `"alert_id"` is the alert id
    /// this pipeline renders for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Template giving the lookup key, with the message templates' context
    /// (earlier joins, `alert_id`); instead of `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_template: Option<String>,
    pub kind: JoinKind,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MessageTemplates {
    pub alert_id: String,
    pub channel: String,
    pub text: String,
    /// Block Kit template file, relative to the configuration directory.
    #[serde(default)]
    pub blocks_file: Option<String>,
    /// Inline Block Kit template, used when `blocks_file` is not set.
    #[serde(default)]
    pub blocks: Option<String>,
    /// Renders the alert's status, `firing` or `resolved`; unset, every
    /// message is `firing`. The other templates see it as `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Logical topic id of the input stream.
    pub input: String,
    /// Logical topic id of the output (`SlackMessage` records).
    pub output: String,
    /// String fields of the event that hold JSON documents; they are parsed
    /// before the filter and templates see the event.
    #[serde(default)]
    pub json_fields: Vec<String>,
    /// CEL expression; records for which it is false are dropped.
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub joins: Vec<JoinSettings>,
    /// CEL expression evaluated after the joins; true drops the record
    /// (counted as `suppressed`, not dead-lettered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress: Option<String>,
    pub message: MessageTemplates,
    /// Constants available to templates as `vars.NAME`.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// How new content of a posted alert reaches Slack (`edit`, `thread`,
    /// `edit_and_thread`); carried to notify in each message.
    #[serde(default)]
    pub updates: crate::messages::UpdateMode,
    /// Where a new occurrence of a known alert goes (`new`, `thread`).
    #[serde(default)]
    pub recurrence: crate::messages::RecurrenceMode,
    /// A `resolved` message for an alert never posted: `skip` (answered
    /// `resolved_unposted`) or `post`.
    #[serde(default)]
    pub resolved_unposted: crate::messages::ResolvedUnposted,
    /// Template of the key that groups alerts (same context as the message
    /// templates): alerts with one key in one channel within
    /// `group_window` of the group's first share one summary message.
    /// Rendered empty: the alert is not grouped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_key: Option<String>,
    /// How long a group takes members, from its first alert's time.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub group_window: Option<Duration>,
}

impl PipelineSettings {
    /// The group window in milliseconds (0: no grouping); `group_key` and
    /// `group_window` come together. Errors name the key at fault.
    pub fn group_window_ms(&self) -> Result<i64, (&'static str, &'static str)> {
        match (&self.group_key, self.group_window) {
            (None, None) => Ok(0),
            (Some(_), None) => Err(("group_window", "set group_window with group_key")),
            (None, Some(_)) => Err(("group_key", "set group_key with group_window")),
            (Some(_), Some(window)) => match i64::try_from(window.as_millis()) {
                Ok(ms) if ms >= 1_000 => Ok(ms),
                _ => Err(("group_window", "must be at least 1s")),
            },
        }
    }
}

/// The variables every record's template context defines, in the order
/// the render context keeps their values.
pub const RECORD_NAMES: [&str; 8] = [
    "key",
    "event",
    "topic",
    "partition",
    "offset",
    "timestamp",
    "pipeline",
    "vars",
];

/// A variable name the pipeline context defines itself (a join may not
/// take it): the record's, and what is computed per alert.
pub fn is_reserved(name: &str) -> bool {
    RECORD_NAMES.contains(&name) || ["status", "alert_id", "now"].contains(&name)
}

impl EnrichSettings {
    /// Cross-field checks that the types alone cannot express.
    pub(crate) fn validate(&self, settings: &Settings) -> Result<(), ConfigError> {
        validate_at_least_one("enrich.max_batch_records", self.max_batch_records as u64)?;
        validate_at_least_one("enrich.workers", self.workers as u64)?;
        for (id, table) in &self.tables {
            settings.topic_at(&format!("enrich.tables.{id}.topic"), &table.topic)?;
        }
        for (name, pipeline) in &self.pipelines {
            let key = |k: &str| format!("enrich.pipelines.{name}.{k}");
            settings.topic_at(&key("input"), &pipeline.input)?;
            settings.topic_at(&key("output"), &pipeline.output)?;
            for (i, join) in pipeline.joins.iter().enumerate() {
                if !self.tables.contains_key(&join.table) {
                    return Err(ConfigError::invalid(
                        key(&format!("joins[{i}].table")),
                        format!("no table {:?} in [enrich.tables]", join.table),
                    ));
                }
                if is_reserved(&join.name) {
                    return Err(ConfigError::invalid(
                        key(&format!("joins[{i}].name")),
                        format!("{:?} is reserved", join.name),
                    ));
                }
                join.key_source(name, i)?;
            }
            pipeline.message.blocks_source(name)?;
        }
        Ok(())
    }
}

/// Where a join's lookup key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKeySource<'a> {
    Cel(&'a str),
    Template(&'a str),
}

impl JoinSettings {
    /// A lookup key comes from a CEL expression or a template, never both;
    /// checked at load and answered again when the pipeline compiles.
    pub fn key_source(
        &self,
        pipeline: &str,
        index: usize,
    ) -> Result<JoinKeySource<'_>, ConfigError> {
        match (&self.key, &self.key_template) {
            (Some(cel), None) => Ok(JoinKeySource::Cel(cel)),
            (None, Some(template)) => Ok(JoinKeySource::Template(template)),
            _ => Err(ConfigError::invalid(
                format!("enrich.pipelines.{pipeline}.joins[{index}]"),
                format!(
                    "join {:?}: set exactly one of key (CEL) and key_template",
                    self.name
                ),
            )),
        }
    }
}

/// Where a pipeline's Block Kit template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlocksSource<'a> {
    /// Relative to the configuration directory.
    File(&'a str),
    Inline(&'a str),
}

impl MessageTemplates {
    /// The Block Kit template is a file or inline text, never both; checked
    /// at load and answered again when the pipeline compiles.
    pub fn blocks_source(&self, pipeline: &str) -> Result<BlocksSource<'_>, ConfigError> {
        match (&self.blocks_file, &self.blocks) {
            (Some(file), None) => Ok(BlocksSource::File(file)),
            (None, Some(inline)) => Ok(BlocksSource::Inline(inline)),
            _ => Err(ConfigError::invalid(
                format!("enrich.pipelines.{pipeline}.message"),
                "set exactly one of blocks_file and blocks",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(key: Option<&str>, key_template: Option<&str>) -> JoinSettings {
        JoinSettings {
            name: "j".into(),
            table: "t".into(),
            key: key.map(str::to_owned),
            key_template: key_template.map(str::to_owned),
            kind: JoinKind::Left,
        }
    }

    fn message(blocks_file: Option<&str>, blocks: Option<&str>) -> MessageTemplates {
        MessageTemplates {
            alert_id: "a".into(),
            channel: "c".into(),
            text: "t".into(),
            blocks_file: blocks_file.map(str::to_owned),
            blocks: blocks.map(str::to_owned),
            status: None,
        }
    }

    #[test]
    fn a_join_key_is_cel_or_a_template() {
        assert_eq!(
            join(Some("key"), None).key_source("p", 0).ok(),
            Some(JoinKeySource::Cel("key"))
        );
        assert_eq!(
            join(None, Some("{{ key }}")).key_source("p", 0).ok(),
            Some(JoinKeySource::Template("{{ key }}"))
        );
        for (key, template) in [(Some("key"), Some("{{ key }}")), (None, None)] {
            let err = join(key, template).key_source("p", 2).unwrap_err();
            assert_eq!(
                err.to_string(),
                "`enrich.pipelines.p.joins[2]`: join \"j\": set exactly one of key (CEL) and key_template"
            );
        }
    }

    #[test]
    fn blocks_are_a_file_or_inline() {
        assert_eq!(
            message(Some("b.j2"), None).blocks_source("p").ok(),
            Some(BlocksSource::File("b.j2"))
        );
        assert_eq!(
            message(None, Some("[]")).blocks_source("p").ok(),
            Some(BlocksSource::Inline("[]"))
        );
        for (file, inline) in [(Some("b.j2"), Some("[]")), (None, None)] {
            let err = message(file, inline).blocks_source("p").unwrap_err();
            assert_eq!(
                err.to_string(),
                "`enrich.pipelines.p.message`: set exactly one of blocks_file and blocks"
            );
        }
    }
}
