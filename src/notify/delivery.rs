//! Delivering one message, exactly once: consult the ledger, reconcile a
//! `pending` entry against the channel's history, skip stale alerts, post
//! (or update changed content), retry transient failures, record the
//! result. Auth failures and ledger outages are not outcomes: the message
//! stays unfinished and is not committed.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::ledger::{Ledger, LedgerError, Status};
use super::pacing::{retry_delay, Pacer};
use crate::config::RetrySettings;
use crate::messages::{DeliveryOutcome, SlackMessage};
use crate::metrics::NotifyMetrics;
use crate::slack::{ErrorClass, SlackApi, SlackError};

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub outcome: DeliveryOutcome,
    pub channel: String,
    pub ts: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub http_status: Option<i32>,
    /// The message also goes to the dead-letter topic.
    pub dead_letter: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("Slack rejected the bot token ({0}); delivery stopped")]
    Auth(SlackError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("shutting down")]
    Cancelled,
}

/// Hash of what a message shows, to tell a redelivery from a change.
pub fn content_hash(message: &SlackMessage) -> String {
    let mut hasher = Sha256::new();
    for part in [&message.channel_id, &message.text, &message.blocks] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// Whether an alert created at `created_at_ms` is too old at `now_ms`.
pub fn is_expired(created_at_ms: i64, now_ms: i64, max_age: Duration) -> bool {
    now_ms.saturating_sub(created_at_ms) > max_age.as_millis() as i64
}

pub struct Deliverer {
    pub slack: Arc<SlackApi>,
    pub ledger: Ledger,
    pub pacer: Arc<Pacer>,
    pub retry: RetrySettings,
    pub max_age: Duration,
    pub metrics: NotifyMetrics,
}

enum Attempted<T> {
    Done(T),
    Failed(SlackError),
}

impl Deliverer {
    pub async fn deliver(
        &self,
        message: &SlackMessage,
        now_ms: i64,
        stop: &CancellationToken,
    ) -> Result<Delivery, DeliverError> {
        let hash = content_hash(message);
        let mut attempts = 0i32;
        if let Some(entry) = self.ledger.get(&message.alert_id).await? {
            let known_ts = match (entry.status, entry.ts.clone()) {
                (Status::Posted, Some(ts)) => Some(ts),
                // A crash may have come between Slack's answer and the
                // ledger write: look before posting again.
                (Status::Pending, _) => {
                    match self
                        .retrying(&entry.channel_id, &mut attempts, stop, false, || {
                            self.slack.find_alert(&entry.channel_id, &message.alert_id)
                        })
                        .await?
                    {
                        Attempted::Done(found) => found,
                        Attempted::Failed(e) => {
                            return self.failed(message, &hash, e, attempts, now_ms).await
                        }
                    }
                }
                _ => None,
            };
            if let Some(ts) = known_ts {
                if entry.content_hash == hash {
                    self.ledger
                        .mark_posted(&message.alert_id, &entry.channel_id, &ts, &hash, now_ms)
                        .await?;
                    return Ok(self.done(
                        DeliveryOutcome::Duplicate,
                        &entry.channel_id,
                        Some(ts),
                        attempts,
                    ));
                }
                return self
                    .update(
                        message,
                        &entry.channel_id,
                        &ts,
                        &hash,
                        attempts,
                        now_ms,
                        stop,
                    )
                    .await;
            }
        }
        if is_expired(message.created_at, now_ms, self.max_age) {
            self.ledger
                .mark_final(
                    &message.alert_id,
                    &message.channel_id,
                    &hash,
                    Status::Expired,
                    "expired",
                    now_ms,
                )
                .await?;
            return Ok(Delivery {
                outcome: DeliveryOutcome::Expired,
                channel: message.channel_id.clone(),
                ts: None,
                error: Some("expired".into()),
                attempts,
                http_status: None,
                dead_letter: false,
            });
        }
        self.ledger
            .mark_pending(&message.alert_id, &message.channel_id, &hash, now_ms)
            .await?;
        let posted = self
            .retrying(&message.channel_id, &mut attempts, stop, true, || {
                self.slack.post(
                    &message.channel_id,
                    &message.text,
                    &message.blocks,
                    &message.alert_id,
                )
            })
            .await?;
        match posted {
            Attempted::Done(posted) => {
                self.ledger
                    .mark_posted(
                        &message.alert_id,
                        &posted.channel,
                        &posted.ts,
                        &hash,
                        now_ms,
                    )
                    .await?;
                Ok(self.done(
                    DeliveryOutcome::Posted,
                    &posted.channel,
                    Some(posted.ts),
                    attempts,
                ))
            }
            Attempted::Failed(e) => self.failed(message, &hash, e, attempts, now_ms).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn update(
        &self,
        message: &SlackMessage,
        channel: &str,
        ts: &str,
        hash: &str,
        mut attempts: i32,
        now_ms: i64,
        stop: &CancellationToken,
    ) -> Result<Delivery, DeliverError> {
        let updated = self
            .retrying(channel, &mut attempts, stop, true, || {
                self.slack.update(
                    channel,
                    ts,
                    &message.text,
                    &message.blocks,
                    Some(&message.alert_id),
                )
            })
            .await?;
        match updated {
            Attempted::Done(posted) => {
                self.ledger
                    .mark_posted(&message.alert_id, &posted.channel, &posted.ts, hash, now_ms)
                    .await?;
                Ok(self.done(
                    DeliveryOutcome::Updated,
                    &posted.channel,
                    Some(posted.ts),
                    attempts,
                ))
            }
            Attempted::Failed(e) => self.failed(message, hash, e, attempts, now_ms).await,
        }
    }

    fn done(
        &self,
        outcome: DeliveryOutcome,
        channel: &str,
        ts: Option<String>,
        attempts: i32,
    ) -> Delivery {
        Delivery {
            outcome,
            channel: channel.to_owned(),
            ts,
            error: None,
            attempts,
            http_status: Some(200),
            dead_letter: false,
        }
    }

    async fn failed(
        &self,
        message: &SlackMessage,
        hash: &str,
        error: SlackError,
        attempts: i32,
        now_ms: i64,
    ) -> Result<Delivery, DeliverError> {
        let code = error.code();
        self.ledger
            .mark_final(
                &message.alert_id,
                &message.channel_id,
                hash,
                Status::Failed,
                &code,
                now_ms,
            )
            .await?;
        Ok(Delivery {
            outcome: DeliveryOutcome::Failed,
            channel: message.channel_id.clone(),
            ts: None,
            error: Some(code),
            attempts,
            http_status: error.http_status(),
            dead_letter: true,
        })
    }

    /// Runs a Slack call until it succeeds, fails for good, or attempts
    /// run out; paced calls wait for the channel's and workspace's limits.
    async fn retrying<T, F, Fut>(
        &self,
        channel: &str,
        attempts: &mut i32,
        stop: &CancellationToken,
        paced: bool,
        call: F,
    ) -> Result<Attempted<T>, DeliverError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SlackError>>,
    {
        loop {
            if paced {
                let waited = self.pacer.ready(channel).await;
                if waited > Duration::from_millis(1) {
                    self.metrics
                        .pacing_wait_seconds
                        .observe(waited.as_secs_f64());
                }
            }
            *attempts += 1;
            let started = tokio::time::Instant::now();
            let result = call().await;
            self.metrics
                .slack_seconds
                .observe(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(value) => return Ok(Attempted::Done(value)),
                Err(e) => e,
            };
            match error.class() {
                ErrorClass::Auth => return Err(DeliverError::Auth(error)),
                ErrorClass::Permanent => return Ok(Attempted::Failed(error)),
                ErrorClass::Transient { retry_after } => {
                    if *attempts as u32 >= self.retry.max_attempts {
                        return Ok(Attempted::Failed(error));
                    }
                    if retry_after.is_some() {
                        self.metrics.rate_limited.inc();
                    }
                    self.metrics.retries.inc();
                    let delay =
                        retry_delay(&self.retry, *attempts as u32, retry_after, fastrand::f64());
                    tracing::warn!(channel, error = %error, ?delay, attempt = *attempts, "transient Slack failure; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return Err(DeliverError::Cancelled),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> SlackMessage {
        SlackMessage {
            alert_id: "a".into(),
            channel_id: "C1".into(),
            text: text.into(),
            blocks: "[]".into(),
            created_at: 0,
            pipeline: "p".into(),
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 0,
        }
    }

    #[test]
    fn content_hash_ignores_provenance_but_not_content() {
        let mut moved = message("x");
        moved.source_offset = 99;
        moved.created_at = 5;
        assert_eq!(content_hash(&message("x")), content_hash(&moved));
        assert_ne!(content_hash(&message("x")), content_hash(&message("y")));
    }

    #[test]
    fn expiry_uses_created_at() {
        let hour = Duration::from_secs(3600);
        assert!(!is_expired(1_000, 1_000 + 3_600_000, hour));
        assert!(is_expired(1_000, 1_001 + 3_600_000, hour));
    }
}
