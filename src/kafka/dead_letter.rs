//! Dead letters: one builder ([`DeadLetterRecord`]) and one sender
//! ([`send_dead_letter`]), so the headers (DESIGN §4) and the
//! retry-until-acknowledged rule are the same for every stage.

use std::time::Duration;

use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use super::{enqueue, header, OutRecord, StageContext};
use crate::backoff::Backoff;

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
    /// notify: the alert Slack refused for good.
    pub const ALERT_ID: &str = "alertsvc.dlq.alert_id";
}

/// Where a record was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl SourcePosition {
    pub fn of<M: Message>(message: &M) -> Self {
        SourcePosition {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        }
    }
}

impl std::fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// A record on its way to a dead-letter topic: the original key and bytes,
/// where they came from and why they died. Every stage builds its dead
/// letters with this type, so the headers (DESIGN §4) are the same
/// everywhere; [`DeadLetterRecord::into_record`] turns it into the record
/// to produce and [`send_dead_letter`] produces it until acknowledged.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    pub dlq_topic: String,
    /// Where the record was read from; `None` when it did not come from
    /// Kafka (produce's rows name their job and row in `extra_headers`).
    pub source: Option<SourcePosition>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub stage: String,
    pub reason: String,
    pub pipeline: Option<String>,
    /// Stage-specific headers, e.g. produce's job, row and column.
    pub extra_headers: Vec<(&'static str, String)>,
}

impl DeadLetterRecord {
    /// A dead letter with no key, bytes or source yet; the `with_*`
    /// methods add them.
    pub fn new(
        dlq_topic: impl Into<String>,
        stage: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DeadLetterRecord {
            dlq_topic: dlq_topic.into(),
            source: None,
            key: None,
            payload: None,
            stage: stage.into(),
            reason: reason.into(),
            pipeline: None,
            extra_headers: Vec::new(),
        }
    }

    /// A dead letter for a consumed record: its key, bytes and position.
    pub fn from_message<M: Message>(
        dlq_topic: impl Into<String>,
        message: &M,
        stage: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DeadLetterRecord {
            dlq_topic: dlq_topic.into(),
            source: Some(SourcePosition::of(message)),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            stage: stage.into(),
            reason: reason.into(),
            pipeline: None,
            extra_headers: Vec::new(),
        }
    }

    /// Where the record was read from, when the message itself is gone.
    pub fn with_source(mut self, source: SourcePosition) -> Self {
        self.source = Some(source);
        self
    }

    pub fn with_key(mut self, key: Option<Vec<u8>>) -> Self {
        self.key = key;
        self
    }

    pub fn with_payload(mut self, payload: Option<Vec<u8>>) -> Self {
        self.payload = payload;
        self
    }

    pub fn with_pipeline(mut self, pipeline: impl Into<String>) -> Self {
        self.pipeline = Some(pipeline.into());
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra_headers.push((name, value.into()));
        self
    }

    pub fn headers(&self) -> OwnedHeaders {
        dead_letter_headers(
            self.source.as_ref(),
            &self.stage,
            &self.reason,
            self.pipeline.as_deref(),
            &self.extra_headers,
        )
    }

    /// The record to produce. This is where a dead letter is logged (once,
    /// at `warn`, with its source and reason): every path to a dead-letter
    /// topic goes through here, and consuming `self` keeps it to once.
    pub fn into_record(self) -> OutRecord {
        let extra = self
            .extra_headers
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::warn!(
            dlq = %self.dlq_topic,
            source_topic = self.source.as_ref().map(|s| s.topic.as_str()),
            partition = self.source.as_ref().map(|s| s.partition),
            offset = self.source.as_ref().map(|s| s.offset),
            stage = %self.stage,
            pipeline = self.pipeline.as_deref(),
            extra = (!extra.is_empty()).then_some(extra.as_str()),
            reason = %self.reason,
            "record sent to the dead-letter topic"
        );
        OutRecord {
            headers: Some(self.headers()),
            topic: self.dlq_topic,
            key: self.key,
            payload: self.payload,
        }
    }

    /// Where it came from, for logs and errors.
    fn origin(&self) -> String {
        match &self.source {
            Some(source) => source.to_string(),
            None => self
                .extra_headers
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// [`send_dead_letter`] stopped before the broker acknowledged the record.
#[derive(Debug, Clone, thiserror::Error)]
#[error("stopped before {topic} acknowledged the dead letter of {origin}")]
pub struct DeadLetterCancelled {
    pub topic: String,
    pub origin: String,
}

/// First and longest wait between two attempts of [`send_dead_letter`].
const DEAD_LETTER_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(10));

/// Produces a dead letter and waits for the broker's acknowledgement,
/// retrying with capped exponential backoff (each failure logged with the
/// topic, the error and the dead letter's reason) for as long as it takes.
/// Returns `Ok` only once the record is acknowledged, or `Err` when
/// `cancel` fires first — then the caller must not commit past the record's
/// source position, so that it is dead-lettered again after a restart.
/// A record already handed to librdkafka when `cancel` fires may still be
/// written: a dead letter can be duplicated, never lost.
pub async fn send_dead_letter(
    producer: &FutureProducer<StageContext>,
    letter: DeadLetterRecord,
    cancel: &CancellationToken,
) -> Result<(), DeadLetterCancelled> {
    let cancelled = DeadLetterCancelled {
        topic: letter.dlq_topic.clone(),
        origin: letter.origin(),
    };
    let reason = letter.reason.clone();
    let record = letter.into_record();
    let mut backoff = Backoff::new(DEAD_LETTER_BACKOFF.0, DEAD_LETTER_BACKOFF.1);
    loop {
        let attempt = async {
            match enqueue(producer, &record).await {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer dropped the record".to_owned()),
                },
                Err(e) => Err(e.to_string()),
            }
        };
        let error = tokio::select! {
            result = attempt => match result {
                Ok(()) => return Ok(()),
                Err(error) => error,
            },
            _ = cancel.cancelled() => return Err(cancelled),
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            topic = %record.topic,
            origin = %cancelled.origin,
            %error,
            %reason,
            retry_in = ?delay,
            "dead-letter write failed; retrying"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(cancelled),
        }
    }
}

/// The headers of every dead letter, in one place.
fn dead_letter_headers(
    source: Option<&SourcePosition>,
    stage: &str,
    reason: &str,
    pipeline: Option<&str>,
    extra: &[(&str, String)],
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new()
        .insert(header(dlq_headers::REASON, reason))
        .insert(header(dlq_headers::STAGE, stage));
    if let Some(source) = source {
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        headers = headers
            .insert(header(dlq_headers::SOURCE_TOPIC, &source.topic))
            .insert(header(dlq_headers::SOURCE_PARTITION, &partition))
            .insert(header(dlq_headers::SOURCE_OFFSET, &offset));
    }
    if let Some(pipeline) = pipeline {
        headers = headers.insert(header(dlq_headers::PIPELINE, pipeline));
    }
    for (name, value) in extra {
        headers = headers.insert(header(name, value));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn pairs(headers: &OwnedHeaders) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                (h.key.to_owned(), value.into_owned())
            })
            .collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_consumed_record_keeps_its_bytes_and_names_its_position() {
        let letter = DeadLetterRecord {
            dlq_topic: "in.dlq".into(),
            source: Some(SourcePosition {
                topic: "in".into(),
                partition: 2,
                offset: 7,
            }),
            key: Some(b"k".to_vec()),
            payload: Some(b"\xff".to_vec()),
            stage: "render".into(),
            reason: "template failed".into(),
            pipeline: None,
            extra_headers: Vec::new(),
        }
        .with_pipeline("p");
        let record = letter.into_record();
        assert_eq!(record.topic, "in.dlq");
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.payload.as_deref(), Some(&b"\xff"[..]));
        let expected = owned(&[
            (dlq_headers::REASON, "template failed"),
            (dlq_headers::STAGE, "render"),
            (dlq_headers::SOURCE_TOPIC, "in"),
            (dlq_headers::SOURCE_PARTITION, "2"),
            (dlq_headers::SOURCE_OFFSET, "7"),
            (dlq_headers::PIPELINE, "p"),
        ]);
        assert_eq!(pairs(record.headers.as_ref().unwrap()), expected);
    }

    #[test]
    fn a_row_names_its_job_instead_of_a_position() {
        let letter = DeadLetterRecord::new(
            "t.dlq",
            "produce",
            "row 5, column org_id: missing key (NULL)",
        )
        .with_payload(Some(b"{}".to_vec()))
        .with_header(dlq_headers::JOB, "j")
        .with_header(dlq_headers::ROW, "5");
        assert_eq!(letter.origin(), "alertsvc.dlq.job=j alertsvc.dlq.row=5");
        assert_eq!(
            pairs(&letter.headers()),
            owned(&[
                (
                    dlq_headers::REASON,
                    "row 5, column org_id: missing key (NULL)"
                ),
                (dlq_headers::STAGE, "produce"),
                (dlq_headers::JOB, "j"),
                (dlq_headers::ROW, "5"),
            ])
        );
    }
}
