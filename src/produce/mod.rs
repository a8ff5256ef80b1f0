//! `alertsvc produce`: scheduled warehouse queries become keyed events
//! (DESIGN §7). Each job's SQL runs on its source (BigQuery, PostgreSQL or
//! SQLite) with its checkpoint bound as `@checkpoint`; every row becomes one
//! event on the job's topic, produced idempotently and keyed by the key
//! column; the checkpoint advances once Kafka has acknowledged every event.
//!
//! Exactly-once emission per job and event id rests on records in the
//! state database: the ids already emitted (the ledger: kept from the
//! checkpoint minus the job's lookback up, or for `dedup_retention` without
//! a checkpoint), and the job's run record: the lease of the one run that
//! may work on the job, with the topic's end offsets when it began. A run
//! that dies leaves that record behind; once its lease lapsed, the next run
//! reads the topic back from those offsets, learns which events made it,
//! and emits only the rest.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use crate::avro::{load_schema, Codec, KeyCodec};
use crate::config::{query_labels, resolve_path, ProduceSettings, Settings, SourceSettings};
use crate::http::{AppState, Health};
use crate::kafka::{client_config, Role, StageContext, PRODUCE_LINGER_MS, PRODUCE_READBACK_GROUP};
use crate::metrics::ProduceMetrics;

pub mod checkpoint;
pub mod job;
pub mod lease;
pub mod mapping;
pub mod row;
pub mod schedule;
pub mod source;
pub mod sql;
pub mod state;

use job::{CompiledJob, RunContext, RunReport};
use schedule::{Clock, Schedule};
use source::{QueryOptions, Source, SourceError};
use state::{StateError, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("no [produce] section in the configuration")]
    NotConfigured,
    #[error("no job named {0:?} in [produce.jobs]")]
    UnknownJob(String),
    #[error("`produce.jobs.{job}`: {reason}")]
    Config { job: String, reason: String },
    #[error("job {job}: {reason}")]
    Job { job: String, reason: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Setup(String),
    #[error("job {job}: {count} row(s) could not be mapped and went to {dlq_topic}: {first}")]
    BadRows {
        job: String,
        count: u64,
        dlq_topic: String,
        first: String,
    },
    #[error(
        "job {job}: {error}; narrow the query (`alertsvc produce --dry-run --job {job}` \
         shows BigQuery's estimate) or raise `{limit_key}`"
    )]
    OverBytesLimit {
        job: String,
        limit_key: String,
        error: SourceError,
    },
    #[error(
        "job {job} is already running: {owner} holds it (run {run_id}, alive {alive_ago_s}s ago, \
         lease until {lease_until}); this run did nothing"
    )]
    LeaseHeld {
        job: String,
        run_id: String,
        owner: String,
        alive_ago_s: i64,
        lease_until: String,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<ProduceError>),
}

/// `--once`: rows went to the dead-letter topic, the run itself completed.
pub const EXIT_DEAD_LETTERS: u8 = 2;
/// `--once`: a query would have billed more than its `maximum_bytes_billed`
/// and did not run; nothing was emitted.
pub const EXIT_OVER_BYTES_LIMIT: u8 = 4;
/// `--once` exit status when another run holds the job (EX_TEMPFAIL: try
/// again later); distinct from 1 so a CronJob can tell it from a failure.
pub const EXIT_LEASE_HELD: u8 = 75;

impl ProduceError {
    /// [`EXIT_DEAD_LETTERS`] when the only trouble is rows sent to the
    /// dead-letter topic (the run itself completed),
    /// [`EXIT_OVER_BYTES_LIMIT`] for a query over its byte limit,
    /// [`EXIT_LEASE_HELD`] when another run holds the job, 1 for everything
    /// else. Several jobs: 1 if any failed otherwise, else 4 if any query
    /// was over its limit, else 2 if any had dead letters, else 75.
    pub fn exit_code(&self) -> u8 {
        match self {
            ProduceError::BadRows { .. } => EXIT_DEAD_LETTERS,
            ProduceError::OverBytesLimit { .. } => EXIT_OVER_BYTES_LIMIT,
            ProduceError::LeaseHeld { .. } => EXIT_LEASE_HELD,
            ProduceError::Several(all) => {
                let codes: Vec<u8> = all.iter().map(ProduceError::exit_code).collect();
                [1, EXIT_OVER_BYTES_LIMIT, EXIT_DEAD_LETTERS, EXIT_LEASE_HELD]
                    .into_iter()
                    .find(|code| codes.contains(code))
                    .unwrap_or(1)
            }
            _ => 1,
        }
    }
}

/// How `alertsvc produce` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Jobs to run; empty means every enabled job.
    pub jobs: Vec<String>,
    /// Run each job once and exit (a Kubernetes CronJob).
    pub once: bool,
    /// Run on this cron schedule instead of each job's own.
    pub schedule: Option<String>,
    /// Print events as JSON lines; produce and record nothing.
    pub dry_run: bool,
    /// How long a run waits for its job while another run holds it (0:
    /// give up at once).
    pub wait_for_lease: std::time::Duration,
}

fn settings_of(settings: &Settings) -> Result<&ProduceSettings, ProduceError> {
    settings.produce.as_ref().ok_or(ProduceError::NotConfigured)
}

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
        let invalid = |reason: String| ProduceError::Config {
            job: name.clone(),
            reason,
        };
        let topic = settings.topic(&job.topic).map_err(&invalid)?;
        let codec = Codec::build(dir, topic, settings.schema_registry.as_ref())
            .map_err(|e| invalid(format!("topic {}: {e}", job.topic)))?;
        let key_codec = KeyCodec::build(dir, topic, settings.schema_registry.as_ref())
            .and_then(|codec| {
                codec.check_string_keys(topic, &format!("produce.jobs.{name}"))?;
                Ok(codec)
            })
            .map_err(|e| invalid(format!("topic {}: {e}", job.topic)))?;
        let schema = topic
            .schema
            .as_deref()
            .map(|s| load_schema(dir, s))
            .transpose()
            .map_err(|e| invalid(format!("topic {}: {e}", job.topic)))?;
        let mapping = mapping::Mapping::compile(name, job, schema.as_ref()).map_err(&invalid)?;
        let sql = match (&job.sql, &job.sql_file) {
            (Some(sql), _) => sql.clone(),
            (None, Some(file)) => {
                let path = resolve_path(dir, file);
                std::fs::read_to_string(&path)
                    .map_err(|e| invalid(format!("sql_file {}: {e}", path.display())))?
            }
            (None, None) => return Err(invalid("set sql or sql_file".into())),
        };
        let params = mapping::config_params(&job.params).map_err(&invalid)?;
        let used = sql::parse(&sql, sql::Placeholder::Named).names;
        for name in &used {
            let known =
                params.contains_key(name) || (name == "checkpoint" && job.checkpoint.is_some());
            if !known {
                return Err(invalid(format!(
                    "the SQL uses @{name}, which is not in `params`{}",
                    if name == "checkpoint" {
                        " (@checkpoint needs a [checkpoint] table)"
                    } else {
                        ""
                    }
                )));
            }
        }
        if job.checkpoint.is_some() && !used.iter().any(|n| n == "checkpoint") {
            return Err(invalid(
                "a checkpoint is configured but the SQL never reads @checkpoint".into(),
            ));
        }
        let lookback = match &job.checkpoint {
            Some(cp) => cp
                .lookback_units()
                .map_err(|reason| invalid(format!("checkpoint.lookback: {reason}")))?,
            None => 0,
        };
        if let Some(cp) = &job.checkpoint {
            if let Some(initial) = &cp.initial {
                if checkpoint::CheckpointValue::parse(cp.kind, initial).is_none() {
                    return Err(invalid(format!(
                        "checkpoint.initial {initial:?} is not a valid {:?} value",
                        cp.kind
                    )));
                }
            }
        }
        let schedule = job
            .schedule
            .as_deref()
            .map(Schedule::parse)
            .transpose()
            .map_err(&invalid)?;
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
        return Err(ProduceError::Setup(
            "no job to run: [produce.jobs] has no enabled job".into(),
        ));
    }
    Ok(jobs)
}

/// What every run shares.
struct Runtime {
    producer: Option<FutureProducer<StageContext>>,
    readback: rdkafka::ClientConfig,
    state: StateStore,
    sources: HashMap<String, Source>,
    metrics: ProduceMetrics,
    max_in_flight: usize,
    progress_interval: std::time::Duration,
    recovery_settle: std::time::Duration,
    lease: std::time::Duration,
    wait_for_lease: std::time::Duration,
    owner: String,
}

impl Runtime {
    async fn start(
        settings: &Settings,
        jobs: &[CompiledJob],
        options: &Options,
        registry: &Registry,
    ) -> Result<Runtime, ProduceError> {
        let dry_run = options.dry_run;
        let produce = settings_of(settings)?;
        let state = StateStore::connect(
            produce.state.database_url.expose(),
            produce.state.max_connections,
        )
        .await?;
        if produce.state.migrate_on_start {
            state.migrate().await?;
        }
        let mut sources = HashMap::new();
        for job in jobs {
            if sources.contains_key(&job.source) {
                continue;
            }
            let config = produce.sources.get(&job.source).ok_or_else(|| {
                ProduceError::Setup(format!("no source {:?} in [produce.sources]", job.source))
            })?;
            sources.insert(
                job.source.clone(),
                Source::connect(&job.source, config).await?,
            );
        }
        let producer = if dry_run {
            None
        } else {
            let mut config = client_config(
                &settings.kafka,
                "the produce producer",
                &Role::IdempotentProducer {
                    linger_ms: PRODUCE_LINGER_MS,
                },
            );
            // After [kafka.client]: produce's own tuning is the more
            // specific; `config check` warns when it overrides a relied-on
            // property.
            for (name, value) in &produce.producer {
                config.set(name, value);
            }
            Some(
                config
                    .create_with_context(StageContext::default())
                    .map_err(|e| ProduceError::Setup(format!("cannot create the producer: {e}")))?,
            )
        };
        Ok(Runtime {
            producer,
            readback: client_config(
                &settings.kafka,
                "the produce read-back reader",
                &Role::ReadBack {
                    group_id: PRODUCE_READBACK_GROUP.to_owned(),
                },
            ),
            state,
            sources,
            metrics: ProduceMetrics::register(registry)
                .map_err(|e| ProduceError::Setup(e.to_string()))?,
            max_in_flight: produce.max_in_flight,
            progress_interval: produce.progress_interval,
            recovery_settle: produce.recovery_settle,
            lease: produce.lease,
            wait_for_lease: options.wait_for_lease,
            owner: lease::owner(),
        })
    }

    /// One run of `job`, its outcome counted and logged.
    async fn run(
        &self,
        job: &CompiledJob,
        shutdown: &CancellationToken,
    ) -> Result<RunReport, ProduceError> {
        let source = self.sources.get(&job.source).ok_or_else(|| {
            ProduceError::Setup(format!("source {} is not connected", job.source))
        })?;
        let cx = RunContext {
            producer: self.producer.as_ref(),
            readback: &self.readback,
            state: &self.state,
            source,
            metrics: &self.metrics,
            max_in_flight: self.max_in_flight,
            progress_interval: self.progress_interval,
            recovery_settle: self.recovery_settle,
            lease: self.lease,
            wait_for_lease: self.wait_for_lease,
            owner: &self.owner,
            shutdown,
        };
        let timer = self
            .metrics
            .run_seconds
            .with_label_values(&[&job.name])
            .start_timer();
        let result = job.run(&cx).await.and_then(|report| {
            if report.dead_letters > 0 {
                return Err(ProduceError::BadRows {
                    job: job.name.clone(),
                    count: report.dead_letters,
                    dlq_topic: job.dlq_topic.clone(),
                    first: report.bad_rows.join("; "),
                });
            }
            Ok(report)
        });
        if let Err(e @ ProduceError::LeaseHeld { .. }) = &result {
            // Not a failed run: the job is being run. Counted apart, and
            // left out of the run metrics.
            timer.stop_and_discard();
            tracing::warn!(job = %job.name, error = %e, "run skipped");
            self.metrics
                .lease_conflicts
                .with_label_values(&[&job.name])
                .inc();
            return result;
        }
        timer.observe_duration();
        let outcome = match &result {
            Ok(report) => {
                tracing::info!(
                    job = %job.name,
                    rows_read = report.rows_read,
                    events_produced = report.events_produced,
                    skipped = report.events_skipped,
                    recovered = report.recovered,
                    checkpoint = report.checkpoint.as_deref().unwrap_or(""),
                    bytes_processed = report.bytes_processed,
                    bytes_billed = report.bytes_billed,
                    "run finished"
                );
                "ok"
            }
            Err(e @ ProduceError::OverBytesLimit { .. }) => {
                tracing::error!(job = %job.name, error = %e, "run refused: over its byte limit");
                "bytes_limit_exceeded"
            }
            Err(e @ ProduceError::BadRows { .. }) => {
                tracing::warn!(job = %job.name, error = %e, "run finished with dead letters");
                "dead_letters"
            }
            Err(e) => {
                tracing::error!(job = %job.name, error = %e, "run failed");
                "failed"
            }
        };
        if matches!(outcome, "ok" | "dead_letters") && self.producer.is_some() {
            self.metrics
                .last_success
                .with_label_values(&[&job.name])
                .set(job::now_ms() / 1000);
        }
        self.metrics
            .runs
            .with_label_values(&[&job.name, outcome])
            .inc();
        result
    }
}

/// `alertsvc produce`.
pub async fn run(
    settings: &Settings,
    config_dir: &Path,
    options: &Options,
    shutdown: CancellationToken,
) -> Result<(), ProduceError> {
    let produce = settings_of(settings)?;
    let jobs = compile_jobs(settings, config_dir, &options.jobs)?;
    let once = options.once || options.dry_run;
    if once && options.schedule.is_some() {
        return Err(ProduceError::Setup(
            "--schedule runs in-process; it cannot be combined with --once or --dry-run".into(),
        ));
    }
    let override_schedule = options
        .schedule
        .as_deref()
        .map(Schedule::parse)
        .transpose()
        .map_err(ProduceError::Setup)?;
    if !once && override_schedule.is_none() {
        if let Some(job) = jobs.iter().find(|j| j.schedule.is_none()) {
            return Err(ProduceError::Setup(format!(
                "job {} has no schedule: pass --once, --schedule CRON, or set its `schedule`",
                job.name
            )));
        }
    }
    let written: Vec<(&str, &Codec)> = jobs
        .iter()
        .map(|job| (job.topic.as_str(), job.codec.as_ref()))
        .collect();
    crate::avro::check_writes(&written)
        .await
        .map_err(|(topic, e)| ProduceError::Setup(format!("topic {topic}: {e}")))?;
    let registry = Registry::new();
    let runtime = Runtime::start(settings, &jobs, options, &registry).await?;

    if once {
        let results =
            futures::future::join_all(jobs.iter().map(|job| runtime.run(job, &shutdown))).await;
        let mut errors: Vec<ProduceError> = results.into_iter().filter_map(Result::err).collect();
        return match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ProduceError::Several(errors)),
        };
    }

    let health = Arc::new(Health::default());
    let router = crate::http::ops_router(AppState {
        health: health.clone(),
        registry: registry.clone(),
    });
    let (_, server) = crate::http::serve(produce.http_addr, router, shutdown.clone())
        .await
        .map_err(|e| ProduceError::Setup(format!("cannot listen on {}: {e}", produce.http_addr)))?;
    health.set_ready(true);
    let clock = Clock::system();
    let loops = jobs.iter().map(|job| {
        let schedule = override_schedule
            .as_ref()
            .or(job.schedule.as_ref())
            .cloned();
        let (runtime, shutdown) = (&runtime, shutdown.clone());
        async move {
            let Some(schedule) = schedule else { return };
            tracing::info!(job = %job.name, schedule = schedule.pattern(), "scheduled");
            schedule::run_on_schedule(&job.name, &schedule, clock, shutdown.clone(), |_| {
                let shutdown = shutdown.clone();
                async move {
                    // Failures are logged and counted; the next fire retries.
                    let _ = runtime.run(job, &shutdown).await;
                }
            })
            .await;
        }
    });
    futures::future::join_all(loops).await;
    let _ = server.await;
    Ok(())
}
