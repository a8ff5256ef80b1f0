//! `[produce]`: warehouse sources and the jobs that turn their rows into
//! events (DESIGN §7).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{default_true, validate_database_url, ConfigError, DatabaseSettings, Secret, Settings};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProduceSettings {
    /// `/healthz` and `/metrics` while running on a schedule.
    pub http_addr: SocketAddr,
    /// How often a running job logs its progress.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Events sent to Kafka and not yet acknowledged, per job.
    pub max_in_flight: usize,
    /// After a run died, how long since its last sign of life the next run
    /// waits before reading the topic back (records the dead run had in
    /// flight land and replicate meanwhile).
    #[serde(default = "default_recovery_settle", with = "humantime_serde")]
    pub recovery_settle: Duration,
    /// How long a run's hold on its job lasts without renewal: a second run
    /// of the job is refused while it holds, and a run that died is taken
    /// over (and its events read back) only after it lapsed.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Checkpoints and emitted event ids (`migrations/`).
    pub state: DatabaseSettings,
    /// librdkafka properties for the producer, applied after `[kafka.client]`.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSettings>,
    #[serde(default)]
    pub jobs: BTreeMap<String, JobSettings>,
}

fn default_recovery_settle() -> Duration {
    Duration::from_secs(10)
}

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceSettings {
    /// Google BigQuery through its REST API.
    Bigquery(BigQuerySettings),
    /// PostgreSQL or SQLite through sqlx.
    Sql(SqlSourceSettings),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GcpCredentials {
    /// `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials, or the
    /// metadata server (GKE, GCE).
    ApplicationDefault,
    /// A service-account JSON key file (`key_file`).
    ServiceAccountKey,
    /// GKE workload identity through the metadata server.
    WorkloadIdentity,
    /// No token at all: only for local emulators.
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BigQuerySettings {
    /// The project the query jobs run (and are billed) in.
    pub project_id: String,
    /// Where the datasets live (`US`, `EU`, `europe-west1`, …).
    #[serde(default)]
    pub location: Option<String>,
    pub credentials: GcpCredentials,
    /// The service-account key file for `credentials = "service-account-key"`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// The BigQuery v2 REST base, e.g. `http://127.0.0.1:9050/bigquery/v2`
    /// for an emulator. Default: Google's endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Rows per result page (`maxResults`).
    #[serde(default = "default_bigquery_page_size")]
    pub page_size: u32,
    /// How long one API call may take.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `maximumBytesBilled` for the queries of jobs that set none of their
    /// own. Unset: the project's default (usually no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_bytes_billed: Option<ByteSize>,
    /// Labels on every query job of this source, over the defaults
    /// (`app = "alertsvc"`, `job = <job name>`); a job's own labels win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_bigquery_page_size() -> u32 {
    10_000
}

fn default_query_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceSettings {
    /// `postgres://…` or `sqlite://…`; a secret, since URLs carry passwords.
    pub url: Secret,
    /// Rows handed to the producer at a time.
    #[serde(default = "default_sql_page_size")]
    pub page_size: usize,
}

fn default_sql_page_size() -> usize {
    1_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    #[default]
    Timestamp,
    Integer,
    String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    /// The column whose greatest value is remembered, e.g. `updated_at`.
    pub column: String,
    #[serde(default)]
    pub kind: CheckpointKind,
    /// The value passed as `@checkpoint` on the very first run.
    #[serde(default)]
    pub initial: Option<String>,
    /// How far below the checkpoint each run reads again, for rows that
    /// land late: a duration (`"15m"`) for timestamp checkpoints, a count of
    /// values (`1000`) for integer ones. Unset: no lookback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback: Option<LookbackSetting>,
}

/// `checkpoint.lookback` as written: TOML gives integers as numbers and
/// durations as strings; environment variables give both as strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LookbackSetting {
    Count(i64),
    Text(String),
}

impl CheckpointSettings {
    /// The lookback in the checkpoint's own units: microseconds for
    /// timestamps, values for integers; 0 when unset.
    pub fn lookback_units(&self) -> Result<i64, String> {
        let Some(lookback) = &self.lookback else {
            return Ok(0);
        };
        match (self.kind, lookback) {
            (CheckpointKind::String, _) => Err(
                "a string checkpoint has no distance to look back by: remove lookback, or use a \
                 timestamp or integer checkpoint"
                    .into(),
            ),
            (CheckpointKind::Timestamp, LookbackSetting::Count(n)) => Err(format!(
                "a timestamp checkpoint looks back by a duration such as \"15m\", not the number {n}"
            )),
            (CheckpointKind::Timestamp, LookbackSetting::Text(text)) => {
                let duration = humantime::parse_duration(text.trim()).map_err(|e| {
                    format!("{text:?} is not a duration ({e}); write e.g. \"15m\" or \"2h\"")
                })?;
                i64::try_from(duration.as_micros())
                    .map_err(|_| format!("{text:?} is too long a lookback"))
            }
            (CheckpointKind::Integer, lookback) => {
                let count = match lookback {
                    LookbackSetting::Count(n) => *n,
                    LookbackSetting::Text(text) => text.trim().parse().map_err(|_| {
                        format!(
                            "an integer checkpoint looks back by a count of values such as 1000, \
                             not {text:?}"
                        )
                    })?,
                };
                if count < 0 {
                    return Err(format!("must not be negative, not {count}"));
                }
                Ok(count)
            }
        }
    }
}

/// What an event is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaValue {
    /// The event id built from `event_id` columns.
    EventId,
    /// The job's `event_type`.
    EventType,
    /// The job's name.
    Job,
    /// The record key.
    Key,
    /// The time the run started (epoch milliseconds for timestamp fields).
    RunStartedAt,
}

/// How one field of the event schema is filled: a column name, or a table
/// with exactly one of `column`, `const`, `meta`, `json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FieldSource {
    Column(String),
    Spec(FieldSpec),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(default, rename = "const", skip_serializing_if = "Option::is_none")]
    pub constant: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<MetaValue>,
    /// Columns gathered into a JSON object (a JSON string for string
    /// fields): `"env_id"` or `"labels.old_status = old_status"` (path =
    /// column; dotted paths nest). `"*"` takes every column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A key of `[produce.sources]`.
    pub source: String,
    /// A topic id of `[topics]`; its format and schema shape the events.
    pub topic: String,
    pub event_type: String,
    /// The query, inline …
    #[serde(default)]
    pub sql: Option<String>,
    /// … or in a file under the config directory.
    #[serde(default)]
    pub sql_file: Option<String>,
    /// Named parameters (`@name` in the SQL), bound, never spliced.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// The record key (the join key downstream).
    pub key_column: String,
    /// Columns whose values, joined with `:`, identify an event: an event
    /// id is emitted once per job.
    pub event_id: Vec<String>,
    #[serde(default)]
    pub checkpoint: Option<CheckpointSettings>,
    /// Schema field → where its value comes from.
    pub value: BTreeMap<String, FieldSource>,
    /// A cron expression (5 fields, or 6 with seconds), in UTC.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Jobs without a checkpoint remember emitted ids this long.
    #[serde(default = "default_dedup_retention", with = "humantime_serde")]
    pub dedup_retention: Duration,
    /// BigQuery only: the most one run's query may bill. Over it BigQuery
    /// refuses the query without charge and the run fails (exit code 4).
    /// Default: the source's `maximum_bytes_billed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_bytes_billed: Option<ByteSize>,
    /// BigQuery only: labels on the job's query jobs, over the source's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_dedup_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// A number of bytes: an integer, or a string with a unit (`"10 GiB"`,
/// `"500MB"`; KB, MB, GB, TB, PB are powers of 1000, KiB … PiB of 1024).
/// Parsed values are at most 2^63 - 1, BigQuery's int64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = (&text[..split], text[split..].trim());
        let not_a_number =
            || format!("{text:?} is not a byte size (e.g. 10737418240 or \"10 GiB\")");
        if number.is_empty() {
            return Err(not_a_number());
        }
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "pb" => 1_000_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            "pib" => 1 << 50,
            _ => {
                return Err(format!(
                    "{text:?} is not a byte size: the unit must be B, KB, MB, GB, TB, PB, \
                     KiB, MiB, GiB, TiB or PiB"
                ))
            }
        };
        let bytes = if number.contains('.') {
            let value: f64 = number.parse().map_err(|_| not_a_number())?;
            let bytes = (value * multiplier as f64).round();
            if bytes > i64::MAX as f64 {
                None
            } else {
                Some(bytes as u64)
            }
        } else {
            let value: u64 = number.parse().map_err(|_| not_a_number())?;
            value.checked_mul(multiplier)
        };
        match bytes {
            Some(bytes) if i64::try_from(bytes).is_ok() => Ok(ByteSize(bytes)),
            _ => Err(format!("{text:?} is more than 2^63 - 1 bytes")),
        }
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }
}

/// `117.74 MiB`, `10 GiB`, `512 B`: binary units, two decimals at most.
impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64;
        let mut unit = "B";
        for next in UNITS {
            if value < 1024.0 {
                break;
            }
            value /= 1024.0;
            unit = next;
        }
        let text = format!("{value:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{text} {unit}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of bytes, or a string such as \"10 GiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                ByteSize::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative: a byte size is at least 0")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// BigQuery accepts at most this many labels on a job.
pub const MAX_QUERY_LABELS: usize = 64;
/// … and keys and values of at most this many characters.
const MAX_LABEL_CHARS: usize = 63;

/// Lowercase letters (international ones too), digits, `_` and `-`:
/// BigQuery's label alphabet.
fn label_char(c: char) -> bool {
    c.is_ascii_lowercase()
        || c.is_ascii_digit()
        || c == '_'
        || c == '-'
        || (!c.is_ascii() && c.is_alphanumeric() && !c.is_uppercase())
}

/// Checks one label against BigQuery's rules; the error says which rule.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    let rules = "lowercase letters, digits, `_` and `-`";
    if key.is_empty() {
        return Err("a label key must not be empty".into());
    }
    if key.chars().count() > MAX_LABEL_CHARS {
        return Err(format!(
            "label key {key:?} is longer than {MAX_LABEL_CHARS} characters"
        ));
    }
    if !key
        .chars()
        .next()
        .is_some_and(|c| label_char(c) && !c.is_ascii_digit() && c != '_' && c != '-')
    {
        return Err(format!(
            "label key {key:?} must start with a lowercase letter"
        ));
    }
    if let Some(bad) = key.chars().find(|c| !label_char(*c)) {
        return Err(format!(
            "label key {key:?} has {bad:?}: keys may hold only {rules}"
        ));
    }
    if value.chars().count() > MAX_LABEL_CHARS {
        return Err(format!(
            "label {key:?}: value {value:?} is longer than {MAX_LABEL_CHARS} characters"
        ));
    }
    if let Some(bad) = value.chars().find(|c| !label_char(*c)) {
        return Err(format!(
            "label {key:?}: value {value:?} has {bad:?}: values may hold only {rules}"
        ));
    }
    Ok(())
}

/// `text` as a valid label value: lowercased, other characters as `_`,
/// cut to 63 characters.
pub fn label_value(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if label_char(c) { c } else { '_' })
        .take(MAX_LABEL_CHARS)
        .collect()
}

/// The labels a job's BigQuery query jobs carry: `app = "alertsvc"` and
/// `job = <job name>` (made a valid value), then the source's labels, then
/// the job's, later ones winning.
pub fn query_labels(
    job_name: &str,
    source: &BigQuerySettings,
    job: &JobSettings,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app".to_owned(), "alertsvc".to_owned()),
        ("job".to_owned(), label_value(job_name)),
    ]);
    labels.extend(source.labels.clone());
    labels.extend(job.labels.clone());
    labels
}

fn validate_labels(
    key: impl Fn(&str) -> String,
    labels: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, value) in labels {
        validate_label(name, value).map_err(|reason| ConfigError::invalid(key(name), reason))?;
    }
    Ok(())
}

/// `[produce]`'s cross-field checks (sources exist, one SQL, mapping specs).
impl Settings {
    pub(super) fn validate_produce(&self, produce: &ProduceSettings) -> Result<(), ConfigError> {
        validate_database_url("produce.state.database_url", &produce.state.database_url)?;
        if produce.lease < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "produce.lease",
                "must be at least 1s (it is renewed every third of it)",
            ));
        }
        if produce.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "produce.max_in_flight",
                "must be at least 1",
            ));
        }
        for (name, source) in &produce.sources {
            let key = |k: &str| format!("produce.sources.{name}.{k}");
            match source {
                SourceSettings::Sql(sql) => {
                    validate_database_url(&key("url"), &sql.url)?;
                    if sql.page_size == 0 {
                        return Err(ConfigError::invalid(key("page_size"), "must be at least 1"));
                    }
                }
                SourceSettings::Bigquery(bq) => {
                    if bq.project_id.trim().is_empty() {
                        return Err(ConfigError::invalid(key("project_id"), "must not be empty"));
                    }
                    if bq.page_size == 0 {
                        return Err(ConfigError::invalid(key("page_size"), "must be at least 1"));
                    }
                    if bq.credentials == GcpCredentials::ServiceAccountKey && bq.key_file.is_none()
                    {
                        return Err(ConfigError::invalid(
                            key("key_file"),
                            "credentials = \"service-account-key\" needs a key file",
                        ));
                    }
                    if bq.maximum_bytes_billed.is_some_and(|b| b.bytes() == 0) {
                        return Err(ConfigError::invalid(
                            key("maximum_bytes_billed"),
                            "must be at least 1 byte (leave it out for no limit)",
                        ));
                    }
                    validate_labels(|l| key(&format!("labels.{l}")), &bq.labels)?;
                    if let Some(endpoint) = &bq.endpoint {
                        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                            return Err(ConfigError::invalid(
                                key("endpoint"),
                                "must be an http(s) URL",
                            ));
                        }
                    }
                }
            }
        }
        for (name, job) in &produce.jobs {
            let key = |k: &str| format!("produce.jobs.{name}.{k}");
            let Some(source) = produce.sources.get(&job.source) else {
                return Err(ConfigError::invalid(
                    key("source"),
                    format!("no source {:?} in [produce.sources]", job.source),
                ));
            };
            self.validate_job_cost(name, job, source)?;
            self.topic(&job.topic)
                .map_err(|r| ConfigError::invalid(key("topic"), r))?;
            if job.sql.is_some() == job.sql_file.is_some() {
                return Err(ConfigError::invalid(
                    key("sql"),
                    "set exactly one of sql and sql_file",
                ));
            }
            if job.event_id.is_empty() {
                return Err(ConfigError::invalid(
                    key("event_id"),
                    "name at least one column",
                ));
            }
            if job.key_column.trim().is_empty() {
                return Err(ConfigError::invalid(key("key_column"), "must not be empty"));
            }
            if let Some(checkpoint) = &job.checkpoint {
                // The emitted-event ledger keeps ids from (checkpoint -
                // lookback) up, so its retention is the lookback itself and
                // needs no check of its own; only the lookback's unit does.
                checkpoint
                    .lookback_units()
                    .map_err(|reason| ConfigError::invalid(key("checkpoint.lookback"), reason))?;
            }
            for (field, source) in &job.value {
                if let FieldSource::Spec(spec) = source {
                    let set = [
                        spec.column.is_some(),
                        spec.constant.is_some(),
                        spec.meta.is_some(),
                        spec.json.is_some(),
                    ]
                    .iter()
                    .filter(|s| **s)
                    .count();
                    if set != 1 {
                        return Err(ConfigError::invalid(
                            key(&format!("value.{field}")),
                            "set exactly one of column, const, meta and json",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Settings {
    /// `maximum_bytes_billed` and `labels` of a job: BigQuery's rules, and
    /// only on BigQuery sources.
    fn validate_job_cost(
        &self,
        name: &str,
        job: &JobSettings,
        source: &SourceSettings,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("produce.jobs.{name}.{k}");
        let SourceSettings::Bigquery(bq) = source else {
            let not_bigquery = format!(
                "applies only to BigQuery sources (source {:?} is kind = \"sql\")",
                job.source
            );
            if job.maximum_bytes_billed.is_some() {
                return Err(ConfigError::invalid(
                    key("maximum_bytes_billed"),
                    not_bigquery,
                ));
            }
            if !job.labels.is_empty() {
                return Err(ConfigError::invalid(key("labels"), not_bigquery));
            }
            return Ok(());
        };
        if job.maximum_bytes_billed.is_some_and(|b| b.bytes() == 0) {
            return Err(ConfigError::invalid(
                key("maximum_bytes_billed"),
                "must be at least 1 byte (leave it out for the source's limit)",
            ));
        }
        validate_labels(|l| key(&format!("labels.{l}")), &job.labels)?;
        let count = query_labels(name, bq, job).len();
        if count > MAX_QUERY_LABELS {
            return Err(ConfigError::invalid(
                key("labels"),
                format!(
                    "{count} labels with the defaults (app, job) and source {:?}'s; \
                     BigQuery allows at most {MAX_QUERY_LABELS}",
                    job.source
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_and_without_units() {
        let parse = |t: &str| ByteSize::parse(t).map(ByteSize::bytes);
        assert_eq!(parse("10737418240"), Ok(10_737_418_240));
        assert_eq!(parse("10 GiB"), Ok(10 << 30));
        assert_eq!(parse("10GiB"), Ok(10 << 30));
        assert_eq!(parse("500 MB"), Ok(500_000_000));
        assert_eq!(parse("1.5 tib"), Ok(3 << 39));
        assert_eq!(parse("0"), Ok(0));
        assert!(parse("10 GB/s").unwrap_err().contains("the unit must be"));
        assert!(parse("ten GiB").unwrap_err().contains("is not a byte size"));
        assert!(parse("").is_err());
        assert!(parse("9000 PiB")
            .unwrap_err()
            .contains("more than 2^63 - 1"));
        assert!(parse("9223372036854775808").is_err());
        assert_eq!(parse("9223372036854775807"), Ok(i64::MAX as u64));
    }

    #[test]
    fn byte_sizes_display_in_binary_units() {
        let show = |b: u64| ByteSize::from(b).to_string();
        assert_eq!(show(512), "512 B");
        assert_eq!(show(10 << 30), "10 GiB");
        assert_eq!(show(123_456_789), "117.74 MiB");
        assert_eq!(show(1536), "1.5 KiB");
    }

    #[test]
    fn labels_follow_bigquery_rules() {
        assert_eq!(validate_label("team", "data-platform_2"), Ok(()));
        assert_eq!(validate_label("cost_center", ""), Ok(()));
        assert_eq!(validate_label("équipe", "données"), Ok(()));
        assert!(validate_label("Team", "x")
            .unwrap_err()
            .contains("must start with a lowercase letter"));
        assert!(validate_label("1team", "x")
            .unwrap_err()
            .contains("must start with a lowercase letter"));
        assert!(validate_label("", "x")
            .unwrap_err()
            .contains("must not be empty"));
        assert!(validate_label("team.name", "x")
            .unwrap_err()
            .contains("'.'"));
        assert!(validate_label("team", "Data")
            .unwrap_err()
            .contains("values may hold only"));
        assert!(validate_label(&"k".repeat(64), "x")
            .unwrap_err()
            .contains("longer than 63"));
        assert_eq!(validate_label(&"k".repeat(63), &"v".repeat(63)), Ok(()));
        assert!(validate_label("team", &"v".repeat(64))
            .unwrap_err()
            .contains("longer than 63"));
    }

    #[test]
    fn job_names_become_valid_label_values() {
        assert_eq!(label_value("connector-failures"), "connector-failures");
        assert_eq!(label_value("Nightly Export.v2"), "nightly_export_v2");
        assert_eq!(label_value(&"j".repeat(80)).chars().count(), 63);
        for name in ["Nightly Export.v2", "a/b:c", "ÉTÉ"] {
            assert_eq!(validate_label("job", &label_value(name)), Ok(()), "{name}");
        }
    }
}
