//! Channel workers: one task per target channel delivers its messages in
//! order, one at a time, while channels proceed independently. An edit
//! waiting for `chat.update`'s workspace-wide tier lets its channel's next
//! messages go first; that alert's own later messages still wait for it. A worker
//! only executes; the dispatcher decides what it gets. A message's response
//! is acknowledged by Kafka in a task of its own while the worker goes on;
//! the message is reported done only after that acknowledgement.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::delivery::{ChannelRelease, DeliverError, Deliverer};
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

/// A channel's jobs not yet started, each with its alert id: in arrival
/// order, except that a job whose alert has a delivery still running (one
/// that let the channel go on without it, [`ChannelRelease`]) waits behind
/// it, so each alert's messages are delivered one at a time in order.
struct ChannelQueue<J> {
    ready: VecDeque<(String, J)>,
    /// Alerts with a released delivery running, and the jobs behind each.
    behind: HashMap<String, VecDeque<(String, J)>>,
}

impl<J> Default for ChannelQueue<J> {
    fn default() -> Self {
        ChannelQueue {
            ready: VecDeque::new(),
            behind: HashMap::new(),
        }
    }
}

impl<J> ChannelQueue<J> {
    fn push(&mut self, alert_id: String, job: J) {
        self.ready.push_back((alert_id, job));
    }

    /// The next job to start now, if any.
    fn next(&mut self) -> Option<(String, J)> {
        while let Some((alert_id, job)) = self.ready.pop_front() {
            match self.behind.get_mut(&alert_id) {
                Some(waiting) => waiting.push_back((alert_id, job)),
                None => return Some((alert_id, job)),
            }
        }
        None
    }

    /// `alert_id`'s delivery let the channel go: its later jobs wait.
    fn running_aside(&mut self, alert_id: String) {
        self.behind.entry(alert_id).or_default();
    }

    /// `alert_id`'s delivery that ran aside ended: its waiting jobs come
    /// first (they waited longest), in order.
    fn ended_aside(&mut self, alert_id: &str) {
        if let Some(waiting) = self.behind.remove(alert_id) {
            for job in waiting.into_iter().rev() {
                self.ready.push_front(job);
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.behind.is_empty()
    }
}

/// Runs the channel's jobs one at a time: a job holds the channel until it
/// ends or releases it (an edit waiting for its tier), then runs aside
/// while the next starts.
async fn channel_worker(
    shared: Arc<Shared>,
    channel: String,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut queue = ChannelQueue::default();
    let mut aside = FuturesUnordered::new();
    let mut open = true;
    loop {
        if let Some((alert_id, job)) = queue.next() {
            let (release, released) = ChannelRelease::new();
            // Polled here, in the worker's own task: a task spawned per
            // message cost a spawn, a wake-up and a hand-over per post.
            // Only a delivery that releases the channel goes on in a task
            // of its own, from where it stands. A panic stays within the
            // message, as it did in its own task.
            let mut running = Box::pin(
                AssertUnwindSafe(run(shared.clone(), channel.clone(), job, release)).catch_unwind(),
            );
            tokio::select! {
                _ = &mut running => {}
                Ok(()) = released => {
                    queue.running_aside(alert_id.clone());
                    let running = tokio::spawn(running);
                    aside.push(async move {
                        // Its outcome is reported by `run` itself.
                        let _ = running.await;
                        alert_id
                    });
                }
            }
            continue;
        }
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => queue.push(job.message.alert_id.clone(), job),
                None => open = false,
            },
            Some(alert_id) = aside.next(), if !aside.is_empty() => queue.ended_aside(&alert_id),
            // Refuse new jobs, then finish any that raced in.
            _ = tokio::time::sleep(WORKER_IDLE), if open && aside.is_empty() => jobs.close(),
            else => {}
        }
        if !open && aside.is_empty() && queue.is_idle() {
            return;
        }
    }
}

/// What became of a message in its worker.
enum Processed {
    /// It stays unfinished (shutdown, revocation, a bad token).
    Unfinished,
    /// Delivered, its response enqueued; done once Kafka acknowledges it.
    Sent(Sent, DeliveryOutcome),
}

async fn run(shared: Arc<Shared>, channel: String, job: Job, release: ChannelRelease) {
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
        process(&shared, &job, &release).instrument(span).await
    };
    let done = Done {
        channel,
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
async fn process(shared: &Shared, job: &Job, release: &ChannelRelease) -> Processed {
    let mut ledger_failures = 0u32;
    loop {
        if shared.halted.is_cancelled() {
            return Processed::Unfinished; // redelivered once the token is fixed
        }
        match shared
            .deliverer
            .deliver(&job.message, job.replayed, release, &job.stop)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn started(queue: &mut ChannelQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.next().map(|(_, job)| job)).collect()
    }

    #[test]
    fn an_alert_running_aside_holds_back_only_its_own_later_jobs() {
        let mut queue = ChannelQueue::default();
        queue.push("a".into(), "a1");
        let (alert, job) = queue.next().unwrap();
        assert_eq!(job, "a1");
        // a1 waits for its edit's tier: the channel goes on.
        queue.running_aside(alert);
        for (alert, job) in [("a", "a2"), ("b", "b1"), ("a", "a3"), ("c", "c1")] {
            queue.push(alert.into(), job);
        }
        assert_eq!(started(&mut queue), ["b1", "c1"]);
        assert!(!queue.is_idle(), "a2 and a3 wait");
        queue.push("b".into(), "b2");
        queue.ended_aside("a");
        assert_eq!(started(&mut queue), ["a2", "a3", "b2"]);
        assert!(queue.is_idle());
    }

    #[test]
    fn a_later_job_that_runs_aside_again_holds_back_the_rest() {
        let mut queue = ChannelQueue::default();
        for (alert, job) in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")] {
            queue.push(alert.into(), job);
        }
        let (alert, _) = queue.next().unwrap();
        queue.running_aside(alert);
        assert_eq!(started(&mut queue), ["b1"]);
        queue.ended_aside("a");
        let (alert, job) = queue.next().unwrap();
        assert_eq!(job, "a2");
        queue.running_aside(alert);
        assert!(queue.next().is_none(), "a3 waits for a2");
        queue.ended_aside("a");
        assert_eq!(started(&mut queue), ["a3"]);
        queue.ended_aside("z"); // nothing ran aside for z: nothing changes
        assert!(queue.is_idle());
    }
}
