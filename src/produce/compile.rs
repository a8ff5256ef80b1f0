//! A job's settings compiled and checked once, before anything connects:
//! SQL and its parameters, the mapping against the topic's schema, the
//! checkpoint, the schedule and BigQuery's cost controls.

use std::path::Path;
use std::sync::Arc;

use crate::avro::{load_schema, Codec, KeyCodec};
use crate::config::{query_labels, resolve_path, Settings, SourceSettings};

use super::checkpoint::CheckpointValue;
use super::error::{JobConfigError, ProduceError};
use super::job::CompiledJob;
use super::mapping::{config_params, Mapping};
use super::schedule::Schedule;
use super::source::QueryOptions;
use super::{settings_of, sql};

/// Compiles the selected jobs (all enabled ones when `selected` is empty):
/// SQL and its parameters, the mapping against the topic's schema, the
/// schedule. `config check` calls this with no selection.
pub fn compile_jobs(
    settings: &Settings,
    dir: &Path,
    selected: &[String],
) -> Result<Vec<CompiledJob>, ProduceError> {
    let produce = settings_of(settings)?;
    for name in selected {
        if !produce.jobs.contains_key(name) {
            return Err(ProduceError::UnknownJob(name.clone()));
        }
    }
    let mut jobs = Vec::new();
    for (name, job) in &produce.jobs {
        let wanted = if selected.is_empty() {
            job.enabled
        } else {
            selected.contains(name)
        };
        if !wanted {
            continue;
        }
        let invalid = |error: JobConfigError| ProduceError::Config {
            job: name.clone(),
            error: Box::new(error),
        };
        let schema_error = |error| {
            invalid(JobConfigError::TopicSchema {
                topic: job.topic.clone(),
                error,
            })
        };
        let topic = settings
            .topic(&job.topic)
            .map_err(|e| invalid(JobConfigError::Topic(e)))?;
        let codec =
            Codec::build(dir, topic, settings.schema_registry.as_ref()).map_err(schema_error)?;
        let key_codec = KeyCodec::build(dir, topic, settings.schema_registry.as_ref())
            .and_then(|codec| {
                codec.check_string_keys(topic, &format!("produce.jobs.{name}"))?;
                Ok(codec)
            })
            .map_err(schema_error)?;
        let schema = topic
            .schema
            .as_deref()
            .map(|s| load_schema(dir, s))
            .transpose()
            .map_err(schema_error)?;
        let mapping = Mapping::compile(name, job, schema.as_ref())
            .map_err(|e| invalid(JobConfigError::Mapping(e)))?;
        let sql = match (&job.sql, &job.sql_file) {
            (Some(sql), _) => sql.clone(),
            (None, Some(file)) => {
                let path = resolve_path(dir, file);
                std::fs::read_to_string(&path)
                    .map_err(|error| invalid(JobConfigError::SqlFile { path, error }))?
            }
            (None, None) => return Err(invalid(JobConfigError::NoSql)),
        };
        let params = config_params(&job.params).map_err(|e| invalid(JobConfigError::Params(e)))?;
        let used = sql::parse(&sql, sql::Placeholder::Named).names;
        for name in &used {
            let known =
                params.contains_key(name) || (name == "checkpoint" && job.checkpoint.is_some());
            if !known {
                return Err(invalid(JobConfigError::UnknownParam { name: name.clone() }));
            }
        }
        if job.checkpoint.is_some() && !used.iter().any(|n| n == "checkpoint") {
            return Err(invalid(JobConfigError::CheckpointUnused));
        }
        let lookback = match &job.checkpoint {
            Some(cp) => cp
                .lookback_units()
                .map_err(|e| invalid(JobConfigError::Lookback(e)))?,
            None => 0,
        };
        if let Some(cp) = &job.checkpoint {
            if let Some(initial) = &cp.initial {
                if CheckpointValue::parse(cp.kind, initial).is_none() {
                    return Err(invalid(JobConfigError::Initial {
                        initial: initial.clone(),
                        kind: cp.kind,
                    }));
                }
            }
        }
        let schedule = job
            .schedule
            .as_deref()
            .map(Schedule::parse)
            .transpose()
            .map_err(|e| invalid(JobConfigError::Schedule(e)))?;
        let (query_options, bytes_limit_key) = match produce.sources.get(&job.source) {
            Some(SourceSettings::Bigquery(bq)) => {
                let (limit, key) = match (job.maximum_bytes_billed, bq.maximum_bytes_billed) {
                    (Some(limit), _) => (
                        Some(limit),
                        Some(format!("produce.jobs.{name}.maximum_bytes_billed")),
                    ),
                    (None, Some(limit)) => (
                        Some(limit),
                        Some(format!(
                            "produce.sources.{}.maximum_bytes_billed",
                            job.source
                        )),
                    ),
                    (None, None) => (None, None),
                };
                let options = QueryOptions {
                    maximum_bytes_billed: limit.map(|l| l.bytes()),
                    labels: query_labels(name, bq, job),
                };
                (options, key)
            }
            _ => (QueryOptions::default(), None),
        };
        jobs.push(CompiledJob {
            name: name.clone(),
            source: job.source.clone(),
            sql,
            params,
            mapping,
            topic: topic.name.clone(),
            dlq_topic: settings.dlq_topic(&topic.name),
            codec: Arc::new(codec),
            key_codec: Arc::new(key_codec),
            checkpoint: job.checkpoint.as_ref().map(|c| (c.kind, c.initial.clone())),
            lookback,
            schedule,
            dedup_retention: job.dedup_retention,
            query_options,
            bytes_limit_key,
        });
    }
    if jobs.is_empty() {
        return Err(ProduceError::NoEnabledJob);
    }
    Ok(jobs)
}
