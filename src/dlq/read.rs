//! Reading a dead-letter topic from its beginning to the end offsets
//! listed at start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::letter::DeadLetter;
use super::ReplayError;
use crate::config::Settings;
use crate::kafka::{
    client_config, partition_watermarks, Role, StageContext, Watermarks, DLQ_REPLAY_GROUP,
};

/// A progress line on stderr every this many records read.
const PROGRESS_EVERY: u64 = 1000;

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// How long reading may go without progress before it gives up (an open
/// transaction on the DLQ holds `read_committed` readers back).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads `dlq_topic` from its beginning to the end offsets listed now.
pub(super) async fn read_all(
    settings: &Settings,
    dlq_topic: &str,
) -> Result<Vec<DeadLetter>, ReplayError> {
    let config = client_config(
        &settings.kafka,
        "the dlq replay reader",
        &Role::ReadBack {
            group_id: DLQ_REPLAY_GROUP.to_owned(),
        },
    );
    let topic = dlq_topic.to_owned();
    let error = |reason: String| ReplayError::Read {
        topic: dlq_topic.to_owned(),
        reason,
    };
    tokio::task::spawn_blocking(move || read_blocking(&config, &topic))
        .await
        .map_err(|e| error(format!("reader panicked: {e}")))?
        .map_err(error)
}

fn read_blocking(config: &rdkafka::ClientConfig, topic: &str) -> Result<Vec<DeadLetter>, String> {
    let consumer: BaseConsumer<StageContext> = config
        .create_with_context(StageContext::default())
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    // partition → end offset at start; a partition is done once the
    // consumer's position reaches it.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    let watermarks =
        partition_watermarks(&consumer, topic, METADATA_TIMEOUT).map_err(|e| e.to_string())?;
    for Watermarks {
        partition,
        low,
        high,
    } in watermarks
    {
        if high > low {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
    }
    let total: i64 = ends.values().sum();
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("cannot assign: {e}"))?;
    let mut last_progress = Instant::now();
    let mut read: u64 = 0;
    while !ends.is_empty() {
        if last_progress.elapsed() > STALL_TIMEOUT {
            return Err(format!(
                "no progress for {} s with partitions {:?} unfinished (an open transaction?)",
                STALL_TIMEOUT.as_secs(),
                ends.keys().collect::<Vec<_>>()
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                // Records past the end listed at start were written after
                // the command began; they wait for the next run.
                if ends
                    .get(&partition)
                    .is_some_and(|end| message.offset() < *end)
                {
                    read += 1;
                    letters.push(DeadLetter {
                        partition,
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        headers: message
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                    if read.is_multiple_of(PROGRESS_EVERY) {
                        eprintln!("dlq replay: read {read} of at most {total} from {topic}");
                    }
                }
            }
        }
        // Transaction markers and aborted records never reach the
        // application: the position, not the last offset seen, says
        // whether a partition is done.
        let position = consumer
            .position()
            .map_err(|e| format!("cannot read the position: {e}"))?;
        for element in position.elements() {
            if let Offset::Offset(at) = element.offset() {
                if ends.get(&element.partition()).is_some_and(|end| at >= *end) {
                    ends.remove(&element.partition());
                }
            }
        }
    }
    Ok(letters)
}
