//! Channel workers: one task per target channel delivers its messages in
//! order, one at a time, while channels proceed independently. A worker
//! only executes; the dispatcher decides what it gets. A message's response
//! is acknowledged by Kafka in a task of its own while the worker goes on;
//! the message is reported done only after that acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::delivery::{DeliverError, Deliverer};
use super::responses::{Origin, Responses, Sent};
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

/// What became of a message in its worker.
enum Processed {
    /// It stays unfinished (shutdown, revocation, a bad token).
    Unfinished,
    /// Delivered, its response enqueued; done once Kafka acknowledges it.
    Sent(Sent, DeliveryOutcome),
}

async fn run(shared: &Arc<Shared>, channel: &str, job: Job) {
    let processed = if shared.draining.is_cancelled() || shared.halted.is_cancelled() {
        Processed::Unfinished
    } else if job.stop.is_cancelled() {
        shared.metrics.dropped_on_revoke.inc();
        Processed::Unfinished
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
    let done = Done {
        channel: channel.to_owned(),
        partition: job.partition,
        offset: job.offset,
        generation: job.generation,
        finished: false,
    };
    match processed {
        Processed::Unfinished => {
            let _ = shared.done.send(done);
        }
        Processed::Sent(sent, outcome) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let finished = shared.responses.acked(sent, &job.stop).await;
                if finished {
                    shared
                        .metrics
                        .deliveries
                        .with_label_values(&[outcome_label(outcome)])
                        .inc();
                }
                let _ = shared.done.send(Done { finished, ..done });
            });
        }
    }
}

/// Delivers one message and enqueues its outcome.
async fn process(shared: &Shared, job: &Job) -> Processed {
    let mut ledger_failures = 0u32;
    loop {
        if shared.halted.is_cancelled() {
            return Processed::Unfinished; // redelivered once the token is fixed
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
                let Some(sent) = shared.responses.send(&origin, &delivery, &job.stop).await else {
                    return Processed::Unfinished;
                };
                tracing::debug!(outcome = outcome_label(delivery.outcome), "delivered");
                return Processed::Sent(sent, delivery.outcome);
            }
            Err(DeliverError::Auth(e)) => {
                tracing::error!(error = %e, "Slack rejected the bot token: delivery stopped, readiness failing");
                shared.health.set_ready(false);
                shared.halted.cancel();
                return Processed::Unfinished;
            }
            Err(DeliverError::Ledger(e)) => {
                ledger_failures += 1;
                let delay = Duration::from_millis(200 * 2u64.pow(ledger_failures.min(6)));
                tracing::error!(error = %e, ?delay, "ledger unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = job.stop.cancelled() => return Processed::Unfinished,
                }
            }
            Err(DeliverError::Cancelled) => {
                if !shared.draining.is_cancelled() {
                    shared.metrics.dropped_on_revoke.inc();
                }
                return Processed::Unfinished;
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
