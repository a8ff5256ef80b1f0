//! One run of one job: take the job's lease (recovering what a dead run
//! sent), query from the checkpoint minus the lookback, map and produce
//! every row the ledger does not know yet, and advance the checkpoint only
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
    dlq_headers, enqueue, header, partition_watermarks, send_dead_letter, DeadLetterRecord,
    OutRecord, StageContext,
};
use crate::metrics::ProduceMetrics;

use super::checkpoint::{window_start, CheckpointValue, Param};
use super::lease::{self, Lease, LeaseError};
use super::mapping::{MappedEvent, Mapping, RowError};
use super::row::Row;
use super::source::{QueryCost, QueryOptions, Source, SourceError};
use super::state::{Prune, StateStore, StoredCheckpoint, UnfinishedRun};
use super::ProduceError;

/// Headers on every produced event; a re-run reads them back.
pub mod event_headers {
    pub const JOB: &str = "alertsvc.produce.job";
    pub const EVENT_ID: &str = "alertsvc.produce.event_id";
    pub const POSITION: &str = "alertsvc.produce.position";
}

/// Acknowledged ids written to the database at a time.
const MARK_BATCH: usize = 5_000;
/// Ledger ids of rows sent to the dead-letter topic start with this (then
/// a hash of the row): a bad row read again is not dead-lettered again.
const DEAD_LETTER_ID: &str = "dead-letter:";
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
    /// `produce.lease`, and how long to wait for a lease another run holds.
    pub lease: Duration,
    pub wait_for_lease: Duration,
    /// The name this process holds leases under.
    pub owner: &'a str,
    pub shutdown: &'a CancellationToken,
}

type Delivery = (Result<(), String>, String, String);

impl CompiledJob {
    /// The stored checkpoint (or the initial one) and the value from which
    /// the ledger holds every emitted event.
    fn start_checkpoint(
        &self,
        stored: Option<StoredCheckpoint>,
    ) -> Result<Option<(CheckpointValue, CheckpointValue)>, ProduceError> {
        let Some((kind, initial)) = &self.checkpoint else {
            return Ok(None);
        };
        let parse = |text: &str, what: &str| {
            CheckpointValue::parse(*kind, text).ok_or_else(|| ProduceError::Job {
                job: self.name.clone(),
                reason: format!("{what} {text:?} is not a valid {kind:?} value"),
            })
        };
        let Some(stored) = stored else {
            // Nothing was emitted below the first checkpoint: the ledger is
            // complete from there.
            let first = match initial {
                Some(text) => parse(text, "checkpoint")?,
                None => CheckpointValue::initial(*kind),
            };
            return Ok(Some((first.clone(), first)));
        };
        let checkpoint = parse(&stored.checkpoint, "checkpoint")?;
        let ledger_from = match &stored.ledger_from {
            Some(text) => parse(text, "ledger_from")?,
            // Checkpointed by a version that kept only the ids at the
            // checkpoint.
            None => checkpoint.clone(),
        };
        Ok(Some((checkpoint, ledger_from)))
    }

    /// Runs the job once. With no producer (dry run) events are printed as
    /// JSON lines and nothing is written anywhere, and no lease is taken.
    pub async fn run(&self, cx: &RunContext<'_>) -> Result<RunReport, ProduceError> {
        let run_started = Instant::now();
        let run_started_ms = now_ms();
        let mut report = RunReport::default();
        if cx.producer.is_none() {
            return self
                .run_leased(cx, None, report, run_started, run_started_ms)
                .await;
        }
        let lease = self.take_lease(cx, &mut report, run_started_ms).await?;
        let result = self
            .run_leased(cx, Some(&lease), report, run_started, run_started_ms)
            .await;
        if result.is_err() {
            lease.release(cx.state).await;
        }
        result
    }

    /// Takes the job's lease. A run that died holding it is finished first:
    /// what it sent is read back into the ledger.
    async fn take_lease(
        &self,
        cx: &RunContext<'_>,
        report: &mut RunReport,
        run_started_ms: i64,
    ) -> Result<Lease, ProduceError> {
        let job = self.name.as_str();
        let fail = |reason: String| ProduceError::Job {
            job: job.to_owned(),
            reason,
        };
        let record = UnfinishedRun {
            run_id: lease::run_id(job, run_started_ms),
            owner: cx.owner.to_owned(),
            topic: self.topic.clone(),
            start_offsets: end_offsets(cx.readback, &self.topic).await.map_err(fail)?,
            started_at_ms: run_started_ms,
            last_active_ms: run_started_ms,
            lease_until_ms: run_started_ms,
        };
        let acquired = lease::acquire(
            cx.state,
            job,
            &record,
            cx.lease,
            cx.wait_for_lease,
            cx.shutdown,
        )
        .await
        .map_err(|e| match e {
            LeaseError::Held(holder) => ProduceError::LeaseHeld {
                job: job.to_owned(),
                run_id: holder.run_id,
                owner: holder.owner,
                alive_ago_s: (now_ms() - holder.last_active_ms).max(0) / 1000,
                lease_until: super::row::format_rfc3339(holder.lease_until_ms * 1000),
            },
            LeaseError::Interrupted => {
                fail("interrupted by shutdown while waiting for the lease".into())
            }
            LeaseError::State(e) => e.into(),
        })?;
        let lease = acquired.lease;
        let recovered = match &acquired.dead {
            Some(dead) => self.recover(cx, dead).await,
            None => Ok(0),
        };
        let refreshed = match recovered {
            Ok(count) => {
                report.recovered = count;
                if acquired.dead.is_some() || acquired.waited {
                    self.refresh_start(cx, &lease, run_started_ms).await
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = refreshed {
            lease.release(cx.state).await;
            return Err(e);
        }
        Ok(lease)
    }

    /// Reads back what a dead run sent and records it in the ledger.
    async fn recover(
        &self,
        cx: &RunContext<'_>,
        dead: &UnfinishedRun,
    ) -> Result<u64, ProduceError> {
        let job = self.name.as_str();
        // Records the dead run had in flight may still be landing (and
        // replicating): let them settle, or the read-back misses them and
        // they are emitted twice. A lapsed lease usually means this has
        // long passed; a run that failed and let go is another matter.
        let quiet_ms = now_ms() - dead.last_active_ms;
        let settle_ms = i64::try_from(cx.recovery_settle.as_millis()).unwrap_or(i64::MAX);
        if quiet_ms < settle_ms {
            let wait = Duration::from_millis((settle_ms - quiet_ms) as u64);
            tracing::info!(
                job,
                ?wait,
                "the run this one takes over was active moments ago; waiting before reading back"
            );
            tokio::time::sleep(wait).await;
        }
        let found =
            read_back(cx.readback, dead, job)
                .await
                .map_err(|reason| ProduceError::Job {
                    job: job.to_owned(),
                    reason,
                })?;
        tracing::info!(
            job,
            run_id = %dead.run_id,
            events = found.len(),
            "recovered the events an unfinished run sent"
        );
        cx.state.mark_emitted(job, &found, now_ms()).await?;
        Ok(found.len() as u64)
    }

    /// This run's own start offsets, read now: after a read-back or a wait,
    /// those read before are stale.
    async fn refresh_start(
        &self,
        cx: &RunContext<'_>,
        lease: &Lease,
        run_started_ms: i64,
    ) -> Result<(), ProduceError> {
        let job = self.name.as_str();
        let offsets = end_offsets(cx.readback, &self.topic)
            .await
            .map_err(|reason| ProduceError::Job {
                job: job.to_owned(),
                reason,
            })?;
        let ours = cx
            .state
            .restart_run(job, lease.run_id(), &self.topic, &offsets, run_started_ms)
            .await?;
        if !ours {
            return Err(ProduceError::Job {
                job: job.to_owned(),
                reason: lease.lost_reason(),
            });
        }
        Ok(())
    }

    async fn run_leased(
        &self,
        cx: &RunContext<'_>,
        lease: Option<&Lease>,
        mut report: RunReport,
        run_started: Instant,
        run_started_ms: i64,
    ) -> Result<RunReport, ProduceError> {
        let job = self.name.as_str();
        let fail = |reason: String| ProduceError::Job {
            job: job.to_owned(),
            reason,
        };
        let never = CancellationToken::new();
        let lease_lost = lease.map_or(&never, |l| l.lost());

        let start = self.start_checkpoint(cx.state.checkpoint(job).await?)?;
        let (checkpoint, ledger_from) = match start {
            Some((checkpoint, ledger_from)) => (Some(checkpoint), Some(ledger_from)),
            None => (None, None),
        };
        let window = match (&checkpoint, &ledger_from) {
            (Some(checkpoint), Some(ledger_from)) => {
                Some(window_start(checkpoint, self.lookback, ledger_from))
            }
            _ => None,
        };
        let mut emitted: HashSet<String> = cx.state.emitted_ids(job).await?;
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
            checkpoint = checkpoint.as_ref().map(|c| c.display()).unwrap_or_default(),
            from = window
                .as_ref()
                .map(|w| w.start.display())
                .unwrap_or_default(),
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
                _ = lease_lost.cancelled() => {
                    failure.get_or_insert_with(|| lease.map(|l| l.lost_reason()).unwrap_or_default());
                    break;
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
                if lease_lost.is_cancelled() {
                    // Whoever took the job over reads back what this run
                    // sent up to now; nothing more may go out.
                    break 'pages;
                }
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
                        greatest.see(event.checkpoint.as_ref());
                        // The ledger holds every event of the lookback
                        // window, so a row read again is dropped here and a
                        // late row (a new id) goes out; a result with one id
                        // twice sends it once.
                        if !emitted.insert(event.event_id.clone()) {
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
                        let row_checkpoint = self.mapping.checkpoint_of(&row);
                        greatest.see(row_checkpoint.as_ref());
                        // A bad row the lookback reads again went to the
                        // dead-letter topic in an earlier run: once is
                        // enough. Fixed, it is another row (and event).
                        let letter_id = dead_letter_id(&row);
                        if !emitted.insert(letter_id.clone()) {
                            report.events_skipped += 1;
                            cx.metrics.events_skipped.with_label_values(&[job]).inc();
                            continue;
                        }
                        // Without a valid value of its own, the row is
                        // placed at the checkpoint the run finishes with.
                        let position = row_checkpoint
                            .as_ref()
                            .map(|c| c.sort_key())
                            .unwrap_or_default();
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
                                (acked, letter_id, position)
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
                    greatest.drop_unreachable(&mut marks, self.lookback);
                    cx.state.mark_emitted(job, &marks, now_ms()).await?;
                    marks.clear();
                }
            }
            while let Some(Some(done)) = in_flight.next().now_or_never() {
                self.settle(done, &mut report, &mut marks, &mut failure, cx);
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
        greatest.drop_unreachable(&mut marks, self.lookback);
        cx.state.mark_emitted(job, &marks, now_ms()).await?;
        if let Some(reason) = failure {
            // The run record stays: the next run reads back what this one sent.
            return Err(refused.map_or_else(|| fail(reason), |e| self.over_limit(e)));
        }

        let Some(lease) = lease else {
            return Err(fail("a run that produces holds a lease".into()));
        };
        // The checkpoint is the greatest value seen, never lower: a window
        // reaching below it finds older values too.
        let new_checkpoint = match (checkpoint, greatest.value.clone()) {
            (Some(old), Some(seen)) => Some(old.max(seen)),
            (old, _) => old,
        };
        let (stored, prune) = match (&new_checkpoint, ledger_from) {
            (Some(checkpoint), Some(ledger_from)) => {
                // The next run reads down to here at most: ids below can
                // never come back, and the ledger is complete from here
                // (or from where it already was, if that is higher).
                let floor = checkpoint.minus(self.lookback);
                let stored = StoredCheckpoint {
                    checkpoint: checkpoint.display(),
                    ledger_from: Some(floor.clone().max(ledger_from).display()),
                };
                let prune = Prune::BelowPosition {
                    floor: floor.sort_key(),
                    checkpoint: checkpoint.sort_key(),
                };
                (Some(stored), prune)
            }
            _ => (
                None,
                Prune::EmittedBefore(
                    run_started_ms
                        - i64::try_from(self.dedup_retention.as_millis()).unwrap_or(i64::MAX),
                ),
            ),
        };
        report.checkpoint = new_checkpoint.as_ref().map(|c| c.display());
        let finished = cx
            .state
            .finish_run(job, lease.run_id(), stored.as_ref(), prune, now_ms())
            .await?;
        if !finished {
            return Err(fail(lease.lost_reason()));
        }
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
            Ok(()) if event_id.starts_with(DEAD_LETTER_ID) => marks.push((event_id, position)),
            Err(e) if event_id.starts_with(DEAD_LETTER_ID) => {
                failure.get_or_insert(e);
            }
            Ok(()) => {
                report.events_produced += 1;
                cx.metrics
                    .events_produced
                    .with_label_values(&[&self.name])
                    .inc();
                marks.push((event_id, position));
            }
            Err(e) => {
                failure.get_or_insert_with(|| format!("Kafka did not acknowledge an event: {e}"));
            }
        }
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

/// The greatest checkpoint value seen.
#[derive(Default)]
struct Greatest {
    value: Option<CheckpointValue>,
}

impl Greatest {
    fn see(&mut self, value: Option<&CheckpointValue>) {
        let Some(value) = value else { return };
        if self.value.as_ref().is_none_or(|v| value > v) {
            self.value = Some(value.clone());
        }
    }

    /// Leaves out of `marks` the events no later run can read again: below
    /// the greatest value so far minus the lookback (the new checkpoint is
    /// at least that), the finished run's pruning would delete them at
    /// once. A backfill of months thus writes only its last window to the
    /// ledger. If this run fails instead, the next one reads back every
    /// event it sent anyway.
    fn drop_unreachable(&self, marks: &mut Vec<(String, String)>, lookback: i64) {
        let Some(greatest) = &self.value else { return };
        let floor = greatest.minus(lookback).sort_key();
        // An empty position (no value of its own) is placed at the
        // checkpoint when the run finishes: kept.
        marks.retain(|(_, position)| position.is_empty() || *position >= floor);
    }
}

/// The same row gets the same id whatever order its columns come in.
fn dead_letter_id(row: &Row) -> String {
    use sha2::Digest;
    let mut cells: Vec<(&String, String)> = row
        .columns
        .iter()
        .zip(&row.cells)
        .map(|(name, cell)| (name, cell.to_json().to_string()))
        .collect();
    cells.sort_unstable();
    let mut hash = sha2::Sha256::new();
    for (name, value) in cells {
        hash.update(serde_json::to_string(name).unwrap_or_default());
        hash.update(b"=");
        hash.update(value);
        hash.update(b"\n");
    }
    format!("{DEAD_LETTER_ID}{}", hex::encode(hash.finalize()))
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
        let watermarks =
            partition_watermarks(&client, &topic, METADATA_TIMEOUT).map_err(|e| e.to_string())?;
        Ok(watermarks.iter().map(|w| (w.partition, w.high)).collect())
    })
    .await
    .map_err(|e| format!("offset lookup panicked: {e}"))?
}

/// A consumer that never joins a group or commits: it only looks
/// (`kafka::Role::ReadBack`). It asks for end-of-partition events: the
/// read-back ends where fetches end, not at a watermark listed earlier (a
/// broker may list a stale one).
fn readback_consumer(config: &rdkafka::ClientConfig) -> Result<BaseConsumer<StageContext>, String> {
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
