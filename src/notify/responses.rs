//! Every delivery's outcome goes to `slack-responses` (and a refused alert
//! to the dead-letter topic) and is acknowledged by Kafka before the input
//! offset may be committed.
//!
//! The response is enqueued by the channel's worker, in delivery order, and
//! its acknowledgement awaited apart ([`Responses::acked`]), so a worker
//! goes on to its next message while the producer batches the answers of
//! many (group commit); the offset still waits for the acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;
use crate::avro::{Codec, KeyCodec};
use crate::clock::now_ms;
use crate::kafka::{
    dlq_headers, enqueue, send_dead_letter, DeadLetterRecord, OutRecord, SourcePosition,
    StageContext,
};
use crate::messages::SlackResponse;
use crate::metrics::NotifyMetrics;

/// The input record a delivery answers for.
pub struct Origin<'a> {
    pub message: &'a crate::messages::SlackMessage,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// A response enqueued, its acknowledgement pending.
pub struct Sent {
    record: OutRecord,
    /// `None`: enqueueing failed; [`Responses::acked`] tries again.
    ack: Option<DeliveryFuture>,
}

pub struct Responses {
    pub producer: FutureProducer<StageContext>,
    pub topic: String,
    pub codec: Arc<Codec>,
    /// Writes the alert id as the record key.
    pub key_codec: Arc<KeyCodec>,
    pub input_topic: String,
    pub dlq_topic: String,
    pub metrics: NotifyMetrics,
}

impl Responses {
    /// Enqueues the response (after the dead letter, acknowledged);
    /// `None` if it cannot be written (the message stays unfinished).
    pub async fn send(
        &self,
        job: &Origin<'_>,
        delivery: &Delivery,
        stop: &CancellationToken,
    ) -> Option<Sent> {
        let response = SlackResponse {
            alert_id: job.message.alert_id.clone(),
            channel_id: delivery.channel.clone(),
            ok: delivery.ok,
            outcome: delivery.outcome,
            ts: delivery.ts.clone(),
            error: delivery.error.clone(),
            posted_at: now_ms(),
            attempts: delivery.attempts,
            http_status: delivery.http_status,
            source_partition: job.partition,
            source_offset: job.offset,
            thread_ts: delivery.thread_ts.clone(),
            reply_ts: delivery.reply_ts.clone(),
        };
        let payload = match self.codec.encode_record(&response, 64).await {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode SlackResponse");
                return None;
            }
        };
        let key = match self.key_codec.encode_str(&job.message.alert_id).await {
            Ok(key) => key,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the SlackResponse's key (its alert id)");
                return None;
            }
        };
        // The dead letter first: a response is never written for an alert
        // whose dead letter is not stored.
        let record = OutRecord {
            topic: self.topic.clone(),
            key: Some(key),
            payload: Some(payload),
            headers: None,
        };
        if delivery.dead_letter {
            let reason = format!(
                "Slack error: {}",
                delivery.error.as_deref().unwrap_or("unknown")
            );
            tracing::warn!(
                alert_id = %job.message.alert_id,
                reason,
                "Slack refused the alert for good: dead-lettering it"
            );
            self.metrics.dlq.inc();
            let letter = DeadLetterRecord::new(self.dlq_topic.clone(), "deliver", reason)
                .with_source(SourcePosition {
                    topic: self.input_topic.clone(),
                    partition: job.partition,
                    offset: job.offset,
                })
                .with_key(job.key.map(<[u8]>::to_vec))
                .with_payload(Some(job.payload.to_vec()))
                .with_header(dlq_headers::ALERT_ID, job.message.alert_id.clone());
            if send_dead_letter(&self.producer, letter, stop)
                .await
                .is_err()
            {
                return None;
            }
        }
        let ack = match enqueue(&self.producer, &record).await {
            Ok(ack) => Some(ack),
            Err(e) => {
                tracing::warn!(topic = %record.topic, error = %e, "produce failed; retrying");
                None
            }
        };
        Some(Sent { record, ack })
    }

    /// Waits for Kafka's ack of a sent response, producing it again while
    /// it fails; false if `stop` came first.
    pub async fn acked(&self, sent: Sent, stop: &CancellationToken) -> bool {
        if let Some(ack) = sent.ack {
            let error = match ack.await {
                Ok(Ok(_)) => return true,
                Ok(Err((e, _))) => e.to_string(),
                Err(_) => "delivery cancelled".to_owned(),
            };
            tracing::warn!(topic = %sent.record.topic, error = %error, "produce failed; retrying");
        }
        self.produce_until_acked(&sent.record, stop).await
    }

    pub async fn produce_until_acked(&self, record: &OutRecord, stop: &CancellationToken) -> bool {
        loop {
            let result = match enqueue(&self.producer, record).await {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => return true,
                    Ok(Err((e, _))) => e.to_string(),
                    Err(_) => "delivery cancelled".to_owned(),
                },
                Err(e) => e.to_string(),
            };
            tracing::warn!(topic = %record.topic, error = %result, "produce failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return false,
            }
        }
    }
}
