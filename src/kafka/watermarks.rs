//! A topic's partitions and their low and high watermarks, asked of the
//! broker: where enrich's table bootstrap ends, where produce's run begins
//! and the dead-letter replay stops, which partitions produce's read-back
//! reads. Blocking: call it from a blocking task.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// One partition's offsets: `low` is its first offset still stored, `high`
/// the offset the next record will get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error("cannot read metadata of topic {topic}: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("topic {topic} does not exist")]
    NoTopic { topic: String },
    #[error("topic {topic}: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("cannot read offsets of {topic}: {source}")]
    Offsets { topic: String, source: KafkaError },
}

/// The watermarks of every partition of `topic`, in the broker's partition
/// order; each broker request waits at most `timeout`.
pub fn partition_watermarks<C, K>(
    consumer: &K,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Watermarks>, WatermarkError>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| WatermarkError::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    let Some(info) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(WatermarkError::NoTopic {
            topic: topic.to_owned(),
        });
    };
    if let Some(error) = info.error() {
        return Err(WatermarkError::Topic {
            topic: topic.to_owned(),
            code: RDKafkaErrorCode::from(error),
        });
    }
    info.partitions()
        .iter()
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), timeout)
                .map_err(|source| WatermarkError::Offsets {
                    topic: topic.to_owned(),
                    source,
                })?;
            Ok(Watermarks {
                partition: partition.id(),
                low,
                high,
            })
        })
        .collect()
}

/// The partitions of `topic` the broker lists, without their offsets;
/// none when it does not list the topic.
pub fn topic_partitions<C, K>(
    consumer: &K,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}
