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

use std::collections::{BTreeMap, HashMap};
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
use super::pipeline::{Pipeline, Source, Verdict};
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
    /// Threads processing one batch (`enrich.workers`).
    pub workers: usize,
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

    async fn process_batch(&self, batch: &[OwnedMessage]) -> Result<Vec<Output>, BatchError> {
        let workers = parallel::workers_for(batch.len(), self.workers);
        if workers <= 1 {
            return self.process_chunk(batch).await;
        }
        // Each worker runs its records' (normally ready) registry lookups
        // on this runtime; the first error in input order wins, as it did
        // processing them one by one.
        let runtime = tokio::runtime::Handle::current();
        let chunks = tokio::task::block_in_place(|| {
            parallel::map_chunks(batch, workers, |chunk| {
                runtime.block_on(self.process_chunk(chunk))
            })
        });
        let mut outputs = Vec::with_capacity(batch.len());
        for chunk in chunks {
            outputs.extend(chunk?);
        }
        Ok(outputs)
    }

    /// [`Self::process`] for each record in order; stops at the first error.
    async fn process_chunk(&self, records: &[OwnedMessage]) -> Result<Vec<Output>, BatchError> {
        let mut outputs = Vec::new();
        for message in records {
            outputs.extend(self.process(message).await?);
        }
        Ok(outputs)
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

    /// Begins the batch's transaction and writes its outputs, dead letters
    /// and input offsets into it, then commits it on a blocking thread:
    /// commit_transaction flushes every output, which takes as long as the
    /// broker needs, and the next batch is processed meanwhile. The
    /// committed offsets come back for the lag metric.
    async fn start_commit(
        &self,
        batch: &[OwnedMessage],
        outputs: Vec<Output>,
    ) -> Result<CommitHandle, BatchError> {
        tokio::task::block_in_place(|| self.producer.begin_transaction())
            .map_err(BatchError::kafka("begin_transaction"))?;
        let started = Instant::now();
        for output in outputs {
            // Dead letters go into the transaction like outputs: they are
            // written exactly when the offsets past their records commit.
            let record = match output {
                Output::Record(record, _) => record,
                Output::DeadLetter(letter) => letter.into_record(),
            };
            // Delivery is confirmed by commit_transaction as a whole.
            enqueue(&self.producer, &record)
                .await
                .map_err(BatchError::kafka("produce"))?;
        }
        self.phase("produce", started);
        let offsets = next_offsets(batch).map_err(BatchError::kafka("offsets"))?;
        let group = self
            .consumer
            .group_metadata()
            .ok_or(BatchError::NoGroupMetadata)?;
        let producer = self.producer.clone();
        let timeout = self.kafka_timeout;
        let phases = self.metrics.batch_phase_seconds.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            producer
                .send_offsets_to_transaction(&offsets, &group, timeout)
                .map_err(BatchError::kafka("send_offsets_to_transaction"))?;
            let sent = Instant::now();
            phases
                .with_label_values(&["offsets"])
                .observe((sent - started).as_secs_f64());
            producer
                .commit_transaction(timeout)
                .map_err(BatchError::kafka("commit_transaction"))?;
            phases
                .with_label_values(&["commit"])
                .observe(sent.elapsed().as_secs_f64());
            Ok(Some(offsets))
        }))
    }

    /// Outputs and dead letters are acknowledged before the offsets commit.
    /// Dead letters are retried until acknowledged (or `hard_stop`), so a
    /// failed dead-letter write does not send the batch's outputs again.
    async fn commit_at_least_once(
        &self,
        batch: &[OwnedMessage],
        outputs: Vec<Output>,
        hard_stop: &CancellationToken,
    ) -> Result<(), BatchError> {
        let mut deliveries = Vec::new();
        let mut dead_letters = Vec::new();
        for output in outputs {
            match output {
                Output::Record(record, _) => deliveries.push(
                    enqueue(&self.producer, &record)
                        .await
                        .map_err(BatchError::kafka("produce"))?,
                ),
                Output::DeadLetter(letter) => {
                    dead_letters.push(send_dead_letter(&self.producer, letter, hard_stop))
                }
            }
        }
        let outputs_acked = async {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        return Err(BatchError::Kafka {
                            stage: "produce",
                            source: e,
                        })
                    }
                    Err(_) => {
                        return Err(BatchError::Kafka {
                            stage: "produce",
                            source: KafkaError::Canceled,
                        })
                    }
                }
            }
            Ok(())
        };
        let (outputs_acked, dead_letters_acked) =
            tokio::join!(outputs_acked, futures::future::join_all(dead_letters));
        outputs_acked?;
        for acked in dead_letters_acked {
            acked?;
        }
        let offsets = next_offsets(batch).map_err(BatchError::kafka("offsets"))?;
        tokio::task::block_in_place(|| self.consumer.commit(&offsets, CommitMode::Sync))
            .map_err(BatchError::kafka("commit"))
    }

    /// Aborts the open transaction (if one may be open) and seeks back to
    /// the batch's first offsets so its records are consumed again. An error
    /// here is fatal (see [`rewind`]).
    fn abandon_batch(
        &self,
        batch: &[OwnedMessage],
        abort: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), BatchError> {
        if abort && self.guarantee == ProcessingGuarantee::ExactlyOnce {
            if let Err(source) =
                tokio::task::block_in_place(|| self.producer.abort_transaction(self.kafka_timeout))
            {
                let error = BatchError::Kafka {
                    stage: "abort_transaction",
                    source,
                };
                if error.is_fatal() {
                    return Err(error);
                }
                // The next batch's begin_transaction fails until an abort
                // goes through, and that batch's failure aborts again.
                tracing::warn!(%error, "abort_transaction failed");
            }
        }
        if shutdown.is_cancelled() {
            // The processor commits nothing more before it exits; the next
            // start reads the batch again from the committed offsets.
            return Ok(());
        }
        rewind(
            first_offsets(batch),
            |topic, partition, offset| {
                tokio::task::block_in_place(|| {
                    self.consumer
                        .seek(topic, partition, Offset::Offset(offset), self.kafka_timeout)
                })
            },
            |topic, partition| {
                let assignment = self.consumer.assignment()?;
                let assigned = assignment.find_partition(topic, partition).is_some();
                Ok(assigned)
            },
        )
    }

    /// Applies every pipeline reading this record's topic; returns the
    /// records to write (outputs and dead letters), or that the Schema
    /// Registry could not be reached (the batch is then tried again).
    async fn process(&self, message: &OwnedMessage) -> Result<Vec<Output>, BatchError> {
        let span = tracing::debug_span!(
            "record",
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset()
        );
        self.process_record(message).instrument(span).await
    }

    async fn process_record(&self, message: &OwnedMessage) -> Result<Vec<Output>, BatchError> {
        let topic = message.topic();
        let Some(input) = self.inputs.get(topic) else {
            return Ok(Vec::new());
        };
        let dead = |stage: &'static str, reason: String, pipeline: Option<&str>| {
            let dlq_topic = format!("{topic}{}", self.dlq_suffix);
            let letter = DeadLetterRecord::from_message(dlq_topic, message, stage, reason);
            Output::DeadLetter(match pipeline {
                Some(pipeline) => letter.with_pipeline(pipeline),
                None => letter,
            })
        };
        // Not the record's fault: the batch waits for the registry instead.
        let unavailable = |source: AvroError| BatchError::RegistryUnavailable {
            position: SourcePosition::of(message),
            source,
        };
        let all_pipelines_dlq = |stage: &'static str| {
            for route in &input.routes {
                self.metrics
                    .records_in
                    .with_label_values(&[&route.pipeline.name])
                    .inc();
                self.metrics
                    .records_dlq
                    .with_label_values(&[&route.pipeline.name, stage])
                    .inc();
            }
        };

        let key = match message.key() {
            None => None,
            Some(bytes) => match input.key_codec.decode(bytes).await {
                Ok(key) => Some(key),
                Err(e) if e.is_transient() => return Err(unavailable(e)),
                Err(e) => {
                    all_pipelines_dlq("decode");
                    return Ok(vec![dead(
                        "decode",
                        format!("cannot decode key: {e}"),
                        None,
                    )]);
                }
            },
        };
        let Some(payload) = message.payload() else {
            all_pipelines_dlq("decode");
            return Ok(vec![dead(
                "decode",
                "record has no value (tombstone on a stream)".into(),
                None,
            )]);
        };
        let event = match input.codec.decode(payload).await {
            Ok(event) => event,
            Err(e) if e.is_transient() => return Err(unavailable(e)),
            Err(e) => {
                all_pipelines_dlq("decode");
                return Ok(vec![dead(
                    "decode",
                    format!("cannot decode value: {e}"),
                    None,
                )]);
            }
        };
        let source = Source {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key: key.as_ref(),
            timestamp_ms: message.timestamp().to_millis().unwrap_or_else(now_millis),
        };

        let mut out = Vec::new();
        for route in &input.routes {
            let name = route.pipeline.name.as_str();
            self.metrics.records_in.with_label_values(&[name]).inc();
            match route.pipeline.apply(&source, &event, self.tables.as_ref()) {
                Verdict::Emit(slack_message) => {
                    let encoded = match route.output_codec.encode(&slack_message.to_json()).await {
                        Ok(payload) => route
                            .output_key_codec
                            .encode_str(&slack_message.channel_id)
                            .await
                            .map(|key| (key, payload))
                            .map_err(|e| (e, "the Slack message's key (its channel id)")),
                        Err(e) => Err((e, "the Slack message")),
                    };
                    match encoded {
                        Ok((key, payload)) => {
                            tracing::debug!(alert_id = %slack_message.alert_id, channel = %slack_message.channel_id, "alert");
                            self.metrics.records_out.with_label_values(&[name]).inc();
                            out.push(Output::Record(
                                OutRecord {
                                    topic: route.output_topic.clone(),
                                    key: Some(key),
                                    payload: Some(payload),
                                    headers: None,
                                },
                                Emitted {
                                    latency: self.metrics.event_latency.with_label_values(&[name]),
                                    event_ms: source.timestamp_ms,
                                },
                            ));
                        }
                        Err((e, _)) if e.is_transient() => return Err(unavailable(e)),
                        Err((e, what)) => {
                            self.metrics
                                .records_dlq
                                .with_label_values(&[name, "encode"])
                                .inc();
                            out.push(dead(
                                "encode",
                                format!("cannot encode {what}: {e}"),
                                Some(name),
                            ));
                        }
                    }
                }
                Verdict::Filtered => {
                    self.metrics
                        .records_dropped
                        .with_label_values(&[name, "filtered"])
                        .inc();
                }
                Verdict::Suppressed => {
                    self.metrics
                        .records_dropped
                        .with_label_values(&[name, "suppressed"])
                        .inc();
                }
                Verdict::JoinMiss { join, table } => {
                    tracing::debug!(pipeline = name, join, table, "join miss");
                    self.metrics
                        .records_dropped
                        .with_label_values(&[name, "join_miss"])
                        .inc();
                    self.metrics
                        .join_misses
                        .with_label_values(&[name, &table])
                        .inc();
                }
                Verdict::Reject(e) => {
                    self.metrics
                        .records_dlq
                        .with_label_values(&[name, e.stage()])
                        .inc();
                    out.push(dead(e.stage(), e.to_string(), Some(name)));
                }
            }
        }
        Ok(out)
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The offsets to commit after a batch: last offset + 1 per partition.
pub fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList, KafkaError> {
    let mut last: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let entry = last
            .entry((message.topic().to_owned(), message.partition()))
            .or_insert(message.offset());
        *entry = (*entry).max(message.offset());
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in last {
        offsets.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))?;
    }
    Ok(offsets)
}

/// The first offset of each partition in a batch.
fn first_offsets(batch: &[OwnedMessage]) -> BTreeMap<(String, i32), i64> {
    let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for message in batch {
        let entry = first
            .entry((message.topic().to_owned(), message.partition()))
            .or_insert(message.offset());
        *entry = (*entry).min(message.offset());
    }
    first
}

/// Seeks every partition of a failed batch back to the batch's first offset
/// there. When a seek fails the consumer's position stays past records that
/// were not committed, and the next batch's commit would skip them: that is
/// a fatal [`BatchError::Rewind`], and the processor stops (it resumes from
/// the committed offsets after a restart). The one exception is a partition
/// no longer assigned to this consumer (a rebalance took it meanwhile): this
/// consumer reads nothing more from it, and its next owner starts from its
/// committed offset.
fn rewind(
    first_offsets: BTreeMap<(String, i32), i64>,
    mut seek: impl FnMut(&str, i32, i64) -> Result<(), KafkaError>,
    mut assigned: impl FnMut(&str, i32) -> Result<bool, KafkaError>,
) -> Result<(), BatchError> {
    for ((topic, partition), offset) in first_offsets {
        let Err(seek_error) = seek(&topic, partition, offset) else {
            continue;
        };
        let reason = match assigned(&topic, partition) {
            Ok(false) => {
                tracing::info!(%topic, partition, offset, error = %seek_error,
                    "rewind failed on a partition no longer assigned; its next owner starts from the committed offset");
                continue;
            }
            Ok(true) => seek_error.to_string(),
            Err(e) => format!("{seek_error}; the assignment cannot be read either: {e}"),
        };
        return Err(BatchError::Rewind {
            topic,
            partition,
            offset,
            reason,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    fn offsets() -> BTreeMap<(String, i32), i64> {
        BTreeMap::from([(("in".to_owned(), 0), 10), (("in".to_owned(), 1), 20)])
    }

    fn seek_error() -> KafkaError {
        KafkaError::Seek("Local: Erroneous state".into())
    }

    #[test]
    fn a_rewind_seeks_every_partition_to_its_first_offset() {
        let mut seeks = Vec::new();
        rewind(
            offsets(),
            |t, p, o| {
                seeks.push((t.to_owned(), p, o));
                Ok(())
            },
            |_, _| panic!("not asked when every seek succeeds"),
        )
        .expect("rewound");
        assert_eq!(seeks, [("in".to_owned(), 0, 10), ("in".to_owned(), 1, 20)]);
    }

    #[test]
    fn a_failed_seek_on_an_assigned_partition_is_fatal() {
        let error = rewind(
            offsets(),
            |_, p, _| if p == 1 { Err(seek_error()) } else { Ok(()) },
            |_, _| Ok(true),
        )
        .unwrap_err();
        assert!(error.is_fatal(), "{error}");
        assert!(
            matches!(&error, BatchError::Rewind { topic, partition: 1, offset: 20, .. } if topic == "in"),
            "{error:?}"
        );
        assert!(error.to_string().starts_with(
            "cannot rewind in [1] to offset 20 after a failed batch (Seek error: Local: Erroneous state)"
        ));
    }

    #[test]
    fn a_failed_seek_with_an_unknown_assignment_is_fatal() {
        let error = rewind(
            offsets(),
            |_, _, _| Err(seek_error()),
            |_, _| {
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::BrokerTransportFailure,
                ))
            },
        )
        .unwrap_err();
        assert!(error.is_fatal(), "{error}");
        assert!(matches!(error, BatchError::Rewind { partition: 0, .. }));
    }

    #[test]
    fn a_failed_seek_on_a_revoked_partition_is_not_needed() {
        let mut asked = Vec::new();
        rewind(
            offsets(),
            |_, p, _| if p == 0 { Err(seek_error()) } else { Ok(()) },
            |t, p| {
                asked.push((t.to_owned(), p));
                Ok(false)
            },
        )
        .expect("the revoked partition restarts from its committed offset elsewhere");
        assert_eq!(asked, [("in".to_owned(), 0)]);
    }

    #[test]
    fn only_broken_producers_and_failed_rewinds_are_fatal() {
        assert!(!BatchError::NoGroupMetadata.is_fatal());
        assert!(!BatchError::Kafka {
            stage: "produce",
            source: KafkaError::Canceled
        }
        .is_fatal());
        let registry = BatchError::RegistryUnavailable {
            position: SourcePosition {
                topic: "in".into(),
                partition: 0,
                offset: 1,
            },
            source: AvroError::RegistryUnavailable("503".into()),
        };
        assert!(!registry.is_fatal());
        assert!(!registry.may_have_opened_a_transaction());
    }
}
