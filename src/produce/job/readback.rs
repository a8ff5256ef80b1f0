//! The target topic as seen by a run: its end offsets when the run begins,
//! and what an unfinished run sent, read back from those offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset};

use crate::kafka::{
    bounded_read, partition_watermarks, topic_partitions, BoundedRead, BoundedReadError,
    StageContext, Stop, Until, WatermarkError,
};

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
    let partitions = topic_partitions(consumer, topic, METADATA_TIMEOUT).map_err(|error| {
        ReadBackError::Metadata {
            topic: topic.to_owned(),
            error,
        }
    })?;
    let read = BoundedRead {
        topic,
        partitions: partitions
            .into_iter()
            // Partitions added since the run began are read from their start.
            .map(|p| match run.start_offsets.get(&p) {
                Some(offset) => (p, Offset::Offset(*offset)),
                None => (p, Offset::Beginning),
            })
            .collect(),
        until: Until::PartitionEof,
        stop: Stop::TimeLimit(READ_BACK_LIMIT),
    };
    let mut found = Vec::new();
    bounded_read(consumer, &read, |message| {
        let Some(headers) = message.headers() else {
            return;
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
    })
    .map_err(|e| match e {
        BoundedReadError::Assignment(error) => ReadBackError::Assignment(error),
        BoundedReadError::Assign(error)
        | BoundedReadError::Poll(error)
        | BoundedReadError::Position(error) => ReadBackError::Read {
            topic: topic.to_owned(),
            error,
        },
        BoundedReadError::TimeLimit(_) | BoundedReadError::Stalled { .. } => {
            ReadBackError::TooSlow {
                topic: topic.to_owned(),
            }
        }
    })?;
    Ok(found)
}
