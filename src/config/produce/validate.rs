//! `[produce]`'s cross-field checks, run by `config check` and at start.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::{
    validate_at_least_one, validate_database_url, validate_http_url, ConfigError, Settings,
};
use super::{
    query_labels, validate_label, FieldSource, GcpCredentials, JobSettings, ProduceSettings,
    SourceSettings, MAX_QUERY_LABELS,
};

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
    pub(in crate::config) fn validate_produce(
        &self,
        produce: &ProduceSettings,
    ) -> Result<(), ConfigError> {
        validate_database_url("produce.state.database_url", &produce.state.database_url)?;
        if produce.lease < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "produce.lease",
                "must be at least 1s (it is renewed every third of it)",
            ));
        }
        validate_at_least_one("produce.max_in_flight", produce.max_in_flight as u64)?;
        for (name, source) in &produce.sources {
            let key = |k: &str| format!("produce.sources.{name}.{k}");
            match source {
                SourceSettings::Sql(sql) => {
                    validate_database_url(&key("url"), &sql.url)?;
                    validate_at_least_one(&key("page_size"), sql.page_size as u64)?;
                }
                SourceSettings::Bigquery(bq) => {
                    if bq.project_id.trim().is_empty() {
                        return Err(ConfigError::invalid(key("project_id"), "must not be empty"));
                    }
                    validate_at_least_one(&key("page_size"), bq.page_size as u64)?;
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
                        validate_http_url(&key("endpoint"), endpoint)?;
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
            self.topic_at(&key("topic"), &job.topic)?;
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
