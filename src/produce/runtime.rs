//! What every run of every job shares: the state database, the sources,
//! the producer and read-back settings, the metrics; and one run of a job
//! with its outcome counted and logged.

use std::collections::HashMap;
use std::time::Duration;

use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::kafka::{client_config, Role, StageContext, PRODUCE_LINGER_MS, PRODUCE_READBACK_GROUP};
use crate::metrics::ProduceMetrics;

use super::job::{CompiledJob, RunContext, RunReport};
use super::source::Source;
use super::state::StateStore;
use super::{lease, settings_of, Options, ProduceError};

/// What every run shares.
pub struct Runtime {
    producer: Option<FutureProducer<StageContext>>,
    readback: rdkafka::ClientConfig,
    state: StateStore,
    sources: HashMap<String, Source>,
    metrics: ProduceMetrics,
    max_in_flight: usize,
    progress_interval: Duration,
    recovery_settle: Duration,
    lease: Duration,
    wait_for_lease: Duration,
    owner: String,
}

impl Runtime {
    pub async fn start(
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
            let config = produce
                .sources
                .get(&job.source)
                .ok_or_else(|| ProduceError::UnknownSource(job.source.clone()))?;
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
                    .map_err(ProduceError::Producer)?,
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
            metrics: ProduceMetrics::register(registry).map_err(ProduceError::Metrics)?,
            max_in_flight: produce.max_in_flight,
            progress_interval: produce.progress_interval,
            recovery_settle: produce.recovery_settle,
            lease: produce.lease,
            wait_for_lease: options.wait_for_lease,
            owner: lease::owner(),
        })
    }

    /// One run of `job`, its outcome counted and logged.
    pub async fn run(
        &self,
        job: &CompiledJob,
        shutdown: &CancellationToken,
    ) -> Result<RunReport, ProduceError> {
        let source = self
            .sources
            .get(&job.source)
            .ok_or_else(|| ProduceError::SourceNotConnected(job.source.clone()))?;
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
                .set(crate::clock::now_ms() / 1000);
        }
        self.metrics
            .runs
            .with_label_values(&[&job.name, outcome])
            .inc();
        result
    }
}
