//! One run of one job: recover what an unfinished run sent, query from the
//! checkpoint, map and produce every row, and advance the checkpoint only
//! when every event is acknowledged.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::avro::{Codec, KeyCodec};
use crate::kafka::{
    dlq_headers, enqueue, header, send_dead_letter, DeadLetterRecord, OutRecord, StageContext,
};
use crate::metrics::ProduceMetrics;

use super::checkpoint::{CheckpointValue, Param};
use super::mapping::{MappedEvent, Mapping, RowError};
use super::row::Row;
use super::source::{QueryCost, QueryOptions, Source, SourceError};
use super::state::{Prune, StateStore, UnfinishedRun};
use super::ProduceError;

/// Headers on every produced event; a re-run reads them back.
pub mod event_headers {
    pub const JOB: &str = "alertsvc.produce.job";
    pub const EVENT_ID: &str = "alertsvc.produce.event_id";
    pub const POSITION: &str = "alertsvc.produce.position";
}

/// Acknowledged ids written to the database at a time (jobs without a
/// checkpoint remember every id).
const MARK_BATCH: usize = 5_000;
/// How often a running job records that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Bad rows quoted in a run's error.
const QUOTED_BAD_ROWS: usize = 3;

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
    pub checkpoint: Option<(crate::config::CheckpointKind, Option<String>)>,
    pub schedule: Option<super::schedule::Schedule>,
    pub dedup_retention: Duration,
    /// BigQuery's cost controls for this job's queries.
    pub query_options: QueryOptions,
    /// The configuration key `query_options.maximum_bytes_billed` came
    /// from, named when a query is refused for it.
    pub bytes_limit_key: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub rows_read: u64,
    pub events_produced: u64,
    pub events_skipped: u64,
    pub recovered: u64,
    pub dead_letters: u64,
    pub bad_rows: Vec<String>,
    pub checkpoint: Option<String>,
    /// What the run's query scanned and billed (BigQuery).
    pub bytes_processed: Option<u64>,
    pub bytes_billed: Option<u64>,
    /// Dry runs on BigQuery: its estimate of the bytes the query processes.
    pub estimated_bytes: Option<u64>,
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
    pub shutdown: &'a CancellationToken,
}

type Delivery = (Result<(), String>, String, String);

impl CompiledJob {
    fn incremental(&self) -> bool {
        self.checkpoint.is_some()
    }

    fn start_checkpoint(
        &self,
        stored: Option<String>,
    ) -> Result<Option<CheckpointValue>, ProduceError> {
        let Some((kind, initial)) = &self.checkpoint else {
            return Ok(None);
        };
        let text = stored.or_else(|| initial.clone());
        match text {
            None => Ok(Some(CheckpointValue::initial(*kind))),
            Some(text) => CheckpointValue::parse(*kind, &text)
                .map(Some)
                .ok_or_else(|| ProduceError::Job {
                    job: self.name.clone(),
                    reason: format!("checkpoint {text:?} is not a valid {kind:?} value"),
                }),
        }
    }

    /// Runs the job once. With no producer (dry run) events are printed as
    /// JSON lines and nothing is written anywhere.
    pub async fn run(&self, cx: &RunContext<'_>) -> Result<RunReport, ProduceError> {
        let job = self.name.as_str();
        let fail = |reason: String| ProduceError::Job {
            job: job.to_owned(),
            reason,
        };
        let mut report = RunReport::default();
        let run_started = Instant::now();
        let run_started_ms = now_ms();

        if cx.producer.is_some() {
            if let Some(unfinished) = cx.state.unfinished_run(job).await? {
                // Records the dead run had in flight may still be landing
                // (and replicating): let them settle, or the read-back
                // misses them and they are emitted twice.
                let quiet_ms = now_ms() - unfinished.last_active_ms;
                let settle_ms = i64::try_from(cx.recovery_settle.as_millis()).unwrap_or(i64::MAX);
                if quiet_ms < settle_ms {
                    let wait = Duration::from_millis((settle_ms - quiet_ms) as u64);
                    tracing::info!(
                        job,
                        ?wait,
                        "an unfinished run was active moments ago; waiting before reading back"
                    );
                    tokio::time::sleep(wait).await;
                }
                let found = read_back(cx.readback, &unfinished, job)
                    .await
                    .map_err(fail)?;
                tracing::info!(
                    job,
                    run_id = %unfinished.run_id,
                    events = found.len(),
                    "recovered the events an unfinished run sent"
                );
                report.recovered = found.len() as u64;
                cx.state.mark_emitted(job, &found, now_ms()).await?;
                cx.state.forget_run(job).await?;
            }
            let start_offsets = end_offsets(cx.readback, &self.topic).await.map_err(fail)?;
            cx.state
                .begin_run(
                    job,
                    &UnfinishedRun {
                        run_id: format!("{job}-{run_started_ms}"),
                        topic: self.topic.clone(),
                        start_offsets,
                        started_at_ms: run_started_ms,
                        last_active_ms: run_started_ms,
                    },
                )
                .await?;
        }

        let checkpoint = self.start_checkpoint(cx.state.checkpoint(job).await?)?;
        let emitted: HashSet<String> = cx
            .state
            .emitted_ids(job, checkpoint.as_ref().map(|c| c.sort_key()).as_deref())
            .await?;
        let mut params = self.params.clone();
        if let Some(checkpoint) = &checkpoint {
            params.insert("checkpoint".into(), checkpoint.to_param());
        }
        tracing::info!(
            job,
            checkpoint = checkpoint.as_ref().map(|c| c.display()).unwrap_or_default(),
            known_ids = emitted.len(),
            "run started"
        );

        if cx.producer.is_none() {
            report.estimated_bytes = self.estimate(cx.source, &params).await?;
        }
        let mut pages = cx.source.query(&self.sql, &params, &self.query_options)?;
        // The query refused for its byte limit: the run fails with its own error.
        let mut refused: Option<SourceError> = None;
        // What the query cost is counted as soon as it is known (with the
        // first page), so a run that fails later still accounts for it.
        let mut accounted = false;
        let mut in_flight = FuturesUnordered::new();
        let mut marks: Vec<(String, String)> = Vec::new();
        let mut greatest = Greatest::default();
        let mut failure: Option<String> = None;
        let mut ticker = tokio::time::interval(cx.progress_interval);
        ticker.tick().await;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        let mut last_beat = Instant::now();
        let mut checked_columns: Option<super::row::Columns> = None;

        'pages: loop {
            let page = tokio::select! {
                page = pages.recv() => page,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    self.settle(done, &mut report, &mut marks, &mut failure, cx);
                    continue;
                }
                _ = ticker.tick() => {
                    log_progress(job, &report, run_started);
                    continue;
                }
                _ = heartbeat.tick(), if cx.producer.is_some() => {
                    cx.state.touch_run(job, now_ms()).await?;
                    last_beat = Instant::now();
                    continue;
                }
                _ = cx.shutdown.cancelled() => {
                    failure.get_or_insert_with(|| "interrupted by shutdown".into());
                    break;
                }
            };
            let page = match page {
                None => break,
                Some(Ok(page)) => {
                    if !accounted {
                        if let Some(cost) = pages.cost() {
                            self.account(&cost, &mut report, cx);
                            accounted = true;
                        }
                    }
                    page
                }
                Some(Err(e)) => {
                    failure.get_or_insert(e.to_string());
                    if matches!(e, SourceError::BytesBilledLimitExceeded { .. }) {
                        refused = Some(e);
                    }
                    break;
                }
            };
            for row in page {
                report.rows_read += 1;
                cx.metrics.rows_read.with_label_values(&[job]).inc();
                if checked_columns
                    .as_ref()
                    .is_none_or(|c| !Arc::ptr_eq(c, &row.columns))
                {
                    if let Err(e) = self.mapping.check_columns(&row.columns) {
                        failure.get_or_insert(e);
                        break 'pages;
                    }
                    checked_columns = Some(row.columns.clone());
                }
                let row_number = report.rows_read;
                let mapped = self.mapping.map(&row, row_number, run_started_ms);
                let encoded = match mapped {
                    Ok(event) => match self.encode(&event, row_number).await {
                        Ok((key, bytes)) => Ok((event, key, bytes)),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                match encoded {
                    Ok((event, key, bytes)) => {
                        greatest.see(event.checkpoint.as_ref(), &event.event_id);
                        if emitted.contains(&event.event_id) {
                            report.events_skipped += 1;
                            cx.metrics.events_skipped.with_label_values(&[job]).inc();
                            continue;
                        }
                        let Some(producer) = cx.producer else {
                            print_event(job, &self.topic, &event);
                            report.events_produced += 1;
                            continue;
                        };
                        let position = event
                            .checkpoint
                            .as_ref()
                            .map(|c| c.sort_key())
                            .unwrap_or_default();
                        let record = OutRecord {
                            topic: self.topic.clone(),
                            key: Some(key),
                            payload: Some(bytes),
                            headers: Some(
                                OwnedHeaders::new()
                                    .insert(header(event_headers::JOB, job))
                                    .insert(header(event_headers::EVENT_ID, &event.event_id))
                                    .insert(header(event_headers::POSITION, &position)),
                            ),
                        };
                        let delivery = enqueue(producer, &record)
                            .await
                            .map_err(|e| fail(format!("cannot produce to {}: {e}", self.topic)))?;
                        let event_id = event.event_id;
                        in_flight.push(
                            delivery
                                .map(move |r| (ack_result(r), event_id, position))
                                .boxed(),
                        );
                    }
                    Err(row_error) => {
                        greatest.see(self.mapping.checkpoint_of(&row).as_ref(), "");
                        report.dead_letters += 1;
                        cx.metrics.dead_letters.with_label_values(&[job]).inc();
                        if report.bad_rows.len() < QUOTED_BAD_ROWS {
                            report.bad_rows.push(row_error.to_string());
                        }
                        let Some(producer) = cx.producer else {
                            tracing::warn!(job, error = %row_error, "row cannot be mapped (dry run: not dead-lettered)");
                            eprintln!("job {job}: {row_error}");
                            continue;
                        };
                        // Retried until acknowledged: the run (and its
                        // checkpoint) finishes only after every dead letter
                        // is written, or fails if shutdown comes first.
                        let letter = self.dead_letter(&row, &row_error);
                        let shutdown = cx.shutdown;
                        in_flight.push(
                            async move {
                                let acked = send_dead_letter(producer, letter, shutdown)
                                    .await
                                    .map_err(|e| e.to_string());
                                (acked, String::new(), String::new())
                            }
                            .boxed(),
                        );
                    }
                }
                while in_flight.len() >= cx.max_in_flight {
                    if let Some(done) = in_flight.next().await {
                        self.settle(done, &mut report, &mut marks, &mut failure, cx);
                    }
                }
                if marks.len() >= MARK_BATCH {
                    cx.state.mark_emitted(job, &marks, now_ms()).await?;
                    marks.clear();
                }
            }
            while let Some(Some(done)) = in_flight.next().now_or_never() {
                self.settle(done, &mut report, &mut marks, &mut failure, cx);
            }
            if cx.producer.is_some() && last_beat.elapsed() >= HEARTBEAT {
                cx.state.touch_run(job, now_ms()).await?;
                last_beat = Instant::now();
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(cost) = pages.cost().filter(|_| !accounted) {
            self.account(&cost, &mut report, cx);
        }
        drop(pages);

        // Every record sent gets its answer, whatever happened above.
        while let Some(done) = in_flight.next().await {
            self.settle(done, &mut report, &mut marks, &mut failure, cx);
        }
        if cx.producer.is_none() {
            return match failure {
                Some(reason) => Err(refused.map_or_else(|| fail(reason), |e| self.over_limit(e))),
                None => {
                    print_dry_run_summary(job, cx.source, &report);
                    Ok(report)
                }
            };
        }
        cx.state.mark_emitted(job, &marks, now_ms()).await?;
        if let Some(reason) = failure {
            // The run record stays: the next run reads back what this one sent.
            return Err(refused.map_or_else(|| fail(reason), |e| self.over_limit(e)));
        }

        let new_checkpoint = match (checkpoint, greatest.value.clone()) {
            (Some(old), Some(seen)) => Some(old.max(seen)),
            (old, _) => old,
        };
        let prune = match &new_checkpoint {
            Some(checkpoint) => {
                let position = checkpoint.sort_key();
                // Ids at the new checkpoint stay known, for queries that
                // read `>= @checkpoint`.
                if greatest.value.as_ref() == Some(checkpoint) {
                    let boundary: Vec<(String, String)> = greatest
                        .ids
                        .iter()
                        .filter(|id| !id.is_empty())
                        .map(|id| (id.clone(), position.clone()))
                        .collect();
                    cx.state.mark_emitted(job, &boundary, now_ms()).await?;
                }
                Prune::BelowPosition(position)
            }
            None => Prune::EmittedBefore(
                run_started_ms
                    - i64::try_from(self.dedup_retention.as_millis()).unwrap_or(i64::MAX),
            ),
        };
        report.checkpoint = new_checkpoint.as_ref().map(|c| c.display());
        cx.state
            .finish_run(job, report.checkpoint.as_deref(), prune, now_ms())
            .await?;
        log_progress(job, &report, run_started);
        Ok(report)
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

    /// A dry run asks BigQuery what the query would process (a dry-run
    /// query, free); over the job's byte limit it stops there, as the real
    /// query would be refused.
    async fn estimate(
        &self,
        source: &Source,
        params: &BTreeMap<String, Param>,
    ) -> Result<Option<u64>, ProduceError> {
        let estimate = source
            .estimate(&self.sql, params, &self.query_options)
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

    fn settle(
        &self,
        (result, event_id, position): Delivery,
        report: &mut RunReport,
        marks: &mut Vec<(String, String)>,
        failure: &mut Option<String>,
        cx: &RunContext<'_>,
    ) {
        match result {
            // A dead letter (no event id).
            Ok(()) if event_id.is_empty() => {}
            Err(e) if event_id.is_empty() => {
                failure.get_or_insert(e);
            }
            Ok(()) => {
                report.events_produced += 1;
                cx.metrics
                    .events_produced
                    .with_label_values(&[&self.name])
                    .inc();
                if !self.incremental() {
                    marks.push((event_id, position));
                }
            }
            Err(e) => {
                failure.get_or_insert_with(|| format!("Kafka did not acknowledge an event: {e}"));
            }
        }
    }

    fn dead_letter(&self, row: &Row, error: &RowError) -> DeadLetterRecord {
        let mut letter = DeadLetterRecord {
            dlq_topic: self.dlq_topic.clone(),
            source: None,
            key: self.mapping.key_of(row).map(String::into_bytes),
            payload: Some(row.to_json().to_string().into_bytes()),
            stage: "produce".into(),
            reason: error.to_string(),
            pipeline: None,
            extra_headers: Vec::new(),
        }
        .with_header(dlq_headers::JOB, self.name.clone())
        .with_header(dlq_headers::ROW, error.row.to_string());
        if let Some(column) = &error.column {
            letter = letter.with_header(dlq_headers::COLUMN, column.clone());
        }
        letter
    }
}

/// The greatest checkpoint value seen and the event ids that carry it.
#[derive(Default)]
struct Greatest {
    value: Option<CheckpointValue>,
    ids: Vec<String>,
}

impl Greatest {
    fn see(&mut self, value: Option<&CheckpointValue>, event_id: &str) {
        let Some(value) = value else { return };
        match self.value.as_ref().map(|v| value.cmp(v)) {
            Some(std::cmp::Ordering::Less) => {}
            Some(std::cmp::Ordering::Equal) => self.ids.push(event_id.to_owned()),
            _ => {
                self.value = Some(value.clone());
                self.ids.clear();
                self.ids.push(event_id.to_owned());
            }
        }
    }
}

fn ack_result(
    result: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<(), String> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("the producer went away".into()),
    }
}

fn print_event(job: &str, topic: &str, event: &MappedEvent) {
    let line = serde_json::json!({
        "job": job,
        "topic": topic,
        "key": event.key,
        "eventId": event.event_id,
        "value": event.value,
    });
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// The dry run's totals on stderr (stdout holds only events): rows and
/// events, and on BigQuery its estimate of the bytes processed.
fn print_dry_run_summary(job: &str, source: &Source, report: &RunReport) {
    let bytes = |b: u64| format!("{} ({b} bytes)", crate::config::ByteSize::from(b));
    let estimate = match (source, report.estimated_bytes) {
        (_, Some(estimated)) => format!("; BigQuery estimates {} processed", bytes(estimated)),
        (Source::BigQuery(_), None) => "; BigQuery gave no estimate".into(),
        (Source::Sql(_), None) => String::new(),
    };
    let _ = writeln!(
        std::io::stderr().lock(),
        "dry run of job {job}: {} rows read, {} events would be produced, {} already emitted, \
         {} rows cannot be mapped{estimate}",
        report.rows_read,
        report.events_produced,
        report.events_skipped,
        report.dead_letters,
    );
}

fn log_progress(job: &str, report: &RunReport, started: Instant) {
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(
        job,
        rows_read = report.rows_read,
        events_produced = report.events_produced,
        skipped = report.events_skipped,
        dead_letters = report.dead_letters,
        rows_per_second = (report.rows_read as f64 / seconds).round(),
        "progress"
    );
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// The topic's end offset per partition.
async fn end_offsets(
    config: &rdkafka::ClientConfig,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, String> {
    let client = readback_consumer(config)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = client
            .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
            .map_err(|e| format!("cannot read metadata of topic {topic}: {e}"))?;
        let Some(info) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(format!("topic {topic} does not exist"));
        };
        if let Some(error) = info.error() {
            return Err(format!(
                "topic {topic}: {}",
                rdkafka::error::RDKafkaErrorCode::from(error)
            ));
        }
        let mut offsets = BTreeMap::new();
        for partition in info.partitions() {
            let (_, high) = client
                .fetch_watermarks(&topic, partition.id(), METADATA_TIMEOUT)
                .map_err(|e| format!("cannot read offsets of {topic}: {e}"))?;
            offsets.insert(partition.id(), high);
        }
        Ok(offsets)
    })
    .await
    .map_err(|e| format!("offset lookup panicked: {e}"))?
}

/// A consumer that never joins a group or commits: it only looks. It asks
/// for end-of-partition events: the read-back ends where fetches end, not
/// at a watermark listed earlier (a broker may list a stale one).
fn readback_consumer(config: &rdkafka::ClientConfig) -> Result<BaseConsumer<StageContext>, String> {
    let mut config = config.clone();
    config
        .set("group.id", "alertsvc-produce-readback")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    config
        .create_with_context(StageContext::default())
        .map_err(|e| format!("cannot create the read-back consumer: {e}"))
}

/// Reads the target topic from where an unfinished run began to its end and
/// returns (event id, position) of every event that run's job sent.
async fn read_back(
    config: &rdkafka::ClientConfig,
    run: &UnfinishedRun,
    job: &str,
) -> Result<Vec<(String, String)>, String> {
    let consumer = readback_consumer(config)?;
    let (run, job) = (run.clone(), job.to_owned());
    tokio::task::spawn_blocking(move || {
        let topic = run.topic.as_str();
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| format!("cannot read metadata of topic {topic}: {e}"))?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining: HashSet<i32> = HashSet::new();
        for partition in metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        {
            // Partitions added since the run began are read from their start.
            let start = match run.start_offsets.get(&partition) {
                Some(offset) => Offset::Offset(*offset),
                None => Offset::Beginning,
            };
            assignment
                .add_partition_offset(topic, partition, start)
                .map_err(|e| e.to_string())?;
            remaining.insert(partition);
        }
        let mut found = Vec::new();
        if remaining.is_empty() {
            return Ok(found);
        }
        consumer
            .assign(&assignment)
            .map_err(|e| format!("cannot read back {topic}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !remaining.is_empty() {
            if Instant::now() > deadline {
                return Err(format!("reading back {topic} took longer than 120 s"));
            }
            let message = match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                    remaining.remove(&partition);
                    continue;
                }
                Some(Err(e)) => return Err(format!("cannot read back {topic}: {e}")),
                Some(Ok(message)) => message,
            };
            let Some(headers) = message.headers() else {
                continue;
            };
            let value = |name: &str| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            if value(event_headers::JOB).as_deref() == Some(job.as_str()) {
                if let Some(event_id) = value(event_headers::EVENT_ID) {
                    found.push((event_id, value(event_headers::POSITION).unwrap_or_default()));
                }
            }
        }
        Ok(found)
    })
    .await
    .map_err(|e| format!("read-back panicked: {e}"))?
}
