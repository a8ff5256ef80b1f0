//! Keeps one table current from its topic: bootstrap to the start-time
//! high watermarks, then live updates; what can never be applied is
//! dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::store::{Staged, Table};
use crate::avro::{AvroError, Compact, KeyCodec};
use crate::backoff::Backoff;
use crate::enrich::pipeline::into_key_text;
use crate::enrich::readiness::Readiness;
use crate::kafka::{
    partition_watermarks, send_dead_letter, DeadLetterRecord, StageContext, WatermarkError,
};
use crate::metrics::EnrichMetrics;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("table {table}: cannot read metadata of topic {topic}: {source}")]
    Metadata {
        table: String,
        topic: String,
        source: Box<KafkaError>,
    },
    #[error("table {table}: topic {topic} does not exist or has no partitions")]
    NoPartitions { table: String, topic: String },
    #[error("table {table}: Kafka error on {topic}: {source}")]
    Kafka {
        table: String,
        topic: String,
        source: Box<KafkaError>,
    },
}

/// Tracks which partitions still have to reach their start-time high
/// watermark.
#[derive(Debug, Default)]
pub struct BootstrapProgress {
    remaining: HashMap<i32, i64>,
}

impl BootstrapProgress {
    /// `watermarks` holds `(partition, low, high)` read before consuming.
    pub fn new(watermarks: &[(i32, i64, i64)]) -> Self {
        BootstrapProgress {
            remaining: watermarks
                .iter()
                .filter(|(_, low, high)| high > low)
                .map(|(p, _, high)| (*p, *high))
                .collect(),
        }
    }

    pub fn record_consumed(&mut self, partition: i32, offset: i64) {
        if let Some(high) = self.remaining.get(&partition) {
            if offset + 1 >= *high {
                self.remaining.remove(&partition);
            }
        }
    }

    /// The consumer reached the end of a partition (what is readable now,
    /// which under `read_committed` may stop short of the high watermark at
    /// a transaction marker).
    pub fn partition_eof(&mut self, partition: i32) {
        self.remaining.remove(&partition);
    }

    pub fn is_done(&self) -> bool {
        self.remaining.is_empty()
    }
}

/// First and longest wait between two tries of a record whose schema the
/// registry could not serve.
const REGISTRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// What one table record asks for.
#[derive(Debug)]
enum Read {
    Upsert(Box<str>, Compact),
    Delete(String),
    /// It can never be applied: it goes to the dead-letter topic.
    Invalid(String),
    /// The Schema Registry could not answer; the same record is tried again.
    RegistryUnavailable(AvroError),
}

/// Where the loader writes: its own build while bootstrapping (nothing
/// reads the table before it is bootstrapped, so no lock per record), then
/// the live table.
enum Target {
    Staging(Staged),
    Live,
}

impl Target {
    fn upsert(&mut self, table: &Table, key: Box<str>, value: Compact) -> usize {
        match self {
            Target::Staging(staged) => staged.upsert(key, value),
            Target::Live => table.upsert(key, value),
        }
    }

    fn delete(&mut self, table: &Table, key: &str) -> usize {
        match self {
            Target::Staging(staged) => staged.delete(key),
            Target::Live => table.delete(key),
        }
    }

    fn len(&self, table: &Table) -> usize {
        match self {
            Target::Staging(staged) => staged.len,
            Target::Live => table.len(),
        }
    }
}

/// Keeps one table current from its topic.
pub struct TableLoader {
    pub id: String,
    pub topic: String,
    pub dlq_topic: String,
    pub key_codec: Arc<KeyCodec>,
    /// Filled from the topic; its codec reads the records.
    pub table: Arc<Table>,
    pub consumer: StreamConsumer<StageContext>,
    pub dlq: FutureProducer<StageContext>,
    pub metrics: EnrichMetrics,
    pub readiness: Arc<Readiness>,
}

impl TableLoader {
    /// Reads the table until `shutdown`; `bootstrapped` turns true once the
    /// start-time high watermarks are reached.
    ///
    /// A record counts as read (for the bootstrap, and before the next one
    /// is taken) only once it is applied or its dead letter is acknowledged:
    /// a record is never skipped because the registry or the broker is down.
    pub async fn run(
        self,
        bootstrapped: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) -> Result<(), TableError> {
        let watermarks = tokio::task::block_in_place(|| self.watermarks())?;
        let mut assignment = TopicPartitionList::new();
        for (partition, _, _) in &watermarks {
            assignment
                .add_partition_offset(&self.topic, *partition, Offset::Beginning)
                .map_err(|source| self.kafka_error(source))?;
        }
        self.consumer
            .assign(&assignment)
            .map_err(|source| self.kafka_error(source))?;
        let mut progress = BootstrapProgress::new(&watermarks);
        let mut target = Target::Staging(self.table.staging());
        let size = self.metrics.table_size.with_label_values(&[&self.id]);
        let updates = |kind: &str| {
            self.metrics
                .table_updates
                .with_label_values(&[&self.id, kind])
        };
        // Each series appears with its first record (no `invalid` series
        // while every record is good) and is not looked up again after.
        let (mut upserts, mut deletes, mut invalid) = (None, None, None);
        let reader = format!("table {}", self.id);
        let mut registry_backoff = Backoff::new(REGISTRY_BACKOFF.0, REGISTRY_BACKOFF.1);
        let mut waiting_for_registry = false;
        tracing::info!(table = %self.id, topic = %self.topic, partitions = watermarks.len(), "bootstrapping table");
        loop {
            if matches!(target, Target::Staging(_)) && progress.is_done() {
                if let Target::Staging(staged) = std::mem::replace(&mut target, Target::Live) {
                    self.table.publish(staged);
                    tracing::info!(table = %self.id, keys = self.table.len(), "table bootstrapped");
                    let _ = bootstrapped.send(true);
                }
            }
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(partition)) => {
                    progress.partition_eof(partition);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(table = %self.id, error = %e, "table consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let len = loop {
                match self.read(&message).await {
                    Read::Upsert(key, value) => {
                        upserts.get_or_insert_with(|| updates("upsert")).inc();
                        break target.upsert(&self.table, key, value);
                    }
                    Read::Delete(key) => {
                        deletes.get_or_insert_with(|| updates("delete")).inc();
                        break target.delete(&self.table, &key);
                    }
                    Read::Invalid(reason) => {
                        invalid.get_or_insert_with(|| updates("invalid")).inc();
                        let letter = DeadLetterRecord::from_message(
                            &self.dlq_topic,
                            &message,
                            "decode",
                            reason,
                        );
                        if send_dead_letter(&self.dlq, letter, &shutdown)
                            .await
                            .is_err()
                        {
                            return Ok(()); // shutdown; the record is read again at start
                        }
                        break target.len(&self.table);
                    }
                    Read::RegistryUnavailable(error) => {
                        if !waiting_for_registry {
                            waiting_for_registry = true;
                            self.readiness.registry_unavailable(&reader, &error);
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(registry_backoff.next_delay()) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                }
            };
            if waiting_for_registry {
                waiting_for_registry = false;
                registry_backoff.reset();
                self.readiness.registry_available(&reader);
            }
            size.set(len as i64);
            progress.record_consumed(message.partition(), message.offset());
        }
    }

    fn kafka_error(&self, source: KafkaError) -> TableError {
        TableError::Kafka {
            table: self.id.clone(),
            topic: self.topic.clone(),
            source: Box::new(source),
        }
    }

    fn watermarks(&self) -> Result<Vec<(i32, i64, i64)>, TableError> {
        let watermarks = partition_watermarks(&self.consumer, &self.topic, METADATA_TIMEOUT)
            .map_err(|e| match e {
                WatermarkError::Metadata { source, .. } => TableError::Metadata {
                    table: self.id.clone(),
                    topic: self.topic.clone(),
                    source: Box::new(source),
                },
                WatermarkError::Offsets { source, .. } => self.kafka_error(source),
                WatermarkError::NoTopic { .. } | WatermarkError::Topic { .. } => {
                    TableError::NoPartitions {
                        table: self.id.clone(),
                        topic: self.topic.clone(),
                    }
                }
            })?;
        if watermarks.is_empty() {
            return Err(TableError::NoPartitions {
                table: self.id.clone(),
                topic: self.topic.clone(),
            });
        }
        Ok(watermarks
            .into_iter()
            .map(|w| (w.partition, w.low, w.high))
            .collect())
    }

    /// Decodes one table record's key and checks its value, or says why it
    /// cannot be applied. The table is keyed by the decoded key's
    /// [`key_text`](super::pipeline::key_text).
    async fn read(&self, message: &BorrowedMessage<'_>) -> Read {
        let key = match message.key() {
            None => return Read::Invalid("table record has no key".into()),
            Some(bytes) => match self.key_codec.decode(bytes).await {
                Ok(Json::Null) => return Read::Invalid("table record key is null".into()),
                Ok(key) => into_key_text(key),
                Err(e) if e.is_transient() => return Read::RegistryUnavailable(e),
                Err(e) => return Read::Invalid(format!("cannot decode key: {e}")),
            },
        };
        match message.payload() {
            None => Read::Delete(key),
            Some(payload) => match self.table.codec.compact(payload).await {
                Ok(value) => Read::Upsert(key.into_boxed_str(), value),
                Err(e) if e.is_transient() => Read::RegistryUnavailable(e),
                Err(e) => Read::Invalid(format!("cannot decode table record: {e}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_waits_for_every_non_empty_partition() {
        let mut progress = BootstrapProgress::new(&[(0, 0, 3), (1, 5, 5), (2, 0, 1)]);
        assert!(!progress.is_done());
        progress.record_consumed(0, 1);
        progress.record_consumed(2, 0);
        assert!(!progress.is_done());
        progress.record_consumed(0, 2);
        assert!(progress.is_done());
        let mut progress = BootstrapProgress::new(&[(0, 0, 10)]);
        progress.partition_eof(0);
        assert!(progress.is_done());
        assert!(BootstrapProgress::new(&[(0, 0, 0)]).is_done());
    }
}
