//! GlobalKTable semantics for join tables: every partition of the table's
//! topic is read from the beginning; the table is *bootstrapped* once each
//! partition reached the high watermark it had at start; updates keep being
//! applied afterwards; a tombstone deletes its key.
//!
//! A record that can never be applied goes to the dead-letter topic, and the
//! loader takes the next record only once the broker acknowledged it; a
//! Schema Registry outage is waited out on the record it hit. Either way no
//! record is skipped, and the bootstrap (hence readiness) waits for both.
//!
//! Rows are kept as their codec's [`Compact`] bytes and decoded on each
//! lookup: a million small rows add ~180 MB resident instead of ~900 MB as
//! JSON trees. The bootstrap fills the loader's own build without a lock
//! per record and publishes it once; later updates go live one record at a
//! time into one of the table's shards.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pipeline::{into_key_text, TableLookup};
use super::readiness::Readiness;
use crate::avro::{AvroError, Codec, Compact, KeyCodec};
use crate::backoff::Backoff;
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

/// Lookups and live updates of different keys take different locks, and a
/// growing shard rehashes 1/64 of the table while the others serve.
const SHARDS: usize = 64;

type Shard = HashMap<Box<str>, Compact>;

/// One table's current contents: each record's value in its codec's
/// [`Compact`] form (for a small Avro row ~50 bytes instead of ~900 for a
/// JSON tree), decoded again on each lookup.
pub struct Table {
    id: String,
    codec: Arc<Codec>,
    /// Picks a key's shard; each shard's map hashes with its own keys.
    hasher: RandomState,
    shards: Box<[RwLock<Shard>]>,
    /// Keys held; only the table's one loader writes.
    len: AtomicUsize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("id", &self.id)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Table {
    pub fn new(id: &str, codec: Arc<Codec>) -> Table {
        Table {
            id: id.to_owned(),
            codec,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            len: AtomicUsize::new(0),
        }
    }

    pub fn codec(&self) -> &Arc<Codec> {
        &self.codec
    }

    fn shard_of(&self, key: &str) -> usize {
        shard_index(&self.hasher, key)
    }

    /// The record under `key`, decoded.
    pub fn get(&self, key: &str) -> Option<Arc<Json>> {
        let shard = self.shards[self.shard_of(key)]
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let compact = shard.get(key)?;
        match self.codec.expand(compact) {
            Ok(value) => Some(Arc::new(value)),
            Err(error) => {
                // Stored only after the same codec read it: a bug, not data.
                tracing::error!(table = %self.id, %error, "cannot decode a stored table record");
                None
            }
        }
    }

    /// Checks and stores one record's value (see [`Codec::compact`]).
    pub async fn upsert_record(&self, key: &str, payload: &[u8]) -> Result<usize, AvroError> {
        let value = self.codec.compact(payload).await?;
        Ok(self.upsert(key.into(), value))
    }

    pub fn upsert(&self, key: Box<str>, value: Compact) -> usize {
        let shard = self.shard_of(&key);
        let mut shard = self.shards[shard]
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if shard.insert(key, value).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.len()
        }
    }

    pub fn delete(&self, key: &str) -> usize {
        let shard = self.shard_of(key);
        let mut shard = self.shards[shard]
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if shard.remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed) - 1
        } else {
            self.len()
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty build of this table's contents for its loader to fill
    /// alone, without a lock per record, before anyone reads the table.
    pub fn staging(&self) -> Staged {
        Staged {
            hasher: self.hasher.clone(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            len: 0,
        }
    }

    /// Replaces the contents with `staged` (built by [`Table::staging`]).
    pub fn publish(&self, staged: Staged) {
        for (lock, shard) in self.shards.iter().zip(staged.shards) {
            *lock.write().unwrap_or_else(|e| e.into_inner()) = shard;
        }
        self.len.store(staged.len, Ordering::Relaxed);
    }
}

/// A table's contents being built by its loader alone (the bootstrap).
pub struct Staged {
    hasher: RandomState,
    shards: Vec<Shard>,
    len: usize,
}

impl Staged {
    pub fn upsert(&mut self, key: Box<str>, value: Compact) -> usize {
        let shard = shard_index(&self.hasher, &key);
        if self.shards[shard].insert(key, value).is_none() {
            self.len += 1;
        }
        self.len
    }

    pub fn delete(&mut self, key: &str) -> usize {
        if self.shards[shard_index(&self.hasher, key)]
            .remove(key)
            .is_some()
        {
            self.len -= 1;
        }
        self.len
    }
}

fn shard_index(hasher: &RandomState, key: &str) -> usize {
    // SipHash output bits are uniform; the low ones pick the shard.
    (hasher.hash_one(key) as usize) % SHARDS
}

/// All tables, by table id.
#[derive(Debug, Default)]
pub struct Tables {
    by_id: HashMap<String, Arc<Table>>,
}

impl Tables {
    /// The table `id`, created empty (its records read by `codec`) unless
    /// it exists.
    pub fn insert(&mut self, id: &str, codec: Arc<Codec>) -> Arc<Table> {
        self.by_id
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Table::new(id, codec)))
            .clone()
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
    use serde_json::json;

    fn json_table(id: &str) -> Table {
        Table::new(id, Arc::new(Codec::Json))
    }

    #[tokio::test]
    async fn tombstone_deletes_and_update_replaces() {
        let mut tables = Tables::default();
        let table = tables.insert("t", Arc::new(Codec::Json));
        assert_eq!(table.upsert_record("k", b"1").await.unwrap(), 1);
        assert_eq!(table.upsert_record("k", br#"{"a": [2]}"#).await.unwrap(), 1);
        assert_eq!(table.upsert_record("j", b"3").await.unwrap(), 2);
        assert_eq!(tables.lookup("t", "k").as_deref(), Some(&json!({"a": [2]})));
        assert_eq!(table.delete("k"), 1);
        assert_eq!(
            table.delete("k"),
            1,
            "deleting a missing key changes nothing"
        );
        assert_eq!(tables.lookup("t", "k"), None);
        assert_eq!(tables.lookup("other", "k"), None);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn a_record_the_codec_refuses_is_not_stored() {
        let table = json_table("t");
        let error = table.upsert_record("k", b"{nope").await.unwrap_err();
        assert!(error.to_string().starts_with("not valid JSON"), "{error}");
        assert!(table.is_empty());
        assert_eq!(table.get("k"), None);
    }

    #[tokio::test]
    async fn a_staged_build_is_invisible_until_published_then_replaces_the_contents() {
        let table = json_table("t");
        table.upsert_record("old", b"0").await.unwrap();
        let mut staged = table.staging();
        for i in 0..1000 {
            let value = Codec::Json.compact(i.to_string().as_bytes()).await.unwrap();
            assert_eq!(staged.upsert(format!("k{i}").into(), value), i + 1);
        }
        assert_eq!(staged.delete("k7"), 999);
        assert_eq!(staged.delete("k7"), 999);
        assert_eq!(table.get("k1"), None, "not published yet");
        assert_eq!(table.len(), 1);
        table.publish(staged);
        assert_eq!(table.len(), 999);
        assert_eq!(table.get("old"), None);
        assert_eq!(table.get("k7"), None);
        for i in (0..1000).filter(|i| *i != 7) {
            assert_eq!(table.get(&format!("k{i}")).as_deref(), Some(&json!(i)));
        }
        // Live updates after the bootstrap land in the published shards.
        table.upsert_record("k1", b"\"one\"").await.unwrap();
        assert_eq!(table.get("k1").as_deref(), Some(&json!("one")));
        assert_eq!(table.delete("k2"), 998);
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
