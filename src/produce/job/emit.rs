//! The emit phase: page through the query result, map and encode each
//! row, drop what the ledger already holds, produce the rest (or print it,
//! on a dry run), send rows that cannot be mapped to the dead-letter topic,
//! and write acknowledged ids to the ledger as the answers come in.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use tokio_util::sync::CancellationToken;

use crate::kafka::{enqueue, header, send_dead_letter, OutRecord};

use super::super::lease::{Lease, LeaseLost};
use super::super::mapping::{MappedEvent, RowError};
use super::super::row::{Columns, Row};
use super::super::source::{Page, PageStream, SourceError};
use super::checkpointing::Greatest;
use super::report::log_progress;
use super::{event_headers, CompiledJob, RunContext, RunError, RunReport, RunStart};
use crate::clock::now_ms;
use crate::produce::ProduceError;

/// Acknowledged ids written to the database at a time.
const MARK_BATCH: usize = 5_000;
/// Ledger ids of rows sent to the dead-letter topic start with this (then
/// a hash of the row): a bad row read again is not dead-lettered again.
const DEAD_LETTER_ID: &str = "dead-letter:";
/// Bad rows quoted in a run's error.
const QUOTED_BAD_ROWS: usize = 3;

/// Why Kafka gave no positive answer for an event.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("{0}")]
    Kafka(KafkaError),
    #[error("the producer went away")]
    ProducerGone,
}

/// A record's answer, its ledger id and its position.
type Delivery = (Result<(), RunError>, String, String);

/// What the emit phase leaves for the finish phase.
pub struct Emitted {
    pub report: RunReport,
    /// Acknowledged ids not yet in the ledger, with their positions.
    pub marks: Vec<(String, String)>,
    pub greatest: Greatest,
    /// The first thing that went wrong: the run must not finish.
    pub failure: Option<RunError>,
    /// The query was refused for its byte limit (reported as such).
    pub refused: Option<SourceError>,
}

/// What the page loop does after a row.
enum Flow {
    Continue,
    Stop,
}

/// What woke the page loop.
enum Next {
    Page(Option<Result<Page, SourceError>>),
    Delivered(Delivery),
    Tick,
    Stop(RunError),
}

pub struct Emitter<'r, 'a> {
    job: &'r CompiledJob,
    cx: &'r RunContext<'a>,
    lease: Option<&'r Lease>,
    /// Ids the ledger holds, and those sent by this run.
    emitted: HashSet<String>,
    run_started: RunStart,
    in_flight: FuturesUnordered<BoxFuture<'a, Delivery>>,
    checked_columns: Option<Columns>,
    /// Whether the query's cost was counted yet.
    accounted: bool,
    out: Emitted,
}

impl<'r, 'a> Emitter<'r, 'a> {
    pub fn new(
        job: &'r CompiledJob,
        cx: &'r RunContext<'a>,
        lease: Option<&'r Lease>,
        emitted: HashSet<String>,
        report: RunReport,
        run_started: RunStart,
    ) -> Self {
        Emitter {
            job,
            cx,
            lease,
            emitted,
            run_started,
            in_flight: FuturesUnordered::new(),
            checked_columns: None,
            accounted: false,
            out: Emitted {
                report,
                marks: Vec::new(),
                greatest: Greatest::default(),
                failure: None,
                refused: None,
            },
        }
    }

    /// Emits every page, then waits for every answer. Errors returned here
    /// (the producer refused a record, the ledger could not be written)
    /// end the run at once; failures in `Emitted` let it account first.
    pub async fn run(mut self, mut pages: PageStream) -> Result<Emitted, ProduceError> {
        let never = CancellationToken::new();
        let lease_lost = self.lease.map_or(&never, |l| l.lost());
        let mut ticker = tokio::time::interval(self.cx.progress_interval);
        ticker.tick().await;
        loop {
            let next = tokio::select! {
                page = pages.recv() => Next::Page(page),
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    Next::Delivered(done)
                }
                _ = ticker.tick() => Next::Tick,
                _ = lease_lost.cancelled() => Next::Stop(RunError::LeaseLost(
                    self.lease.map_or(LeaseLost::Unexplained, Lease::lost_reason),
                )),
                _ = self.cx.shutdown.cancelled() => Next::Stop(RunError::Shutdown),
            };
            let page = match next {
                Next::Delivered(done) => {
                    self.settle(done);
                    continue;
                }
                Next::Tick => {
                    log_progress(&self.job.name, &self.out.report, self.run_started.at);
                    continue;
                }
                Next::Stop(reason) => {
                    self.out.failure.get_or_insert(reason);
                    break;
                }
                Next::Page(None) => break,
                Next::Page(Some(Err(e))) => {
                    if matches!(e, SourceError::BytesBilledLimitExceeded { .. }) {
                        self.out.refused = Some(e);
                    } else {
                        self.out.failure.get_or_insert(RunError::Source(e));
                    }
                    break;
                }
                Next::Page(Some(Ok(page))) => page,
            };
            if !self.accounted {
                if let Some(cost) = pages.cost() {
                    self.job.account(&cost, &mut self.out.report, self.cx);
                    self.accounted = true;
                }
            }
            if let Flow::Stop = self.page(page).await? {
                break;
            }
            while let Some(Some(done)) = self.in_flight.next().now_or_never() {
                self.settle(done);
            }
            if self.out.failure.is_some() {
                break;
            }
        }
        if let Some(cost) = pages.cost().filter(|_| !self.accounted) {
            self.job.account(&cost, &mut self.out.report, self.cx);
        }
        drop(pages);
        // Every record sent gets its answer, whatever happened above.
        while let Some(done) = self.in_flight.next().await {
            self.settle(done);
        }
        Ok(self.out)
    }

    async fn page(&mut self, page: Page) -> Result<Flow, ProduceError> {
        for row in page {
            if let Flow::Stop = self.row(row).await? {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    async fn row(&mut self, row: Row) -> Result<Flow, ProduceError> {
        let (job, cx) = (self.job, self.cx);
        if self.lease.is_some_and(|l| l.lost().is_cancelled()) {
            // Whoever took the job over reads back what this run sent up
            // to now; nothing more may go out.
            return Ok(Flow::Stop);
        }
        self.out.report.rows_read += 1;
        cx.metrics.rows_read.with_label_values(&[&job.name]).inc();
        if self
            .checked_columns
            .as_ref()
            .is_none_or(|c| !Arc::ptr_eq(c, &row.columns))
        {
            if let Err(e) = job.mapping.check_columns(&row.columns) {
                self.out.failure.get_or_insert(RunError::Columns(e));
                return Ok(Flow::Stop);
            }
            self.checked_columns = Some(row.columns.clone());
        }
        let row_number = self.out.report.rows_read;
        let encoded = match job.mapping.map(&row, row_number, self.run_started.ms) {
            Ok(event) => job
                .encode(&event, row_number)
                .await
                .map(|(key, bytes)| (event, key, bytes)),
            Err(e) => Err(e),
        };
        match encoded {
            Ok((event, key, bytes)) => self.event(event, key, bytes).await?,
            Err(row_error) => self.bad_row(&row, row_error),
        }
        while self.in_flight.len() >= cx.max_in_flight {
            if let Some(done) = self.in_flight.next().await {
                self.settle(done);
            }
        }
        if self.out.marks.len() >= MARK_BATCH {
            write_marks(job, cx, &mut self.out).await?;
        }
        Ok(Flow::Continue)
    }

    fn skipped(&mut self) {
        self.out.report.events_skipped += 1;
        self.cx
            .metrics
            .events_skipped
            .with_label_values(&[&self.job.name])
            .inc();
    }

    async fn event(
        &mut self,
        event: MappedEvent,
        key: Vec<u8>,
        bytes: Vec<u8>,
    ) -> Result<(), ProduceError> {
        let job = self.job;
        self.out.greatest.see(event.checkpoint.as_ref());
        // The ledger holds every event of the lookback window, so a row read
        // again is dropped here and a late row (a new id) goes out; a result
        // with one id twice sends it once.
        if !self.emitted.insert(event.event_id.clone()) {
            self.skipped();
            return Ok(());
        }
        let Some(producer) = self.cx.producer else {
            print_event(&job.name, &job.topic, &event);
            self.out.report.events_produced += 1;
            return Ok(());
        };
        let position = event
            .checkpoint
            .as_ref()
            .map(|c| c.sort_key())
            .unwrap_or_default();
        let record = OutRecord {
            topic: job.topic.clone(),
            key: Some(key),
            payload: Some(bytes),
            headers: Some(
                OwnedHeaders::new()
                    .insert(header(event_headers::JOB, &job.name))
                    .insert(header(event_headers::EVENT_ID, &event.event_id))
                    .insert(header(event_headers::POSITION, &position)),
            ),
        };
        let delivery = enqueue(producer, &record).await.map_err(|error| {
            job.failed(RunError::Enqueue {
                topic: job.topic.clone(),
                error,
            })
        })?;
        let event_id = event.event_id;
        self.in_flight.push(
            delivery
                .map(move |r| (ack_result(r), event_id, position))
                .boxed(),
        );
        Ok(())
    }

    fn bad_row(&mut self, row: &Row, row_error: RowError) {
        let (job, cx) = (self.job, self.cx);
        let row_checkpoint = job.mapping.checkpoint_of(row);
        self.out.greatest.see(row_checkpoint.as_ref());
        // A bad row the lookback reads again went to the dead-letter topic
        // in an earlier run: once is enough. Fixed, it is another row (and
        // event).
        let letter_id = dead_letter_id(row);
        if !self.emitted.insert(letter_id.clone()) {
            self.skipped();
            return;
        }
        // Without a valid value of its own, the row is placed at the
        // checkpoint the run finishes with.
        let position = row_checkpoint
            .as_ref()
            .map(|c| c.sort_key())
            .unwrap_or_default();
        let report = &mut self.out.report;
        report.dead_letters += 1;
        cx.metrics
            .dead_letters
            .with_label_values(&[&job.name])
            .inc();
        if report.bad_rows.len() < QUOTED_BAD_ROWS {
            report.bad_rows.push(row_error.to_string());
        }
        let Some(producer) = cx.producer else {
            tracing::warn!(job = %job.name, error = %row_error, "row cannot be mapped (dry run: not dead-lettered)");
            eprintln!("job {}: {row_error}", job.name);
            return;
        };
        // Retried until acknowledged: the run (and its checkpoint) finishes
        // only after every dead letter is written, or fails if shutdown
        // comes first.
        let letter = job.dead_letter(row, &row_error);
        let shutdown = cx.shutdown;
        self.in_flight.push(
            async move {
                let acked = send_dead_letter(producer, letter, shutdown)
                    .await
                    .map_err(RunError::DeadLetter);
                (acked, letter_id, position)
            }
            .boxed(),
        );
    }

    fn settle(&mut self, (result, event_id, position): Delivery) {
        let out = &mut self.out;
        match result {
            Ok(()) if event_id.starts_with(DEAD_LETTER_ID) => out.marks.push((event_id, position)),
            Ok(()) => {
                out.report.events_produced += 1;
                self.cx
                    .metrics
                    .events_produced
                    .with_label_values(&[&self.job.name])
                    .inc();
                out.marks.push((event_id, position));
            }
            Err(e) => {
                out.failure.get_or_insert(e);
            }
        }
    }
}

/// Writes `out.marks` a later run can still read again to the ledger.
pub async fn write_marks(
    job: &CompiledJob,
    cx: &RunContext<'_>,
    out: &mut Emitted,
) -> Result<(), ProduceError> {
    out.greatest.drop_unreachable(&mut out.marks, job.lookback);
    cx.state
        .mark_emitted(&job.name, &out.marks, now_ms())
        .await?;
    out.marks.clear();
    Ok(())
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
) -> Result<(), RunError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(RunError::NotAcknowledged(AckError::Kafka(e))),
        Err(_) => Err(RunError::NotAcknowledged(AckError::ProducerGone)),
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
