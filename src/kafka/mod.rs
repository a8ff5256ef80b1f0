//! Kafka plumbing shared by the stages. A newcomer's map:
//!
//! - [`clients`]: every client is built here, by role (stream consumer,
//!   table reader, read-back reader, idempotent and transactional
//!   producer): the role sets what its stage relies on, then the operator's
//!   `[kafka.client]` is applied last, and `config check` warns when it
//!   overrides a relied-on property.
//! - [`dead_letter`]: one dead-letter builder and one sender that retries
//!   until the broker acknowledges.
//! - [`watermarks`]: a topic's partitions and their low and high offsets.
//! - [`bounded_read`]: reading partitions from given offsets to their end
//!   (produce's read-back, the dead-letter replay).
//! - here: the client context that feeds logs and lag metrics, and
//!   producing with back-pressure.

use std::time::Duration;

use prometheus::IntGaugeVec;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;

pub mod bounded_read;
pub mod clients;
pub mod dead_letter;
pub mod watermarks;

pub use bounded_read::{bounded_read, BoundedRead, BoundedReadError, Stop, Until};
pub use clients::{
    check_client_properties, client_config, client_warnings, Commits, Role, DLQ_REPLAY_GROUP,
    NOTIFY_LINGER_MS, PRODUCE_LINGER_MS, PRODUCE_READBACK_GROUP,
};
pub use dead_letter::{
    dlq_headers, send_dead_letter, DeadLetterCancelled, DeadLetterRecord, SourcePosition,
};
pub use watermarks::{partition_watermarks, topic_partitions, WatermarkError, Watermarks};

/// Client context of every alertsvc client: records consumer lag from
/// librdkafka's statistics and logs rebalances.
#[derive(Clone, Default)]
pub struct StageContext {
    pub lag: Option<IntGaugeVec>,
}

impl ClientContext for StageContext {
    /// The table loader asks for end-of-partition events to know when a
    /// table is bootstrapped; librdkafka also reports them as client
    /// errors, which are not errors here.
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) => tracing::trace!(reason, "partition end reached"),
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!(reason, "partition end reached")
            }
            other => tracing::error!(error = %other, reason, "librdkafka error"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Some(lag) = &self.lag else { return };
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                let Some(value) = partition_lag(p.consumer_lag, p.consumer_lag_stored) else {
                    continue;
                };
                if *partition >= 0 {
                    lag.with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(value);
                }
            }
        }
    }
}

/// A partition's lag from librdkafka's two figures (-1: unknown), measured
/// from the furthest of the committed and the stored offset. librdkafka
/// learns of a commit only when its own consumer made it: offsets committed
/// in a transaction (enrich's exactly-once path) leave `consumer_lag` at its
/// value from the assignment, growing forever, so enrich also stores what
/// each transaction committed.
fn partition_lag(committed_lag: i64, stored_lag: i64) -> Option<i64> {
    match (committed_lag >= 0, stored_lag >= 0) {
        (true, true) => Some(committed_lag.min(stored_lag)),
        (true, false) => Some(committed_lag),
        (false, true) => Some(stored_lag),
        (false, false) => None,
    }
}

impl ConsumerContext for StageContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

pub fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// A record to produce, owned so it can outlive the input batch.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

/// Enqueues a record, waiting while librdkafka's queue is full rather than
/// failing: back-pressure, not data loss.
pub async fn enqueue(
    producer: &FutureProducer<StageContext>,
    record: &OutRecord,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        let mut future = FutureRecord::<Vec<u8>, Vec<u8>>::to(&record.topic);
        if let Some(key) = &record.key {
            future = future.key(key);
        }
        if let Some(payload) = &record.payload {
            future = future.payload(payload);
        }
        if let Some(headers) = &record.headers {
            future = future.headers(headers.clone());
        }
        match producer.send_result(future) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_furthest_of_committed_and_stored() {
        // A transactional commit: the consumer's own figure is stale.
        assert_eq!(partition_lag(500, 0), Some(0));
        // Processed and stored, not yet auto-committed.
        assert_eq!(partition_lag(40, 10), Some(10));
        assert_eq!(partition_lag(7, -1), Some(7));
        assert_eq!(partition_lag(-1, 3), Some(3));
        assert_eq!(partition_lag(-1, -1), None);
    }
}
