//! The consume → transform → produce loop. Records are taken in batches; each
//! batch's outputs, dead letters and input offsets commit together in one
//! Kafka transaction (exactly-once), or, with `at_least_once`, outputs are
//! acknowledged before the offsets are committed. A failed batch is aborted
//! and the consumer rewound to the batch's first offsets, so every record is
//! processed again from a clean state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::pipeline::{Pipeline, Source, Verdict};
use super::table::Tables;
use crate::avro::Codec;
use crate::config::ProcessingGuarantee;
use crate::kafka::{enqueue, DeadLetter, OutRecord, StageContext};
use crate::metrics::EnrichMetrics;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A pipeline with its output resolved.
pub struct Route {
    pub pipeline: Arc<Pipeline>,
    pub output_topic: String,
    pub output_codec: Arc<Codec>,
}

/// Everything that reads one input topic.
pub struct InputTopic {
    pub codec: Arc<Codec>,
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
    pub max_batch_records: usize,
    pub max_batch_wait: Duration,
    pub kafka_timeout: Duration,
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
}

impl BatchError {
    fn kafka(stage: &'static str) -> impl FnOnce(KafkaError) -> BatchError {
        move |source| BatchError::Kafka { stage, source }
    }

    /// Errors after which this producer can never commit again (fenced by a
    /// newer instance, or a fatal idempotence error): the process must stop.
    pub fn is_fatal(&self) -> bool {
        matches!(self, BatchError::Kafka { source: KafkaError::Transaction(e), .. } if e.is_fatal())
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

        let mut failures = 0u32;
        loop {
            let batch = self.next_batch(&shutdown).await;
            if !batch.is_empty() {
                let started = Instant::now();
                match self.commit_batch(&batch).await {
                    Ok(()) => {
                        failures = 0;
                        self.metrics
                            .transactions
                            .with_label_values(&["committed"])
                            .inc();
                        self.metrics
                            .batch_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, records = batch.len(), "batch failed; aborting and rewinding");
                        self.abandon_batch(&batch);
                        self.metrics
                            .transactions
                            .with_label_values(&["aborted"])
                            .inc();
                        let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.min(MAX_BACKOFF)) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
                }
            }
            if shutdown.is_cancelled() {
                tracing::info!("enrich stopping: last batch finished");
                return Ok(());
            }
        }
    }

    /// Waits for a first record, then collects until the batch is full, the
    /// batch wait elapsed or shutdown was asked for.
    async fn next_batch(&self, shutdown: &CancellationToken) -> Vec<OwnedMessage> {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Vec::new(),
            message = self.consumer.recv() => message,
        };
        let mut batch = match first {
            Ok(message) => vec![message.detach()],
            Err(e) => {
                tracing::warn!(error = %e, "consume failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Vec::new();
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
        batch
    }

    async fn commit_batch(&self, batch: &[OwnedMessage]) -> Result<(), BatchError> {
        match self.guarantee {
            ProcessingGuarantee::ExactlyOnce => self.commit_transactional(batch).await,
            ProcessingGuarantee::AtLeastOnce => self.commit_at_least_once(batch).await,
        }
    }

    async fn commit_transactional(&self, batch: &[OwnedMessage]) -> Result<(), BatchError> {
        tokio::task::block_in_place(|| self.producer.begin_transaction())
            .map_err(BatchError::kafka("begin_transaction"))?;
        for message in batch {
            for record in self.process(message).await {
                // Delivery is confirmed by commit_transaction as a whole.
                enqueue(&self.producer, &record)
                    .await
                    .map_err(BatchError::kafka("produce"))?;
            }
        }
        let offsets = next_offsets(batch).map_err(BatchError::kafka("offsets"))?;
        let group = self
            .consumer
            .group_metadata()
            .ok_or(BatchError::NoGroupMetadata)?;
        tokio::task::block_in_place(|| {
            self.producer
                .send_offsets_to_transaction(&offsets, &group, self.kafka_timeout)
        })
        .map_err(BatchError::kafka("send_offsets_to_transaction"))?;
        tokio::task::block_in_place(|| self.producer.commit_transaction(self.kafka_timeout))
            .map_err(BatchError::kafka("commit_transaction"))
    }

    async fn commit_at_least_once(&self, batch: &[OwnedMessage]) -> Result<(), BatchError> {
        let mut deliveries = Vec::new();
        for message in batch {
            for record in self.process(message).await {
                deliveries.push(
                    enqueue(&self.producer, &record)
                        .await
                        .map_err(BatchError::kafka("produce"))?,
                );
            }
        }
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
        let offsets = next_offsets(batch).map_err(BatchError::kafka("offsets"))?;
        tokio::task::block_in_place(|| self.consumer.commit(&offsets, CommitMode::Sync))
            .map_err(BatchError::kafka("commit"))
    }

    /// Aborts the open transaction (if any) and seeks back to the batch's
    /// first offsets so its records are consumed again.
    fn abandon_batch(&self, batch: &[OwnedMessage]) {
        if self.guarantee == ProcessingGuarantee::ExactlyOnce {
            if let Err(e) =
                tokio::task::block_in_place(|| self.producer.abort_transaction(self.kafka_timeout))
            {
                tracing::warn!(error = %e, "abort_transaction failed");
            }
        }
        for ((topic, partition), offset) in first_offsets(batch) {
            let seek = tokio::task::block_in_place(|| {
                self.consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    self.kafka_timeout,
                )
            });
            if let Err(e) = seek {
                // A partition revoked meanwhile restarts from its committed
                // offset at its new owner: nothing is lost.
                tracing::warn!(%topic, partition, offset, error = %e, "rewind failed");
            }
        }
    }

    /// Applies every pipeline reading this record's topic; returns the
    /// records to write (outputs and dead letters).
    async fn process(&self, message: &OwnedMessage) -> Vec<OutRecord> {
        let span = tracing::debug_span!(
            "record",
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset()
        );
        self.process_record(message).instrument(span).await
    }

    async fn process_record(&self, message: &OwnedMessage) -> Vec<OutRecord> {
        let topic = message.topic();
        let Some(input) = self.inputs.get(topic) else {
            return Vec::new();
        };
        let dead = |stage: &'static str, reason: String, pipeline: Option<&str>| {
            let letter = DeadLetter {
                source_topic: topic,
                partition: message.partition(),
                offset: message.offset(),
                stage,
                reason,
                pipeline,
            };
            tracing::warn!(stage, reason = %letter.reason, pipeline, "record sent to the dead-letter topic");
            OutRecord {
                topic: format!("{topic}{}", self.dlq_suffix),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers: Some(letter.headers()),
            }
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

        let key = match message.key().map(std::str::from_utf8).transpose() {
            Ok(key) => key,
            Err(_) => {
                all_pipelines_dlq("decode");
                return vec![dead("decode", "record key is not UTF-8".into(), None)];
            }
        };
        let Some(payload) = message.payload() else {
            all_pipelines_dlq("decode");
            return vec![dead(
                "decode",
                "record has no value (tombstone on a stream)".into(),
                None,
            )];
        };
        let event = match input.codec.decode(payload).await {
            Ok(event) => event,
            Err(e) => {
                all_pipelines_dlq("decode");
                return vec![dead("decode", format!("cannot decode value: {e}"), None)];
            }
        };
        let source = Source {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key,
            timestamp_ms: message.timestamp().to_millis().unwrap_or_else(now_millis),
        };

        let mut out = Vec::new();
        for route in &input.routes {
            let name = route.pipeline.name.as_str();
            self.metrics.records_in.with_label_values(&[name]).inc();
            match route.pipeline.apply(&source, &event, self.tables.as_ref()) {
                Verdict::Emit(slack_message) => {
                    match route.output_codec.encode(&slack_message.to_json()).await {
                        Ok(payload) => {
                            tracing::debug!(alert_id = %slack_message.alert_id, channel = %slack_message.channel_id, "alert");
                            self.metrics.records_out.with_label_values(&[name]).inc();
                            out.push(OutRecord {
                                topic: route.output_topic.clone(),
                                key: Some(slack_message.channel_id.into_bytes()),
                                payload: Some(payload),
                                headers: None,
                            });
                        }
                        Err(e) => {
                            self.metrics
                                .records_dlq
                                .with_label_values(&[name, "encode"])
                                .inc();
                            out.push(dead(
                                "encode",
                                format!("cannot encode the Slack message: {e}"),
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
        out
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
