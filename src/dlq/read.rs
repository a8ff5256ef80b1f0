//! Reading a dead-letter topic from its beginning to the end offsets
//! listed at start.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message};

use super::letter::DeadLetter;
use super::ReplayError;
use crate::config::Settings;
use crate::kafka::{
    bounded_read, client_config, partition_watermarks, BoundedRead, Role, StageContext, Stop,
    DLQ_REPLAY_GROUP,
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
    let watermarks =
        partition_watermarks(&consumer, topic, METADATA_TIMEOUT).map_err(|e| e.to_string())?;
    let read = BoundedRead::listed(topic, &watermarks, Stop::Stall(STALL_TIMEOUT));
    // What the progress line says is "at most": the listed ends' sum.
    let total: i64 = read
        .partitions
        .iter()
        .filter_map(|(p, _)| read.end_of(*p))
        .sum();
    let mut letters = Vec::new();
    let mut read_count: u64 = 0;
    bounded_read(&consumer, &read, |message| {
        read_count += 1;
        letters.push(DeadLetter {
            partition: message.partition(),
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
        if read_count.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("dlq replay: read {read_count} of at most {total} from {topic}");
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(letters)
}
