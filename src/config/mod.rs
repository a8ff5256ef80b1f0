//! Layered, strict configuration (DESIGN §3).
//!
//! `config/default.toml` → `config/$ALERTSVC_ENV.toml` → `--config FILE` →
//! `ALERTSVC__A__B` environment variables, deserialized into structs that
//! refuse unknown keys. Secrets are [`Secret`]s: they serialize and debug-print
//! as `[REDACTED]`, so printing the resolved config can never leak them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod demo;
mod produce;
mod replicas;

pub use demo::*;
pub use produce::*;
pub use replicas::*;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

pub const REDACTED: &str = "[REDACTED]";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration directory {0} has no default.toml")]
    MissingDefault(PathBuf),
    #[error(transparent)]
    Load(#[from] config::ConfigError),
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

/// A secret value: readable only through [`Secret::expose`].
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// SASL credentials (Confluent Cloud API key and secret). They are kept
    /// out of `client` so that they can be typed secrets set from the
    /// environment (`ALERTSVC__KAFKA__SASL_PASSWORD`).
    #[serde(default)]
    pub sasl_username: Option<Secret>,
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// librdkafka properties applied last, verbatim.
    #[serde(default, serialize_with = "serialize_client_properties")]
    pub client: BTreeMap<String, String>,
    #[serde(default = "default_dlq_suffix")]
    pub dlq_suffix: String,
}

fn default_dlq_suffix() -> String {
    ".dlq".to_owned()
}

/// librdkafka property names whose values are credentials.
pub fn is_sensitive_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
        "token",
    ]
    .iter()
    .any(|marker| name.contains(marker))
}

fn serialize_client_properties<S: Serializer>(
    props: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let redacted: BTreeMap<&str, &str> = props
        .iter()
        .map(|(k, v)| {
            let shown = if is_sensitive_property(k) {
                REDACTED
            } else {
                v.as_str()
            };
            (k.as_str(), shown)
        })
        .collect();
    redacted.serialize(s)
}

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

pub(crate) fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// Base URL of Slack's Web API; a local server in tests and the demo.
    pub api_url: String,
    /// Bot token (`xoxb-…`); from `ALERTSVC__NOTIFY__SLACK__BOT_TOKEN`.
    #[serde(default)]
    pub bot_token: Option<Secret>,
    /// Signing secret for interactivity requests.
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PacingSettings {
    /// Messages per second to one channel (Slack allows about one).
    pub per_channel_per_second: u32,
    /// Short bursts allowed above that rate.
    pub per_channel_burst: u32,
    /// chat.postMessage calls per second for the whole workspace.
    pub workspace_per_second: u32,
    pub workspace_burst: u32,
    /// `conversations.history` calls per minute (Slack's Tier 3 is about
    /// 50), spent on looking for posts an ambiguous answer may have made.
    #[serde(default = "default_history_per_minute")]
    pub history_per_minute: u32,
}

fn default_history_per_minute() -> u32 {
    50
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts for errors Slack does not document as permanent or
    /// transient. Transient failures (unreachable, timeouts, 5xx, 429) are
    /// retried for as long as the alert is younger than `max_age`.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://…`; a secret, since URLs
    /// carry passwords. From `ALERTSVC__NOTIFY__LEDGER__DATABASE_URL`.
    pub database_url: Secret,
    /// Apply `migrations/` at start.
    pub migrate_on_start: bool,
    pub max_connections: u32,
}

/// notify's ledger: the state database plus how long claims and rows live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// `sqlite://path?mode=rwc` or `postgres://…`; a secret, since URLs
    /// carry passwords. From `ALERTSVC__NOTIFY__LEDGER__DATABASE_URL`.
    pub database_url: Secret,
    /// Apply `migrations/` at start.
    pub migrate_on_start: bool,
    pub max_connections: u32,
    /// Rows untouched for this long are pruned; at least `dedup_window`
    /// and `max_age`, so a redelivered record still finds its row.
    #[serde(with = "humantime_serde", default = "default_ledger_retention")]
    pub retention: Duration,
    /// How long a claim on an alert lasts without renewal (a replica that
    /// died holding it is waited for this long); more than twice
    /// `slack.request_timeout`.
    #[serde(with = "humantime_serde", default = "default_claim_lease")]
    pub claim_lease: Duration,
    #[serde(with = "humantime_serde", default = "default_prune_interval")]
    pub prune_interval: Duration,
}

fn default_ledger_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_claim_lease() -> Duration {
    Duration::from_secs(60)
}

fn default_prune_interval() -> Duration {
    Duration::from_secs(600)
}

fn default_dedup_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_max_channel_backlog() -> usize {
    1000
}

fn default_group_update_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_reconcile_delay() -> Duration {
    Duration::from_secs(2)
}

fn default_unreachable_after() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    pub group_id: String,
    /// Topic ids.
    pub input: String,
    pub responses: String,
    pub interactions: String,
    /// Topic id of the compacted alert-state topic every state change is
    /// published to; none: states are kept and shown, not published.
    #[serde(default)]
    pub alert_state: Option<String>,
    pub http_addr: SocketAddr,
    /// Alerts older than this (from `createdAt`) are not posted.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// An alert id seen again more than this after the version it shows
    /// (by `createdAt`) is a new occurrence, posted anew.
    #[serde(with = "humantime_serde", default = "default_dedup_window")]
    pub dedup_window: Duration,
    /// Messages read but not yet finished, across all channels; beyond it
    /// every partition is paused.
    pub max_in_flight: usize,
    /// Messages waiting for one channel; beyond it the partitions feeding
    /// that channel are paused.
    #[serde(default = "default_max_channel_backlog")]
    pub max_channel_backlog: usize,
    /// After an ambiguous answer (timeout, reset, 5xx), how long to wait
    /// before looking for the message in the conversation.
    #[serde(with = "humantime_serde", default = "default_reconcile_delay")]
    pub reconcile_delay: Duration,
    /// A group's summary is edited at most once per this long: a burst of
    /// members is shown in a few edits, the last one exact.
    #[serde(with = "humantime_serde", default = "default_group_update_interval")]
    pub group_update_interval: Duration,
    /// This many Slack calls in a row that could not reach Slack mark it
    /// unreachable: partitions pause until a call succeeds.
    #[serde(default = "default_unreachable_after")]
    pub unreachable_after: u32,
    /// Names this replica in ledger claims; unique among live replicas and
    /// stable across restarts. Default: `ALERTSVC_INSTANCE_ID`, else the
    /// host name (the pod name on Kubernetes).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long shutdown waits for in-flight posts.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub slack: SlackSettings,
    pub pacing: PacingSettings,
    pub retry: RetrySettings,
    pub ledger: LedgerSettings,
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub dir: PathBuf,
    pub env_name: Option<String>,
    pub extra_file: Option<PathBuf>,
    pub use_env_vars: bool,
}

impl Sources {
    /// The sources a deployed binary uses: `ALERTSVC_ENV` and `ALERTSVC__*`.
    pub fn from_process(dir: PathBuf, extra_file: Option<PathBuf>) -> Self {
        Sources {
            dir,
            env_name: std::env::var("ALERTSVC_ENV").ok().filter(|s| !s.is_empty()),
            extra_file,
            use_env_vars: true,
        }
    }
}

impl Settings {
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        Settings::load_with(sources, &[])
    }

    /// Like [`Settings::load`], with `layers` (files under the config
    /// directory, e.g. `demo/demo.toml`) between the environment's file and
    /// `--config`.
    pub fn load_with(sources: &Sources, layers: &[&str]) -> Result<Settings, ConfigError> {
        let default = sources.dir.join("default.toml");
        if !default.is_file() {
            return Err(ConfigError::MissingDefault(sources.dir.clone()));
        }
        let mut builder = config::Config::builder().add_source(config::File::from(default));
        if let Some(env_name) = &sources.env_name {
            let path = sources.dir.join(format!("{env_name}.toml"));
            builder = builder.add_source(config::File::from(path).required(false));
        }
        for layer in layers {
            builder =
                builder.add_source(config::File::from(sources.dir.join(layer)).required(true));
        }
        if let Some(extra) = &sources.extra_file {
            builder = builder.add_source(config::File::from(extra.as_path()).required(true));
        }
        if sources.use_env_vars {
            builder = builder.add_source(
                config::Environment::with_prefix("ALERTSVC")
                    .prefix_separator("__")
                    .separator("__"),
            );
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Cross-field checks that the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "must not be empty",
            ));
        }
        if self.kafka.sasl_username.is_some() != self.kafka.sasl_password.is_some() {
            return Err(ConfigError::invalid(
                "kafka.sasl_password",
                "sasl_username and sasl_password must be set together",
            ));
        }
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
        if let Some(enrich) = &self.enrich {
            self.validate_enrich(enrich)?;
        }
        if let Some(notify) = &self.notify {
            self.validate_notify(notify)?;
        }
        if let Some(produce) = &self.produce {
            self.validate_produce(produce)?;
        }
        Ok(())
    }

    fn validate_notify(&self, notify: &NotifySettings) -> Result<(), ConfigError> {
        for (key, id) in [
            ("notify.input", &notify.input),
            ("notify.responses", &notify.responses),
            ("notify.interactions", &notify.interactions),
        ] {
            self.topic(id).map_err(|r| ConfigError::invalid(key, r))?;
        }
        if let Some(id) = &notify.alert_state {
            self.topic(id)
                .map_err(|r| ConfigError::invalid("notify.alert_state", r))?;
        }
        let pacing = &notify.pacing;
        for (key, value) in [
            (
                "notify.pacing.per_channel_per_second",
                pacing.per_channel_per_second,
            ),
            ("notify.pacing.per_channel_burst", pacing.per_channel_burst),
            (
                "notify.pacing.workspace_per_second",
                pacing.workspace_per_second,
            ),
            ("notify.pacing.workspace_burst", pacing.workspace_burst),
            (
                "notify.pacing.history_per_minute",
                pacing.history_per_minute,
            ),
            ("notify.retry.max_attempts", notify.retry.max_attempts),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if notify.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "notify.max_in_flight",
                "must be at least 1",
            ));
        }
        validate_database_url("notify.ledger.database_url", &notify.ledger.database_url)?;
        if notify.ledger.retention < notify.dedup_window.max(notify.max_age) {
            return Err(ConfigError::invalid(
                "notify.ledger.retention",
                "must be at least notify.dedup_window and notify.max_age",
            ));
        }
        if notify.ledger.claim_lease < notify.slack.request_timeout * 2 {
            return Err(ConfigError::invalid(
                "notify.ledger.claim_lease",
                "must be at least twice notify.slack.request_timeout",
            ));
        }
        for (key, value) in [
            ("notify.max_channel_backlog", notify.max_channel_backlog),
            (
                "notify.unreachable_after",
                notify.unreachable_after as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if !(notify.slack.api_url.starts_with("http://")
            || notify.slack.api_url.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "notify.slack.api_url",
                "must be an http(s) URL",
            ));
        }
        Ok(())
    }

    fn validate_enrich(&self, enrich: &EnrichSettings) -> Result<(), ConfigError> {
        if enrich.max_batch_records == 0 {
            return Err(ConfigError::invalid(
                "enrich.max_batch_records",
                "must be at least 1",
            ));
        }
        for (id, table) in &enrich.tables {
            self.topic(&table.topic)
                .map_err(|r| ConfigError::invalid(format!("enrich.tables.{id}.topic"), r))?;
        }
        for (name, pipeline) in &enrich.pipelines {
            let key = |k: &str| format!("enrich.pipelines.{name}.{k}");
            self.topic(&pipeline.input)
                .map_err(|r| ConfigError::invalid(key("input"), r))?;
            self.topic(&pipeline.output)
                .map_err(|r| ConfigError::invalid(key("output"), r))?;
            for (i, join) in pipeline.joins.iter().enumerate() {
                if !enrich.tables.contains_key(&join.table) {
                    return Err(ConfigError::invalid(
                        key(&format!("joins[{i}].table")),
                        format!("no table {:?} in [enrich.tables]", join.table),
                    ));
                }
                if RESERVED_NAMES.contains(&join.name.as_str()) {
                    return Err(ConfigError::invalid(
                        key(&format!("joins[{i}].name")),
                        format!("{:?} is reserved", join.name),
                    ));
                }
                if join.key.is_some() == join.key_template.is_some() {
                    return Err(ConfigError::invalid(
                        key(&format!("joins[{i}]")),
                        format!(
                            "join {:?}: set exactly one of key (CEL) and key_template",
                            join.name
                        ),
                    ));
                }
            }
            if pipeline.message.blocks.is_some() == pipeline.message.blocks_file.is_some() {
                return Err(ConfigError::invalid(
                    key("message"),
                    "set exactly one of blocks_file and blocks",
                ));
            }
        }
        Ok(())
    }

    pub fn topic(&self, id: &str) -> Result<&TopicSettings, String> {
        self.topics
            .get(id)
            .ok_or_else(|| format!("no topic {id:?} in [topics]"))
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

fn validate_database_url(key: &str, url: &Secret) -> Result<(), ConfigError> {
    let url = url.expose();
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            "must start with sqlite: or postgres://",
        ))
    }
}

/// Variable names the pipeline context defines itself.
pub const RESERVED_NAMES: &[&str] = &[
    "key",
    "event",
    "topic",
    "partition",
    "offset",
    "timestamp",
    "vars",
    "pipeline",
    "status",
    "alert_id",
    "now",
];

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

/// Resolves a path from the configuration against the configuration directory.
pub fn resolve_path(dir: &Path, relative: &str) -> PathBuf {
    let path = Path::new(relative);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
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

    #[test]
    fn secrets_never_serialize() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&secret).unwrap_or_default(),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(secret.expose(), "hunter2");
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

    #[test]
    fn sensitive_client_properties_are_recognised() {
        assert!(is_sensitive_property("sasl.password"));
        assert!(is_sensitive_property("ssl.key.password"));
        assert!(is_sensitive_property("sasl.oauthbearer.client.secret"));
        assert!(is_sensitive_property("ssl.key.pem"));
        assert!(!is_sensitive_property("bootstrap.servers"));
        assert!(!is_sensitive_property("security.protocol"));
    }
}
