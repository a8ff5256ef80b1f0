//! Channel workers: one task per target channel delivers its messages in
//! order, one at a time, while channels proceed independently. A worker
//! only executes; the dispatcher decides what it gets.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::delivery::{DeliverError, Deliverer};
use super::responses::{Origin, Responses};
use crate::http::Health;
use crate::messages::{DeliveryOutcome, SlackMessage};
use crate::metrics::NotifyMetrics;

/// A worker with nothing to do for this long exits.
const WORKER_IDLE: Duration = Duration::from_secs(60);

pub struct Job {
    pub message: SlackMessage,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    /// Which assignment of the partition the message was read under.
    pub generation: u64,
    /// Re-injected by `alertsvc dlq replay` (header `alertsvc.replayed.from`).
    pub replayed: bool,
    /// Cancelled when the partition is revoked (or at the hard stop):
    /// nothing more is posted for it.
    pub stop: CancellationToken,
}

/// A job left its worker: `finished` when its outcome is recorded (its
/// offset may be committed), else it is redelivered later.
pub struct Done {
    pub channel: String,
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
    pub finished: bool,
}

/// What every channel worker needs.
pub struct Shared {
    pub deliverer: Deliverer,
    pub responses: Responses,
    pub metrics: NotifyMetrics,
    pub health: Arc<Health>,
    /// Set when Slack rejects the token: nothing more is delivered.
    pub halted: CancellationToken,
    /// Set at shutdown: queued jobs are left for the next run.
    pub draining: CancellationToken,
    pub done: mpsc::UnboundedSender<Done>,
}

/// Starts a worker for `channel`; jobs sent to it are delivered in order.
pub fn spawn(shared: Arc<Shared>, channel: String) -> mpsc::UnboundedSender<Job> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(channel_worker(shared, channel, rx));
    tx
}

async fn channel_worker(
    shared: Arc<Shared>,
    channel: String,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            _ = tokio::time::sleep(WORKER_IDLE) => {
                // Refuse new jobs, then finish any that raced in.
                jobs.close();
                while let Some(job) = jobs.recv().await {
                    run(&shared, &channel, job).await;
                }
                return;
            }
        };
        let Some(job) = job else { return };
        run(&shared, &channel, job).await;
    }
}

async fn run(shared: &Shared, channel: &str, job: Job) {
    let finished = if shared.draining.is_cancelled() || shared.halted.is_cancelled() {
        false
    } else if job.stop.is_cancelled() {
        shared.metrics.dropped_on_revoke.inc();
        false
    } else {
        let span = tracing::info_span!(
            "deliver",
            alert_id = %job.message.alert_id,
            channel = %job.message.channel_id,
            partition = job.partition,
            offset = job.offset
        );
        process(shared, &job).instrument(span).await
    };
    let _ = shared.done.send(Done {
        channel: channel.to_owned(),
        partition: job.partition,
        offset: job.offset,
        generation: job.generation,
        finished,
    });
}

/// Delivers one message and records its outcome; false when it stays
/// unfinished (shutdown, revocation, a bad token).
async fn process(shared: &Shared, job: &Job) -> bool {
    let mut ledger_failures = 0u32;
    loop {
        if shared.halted.is_cancelled() {
            return false; // redelivered once the token is fixed
        }
        match shared
            .deliverer
            .deliver(&job.message, job.replayed, &job.stop)
            .await
        {
            Ok(delivery) => {
                let origin = Origin {
                    message: &job.message,
                    partition: job.partition,
                    offset: job.offset,
                    key: job.key.as_deref(),
                    payload: &job.payload,
                };
                if !shared.responses.record(&origin, &delivery, &job.stop).await {
                    return false;
                }
                shared
                    .metrics
                    .deliveries
                    .with_label_values(&[outcome_label(delivery.outcome)])
                    .inc();
                tracing::debug!(outcome = outcome_label(delivery.outcome), "delivered");
                return true;
            }
            Err(DeliverError::Auth(e)) => {
                tracing::error!(error = %e, "Slack rejected the bot token: delivery stopped, readiness failing");
                shared.health.set_ready(false);
                shared.halted.cancel();
                return false;
            }
            Err(DeliverError::Ledger(e)) => {
                ledger_failures += 1;
                let delay = Duration::from_millis(200 * 2u64.pow(ledger_failures.min(6)));
                tracing::error!(error = %e, ?delay, "ledger unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = job.stop.cancelled() => return false,
                }
            }
            Err(DeliverError::Cancelled) => {
                if !shared.draining.is_cancelled() {
                    shared.metrics.dropped_on_revoke.inc();
                }
                return false;
            }
        }
    }
}

pub fn outcome_label(outcome: DeliveryOutcome) -> &'static str {
    match outcome {
        DeliveryOutcome::Posted => "posted",
        DeliveryOutcome::Updated => "updated",
        DeliveryOutcome::Duplicate => "duplicate",
        DeliveryOutcome::Expired => "expired",
        DeliveryOutcome::Failed => "failed",
        DeliveryOutcome::ResolvedUnposted => "resolved_unposted",
    }
}
