//! The target topic as seen by a run: its end offsets when the run begins,
//! and what an unfinished run sent, read back from those offsets.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::kafka::{partition_watermarks, StageContext, WatermarkError};

use super::super::state::UnfinishedRun;
use super::event_headers;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// A read-back that takes longer fails the run rather than hang it.
const READ_BACK_LIMIT: Duration = Duration::from_secs(120);

/// Why the topic could not be looked up or read back. The Kafka errors
/// are part of the message (not chained as sources): users see one line.
#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    #[error("cannot create the read-back consumer: {0}")]
    Consumer(KafkaError),
    #[error("{0}")]
    Watermarks(WatermarkError),
    #[error("offset lookup panicked: {0}")]
    OffsetLookupPanicked(tokio::task::JoinError),
    #[error("read-back panicked: {0}")]
    ReadBackPanicked(tokio::task::JoinError),
    #[error("cannot read metadata of topic {topic}: {error}")]
    Metadata { topic: String, error: KafkaError },
    #[error("{0}")]
    Assignment(KafkaError),
    #[error("cannot read back {topic}: {error}")]
    Read { topic: String, error: KafkaError },
    #[error("reading back {topic} took longer than {} s", READ_BACK_LIMIT.as_secs())]
    TooSlow { topic: String },
}

/// The topic's end offset per partition.
pub async fn end_offsets(
    config: &rdkafka::ClientConfig,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, ReadBackError> {
    let client = readback_consumer(config)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let watermarks = partition_watermarks(&client, &topic, METADATA_TIMEOUT)
            .map_err(ReadBackError::Watermarks)?;
        Ok(watermarks.iter().map(|w| (w.partition, w.high)).collect())
    })
    .await
    .map_err(ReadBackError::OffsetLookupPanicked)?
}

/// A consumer that never joins a group or commits: it only looks
/// (`kafka::Role::ReadBack`). It asks for end-of-partition events: the
/// read-back ends where fetches end, not at a watermark listed earlier (a
/// broker may list a stale one).
fn readback_consumer(
    config: &rdkafka::ClientConfig,
) -> Result<BaseConsumer<StageContext>, ReadBackError> {
    config
        .create_with_context(StageContext::default())
        .map_err(ReadBackError::Consumer)
}

/// Reads the target topic from where an unfinished run began to its end and
/// returns (event id, position) of every event that run's job sent.
pub async fn read_back(
    config: &rdkafka::ClientConfig,
    run: &UnfinishedRun,
    job: &str,
) -> Result<Vec<(String, String)>, ReadBackError> {
    let consumer = readback_consumer(config)?;
    let (run, job) = (run.clone(), job.to_owned());
    tokio::task::spawn_blocking(move || read_back_blocking(&consumer, &run, &job))
        .await
        .map_err(ReadBackError::ReadBackPanicked)?
}

fn read_back_blocking(
    consumer: &BaseConsumer<StageContext>,
    run: &UnfinishedRun,
    job: &str,
) -> Result<Vec<(String, String)>, ReadBackError> {
    let topic = run.topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|error| ReadBackError::Metadata {
            topic: topic.to_owned(),
            error,
        })?;
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
            .map_err(ReadBackError::Assignment)?;
        remaining.insert(partition);
    }
    let mut found = Vec::new();
    if remaining.is_empty() {
        return Ok(found);
    }
    let read_error = |error| ReadBackError::Read {
        topic: topic.to_owned(),
        error,
    };
    consumer.assign(&assignment).map_err(read_error)?;
    let deadline = Instant::now() + READ_BACK_LIMIT;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(ReadBackError::TooSlow {
                topic: topic.to_owned(),
            });
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                remaining.remove(&partition);
                continue;
            }
            Some(Err(e)) => return Err(read_error(e)),
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
        if value(event_headers::JOB).as_deref() == Some(job) {
            if let Some(event_id) = value(event_headers::EVENT_ID) {
                found.push((event_id, value(event_headers::POSITION).unwrap_or_default()));
            }
        }
    }
    Ok(found)
}
