//! The consume → transform → produce loop. Records are taken in batches; each
//! batch is processed whole before anything is written, then its outputs,
//! dead letters and input offsets commit together in one Kafka transaction
//! (exactly-once), or, with `at_least_once`, outputs and dead letters are
//! acknowledged before the offsets are committed. A failed batch is aborted
//! and the consumer rewound to the batch's first offsets, so every record is
//! processed again from a clean state; a rewind that fails stops the
//! processor, which then resumes from the committed offsets after a restart.
//! A batch that meets a Schema Registry outage is retried the same way,
//! with backoff, until the registry answers: no record is dead-lettered for
//! the registry's trouble.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Histogram;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::parallel;
use super::pipeline::{Pipeline, Prefilter, Source, Verdict};
use super::readiness::Readiness;
use super::table::Tables;
use crate::avro::{AvroError, Codec, KeyCodec};
use crate::backoff::Backoff;
use crate::config::ProcessingGuarantee;
use crate::kafka::{
    enqueue, send_dead_letter, DeadLetterCancelled, DeadLetterRecord, OutRecord, SourcePosition,
    StageContext,
};
use crate::metrics::{seconds_since, EnrichMetrics};

/// First and longest wait before a failed batch is tried again.
mod commit;
mod offsets;
mod record;

pub use offsets::next_offsets;
use offsets::{first_offsets, rewind};

const BATCH_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// How the stream processor names itself to [`Readiness`].
const READER: &str = "stream";

/// A pipeline with its output resolved.
pub struct Route {
    pub pipeline: Arc<Pipeline>,
    pub output_topic: String,
    pub output_codec: Arc<Codec>,
    /// Writes the channel id as the output record's key.
    pub output_key_codec: Arc<KeyCodec>,
}

/// Everything that reads one input topic.
pub struct InputTopic {
    pub codec: Arc<Codec>,
    pub key_codec: Arc<KeyCodec>,
    pub routes: Vec<Route>,
}

pub struct Processor {
    pub consumer: StreamConsumer<StageContext>,
    pub producer: FutureProducer<StageContext>,
    pub guarantee: ProcessingGuarantee,
    pub inputs: HashMap<String, InputTopic>,
    pub tables: Arc<Tables>,
    pub dlq_suffix: String,
    pub metrics: EnrichMetrics,
    pub readiness: Arc<Readiness>,
    pub max_batch_records: usize,
    /// Threads processing one batch (`enrich.workers`), started once.
    pub workers: parallel::Workers,
    pub max_batch_wait: Duration,
    pub kafka_timeout: Duration,
}

/// What processing one record asks to write.
#[derive(Debug)]
enum Output {
    Record(OutRecord, Emitted),
    DeadLetter(DeadLetterRecord),
}

/// An output's pipeline latency histogram and event time (its source
/// record's timestamp, epoch ms), observed once the batch is committed.
#[derive(Debug, Clone)]
struct Emitted {
    latency: Histogram,
    event_ms: i64,
}

/// What a batch's commit returns: the offsets committed in the
/// transaction (for the lag metric), none when already committed.
type Committed = Result<Option<TopicPartitionList>, BatchError>;

type CommitHandle = JoinHandle<Committed>;

/// A processed batch and its commit: a transaction committing on a blocking
/// thread (`C` = [`CommitHandle`]), or one already done (`C` = `()`).
struct Committing<C = CommitHandle> {
    batch: Vec<OwnedMessage>,
    emitted: Vec<Emitted>,
    started: Instant,
    commit: C,
}

/// The retry state of the batch loop.
struct Retry {
    backoff: Backoff,
    waiting_for_registry: bool,
}

/// Waits for the previous batch's commit; never resolves when there is none.
async fn commit_finished(committing: &mut Option<Committing>) -> Result<Committed, JoinError> {
    match committing {
        Some(previous) => (&mut previous.commit).await,
        None => std::future::pending().await,
    }
}

/// Why a batch could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{stage}: {source}")]
    Kafka {
        stage: &'static str,
        source: KafkaError,
    },
    #[error("the consumer has no group metadata (not in a group)")]
    NoGroupMetadata,
    #[error("the thread committing the transaction failed: {0}")]
    CommitThread(String),
    #[error("record {position}: {source}")]
    RegistryUnavailable {
        position: SourcePosition,
        source: AvroError,
    },
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterCancelled),
    #[error(
        "cannot rewind {topic} [{partition}] to offset {offset} after a failed batch ({reason}); \
         stopping, so that the batch is read again from the committed offsets after a restart"
    )]
    Rewind {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
}

impl BatchError {
    fn kafka(stage: &'static str) -> impl FnOnce(KafkaError) -> BatchError {
        move |source| BatchError::Kafka { stage, source }
    }

    /// Errors after which the processor must stop: the producer can never
    /// commit again (fenced by a newer instance, or a fatal idempotence
    /// error), or the consumer's position is past records that were not
    /// committed (a failed rewind), so the next commit would skip them.
    pub fn is_fatal(&self) -> bool {
        match self {
            BatchError::Kafka {
                source: KafkaError::Transaction(e),
                ..
            } => e.is_fatal(),
            BatchError::Rewind { .. } => true,
            _ => false,
        }
    }

    /// Whether a transaction may have begun: only then is there one to abort.
    fn may_have_opened_a_transaction(&self) -> bool {
        // Batches are processed whole before the transaction begins.
        !matches!(self, BatchError::RegistryUnavailable { .. })
    }
}

impl Processor {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BatchError> {
        if self.guarantee == ProcessingGuarantee::ExactlyOnce {
            tokio::task::block_in_place(|| self.producer.init_transactions(self.kafka_timeout))
                .map_err(BatchError::kafka("init_transactions"))?;
        }
        let topics: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(BatchError::kafka("subscribe"))?;
        tracing::info!(?topics, guarantee = ?self.guarantee, "processing");

        let hard_stop = self.hard_stop(&shutdown);
        let _stop_timer = hard_stop.clone().drop_guard();
        let mut retry = Retry {
            backoff: Backoff::new(BATCH_BACKOFF.0, BATCH_BACKOFF.1),
            waiting_for_registry: false,
        };
        // The previous batch's transaction, committing on a blocking thread
        // while this batch is collected and processed.
        let mut committing: Option<Committing> = None;
        loop {
            let batch = self
                .next_batch(&shutdown, &mut committing, &mut retry)
                .await?;
            if !batch.is_empty() {
                self.run_batch(batch, &mut committing, &mut retry, &hard_stop, &shutdown)
                    .await?;
            }
            if shutdown.is_cancelled() {
                if let Some(mut previous) = committing.take() {
                    let result = (&mut previous.commit).await;
                    if let Some((batch, e)) = self.settle(previous, result, &mut retry) {
                        self.batch_failed(&batch, e, &mut retry, &shutdown).await?;
                    }
                }
                tracing::info!("enrich stopping: last batch finished");
                return Ok(());
            }
        }
    }

    /// Fires `kafka_timeout` after `shutdown`: how long the batch open at
    /// shutdown may wait for its dead letters to be acknowledged.
    fn hard_stop(&self, shutdown: &CancellationToken) -> CancellationToken {
        let hard_stop = CancellationToken::new();
        let (soft, hard, grace) = (shutdown.clone(), hard_stop.clone(), self.kafka_timeout);
        tokio::spawn(async move {
            tokio::select! {
                _ = async { soft.cancelled().await; tokio::time::sleep(grace).await } => hard.cancel(),
                _ = hard.cancelled() => {}
            }
        });
        hard_stop
    }

    /// Waits for a first record, then collects until the batch is full, the
    /// batch wait elapsed or shutdown was asked for. A previous transaction
    /// that finishes while no record arrives is settled meanwhile, so an
    /// idle stream neither delays its metrics nor hides its failure.
    async fn next_batch(
        &self,
        shutdown: &CancellationToken,
        committing: &mut Option<Committing>,
        retry: &mut Retry,
    ) -> Result<Vec<OwnedMessage>, BatchError> {
        let first = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(Vec::new()),
                result = commit_finished(committing) => {
                    if let Some(previous) = committing.take() {
                        if let Some((batch, e)) = self.settle(previous, result, retry) {
                            self.batch_failed(&batch, e, retry, shutdown).await?;
                        }
                    }
                }
                message = self.consumer.recv() => break message,
            }
        };
        let started = Instant::now();
        let mut batch = match first {
            Ok(message) => vec![message.detach()],
            Err(e) => {
                tracing::warn!(error = %e, "consume failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(Vec::new());
            }
        };
        let deadline = Instant::now() + self.max_batch_wait;
        while batch.len() < self.max_batch_records {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                message = self.consumer.recv() => match message {
                    Ok(message) => batch.push(message.detach()),
                    Err(e) => {
                        tracing::warn!(error = %e, "consume failed");
                        break;
                    }
                },
            }
        }
        self.phase("collect", started);
        Ok(batch)
    }

    fn phase(&self, phase: &str, started: Instant) {
        self.metrics
            .batch_phase_seconds
            .with_label_values(&[phase])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Processes every record of the batch, then writes and commits. Nothing
    /// is written before the whole batch is processed, so a batch that has
    /// to wait for the registry leaves no output and no transaction behind.
    /// With exactly-once, the batch is processed while the previous batch's
    /// transaction commits; that one is settled before this one begins, and
    /// this one is left committing. Returns an error only when fatal.
    async fn run_batch(
        &self,
        batch: Vec<OwnedMessage>,
        committing: &mut Option<Committing>,
        retry: &mut Retry,
        hard_stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), BatchError> {
        let started = Instant::now();
        let processed = self.process_batch(&batch).await;
        self.phase("process", started);
        if let Some(mut previous) = committing.take() {
            let waited = Instant::now();
            let result = (&mut previous.commit).await;
            self.phase("wait", waited);
            if let Some((mut both, e)) = self.settle(previous, result, retry) {
                // This batch was read past the failed one: both are read
                // again from the failed batch's first offsets.
                both.extend(batch);
                return self.batch_failed(&both, e, retry, shutdown).await;
            }
        }
        let registry_down = matches!(processed, Err(BatchError::RegistryUnavailable { .. }));
        if retry.waiting_for_registry && !registry_down {
            // The whole batch got past the registry.
            retry.waiting_for_registry = false;
            self.readiness.registry_available(READER);
        }
        let outputs = match processed {
            Ok(outputs) => outputs,
            Err(e) => return self.batch_failed(&batch, e, retry, shutdown).await,
        };
        let emitted: Vec<Emitted> = outputs
            .iter()
            .filter_map(|output| match output {
                Output::Record(_, emitted) => Some(emitted.clone()),
                Output::DeadLetter(_) => None,
            })
            .collect();
        match self.guarantee {
            ProcessingGuarantee::ExactlyOnce => match self.start_commit(&batch, outputs).await {
                Ok(commit) => {
                    *committing = Some(Committing {
                        batch,
                        emitted,
                        started,
                        commit,
                    });
                    Ok(())
                }
                Err(e) => self.batch_failed(&batch, e, retry, shutdown).await,
            },
            ProcessingGuarantee::AtLeastOnce => {
                let result = self
                    .commit_at_least_once(&batch, outputs, hard_stop)
                    .await
                    .map(|()| None);
                let done = Committing {
                    batch,
                    emitted,
                    started,
                    commit: (),
                };
                match self.settle(done, Ok(result), retry) {
                    None => Ok(()),
                    Some((batch, e)) => self.batch_failed(&batch, e, retry, shutdown).await,
                }
            }
        }
    }

    /// Records a finished batch: committed, its alerts' latency observed
    /// (`None`); or hands the batch back with the error that failed it.
    fn settle<C>(
        &self,
        finished: Committing<C>,
        result: Result<Committed, JoinError>,
        retry: &mut Retry,
    ) -> Option<(Vec<OwnedMessage>, BatchError)> {
        let Committing {
            batch,
            emitted,
            started,
            ..
        } = finished;
        let committed = match result {
            Ok(Ok(committed)) => committed,
            Ok(Err(e)) => return Some((batch, e)),
            Err(e) => return Some((batch, BatchError::CommitThread(e.to_string()))),
        };
        retry.backoff.reset();
        if let Some(offsets) = committed {
            // Only for the lag metric (see `kafka::StageContext`): with
            // enable.auto.commit off, a stored offset is never committed.
            if let Err(e) = self.consumer.store_offsets(&offsets) {
                tracing::debug!(error = %e, "storing committed offsets for the lag metric failed");
            }
        }
        self.metrics
            .transactions
            .with_label_values(&["committed"])
            .inc();
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        // Committed: the alerts are now readable downstream.
        for Emitted { latency, event_ms } in emitted {
            latency.observe(seconds_since(event_ms));
        }
        None
    }

    /// A batch that did not commit: aborted (if a transaction may be open)
    /// and rewound, then a backoff. Returns an error only when fatal.
    async fn batch_failed(
        &self,
        batch: &[OwnedMessage],
        e: BatchError,
        retry: &mut Retry,
        shutdown: &CancellationToken,
    ) -> Result<(), BatchError> {
        if e.is_fatal() {
            return Err(e);
        }
        if matches!(e, BatchError::RegistryUnavailable { .. }) {
            // Logged once per outage by `Readiness`.
            if !retry.waiting_for_registry {
                retry.waiting_for_registry = true;
                self.readiness.registry_unavailable(READER, &e);
            }
            tracing::debug!(error = %e, records = batch.len(), "batch waits for the Schema Registry; rewinding");
        } else {
            tracing::warn!(error = %e, records = batch.len(), "batch failed; aborting and rewinding");
            self.metrics
                .transactions
                .with_label_values(&["aborted"])
                .inc();
        }
        self.abandon_batch(batch, e.may_have_opened_a_transaction(), shutdown)?;
        tokio::select! {
            _ = tokio::time::sleep(retry.backoff.next_delay()) => {}
            _ = shutdown.cancelled() => {}
        }
        Ok(())
    }
}
