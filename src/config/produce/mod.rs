//! `[produce]`: warehouse sources and the jobs that turn their rows into
//! events (DESIGN §7).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{default_true, DatabaseSettings, Secret};

mod byte_size;
mod labels;
mod validate;

pub use byte_size::{ByteSize, ByteSizeError};
pub use labels::{label_value, query_labels, validate_label, LabelError, MAX_QUERY_LABELS};

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
    pub fn lookback_units(&self) -> Result<i64, LookbackError> {
        let Some(lookback) = &self.lookback else {
            return Ok(0);
        };
        match (self.kind, lookback) {
            (CheckpointKind::String, _) => Err(LookbackError::StringCheckpoint),
            (CheckpointKind::Timestamp, LookbackSetting::Count(n)) => {
                Err(LookbackError::CountForTimestamp(*n))
            }
            (CheckpointKind::Timestamp, LookbackSetting::Text(text)) => {
                let duration = humantime::parse_duration(text.trim()).map_err(|error| {
                    LookbackError::NotADuration {
                        text: text.clone(),
                        error,
                    }
                })?;
                i64::try_from(duration.as_micros())
                    .map_err(|_| LookbackError::TooLong(text.clone()))
            }
            (CheckpointKind::Integer, lookback) => {
                let count = match lookback {
                    LookbackSetting::Count(n) => *n,
                    LookbackSetting::Text(text) => text
                        .trim()
                        .parse()
                        .map_err(|_| LookbackError::NotACount(text.clone()))?,
                };
                if count < 0 {
                    return Err(LookbackError::Negative(count));
                }
                Ok(count)
            }
        }
    }
}

/// A `checkpoint.lookback` that does not fit the checkpoint's kind.
#[derive(Debug, thiserror::Error)]
pub enum LookbackError {
    #[error(
        "a string checkpoint has no distance to look back by: remove lookback, or use a \
         timestamp or integer checkpoint"
    )]
    StringCheckpoint,
    #[error("a timestamp checkpoint looks back by a duration such as \"15m\", not the number {0}")]
    CountForTimestamp(i64),
    #[error("{text:?} is not a duration ({error}); write e.g. \"15m\" or \"2h\"")]
    NotADuration {
        text: String,
        error: humantime::DurationError,
    },
    #[error("{0:?} is too long a lookback")]
    TooLong(String),
    #[error("an integer checkpoint looks back by a count of values such as 1000, not {0:?}")]
    NotACount(String),
    #[error("must not be negative, not {0}")]
    Negative(i64),
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
