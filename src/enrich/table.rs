//! GlobalKTable semantics for join tables: every partition of the table's
//! topic is read from the beginning; the table is *bootstrapped* once each
//! partition reached the high watermark it had at start; updates keep being
//! applied afterwards; a tombstone deletes its key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pipeline::TableLookup;
use crate::avro::Codec;
use crate::kafka::{enqueue, DeadLetter, OutRecord, StageContext};
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

/// One table's current contents.
#[derive(Debug, Default)]
pub struct Table {
    entries: RwLock<HashMap<String, Arc<Json>>>,
}

impl Table {
    pub fn upsert(&self, key: String, value: Json) -> usize {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert(key, Arc::new(value));
        entries.len()
    }

    pub fn delete(&self, key: &str) -> usize {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
        entries.len()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Json>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// All tables, by table id.
#[derive(Debug, Default)]
pub struct Tables {
    by_id: HashMap<String, Arc<Table>>,
}

impl Tables {
    pub fn insert(&mut self, id: &str) -> Arc<Table> {
        self.by_id.entry(id.to_owned()).or_default().clone()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Table>> {
        self.by_id.get(id)
    }
}

impl TableLookup for Tables {
    fn lookup(&self, table: &str, key: &str) -> Option<Arc<Json>> {
        self.by_id.get(table)?.get(key)
    }
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

/// Keeps one table current from its topic.
pub struct TableLoader {
    pub id: String,
    pub topic: String,
    pub dlq_topic: String,
    pub codec: Arc<Codec>,
    pub table: Arc<Table>,
    pub consumer: StreamConsumer<StageContext>,
    pub dlq: rdkafka::producer::FutureProducer<StageContext>,
    pub metrics: EnrichMetrics,
}

impl TableLoader {
    /// Reads the table until `shutdown`; `bootstrapped` turns true once the
    /// start-time high watermarks are reached.
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
        let mut announced = false;
        let size = self.metrics.table_size.with_label_values(&[&self.id]);
        tracing::info!(table = %self.id, topic = %self.topic, partitions = watermarks.len(), "bootstrapping table");
        loop {
            if !announced && progress.is_done() {
                announced = true;
                tracing::info!(table = %self.id, keys = self.table.len(), "table bootstrapped");
                let _ = bootstrapped.send(true);
            }
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    let partition = message.partition();
                    let offset = message.offset();
                    let len = self.apply(&message).await;
                    size.set(len as i64);
                    progress.record_consumed(partition, offset);
                }
                Err(KafkaError::PartitionEOF(partition)) => progress.partition_eof(partition),
                Err(e) => {
                    tracing::warn!(table = %self.id, error = %e, "table consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
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
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(|source| TableError::Metadata {
                table: self.id.clone(),
                topic: self.topic.clone(),
                source: Box::new(source),
            })?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(TableError::NoPartitions {
                table: self.id.clone(),
                topic: self.topic.clone(),
            });
        }
        partitions
            .into_iter()
            .map(|p| {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(&self.topic, p, METADATA_TIMEOUT)
                    .map_err(|source| self.kafka_error(source))?;
                Ok((p, low, high))
            })
            .collect()
    }

    /// Applies one table record; returns the table's size afterwards.
    async fn apply(&self, message: &BorrowedMessage<'_>) -> usize {
        let updates = &self.metrics.table_updates;
        let key = match message.key().map(std::str::from_utf8) {
            Some(Ok(key)) => key,
            Some(Err(_)) => return self.reject(message, "record key is not UTF-8".into()).await,
            None => return self.reject(message, "table record has no key".into()).await,
        };
        match message.payload() {
            None => {
                updates.with_label_values(&[&self.id, "delete"]).inc();
                self.table.delete(key)
            }
            Some(payload) => match self.codec.decode(payload).await {
                Ok(value) => {
                    updates.with_label_values(&[&self.id, "upsert"]).inc();
                    self.table.upsert(key.to_owned(), value)
                }
                Err(e) => {
                    self.reject(message, format!("cannot decode table record: {e}"))
                        .await
                }
            },
        }
    }

    /// A table record that cannot be applied leaves the table unchanged and
    /// goes to the table topic's dead-letter topic.
    async fn reject(&self, message: &BorrowedMessage<'_>, reason: String) -> usize {
        self.metrics
            .table_updates
            .with_label_values(&[&self.id, "invalid"])
            .inc();
        tracing::warn!(table = %self.id, partition = message.partition(), offset = message.offset(), %reason, "invalid table record");
        let dead = DeadLetter {
            source_topic: &self.topic,
            partition: message.partition(),
            offset: message.offset(),
            stage: "decode",
            reason,
            pipeline: None,
        };
        let record = OutRecord {
            topic: self.dlq_topic.clone(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: Some(dead.headers()),
        };
        match enqueue(&self.dlq, &record).await {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => tracing::error!(error = %e, "dead-letter write failed"),
                Err(_) => tracing::error!("dead-letter write cancelled"),
            },
            Err(e) => tracing::error!(error = %e, "dead-letter write failed"),
        }
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tombstone_deletes_and_update_replaces() {
        let mut tables = Tables::default();
        let table = tables.insert("t");
        table.upsert("k".into(), json!(1));
        table.upsert("k".into(), json!(2));
        assert_eq!(tables.lookup("t", "k").as_deref(), Some(&json!(2)));
        table.delete("k");
        assert_eq!(tables.lookup("t", "k"), None);
        assert_eq!(tables.lookup("other", "k"), None);
    }

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
