//! Channel workers: one task per target channel delivers its messages in
//! order, one at a time, while channels proceed independently. An edit
//! waiting for `chat.update`'s workspace-wide tier lets its channel's next
//! messages go first; that alert's own later messages still wait for it. A worker
//! only executes; the dispatcher decides what it gets. A message's response
//! is acknowledged by Kafka in a task of its own while the worker goes on;
//! the message is reported done only after that acknowledgement.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::delivery::{ChannelRelease, DeliverError, Deliverer, LetGo};
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
/// it, so each alert's messages are delivered one at a time in order. Such
/// a job lets the later ones pass only if its alert's delivery waits for a
/// tier ([`LetGo::Aside`]); behind one done with Slack
/// ([`LetGo::InOrder`]) nothing passes, so the channel keeps its order.
struct ChannelQueue<J> {
    ready: VecDeque<(String, J)>,
    /// Alerts with a released delivery running, and the jobs behind each.
    behind: HashMap<String, Behind<J>>,
}

struct Behind<J> {
    how: LetGo,
    waiting: VecDeque<(String, J)>,
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
                Some(behind) if behind.how == LetGo::InOrder => {
                    self.ready.push_front((alert_id, job));
                    return None;
                }
                Some(behind) => behind.waiting.push_back((alert_id, job)),
                None => return Some((alert_id, job)),
            }
        }
        None
    }

    /// `alert_id`'s delivery let the channel go: its later jobs wait.
    fn running_aside(&mut self, alert_id: String, how: LetGo) {
        self.behind.entry(alert_id).or_insert_with(|| Behind {
            how,
            waiting: VecDeque::new(),
        });
    }

    /// `alert_id`'s delivery that ran aside ended: its waiting jobs come
    /// first (they waited longest), in order.
    fn ended_aside(&mut self, alert_id: &str) {
        if let Some(behind) = self.behind.remove(alert_id) {
            for job in behind.waiting.into_iter().rev() {
                self.ready.push_front(job);
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.behind.is_empty()
    }
}

/// Runs the channel's jobs one at a time: a job holds the channel until it
/// ends or releases it (a post once Slack answered it, an edit waiting for
/// its tier), then runs aside while the next starts.
async fn channel_worker(shared: Arc<Shared>, channel: String, jobs: mpsc::UnboundedReceiver<Job>) {
    in_channel_order(
        jobs,
        |job: &Job| job.message.alert_id.clone(),
        |job, release| run(shared.clone(), channel.clone(), job, release),
    )
    .await;
}

/// The channel worker's loop, apart from what a job is: `alert_of` names
/// a job's alert, `start` runs it (told how to release the channel).
async fn in_channel_order<J, Run>(
    mut jobs: mpsc::UnboundedReceiver<J>,
    alert_of: impl Fn(&J) -> String,
    start: impl Fn(J, ChannelRelease) -> Run,
) where
    Run: Future<Output = ()>,
{
    let mut queue = ChannelQueue::default();
    let mut aside = FuturesUnordered::new();
    let mut open = true;
    loop {
        if let Some((alert_id, job)) = queue.next() {
            let (release, released) = ChannelRelease::new();
            let mut released = released.fuse();
            // Polled here, in the worker's own task, and so are the jobs
            // that let the channel go: a task per message cost a spawn, a
            // wake-up and a hand-over per post. A panic stays within the
            // message, as it did in its own task.
            let mut running = Box::pin(AssertUnwindSafe(start(job, release)).catch_unwind());
            loop {
                tokio::select! {
                    _ = &mut running => break,
                    Ok(how) = &mut released => {
                        queue.running_aside(alert_id.clone(), how);
                        aside.push(async move {
                            // Its outcome is reported by the job itself.
                            let _ = running.await;
                            alert_id
                        });
                        break;
                    }
                    Some(ended) = aside.next(), if !aside.is_empty() => queue.ended_aside(&ended),
                }
            }
            continue;
        }
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => queue.push(alert_of(&job), job),
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
    use tokio::sync::oneshot;

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
        queue.running_aside(alert, LetGo::Aside);
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

    type Log = Arc<std::sync::Mutex<Vec<String>>>;

    async fn logged(log: &Log, what: &str) {
        for _ in 0..1_000 {
            if log.lock().unwrap().iter().any(|l| l == what) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never logged {what}: {:?}", log.lock().unwrap());
    }

    /// A channel's worker running a1, b1, a2 (a1's alert again) and c1:
    /// a1 lets the channel go (`how`) at once and ends when its gate
    /// opens, c1 ends when its gate opens, the others at once. Returns the
    /// log of starts and ends, the two gates' openers and the worker.
    fn four_jobs(how: LetGo) -> (Log, [oneshot::Sender<()>; 2], tokio::task::JoinHandle<()>) {
        let (open_a1, gate_a1) = oneshot::channel();
        let (open_c1, gate_c1) = oneshot::channel();
        let mut gates = [
            (("a", "a1"), Some(gate_a1)),
            (("b", "b1"), None),
            (("a", "a2"), None),
            (("c", "c1"), Some(gate_c1)),
        ];
        let (tx, rx) = mpsc::unbounded_channel();
        for ((alert, name), gate) in gates.iter_mut() {
            tx.send((*alert, *name, gate.take())).unwrap();
        }
        drop(tx);
        let log = Log::default();
        let worker = {
            let log = log.clone();
            tokio::spawn(in_channel_order(
                rx,
                |(alert, _, _): &TestJob| (*alert).to_owned(),
                move |(_, name, gate): TestJob, release: ChannelRelease| {
                    let log = log.clone();
                    async move {
                        log.lock().unwrap().push(format!("start {name}"));
                        if name == "a1" {
                            release.release(how);
                        }
                        if let Some(gate) = gate {
                            let _ = gate.await;
                        }
                        log.lock().unwrap().push(format!("end {name}"));
                    }
                },
            ))
        };
        (log, [open_a1, open_c1], worker)
    }

    /// Alert, name, gate.
    type TestJob = (&'static str, &'static str, Option<oneshot::Receiver<()>>);

    #[tokio::test]
    async fn a_job_waiting_aside_runs_on_in_the_worker_while_later_ones_pass_it() {
        let (log, [open_a1, open_c1], worker) = four_jobs(LetGo::Aside);
        // b1 ran, a2 waits for a1, c1 passed a2 and holds the channel now.
        logged(&log, "start c1").await;
        // a1 ends while c1 holds the channel: the worker still polls it.
        open_a1.send(()).unwrap();
        logged(&log, "end a1").await;
        open_c1.send(()).unwrap();
        worker.await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "start a1", "start b1", "end b1", "start c1", "end a1", "end c1", "start a2",
                "end a2"
            ]
        );
    }

    #[tokio::test]
    async fn a_job_done_with_slack_lets_the_next_start_but_none_pass_its_alert() {
        let (log, [open_a1, open_c1], worker) = four_jobs(LetGo::InOrder);
        logged(&log, "end b1").await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            !log.lock().unwrap().iter().any(|l| l == "start c1"),
            "c1 passed a2: {:?}",
            log.lock().unwrap()
        );
        open_a1.send(()).unwrap();
        logged(&log, "start c1").await;
        open_c1.send(()).unwrap();
        worker.await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "start a1", "start b1", "end b1", "end a1", "start a2", "end a2", "start c1",
                "end c1"
            ]
        );
    }

    #[test]
    fn a_later_job_that_runs_aside_again_holds_back_the_rest() {
        let mut queue = ChannelQueue::default();
        for (alert, job) in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")] {
            queue.push(alert.into(), job);
        }
        let (alert, _) = queue.next().unwrap();
        queue.running_aside(alert, LetGo::Aside);
        assert_eq!(started(&mut queue), ["b1"]);
        queue.ended_aside("a");
        let (alert, job) = queue.next().unwrap();
        assert_eq!(job, "a2");
        queue.running_aside(alert, LetGo::Aside);
        assert!(queue.next().is_none(), "a3 waits for a2");
        queue.ended_aside("a");
        assert_eq!(started(&mut queue), ["a3"]);
        queue.ended_aside("z"); // nothing ran aside for z: nothing changes
        assert!(queue.is_idle());
    }
}
