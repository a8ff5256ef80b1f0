//! The consumer loop: reads `slack-messages`, hands each message to its
//! channel's worker without ever waiting on one, stores offsets below the
//! lowest unfinished message of each partition, pauses partitions whose
//! channels are backlogged (or all of them while Slack is unreachable), and
//! follows rebalances: a revoked partition's queued messages are dropped,
//! its in-flight ones stopped before they post.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backlog::Backlog;
use super::offsets::OffsetTracker;
use super::worker::{self, Done, Job, Shared};
use crate::avro::{from_fields, Codec};
use crate::config::NotifySettings;
use crate::kafka::{send_dead_letter, DeadLetterRecord, StageContext};
use crate::messages::SlackMessage;

/// How long the dispatcher may go without reading while its backlog is
/// full before it pauses every partition instead (and polls again).
const FULL_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// The partitions this consumer owns, each with the token that stops its
/// work when it is revoked. Written by the rebalance callbacks (on the
/// consumer's thread), read by the dispatcher.
#[derive(Default)]
pub struct Assignment {
    state: Mutex<AssignmentState>,
}

#[derive(Default)]
struct AssignmentState {
    partitions: HashMap<i32, (u64, CancellationToken)>,
    next_generation: u64,
    /// Changes the dispatcher has not seen yet.
    changed: bool,
}

impl Assignment {
    fn lock(&self) -> std::sync::MutexGuard<'_, AssignmentState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        let mut state = self.lock();
        for element in tpl.elements() {
            state.next_generation += 1;
            let generation = state.next_generation;
            state
                .partitions
                .insert(element.partition(), (generation, CancellationToken::new()));
        }
        state.changed = true;
    }

    fn revoke(&self, tpl: &TopicPartitionList) {
        let mut state = self.lock();
        for element in tpl.elements() {
            if let Some((_, token)) = state.partitions.remove(&element.partition()) {
                token.cancel();
            }
        }
        state.changed = true;
    }

    /// The partition's current generation and stop token.
    pub fn of(&self, partition: i32) -> Option<(u64, CancellationToken)> {
        self.lock().partitions.get(&partition).cloned()
    }

    fn current(&self) -> BTreeSet<i32> {
        self.lock().partitions.keys().copied().collect()
    }

    fn take_changed(&self) -> bool {
        std::mem::take(&mut self.lock().changed)
    }

    fn generation(&self, partition: i32) -> Option<u64> {
        self.lock().partitions.get(&partition).map(|(g, _)| *g)
    }

    /// Stops everything (the hard stop at the end of shutdown).
    pub fn stop_all(&self) {
        for (_, token) in self.lock().partitions.values() {
            token.cancel();
        }
    }
}

/// notify's consumer context: the stage context (logs, lag) plus the
/// rebalance hooks that keep [`Assignment`] current.
#[derive(Clone)]
pub struct NotifyContext {
    pub stage: StageContext,
    pub assignment: Arc<Assignment>,
}

impl ClientContext for NotifyContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.stage.error(error, reason)
    }

    fn stats(&self, statistics: Statistics) {
        self.stage.stats(statistics)
    }
}

impl ConsumerContext for NotifyContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Before the new owner can start: stop posting for these.
            self.assignment.revoke(tpl);
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.assignment.assign(tpl);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

pub struct Dispatcher<'a> {
    pub consumer: &'a StreamConsumer<NotifyContext>,
    pub assignment: Arc<Assignment>,
    pub codec: Arc<Codec>,
    pub shared: Arc<Shared>,
    pub done_rx: mpsc::UnboundedReceiver<Done>,
    pub input_topic: String,
    pub settings: &'a NotifySettings,
    pub hard_stop: CancellationToken,
}

struct State {
    tracker: OffsetTracker,
    backlog: Backlog,
    workers: HashMap<String, mpsc::UnboundedSender<Job>>,
    paused: BTreeSet<i32>,
    /// The generation each tracked partition was last seen under.
    generations: HashMap<i32, u64>,
    /// After a rebalance, librdkafka's pause state of the new assignment is
    /// not ours to assume: set every partition's state explicitly.
    resync_pauses: bool,
}

impl Dispatcher<'_> {
    /// Runs until `shutdown`, then lets in-flight messages finish (queued
    /// ones are left for the next owner) for up to the grace period.
    pub async fn run(mut self, shutdown: &CancellationToken) {
        let mut state = State {
            tracker: OffsetTracker::default(),
            backlog: Backlog::new(
                self.settings.max_channel_backlog,
                self.settings.max_in_flight,
            ),
            workers: HashMap::new(),
            paused: BTreeSet::new(),
            generations: HashMap::new(),
            resync_pauses: false,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        // Since when the backlog has been full without a pause.
        let mut full_since: Option<Instant> = None;
        loop {
            let read = !state.backlog.full() || state.backlog.paused_while_full();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.done_rx.recv() => self.finished(&mut state, done),
                _ = tick.tick() => {}
                message = self.consumer.recv(), if read => match message {
                    Ok(message) => self.accept(&mut state, message.detach()).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "consume failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            if state.backlog.full() && !state.backlog.paused_while_full() {
                // Not read for this long, the consumer would hold up a
                // rebalance (and at five minutes leave its group): pause
                // everything and go on polling.
                let since = *full_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= FULL_BEFORE_PAUSE {
                    state.backlog.pause_while_full();
                }
            } else {
                full_since = None;
            }
            self.follow_assignment(&mut state);
            self.apply_pauses(&mut state);
        }
        self.drain(&mut state).await;
    }

    async fn drain(&mut self, state: &mut State) {
        tracing::info!(
            in_flight = state.backlog.total(),
            "notify stopping: finishing in-flight messages"
        );
        self.shared.draining.cancel();
        state.workers.clear();
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        while state.backlog.total() > 0 {
            tokio::select! {
                Some(done) = self.done_rx.recv() => self.finished(state, done),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(left = state.backlog.total(), "grace period over; the rest is redelivered after restart");
                    break;
                }
            }
        }
        self.hard_stop.cancel();
        self.assignment.stop_all();
        // Backoffs and waits return at once now; collect their answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while state.backlog.total() > 0 {
            tokio::select! {
                Some(done) = self.done_rx.recv() => self.finished(state, done),
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    async fn accept(&self, state: &mut State, message: OwnedMessage) {
        let (partition, offset) = (message.partition(), message.offset());
        // A message of a partition we no longer own (fetched before the
        // revocation): its new owner reads it.
        let Some((generation, stop)) = self.assignment.of(partition) else {
            return;
        };
        state.tracker.started(partition, offset);
        match decode(&self.codec, &message).await {
            Ok(slack_message) => {
                let channel = slack_message.channel_id.clone();
                state.backlog.added(&channel, partition);
                self.shared.metrics.in_flight.inc();
                let replayed = message
                    .headers()
                    .is_some_and(|headers| headers.iter().any(|h| h.key == REPLAYED_FROM_HEADER));
                let job = Job {
                    replayed,
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    partition,
                    offset,
                    generation,
                    stop,
                    message: slack_message,
                };
                self.send_to_worker(state, channel, job);
            }
            Err(reason) => {
                if self.dead_letter(&message, &reason, &stop).await {
                    self.store(state, partition, offset, generation);
                }
            }
        }
    }

    fn send_to_worker(&self, state: &mut State, channel: String, job: Job) {
        let mut job = job;
        loop {
            let sender = state
                .workers
                .entry(channel.clone())
                .or_insert_with(|| worker::spawn(self.shared.clone(), channel.clone()));
            match sender.send(job) {
                Ok(()) => return,
                // The worker retired while idle: start a new one.
                Err(mpsc::error::SendError(returned)) => {
                    state.workers.remove(&channel);
                    job = returned;
                }
            }
        }
    }

    fn finished(&self, state: &mut State, done: Done) {
        self.shared.metrics.in_flight.dec();
        state.backlog.removed(&done.channel, done.partition);
        if done.finished {
            self.store(state, done.partition, done.offset, done.generation);
        }
    }

    /// Marks a message done and stores the partition's committable offset
    /// if it moved (only under the assignment it was read in).
    fn store(&self, state: &mut State, partition: i32, offset: i64, generation: u64) {
        if self.assignment.generation(partition) != Some(generation) {
            return;
        }
        if let Some(next) = state.tracker.finished(partition, offset) {
            // `store_offset` takes the last processed offset; the commit is
            // one past it.
            if let Err(e) = self
                .consumer
                .store_offset(&self.input_topic, partition, next - 1)
            {
                tracing::debug!(partition, error = %e, "offset not stored (partition revoked?)");
            }
        }
    }

    fn follow_assignment(&self, state: &mut State) {
        if !self.assignment.take_changed() {
            return;
        }
        let owned = self.assignment.current();
        // A partition assigned anew starts unpaused, with nothing tracked:
        // what was in flight under the old assignment is its new owner's.
        let mut current = HashMap::new();
        for partition in &owned {
            if let Some(generation) = self.assignment.generation(*partition) {
                current.insert(*partition, generation);
            }
        }
        let stale: Vec<i32> = state
            .generations
            .iter()
            .filter(|(p, g)| current.get(p) != Some(g))
            .map(|(p, _)| *p)
            .collect();
        for partition in stale {
            state.tracker.forget(partition);
            state.paused.remove(&partition);
        }
        state.paused.retain(|p| owned.contains(p));
        state.generations = current;
        state.resync_pauses = true;
    }

    fn apply_pauses(&self, state: &mut State) {
        let stopped = self.shared.deliverer.slack_health().is_unreachable()
            || self.shared.halted.is_cancelled();
        // After every message: nothing paused and nothing to pause is the
        // usual case, told without copying the assignment or looking at
        // every channel's load.
        if !state.resync_pauses
            && !stopped
            && state.paused.is_empty()
            && state.backlog.pauses_nothing()
        {
            return;
        }
        let owned = self.assignment.current();
        let wanted = state.backlog.to_pause(&owned, stopped);
        if std::mem::take(&mut state.resync_pauses) {
            state.paused = owned.difference(&wanted).copied().collect();
            // …so that everything not wanted paused is resumed below, and
            // what is wanted is paused again.
            let pause: Vec<i32> = wanted.iter().copied().collect();
            if !pause.is_empty() {
                if let Err(e) = self.consumer.pause(&Self::list(&self.input_topic, &pause)) {
                    tracing::warn!(error = %e, "pause failed");
                }
            }
            let resume: Vec<i32> = state.paused.iter().copied().collect();
            if !resume.is_empty() {
                if let Err(e) = self
                    .consumer
                    .resume(&Self::list(&self.input_topic, &resume))
                {
                    tracing::warn!(error = %e, "resume failed");
                }
            }
            state.paused = wanted;
            self.shared
                .metrics
                .paused_partitions
                .set(i64::try_from(state.paused.len()).unwrap_or(i64::MAX));
            return;
        }
        if wanted == state.paused {
            return;
        }
        let list = |partitions: Vec<i32>| Self::list(&self.input_topic, &partitions);
        let pause: Vec<i32> = wanted.difference(&state.paused).copied().collect();
        let resume: Vec<i32> = state.paused.difference(&wanted).copied().collect();
        if !pause.is_empty() {
            match self.consumer.pause(&list(pause.clone())) {
                Ok(()) => tracing::info!(?pause, "partitions paused"),
                Err(e) => tracing::warn!(error = %e, "pause failed"),
            }
        }
        if !resume.is_empty() {
            match self.consumer.resume(&list(resume.clone())) {
                Ok(()) => tracing::info!(?resume, "partitions resumed"),
                Err(e) => tracing::warn!(error = %e, "resume failed"),
            }
        }
        state.paused = wanted;
        self.shared
            .metrics
            .paused_partitions
            .set(i64::try_from(state.paused.len()).unwrap_or(i64::MAX));
    }

    fn list(topic: &str, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(topic, *p);
        }
        tpl
    }

    /// True once the broker acknowledged the dead letter.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        stop: &CancellationToken,
    ) -> bool {
        self.shared.metrics.dlq.inc();
        let letter = DeadLetterRecord::from_message(
            self.shared.responses.dlq_topic.clone(),
            message,
            "decode",
            reason,
        );
        send_dead_letter(&self.shared.responses.producer, letter, stop)
            .await
            .is_ok()
    }
}

/// Set by `alertsvc dlq replay` on every record it re-injects.
pub const REPLAYED_FROM_HEADER: &str = "alertsvc.replayed.from";

async fn decode(codec: &Codec, message: &OwnedMessage) -> Result<SlackMessage, String> {
    let payload = message.payload().ok_or("record has no value")?;
    // Straight from the bytes into the struct; a record the scan cannot
    // vouch for, or that does not fit, takes the full decode, whose value
    // or error is the one that counts.
    if let Some(message) = codec
        .scan(payload)
        .and_then(|fields| from_fields(fields).ok())
    {
        return Ok(message);
    }
    let value = codec
        .decode(payload)
        .await
        .map_err(|e| format!("cannot decode: {e}"))?;
    SlackMessage::from_json(value).map_err(|e| format!("not a SlackMessage: {e}"))
}
