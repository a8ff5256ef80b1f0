//! One run of one job, in phases: open the run (take the job's lease,
//! recovering first what a dead run sent), begin (the checkpoint and the
//! ledger), emit (query from the checkpoint minus the lookback, map and
//! produce every row the ledger does not know yet) and finish (advance the
//! checkpoint, only when every event is acknowledged, and prune the
//! ledger).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use crate::avro::{Codec, KeyCodec};
use crate::config::CheckpointKind;
use crate::kafka::{dlq_headers, DeadLetterCancelled, DeadLetterRecord, StageContext};
use crate::metrics::ProduceMetrics;

use super::checkpoint::{window_start, Param};
use super::lease::{Lease, LeaseLost};
use super::mapping::{ColumnsError, MappedEvent, Mapping, RowError};
use super::row::Row;
use super::source::{QueryCost, QueryOptions, Source, SourceError, Statement};
use super::state::StateStore;
use super::ProduceError;

mod checkpointing;
mod emit;
mod open;
mod readback;
mod report;

pub use emit::AckError;
pub use readback::ReadBackError;
pub use report::RunReport;

use checkpointing::Start;
use emit::{Emitted, Emitter};

/// Headers on every produced event; a re-run reads them back.
pub mod event_headers {
    pub const JOB: &str = "alertsvc.produce.job";
    pub const EVENT_ID: &str = "alertsvc.produce.event_id";
    pub const POSITION: &str = "alertsvc.produce.position";
}

/// Why a run failed (shown after `job <name>: `). Inner errors are part
/// of the message rather than chained sources, so the CLI prints each
/// cause once.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what} {text:?} is not a valid {kind:?} value")]
    BadCheckpoint {
        what: &'static str,
        text: String,
        kind: CheckpointKind,
    },
    #[error("{0}")]
    ReadBack(ReadBackError),
    #[error("interrupted by shutdown while waiting for the lease")]
    LeaseInterrupted,
    #[error("{0}")]
    LeaseLost(LeaseLost),
    #[error("interrupted by shutdown")]
    Shutdown,
    #[error("{0}")]
    Source(SourceError),
    #[error("{0}")]
    Columns(ColumnsError),
    #[error("cannot produce to {topic}: {error}")]
    Enqueue { topic: String, error: KafkaError },
    #[error("Kafka did not acknowledge an event: {0}")]
    NotAcknowledged(AckError),
    #[error("{0}")]
    DeadLetter(DeadLetterCancelled),
}

impl From<ReadBackError> for RunError {
    fn from(error: ReadBackError) -> Self {
        RunError::ReadBack(error)
    }
}

/// A job ready to run: its settings compiled and checked.
pub struct CompiledJob {
    pub name: String,
    pub source: String,
    pub sql: String,
    pub params: BTreeMap<String, Param>,
    pub mapping: Mapping,
    pub topic: String,
    pub dlq_topic: String,
    pub codec: Arc<Codec>,
    /// Writes the key column's text in the topic's key format.
    pub key_codec: Arc<KeyCodec>,
    pub checkpoint: Option<(CheckpointKind, Option<String>)>,
    /// How far below the checkpoint a run reads again, in the checkpoint's
    /// units (microseconds or values); 0 without a lookback.
    pub lookback: i64,
    pub schedule: Option<super::schedule::Schedule>,
    pub dedup_retention: Duration,
    /// BigQuery's cost controls for this job's queries.
    pub query_options: QueryOptions,
    /// The configuration key `query_options.maximum_bytes_billed` came
    /// from, named when a query is refused for it.
    pub bytes_limit_key: Option<String>,
}

/// What a run needs from the process.
pub struct RunContext<'a> {
    pub producer: Option<&'a FutureProducer<StageContext>>,
    pub readback: &'a rdkafka::ClientConfig,
    pub state: &'a StateStore,
    pub source: &'a Source,
    pub metrics: &'a ProduceMetrics,
    pub max_in_flight: usize,
    pub progress_interval: Duration,
    pub recovery_settle: Duration,
    /// `produce.lease`, and how long to wait for a lease another run holds.
    pub lease: Duration,
    pub wait_for_lease: Duration,
    /// The name this process holds leases under.
    pub owner: &'a str,
    pub shutdown: &'a CancellationToken,
}

/// When a run began: the monotonic instant paces its progress log, the
/// wall-clock time names it and feeds `meta = "run_started_at"`.
#[derive(Debug, Clone, Copy)]
pub struct RunStart {
    pub at: Instant,
    pub ms: i64,
}

/// What the begin phase read: where the run starts, and what it binds.
struct Begun {
    start: Option<Start>,
    emitted: HashSet<String>,
    params: BTreeMap<String, Param>,
}

impl CompiledJob {
    /// Runs the job once. With no producer (dry run) events are printed as
    /// JSON lines and nothing is written anywhere, and no lease is taken.
    pub async fn run(&self, cx: &RunContext<'_>) -> Result<RunReport, ProduceError> {
        let started = RunStart {
            at: Instant::now(),
            ms: crate::clock::now_ms(),
        };
        if cx.producer.is_none() {
            return self.dry_run(cx, started).await;
        }
        let open = self.open_run(cx, started.ms).await?;
        let result = self.leased(cx, &open.lease, open.recovered, started).await;
        if result.is_err() {
            open.lease.release(cx.state).await;
        }
        result
    }

    async fn dry_run(
        &self,
        cx: &RunContext<'_>,
        started: RunStart,
    ) -> Result<RunReport, ProduceError> {
        let begun = self.begin(cx).await?;
        let report = RunReport {
            estimated_bytes: self.estimate(cx.source, &begun.params).await?,
            ..RunReport::default()
        };
        let pages = cx.source.query(&self.statement(&begun.params))?;
        let emitted = Emitter::new(self, cx, None, begun.emitted, report, started)
            .run(pages)
            .await?;
        if let Some(error) = self.failure(emitted.refused, emitted.failure) {
            return Err(error);
        }
        report::print_dry_run_summary(&self.name, cx.source, &emitted.report);
        Ok(emitted.report)
    }

    async fn leased(
        &self,
        cx: &RunContext<'_>,
        lease: &Lease,
        recovered: u64,
        started: RunStart,
    ) -> Result<RunReport, ProduceError> {
        let begun = self.begin(cx).await?;
        let report = RunReport {
            recovered,
            ..RunReport::default()
        };
        let pages = cx.source.query(&self.statement(&begun.params))?;
        let mut emitted = Emitter::new(self, cx, Some(lease), begun.emitted, report, started)
            .run(pages)
            .await?;
        emit::write_marks(self, cx, &mut emitted).await?;
        if let Some(error) = self.failure(emitted.refused.take(), emitted.failure.take()) {
            // The run record stays: the next run reads back what this one sent.
            return Err(error);
        }
        self.finish(cx, lease, begun.start.as_ref(), emitted, started)
            .await
    }

    /// Reads where the run starts (the checkpoint, and the window below it
    /// the lookback reaches) and the ids the ledger holds.
    async fn begin(&self, cx: &RunContext<'_>) -> Result<Begun, ProduceError> {
        let job = self.name.as_str();
        let stored = cx.state.checkpoint(job).await?;
        let start =
            checkpointing::start(self.checkpoint.as_ref(), stored).map_err(|e| self.failed(e))?;
        let window = start
            .as_ref()
            .map(|s| window_start(&s.checkpoint, self.lookback, &s.ledger_from));
        let emitted: HashSet<String> = cx.state.emitted_ids(job).await?;
        let mut params = self.params.clone();
        if let Some(window) = &window {
            params.insert("checkpoint".into(), window.start.to_param());
            if window.narrowed {
                tracing::info!(
                    job,
                    from = window.start.display(),
                    "the lookback reaches only as far down as the ledger is complete \
                     (it was raised, or the job ran without one): the window grows back \
                     as the checkpoint advances"
                );
            }
        }
        tracing::info!(
            job,
            checkpoint = start
                .as_ref()
                .map(|s| s.checkpoint.display())
                .unwrap_or_default(),
            from = window
                .as_ref()
                .map(|w| w.start.display())
                .unwrap_or_default(),
            known_ids = emitted.len(),
            "run started"
        );
        Ok(Begun {
            start,
            emitted,
            params,
        })
    }

    /// Stores the new checkpoint, prunes the ledger and ends the run
    /// record, if the lease is still this run's.
    async fn finish(
        &self,
        cx: &RunContext<'_>,
        lease: &Lease,
        start: Option<&Start>,
        emitted: Emitted,
        started: RunStart,
    ) -> Result<RunReport, ProduceError> {
        let mut report = emitted.report;
        let plan = checkpointing::finish(
            start,
            emitted.greatest.value(),
            self.lookback,
            self.dedup_retention,
            started.ms,
        );
        report.checkpoint = plan.checkpoint.as_ref().map(|c| c.display());
        let finished = cx
            .state
            .finish_run(
                &self.name,
                lease.run_id(),
                plan.stored.as_ref(),
                plan.prune,
                crate::clock::now_ms(),
            )
            .await?;
        if !finished {
            return Err(self.failed(RunError::LeaseLost(lease.lost_reason())));
        }
        report::log_progress(&self.name, &report, started.at);
        Ok(report)
    }

    /// The run's error: a query refused for its byte limit is reported as
    /// such whatever else went wrong.
    fn failure(
        &self,
        refused: Option<SourceError>,
        failure: Option<RunError>,
    ) -> Option<ProduceError> {
        match (refused, failure) {
            (Some(refused), _) => Some(self.over_limit(refused)),
            (None, Some(failure)) => Some(self.failed(failure)),
            (None, None) => None,
        }
    }

    fn failed(&self, error: RunError) -> ProduceError {
        ProduceError::Job {
            job: self.name.clone(),
            error: Box::new(error),
        }
    }

    /// The record's key and value bytes, or why the row cannot be one.
    async fn encode(&self, event: &MappedEvent, row: u64) -> Result<(Vec<u8>, Vec<u8>), RowError> {
        let value = self
            .codec
            .encode(&event.value)
            .await
            .map_err(|e| RowError {
                row,
                column: None,
                reason: format!("the event does not fit the topic's schema: {e}"),
            })?;
        let key = self
            .key_codec
            .encode_str(&event.key)
            .await
            .map_err(|e| RowError {
                row,
                column: Some(self.mapping.key_column().to_owned()),
                reason: format!("the key does not fit the topic's key format: {e}"),
            })?;
        Ok((key, value))
    }

    /// The job's query with this run's parameter values.
    fn statement<'a>(&'a self, params: &'a BTreeMap<String, Param>) -> Statement<'a> {
        Statement {
            sql: &self.sql,
            params,
            options: &self.query_options,
        }
    }

    /// A dry run asks BigQuery what the query would process (a dry-run
    /// query, free); over the job's byte limit it stops there, as the real
    /// query would be refused.
    async fn estimate(
        &self,
        source: &Source,
        params: &BTreeMap<String, Param>,
    ) -> Result<Option<u64>, ProduceError> {
        let estimate = source
            .estimate(&self.statement(params))
            .await
            .map_err(|e| match e {
                SourceError::BytesBilledLimitExceeded { .. } => self.over_limit(e),
                other => ProduceError::Source(other),
            })?;
        if let (Some(bytes), Some(limit)) = (estimate, self.query_options.maximum_bytes_billed) {
            if bytes > limit {
                return Err(self.over_limit(SourceError::BytesBilledLimitExceeded {
                    source_name: self.source.clone(),
                    limit: Some(limit),
                    reason: format!(
                        "its dry run estimates {} ({bytes} bytes) processed",
                        crate::config::ByteSize::from(bytes)
                    ),
                }));
            }
        }
        if let Some(bytes) = estimate {
            tracing::info!(job = %self.name, estimated_bytes = bytes, "BigQuery dry-run estimate");
        }
        Ok(estimate)
    }

    fn over_limit(&self, error: SourceError) -> ProduceError {
        ProduceError::OverBytesLimit {
            job: self.name.clone(),
            limit_key: self
                .bytes_limit_key
                .clone()
                .unwrap_or_else(|| format!("produce.jobs.{}.maximum_bytes_billed", self.name)),
            error,
        }
    }

    /// Counts what the query cost, whatever becomes of the run.
    fn account(&self, cost: &QueryCost, report: &mut RunReport, cx: &RunContext<'_>) {
        let job = self.name.as_str();
        report.bytes_processed = cost.bytes_processed;
        report.bytes_billed = cost.bytes_billed;
        if let Some(bytes) = cost.bytes_processed {
            cx.metrics
                .bytes_processed
                .with_label_values(&[job])
                .inc_by(bytes);
        }
        if let Some(bytes) = cost.bytes_billed {
            cx.metrics
                .bytes_billed
                .with_label_values(&[job])
                .inc_by(bytes);
        }
        tracing::info!(
            job,
            bigquery_job_id = %cost.query_id,
            bytes_processed = cost.bytes_processed,
            bytes_billed = cost.bytes_billed,
            cache_hit = cost.cache_hit,
            "BigQuery query cost"
        );
    }

    fn dead_letter(&self, row: &Row, error: &RowError) -> DeadLetterRecord {
        let mut letter =
            DeadLetterRecord::new(self.dlq_topic.clone(), "produce", error.to_string())
                .with_key(self.mapping.key_of(row).map(String::into_bytes))
                .with_payload(Some(row.to_json().to_string().into_bytes()))
                .with_header(dlq_headers::JOB, self.name.clone())
                .with_header(dlq_headers::ROW, error.row.to_string());
        if let Some(column) = &error.column {
            letter = letter.with_header(dlq_headers::COLUMN, column.clone());
        }
        letter
    }
}
