//! Kafka plumbing shared by the stages: client configuration from settings,
//! the client context that feeds logs and lag metrics, dead-letter records,
//! and producing with back-pressure.

use std::time::Duration;

use prometheus::IntGaugeVec;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;

use crate::config::KafkaSettings;

/// Headers on every dead-letter record.
pub mod dlq_headers {
    pub const REASON: &str = "alertsvc.dlq.reason";
    pub const STAGE: &str = "alertsvc.dlq.stage";
    pub const PIPELINE: &str = "alertsvc.dlq.pipeline";
    pub const SOURCE_TOPIC: &str = "alertsvc.dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "alertsvc.dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "alertsvc.dlq.source.offset";
    /// produce: the job, the row's 1-based number in its run, the column.
    pub const JOB: &str = "alertsvc.dlq.job";
    pub const ROW: &str = "alertsvc.dlq.row";
    pub const COLUMN: &str = "alertsvc.dlq.column";
}

/// The base librdkafka configuration: bootstrap servers, SASL credentials,
/// then the `[kafka.client]` pass-through, which wins.
pub fn client_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    if let (Some(user), Some(password)) = (&kafka.sasl_username, &kafka.sasl_password) {
        config.set("sasl.username", user.expose());
        config.set("sasl.password", password.expose());
    }
    for (name, value) in &kafka.client {
        config.set(name, value);
    }
    config
}

/// Checks every pass-through property against librdkafka by building a
/// client from it (no connection is needed for that).
pub fn check_client_properties(kafka: &KafkaSettings) -> Result<(), String> {
    let mut config = client_config(kafka);
    // A client with an unreachable bootstrap address never blocks here.
    config.set("bootstrap.servers", "127.0.0.1:1");
    config
        .create::<rdkafka::producer::BaseProducer>()
        .map(drop)
        .map_err(|e| match e {
            KafkaError::ClientConfig(_, description, name, _) if !name.is_empty() => {
                format!("kafka.client.\"{name}\": {description}")
            }
            other => other.to_string(),
        })
}

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
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
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

/// Where a dead letter came from and why it died.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub source_topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub stage: &'a str,
    pub reason: String,
    pub pipeline: Option<&'a str>,
}

impl DeadLetter<'_> {
    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(header(dlq_headers::REASON, &self.reason))
            .insert(header(dlq_headers::STAGE, self.stage))
            .insert(header(dlq_headers::SOURCE_TOPIC, self.source_topic))
            .insert(header(dlq_headers::SOURCE_PARTITION, &partition))
            .insert(header(dlq_headers::SOURCE_OFFSET, &offset));
        if let Some(pipeline) = self.pipeline {
            headers = headers.insert(header(dlq_headers::PIPELINE, pipeline));
        }
        headers
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
