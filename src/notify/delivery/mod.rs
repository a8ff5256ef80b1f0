//! Delivering one message: claim the alert in the ledger, ask
//! [`decision::decide`] what to do, and do it — post, edit, reply in the
//! alert's thread, look for an earlier post or reply, or answer without
//! touching Slack. Each step is written to the ledger before the next is
//! decided. Transient failures are retried for as long as the alert is
//! young enough; an ambiguous answer is reconciled against the
//! conversation (or thread) before any second post or reply. Auth
//! failures, ledger outages and cancellation are not outcomes: the message
//! stays unfinished and is not committed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::decision::{self, classify, ClaimView, Failure, Incoming, Plan, ReplyKind, Rules};
use super::grouping::{GroupSettings, GroupThread, Grouper};
use super::ledger::{Claim, Entry, Ledger, LedgerError, Owner, Status, Version};
use super::pacing::{retry_delay, Pacer};
use super::slack_health::SlackHealth;
use super::state::AlertStates;
use crate::config::RetrySettings;
use crate::messages::{AlertStatus, DeliveryOutcome, SlackMessage};
use crate::metrics::{seconds_since, NotifyMetrics};
use crate::slack::{is_user_id, AlertRef, ReplyRef, SlackApi, SlackError, Thread};

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub outcome: DeliveryOutcome,
    pub ok: bool,
    pub channel: String,
    pub ts: Option<String>,
    /// The thread the alert's replies go to.
    pub thread_ts: Option<String>,
    /// The thread reply this message added, if any.
    pub reply_ts: Option<String>,
    pub error: Option<String>,
    /// `chat.postMessage` / `chat.update` calls made for it.
    pub attempts: i32,
    pub http_status: Option<i32>,
    /// The message also goes to the dead-letter topic: Slack refused it
    /// for good and it was never posted.
    pub dead_letter: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("Slack rejected the bot token ({0}); delivery stopped")]
    Auth(SlackError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("stopped (shutdown or partition revoked)")]
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

pub fn version_of(message: &SlackMessage) -> Version {
    Version {
        source: format!("{}/{}", message.source_topic, message.source_partition),
        offset: message.source_offset,
        created_at: message.created_at,
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Alerts being delivered by this process: one at a time per alert id, so
/// the ledger claim (per instance) only has to arbitrate between replicas.
#[derive(Default)]
struct InProcess {
    busy: Mutex<HashSet<String>>,
}

struct InProcessGuard<'a> {
    owner: &'a InProcess,
    alert_id: String,
}

impl InProcess {
    async fn enter(&self, alert_id: &str) -> InProcessGuard<'_> {
        loop {
            {
                let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                if busy.insert(alert_id.to_owned()) {
                    return InProcessGuard {
                        owner: self,
                        alert_id: alert_id.to_owned(),
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for InProcessGuard<'_> {
    fn drop(&mut self) {
        self.owner
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.alert_id);
    }
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub retry: RetrySettings,
    pub rules: Rules,
    pub claim_lease: Duration,
    pub reconcile_delay: Duration,
    /// At most one edit of a group's summary per this long.
    pub group_update_interval: Duration,
}

pub struct Deliverer {
    slack: Arc<SlackApi>,
    ledger: Ledger,
    pacer: Arc<Pacer>,
    settings: DeliverySettings,
    owner: Owner,
    metrics: NotifyMetrics,
    health: Arc<SlackHealth>,
    /// User id → DM conversation id.
    dms: Mutex<HashMap<String, String>>,
    in_process: InProcess,
    /// Alert states (acknowledged, snoozed, …): every edit shows them.
    states: Option<Arc<AlertStates>>,
    grouper: Arc<Grouper>,
}

/// How one Slack call ended, for the caller's loop.
enum Called<T> {
    Done(T),
    /// Refused for good (or an unknown error too many times).
    Refused(SlackError),
    /// Slack may have done it.
    Uncertain(SlackError),
    /// Not done; try again later (after Slack's `Retry-After` if given).
    Later(Option<Duration>),
    /// The token is bad.
    Auth(SlackError),
}

/// One delivery in progress: the claimed entry and the counters.
struct Attempt<'a> {
    message: &'a SlackMessage,
    hash: String,
    version: Version,
    entry: Entry,
    sends: i32,
    failures: u32,
    unknown_errors: u32,
    /// A post nobody reported yet was found by reconciliation (ours after
    /// an ambiguous answer, or a crashed run's): this delivery reports it.
    found_unreported: bool,
    /// The thread reply made (or found unreported) for this message.
    replied: Option<String>,
    /// A reply Slack refused for good (the delivery goes on without it).
    refused_reply: Option<SlackError>,
    http_status: Option<i32>,
    /// Posted into its group's summary thread (not broadcast).
    grouped: bool,
}

impl Attempt<'_> {
    fn incoming(&self, replayed: bool) -> Incoming<'_> {
        Incoming {
            content_hash: &self.hash,
            version: &self.version,
            replayed,
            status: self.message.status,
            updates: self.message.updates,
            recurrence: self.message.recurrence,
            resolved_unposted: self.message.resolved_unposted,
        }
    }

    /// The entry records this message's content as refused or expired:
    /// nothing of it is in Slack.
    fn never_shown(&mut self, status: Status) {
        self.entry.status = status;
        self.entry.ts = None;
        self.entry.content_hash = self.hash.clone();
        self.entry.version = self.version.clone();
    }
}

impl Deliverer {
    pub fn new(
        slack: Arc<SlackApi>,
        ledger: Ledger,
        pacer: Arc<Pacer>,
        settings: DeliverySettings,
        owner: Owner,
        metrics: NotifyMetrics,
        health: Arc<SlackHealth>,
    ) -> Deliverer {
        let grouper = Arc::new(Grouper::new(
            slack.clone(),
            ledger.groups(),
            pacer.clone(),
            health.clone(),
            owner.clone(),
            GroupSettings {
                claim_lease: settings.claim_lease,
                reconcile_delay: settings.reconcile_delay,
                update_interval: settings.group_update_interval,
            },
        ));
        Deliverer {
            slack,
            ledger,
            pacer,
            settings,
            owner,
            metrics,
            health,
            dms: Mutex::new(HashMap::new()),
            in_process: InProcess::default(),
            states: None,
            grouper,
        }
    }

    /// Keeps alert states: posts record them, edits show them.
    pub fn with_states(mut self, states: Arc<AlertStates>) -> Deliverer {
        self.states = Some(states);
        self
    }

    /// Grouped alerts' summaries; its flusher keeps them current.
    pub fn grouper(&self) -> &Arc<Grouper> {
        &self.grouper
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn slack_health(&self) -> &Arc<SlackHealth> {
        &self.health
    }

    /// Delivers `message`; `replayed` when it was re-injected from the
    /// dead-letter topic (`alertsvc dlq replay`).
    pub async fn deliver(
        &self,
        message: &SlackMessage,
        replayed: bool,
        stop: &CancellationToken,
    ) -> Result<Delivery, DeliverError> {
        let _alone = self.in_process.enter(&message.alert_id).await;
        loop {
            match self.deliver_claimed(message, replayed, stop).await {
                // A peer took the alert over while we were stalled: start
                // again from the ledger; it decides what is left to do.
                Err(DeliverError::Ledger(LedgerError::ClaimLost { alert_id })) => {
                    tracing::warn!(alert_id, "claim lost to a peer; deciding again");
                }
                Ok(delivery) => {
                    self.group_member_changed(message, &delivery).await?;
                    return Ok(delivery);
                }
                other => return other,
            }
        }
    }

    /// A grouped alert's reply was edited (resolved, new content): its
    /// group's summary is out of date.
    async fn group_member_changed(
        &self,
        message: &SlackMessage,
        delivery: &Delivery,
    ) -> Result<(), DeliverError> {
        if message.group().is_none() || delivery.outcome != DeliveryOutcome::Updated {
            return Ok(());
        }
        if let (Some(ts), Some(thread)) = (&delivery.ts, &delivery.thread_ts) {
            if ts != thread {
                self.grouper
                    .member_changed(message, &delivery.channel, thread)
                    .await?;
            }
        }
        Ok(())
    }

    /// A grouped alert goes into its group's summary thread (the summary
    /// posted first if need be), whatever thread the decision chose;
    /// ungrouped, or without a summary, it keeps that thread. `None`: it
    /// waited for the summary (holding the claim); decide again.
    async fn group_thread(
        &self,
        attempt: &mut Attempt<'_>,
        thread: Option<String>,
        stop: &CancellationToken,
    ) -> Result<Option<Option<String>>, DeliverError> {
        attempt.grouped = false;
        if attempt.message.group().is_none() {
            return Ok(Some(thread));
        }
        let Called::Done(conversation) = self.conversation(&attempt.message.channel_id).await?
        else {
            // post() opens the DM again and handles the failure.
            return Ok(Some(thread));
        };
        match self
            .grouper
            .thread_for(attempt.message, &conversation)
            .await?
        {
            GroupThread::Thread(summary) => {
                attempt.grouped = true;
                Ok(Some(Some(summary)))
            }
            GroupThread::Ungrouped => Ok(Some(thread)),
            GroupThread::Wait(after) => {
                self.retry_later(attempt, after, stop).await?;
                Ok(None)
            }
        }
    }

    /// Waits until this instance holds the alert's claim.
    async fn claim(
        &self,
        message: &SlackMessage,
        stop: &CancellationToken,
    ) -> Result<Entry, DeliverError> {
        loop {
            let now = now_ms();
            let lease_until = now + millis(self.settings.claim_lease);
            match self
                .ledger
                .claim(
                    &message.alert_id,
                    &message.channel_id,
                    &self.owner,
                    now,
                    lease_until,
                )
                .await?
            {
                Claim::Held(entry) => return Ok(*entry),
                Claim::Busy { owner, lease_until } => {
                    let plan = decision::decide(
                        &ClaimView::Busy { lease_until },
                        &Incoming::firing("", &Version::default()),
                        now,
                        &self.settings.rules,
                    );
                    let Plan::WaitForPeer { until } = plan else {
                        continue;
                    };
                    self.metrics.claim_waits.inc();
                    tracing::debug!(alert_id = %message.alert_id, owner, until, "a peer holds the alert; waiting");
                    let wait = Duration::from_millis(
                        u64::try_from((until - now).clamp(50, 1_000)).unwrap_or(1_000),
                    );
                    sleep_or_stop(wait.mul_f64(0.5 + fastrand::f64() / 2.0), stop).await?;
                }
            }
        }
    }

    async fn deliver_claimed(
        &self,
        message: &SlackMessage,
        replayed: bool,
        stop: &CancellationToken,
    ) -> Result<Delivery, DeliverError> {
        let entry = self.claim(message, stop).await?;
        let mut attempt = Attempt {
            message,
            hash: content_hash(message),
            version: version_of(message),
            entry,
            sends: 0,
            failures: 0,
            unknown_errors: 0,
            found_unreported: false,
            replied: None,
            refused_reply: None,
            http_status: None,
            grouped: false,
        };
        loop {
            if stop.is_cancelled() {
                self.release(&attempt.entry).await;
                return Err(DeliverError::Cancelled);
            }
            let plan = decision::decide(
                &ClaimView::Held(Some(attempt.entry.shown())),
                &attempt.incoming(replayed),
                now_ms(),
                &self.settings.rules,
            );
            match plan {
                Plan::WaitForPeer { .. } => {
                    attempt.entry = self.claim(message, stop).await?;
                }
                Plan::Duplicate { newer } => return self.duplicate(&mut attempt, newer).await,
                Plan::Expire => return self.expire(&mut attempt).await,
                Plan::ResolvedUnposted => return self.resolved_unposted(&mut attempt).await,
                Plan::Settle => return self.settle(&mut attempt).await,
                Plan::Reconcile => self.reconcile(&mut attempt, stop).await?,
                Plan::ReconcileReply { thread, key } => {
                    self.reconcile_reply(&mut attempt, &thread, &key, stop)
                        .await?
                }
                Plan::Reply { thread, key, kind } => {
                    self.reply(&mut attempt, &thread, &key, kind, stop).await?
                }
                Plan::Post { occurrence, thread } => {
                    let Some(thread) = self.group_thread(&mut attempt, thread, stop).await? else {
                        continue;
                    };
                    if let Some(delivery) =
                        self.post(&mut attempt, occurrence, thread, stop).await?
                    {
                        return Ok(delivery);
                    }
                }
                Plan::Update => {
                    if let Some(delivery) = self.update(&mut attempt, stop).await? {
                        return Ok(delivery);
                    }
                }
            }
        }
    }

    async fn release(&self, entry: &Entry) {
        if let Err(e) = self.ledger.release(&entry.alert_id, &self.owner).await {
            // The lease runs out by itself.
            tracing::warn!(alert_id = %entry.alert_id, error = %e, "cannot release the claim");
        }
    }

    /// Writes the entry; keeping the claim also extends its lease.
    async fn save(&self, entry: &Entry, release: bool) -> Result<(), DeliverError> {
        let now = now_ms();
        let lease_until = (!release).then(|| now + millis(self.settings.claim_lease));
        Ok(self
            .ledger
            .save(entry, &self.owner, now, lease_until)
            .await?)
    }

    async fn renew(&self, entry: &Entry) -> Result<(), DeliverError> {
        let until = now_ms() + millis(self.settings.claim_lease);
        Ok(self
            .ledger
            .renew(&entry.alert_id, &self.owner, until)
            .await?)
    }

    /// Sleeps `delay`, renewing the claim so that a long backoff (a Slack
    /// outage) does not hand the alert to a peer.
    async fn wait_holding(
        &self,
        entry: &Entry,
        delay: Duration,
        stop: &CancellationToken,
    ) -> Result<(), DeliverError> {
        let step = self.settings.claim_lease / 3;
        let mut left = delay;
        while !left.is_zero() {
            let now = left.min(step);
            sleep_or_stop(now, stop).await?;
            left -= now;
            self.renew(entry).await?;
        }
        Ok(())
    }

    fn answer(&self, attempt: &Attempt<'_>, outcome: DeliveryOutcome) -> Delivery {
        let entry = &attempt.entry;
        // A duplicate of a refused or expired alert repeats that answer.
        let never_shown = matches!(entry.status, Status::Failed | Status::Expired);
        let ok = match outcome {
            DeliveryOutcome::Failed | DeliveryOutcome::Expired => false,
            DeliveryOutcome::Duplicate => !never_shown,
            DeliveryOutcome::Posted
            | DeliveryOutcome::Updated
            | DeliveryOutcome::ResolvedUnposted => true,
        };
        Delivery {
            outcome,
            ok,
            channel: entry.channel_id.clone(),
            ts: entry.ts.clone(),
            thread_ts: entry
                .ts
                .as_ref()
                .map(|ts| entry.thread_ts.clone().unwrap_or_else(|| ts.clone())),
            reply_ts: attempt.replied.clone(),
            error: if ok { None } else { entry.error.clone() },
            attempts: attempt.sends,
            http_status: attempt.http_status,
            dead_letter: false,
        }
    }

    /// The answer after the last step: what this delivery changed in
    /// Slack (`outcome` if nothing), `failed` if its only step was refused.
    fn answer_steps(&self, attempt: &Attempt<'_>, outcome: DeliveryOutcome) -> Delivery {
        let outcome = if attempt.found_unreported {
            DeliveryOutcome::Posted
        } else if attempt.replied.is_some() {
            DeliveryOutcome::Updated
        } else if attempt.refused_reply.is_some() && outcome != DeliveryOutcome::Updated {
            DeliveryOutcome::Failed
        } else {
            outcome
        };
        let mut delivery = self.answer(attempt, outcome);
        if outcome == DeliveryOutcome::Failed {
            if let Some(e) = &attempt.refused_reply {
                delivery.error = Some(e.code());
                delivery.http_status = e.http_status();
            }
        }
        delivery
    }

    async fn duplicate(
        &self,
        attempt: &mut Attempt<'_>,
        newer: bool,
    ) -> Result<Delivery, DeliverError> {
        if newer {
            // Same content, newer record: the alert was seen again, which
            // keeps it inside its dedup window.
            attempt.entry.version = attempt.version.clone();
            self.save(&attempt.entry, true).await?;
        } else if attempt.found_unreported
            || attempt.replied.is_some()
            || attempt.refused_reply.is_some()
        {
            // What reconciliation or a reply recorded stays, unclaimed.
            self.save(&attempt.entry, true).await?;
        } else {
            self.release(&attempt.entry).await;
        }
        Ok(self.answer_steps(attempt, DeliveryOutcome::Duplicate))
    }

    /// A resolved record for an alert never posted: nothing is sent. The
    /// entry remembers that the alert is resolved (and as of which record),
    /// so an older firing record arriving late is not posted either.
    async fn resolved_unposted(&self, attempt: &mut Attempt<'_>) -> Result<Delivery, DeliverError> {
        if attempt.message.status == AlertStatus::Resolved {
            let entry = &mut attempt.entry;
            entry.alert_status = AlertStatus::Resolved;
            entry.version = attempt.version.clone();
            if entry.status == Status::New {
                entry.content_hash = attempt.hash.clone();
            }
        }
        self.save(&attempt.entry, true).await?;
        let mut delivery = self.answer(attempt, DeliveryOutcome::ResolvedUnposted);
        delivery.channel = attempt.message.channel_id.clone();
        delivery.ts = None;
        delivery.thread_ts = None;
        Ok(delivery)
    }

    /// New content went to the thread only (`updates = "thread"`): the
    /// entry records it as delivered, so the same content is not replied
    /// again.
    async fn settle(&self, attempt: &mut Attempt<'_>) -> Result<Delivery, DeliverError> {
        let entry = &mut attempt.entry;
        entry.content_hash = attempt.hash.clone();
        entry.version = attempt.version.clone();
        entry.alert_status = attempt.message.status;
        entry.error = attempt.refused_reply.as_ref().map(SlackError::code);
        self.save(&attempt.entry, true).await?;
        let outcome = if attempt.refused_reply.is_some() {
            DeliveryOutcome::Failed
        } else {
            DeliveryOutcome::Updated
        };
        Ok(self.answer_steps(attempt, outcome))
    }

    async fn expire(&self, attempt: &mut Attempt<'_>) -> Result<Delivery, DeliverError> {
        if attempt.entry.ts.is_none() {
            attempt.never_shown(Status::Expired);
        }
        attempt.entry.error = Some("expired".into());
        self.save(&attempt.entry, true).await?;
        let mut delivery = self.answer(attempt, DeliveryOutcome::Expired);
        delivery.channel = attempt.message.channel_id.clone();
        delivery.ts = None;
        Ok(delivery)
    }

    /// Looks for the post a `pending` entry stands for; records what it
    /// found (posted, or nothing: free to post).
    async fn reconcile(
        &self,
        attempt: &mut Attempt<'_>,
        stop: &CancellationToken,
    ) -> Result<(), DeliverError> {
        let alert = AlertRef {
            alert_id: &attempt.message.alert_id,
            occurrence: attempt.entry.occurrence,
        };
        // Messages from a little before the pending attempt on: enough to
        // find it, few pages even in a busy channel.
        let oldest = attempt.entry.updated_at - 5 * 60 * 1000;
        let channel = attempt.entry.channel_id.clone();
        let thread = attempt.entry.thread_ts.clone();
        let found = self
            .look_up(attempt, stop, "an earlier post", || async {
                match &thread {
                    // A recurrence posted under an earlier occurrence.
                    Some(thread) => {
                        self.slack
                            .find_alert_in_thread(&channel, thread, &alert, Some(oldest))
                            .await
                    }
                    None => self.slack.find_alert(&channel, &alert, Some(oldest)).await,
                }
            })
            .await?;
        match found {
            Some(ts) => {
                tracing::info!(alert_id = %attempt.message.alert_id, ts, "found the earlier post; not posting again");
                attempt.entry.status = Status::Posted;
                attempt.entry.ts = Some(ts);
                // A pending row was never answered for: whoever left
                // it wrote no response.
                attempt.found_unreported = true;
            }
            None => attempt.entry.status = Status::New,
        }
        self.save(&attempt.entry, false).await
    }

    /// The conversation to post into: a user id's DM, opened (and cached)
    /// first.
    async fn conversation(&self, target: &str) -> Result<Called<String>, DeliverError> {
        if !is_user_id(target) {
            return Ok(Called::Done(target.to_owned()));
        }
        if let Some(dm) = self
            .dms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
        {
            return Ok(Called::Done(dm.clone()));
        }
        let mut unknown = 0;
        let opened = self.slack.open_dm(target).await;
        let called = self.called(opened, &mut unknown);
        if let Called::Done(dm) = &called {
            self.dms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(target.to_owned(), dm.clone());
        }
        Ok(match called {
            // Opening a DM twice is harmless.
            Called::Uncertain(_) => Called::Later(None),
            other => other,
        })
    }

    /// Posts the message; `None` when the loop must decide again (after an
    /// uncertain answer or a wait).
    async fn post(
        &self,
        attempt: &mut Attempt<'_>,
        occurrence: i64,
        thread: Option<String>,
        stop: &CancellationToken,
    ) -> Result<Option<Delivery>, DeliverError> {
        let message = attempt.message;
        let conversation = match self.conversation(&message.channel_id).await? {
            Called::Done(conversation) => conversation,
            Called::Refused(e) => return self.refused(attempt, e).await.map(Some),
            Called::Auth(e) => return Err(DeliverError::Auth(e)),
            Called::Later(after) => return self.retry_later(attempt, after, stop).await,
            // Opening a DM twice is harmless: an unknown answer is retried.
            Called::Uncertain(_) => return self.retry_later(attempt, None, stop).await,
        };
        {
            let entry = &mut attempt.entry;
            if entry.occurrence != occurrence {
                // A new occurrence: its own message, its own replies.
                entry.ts = None;
                entry.reply_key = None;
                entry.reply_ts = None;
            }
            entry.thread_ts = thread.clone();
            entry.alert_status = message.status;
            entry.status = Status::Pending;
            entry.channel_id = conversation.clone();
            entry.content_hash = attempt.hash.clone();
            entry.version = attempt.version.clone();
            entry.occurrence = occurrence;
            entry.attempts += 1;
            entry.error = None;
        }
        // `pending` is durable before Slack sees anything: whoever finds it
        // later looks before posting again.
        self.save(&attempt.entry, false).await?;
        self.paced(&attempt.entry, &conversation).await?;
        if stop.is_cancelled() {
            attempt.entry.status = Status::New;
            self.save(&attempt.entry, true).await?;
            return Err(DeliverError::Cancelled);
        }
        attempt.sends += 1;
        let alert = AlertRef {
            alert_id: &message.alert_id,
            occurrence,
        };
        let result = match &thread {
            // Into the earlier occurrence's thread, and to the channel too:
            // a recurrence is news. A group's member only replies: its
            // summary is the news.
            Some(thread_ts) => {
                let thread = Thread {
                    ts: thread_ts,
                    broadcast: !attempt.grouped,
                };
                self.timed(self.slack.post_in_thread(
                    &conversation,
                    &message.text,
                    &message.blocks,
                    &alert,
                    &thread,
                ))
                .await
            }
            None => {
                self.timed(
                    self.slack
                        .post(&conversation, &message.text, &message.blocks, &alert),
                )
                .await
            }
        };
        match self.called(result, &mut attempt.unknown_errors) {
            Called::Done(posted) => {
                self.metrics
                    .event_to_slack_seconds
                    .observe(seconds_since(message.created_at));
                let entry = &mut attempt.entry;
                entry.status = Status::Posted;
                entry.channel_id = posted.channel;
                entry.ts = Some(posted.ts);
                self.save(entry, true).await?;
                attempt.http_status = Some(200);
                if let (Some(states), Some(ts)) = (&self.states, &attempt.entry.ts) {
                    let channel = &attempt.entry.channel_id;
                    if let Err(e) = states
                        .after_post(message, occurrence, channel, ts, now_ms())
                        .await
                    {
                        // The post stands; a first click records the state.
                        tracing::warn!(alert_id = %message.alert_id, error = %e, "cannot record the alert's state");
                    }
                }
                Ok(Some(self.answer(attempt, DeliveryOutcome::Posted)))
            }
            Called::Refused(SlackError::Api { code })
                if thread.is_some() && code == "thread_not_found" =>
            {
                // The earlier occurrence's message is gone (deleted): the
                // recurrence becomes a message of its own.
                tracing::warn!(alert_id = %message.alert_id, "the earlier thread is gone; posting the recurrence top-level");
                attempt.entry.thread_ts = None;
                attempt.entry.status = Status::New;
                self.save(&attempt.entry, false).await?;
                Ok(None)
            }
            Called::Refused(e) => self.refused(attempt, e).await.map(Some),
            Called::Auth(e) => {
                // Nothing was posted; the next run decides afresh.
                attempt.entry.status = Status::New;
                self.save(&attempt.entry, true).await?;
                Err(DeliverError::Auth(e))
            }
            Called::Uncertain(e) => {
                self.metrics.ambiguous.inc();
                tracing::warn!(alert_id = %message.alert_id, error = %e, "Slack's answer is unknown; looking before posting again");
                // The entry stays pending: the next decision reconciles.
                attempt.failures += 1;
                let delay = self.settings.reconcile_delay;
                self.wait_holding(&attempt.entry, delay, stop).await?;
                Ok(None)
            }
            Called::Later(after) => {
                // Certainly not posted: the next attempt need not look.
                attempt.entry.status = Status::New;
                self.retry_later(attempt, after, stop).await
            }
        }
    }

    /// Slack refused the post for good: the alert is not posted and goes to
    /// the dead-letter topic.
    async fn refused(
        &self,
        attempt: &mut Attempt<'_>,
        error: SlackError,
    ) -> Result<Delivery, DeliverError> {
        attempt.never_shown(Status::Failed);
        let entry = &mut attempt.entry;
        entry.error = Some(error.code());
        if entry.channel_id.is_empty() {
            entry.channel_id = attempt.message.channel_id.clone();
        }
        self.save(entry, true).await?;
        let mut delivery = self.answer(attempt, DeliveryOutcome::Failed);
        delivery.http_status = error.http_status();
        delivery.dead_letter = true;
        Ok(delivery)
    }

    /// Edits the posted message; chat.update is idempotent, so an unknown
    /// answer is simply tried again.
    async fn update(
        &self,
        attempt: &mut Attempt<'_>,
        stop: &CancellationToken,
    ) -> Result<Option<Delivery>, DeliverError> {
        let message = attempt.message;
        let (channel, ts) = match (&attempt.entry.channel_id, &attempt.entry.ts) {
            (channel, Some(ts)) => (channel.clone(), ts.clone()),
            // Nothing to edit: decide again as if never posted.
            (_, None) => {
                attempt.entry.status = Status::New;
                return Ok(None);
            }
        };
        if decision::is_expired(message.created_at, now_ms(), self.settings.rules.max_age)
            && attempt.failures > 0
        {
            // Retried past max_age: the message keeps what it shows.
            self.release(&attempt.entry).await;
            let mut delivery = self.answer(attempt, DeliveryOutcome::Expired);
            delivery.error = Some("expired".into());
            return Ok(Some(delivery));
        }
        // The edit shows the alert's state (acknowledged, …) and records
        // what the record says (resolved, firing again).
        let edit = match &self.states {
            Some(states) => {
                let occurrence = attempt.entry.occurrence;
                Some(
                    states
                        .before_edit(message, occurrence, &channel, &ts, now_ms())
                        .await?,
                )
            }
            None => None,
        };
        let blocks = edit.as_ref().map_or(&message.blocks, |e| &e.blocks);
        self.renew(&attempt.entry).await?;
        self.paced(&attempt.entry, &channel).await?;
        if stop.is_cancelled() {
            self.release(&attempt.entry).await;
            return Err(DeliverError::Cancelled);
        }
        attempt.sends += 1;
        let alert = AlertRef {
            alert_id: &message.alert_id,
            occurrence: attempt.entry.occurrence,
        };
        let result = self
            .timed(
                self.slack
                    .update(&channel, &ts, &message.text, blocks, Some(&alert)),
            )
            .await;
        match self.called(result, &mut attempt.unknown_errors) {
            Called::Done(_) => {
                if let (Some(states), Some(edit)) = (&self.states, &edit) {
                    states.after_edit(&message.alert_id, edit).await;
                }
                let entry = &mut attempt.entry;
                entry.content_hash = attempt.hash.clone();
                entry.version = attempt.version.clone();
                entry.alert_status = message.status;
                entry.error = None;
                self.save(entry, true).await?;
                attempt.http_status = Some(200);
                Ok(Some(self.answer_steps(attempt, DeliveryOutcome::Updated)))
            }
            Called::Auth(e) => {
                self.release(&attempt.entry).await;
                Err(DeliverError::Auth(e))
            }
            Called::Refused(e) => {
                // The alert stays posted (ts, content) whatever the edit
                // did: no dead letter for a message that is in Slack.
                attempt.entry.error = Some(e.code());
                self.save(&attempt.entry, true).await?;
                let mut delivery = self.answer(attempt, DeliveryOutcome::Failed);
                delivery.error = Some(e.code());
                delivery.http_status = e.http_status();
                Ok(Some(delivery))
            }
            Called::Uncertain(e) => {
                attempt.failures += 1;
                let delay = self.backoff(attempt.failures, None);
                tracing::warn!(alert_id = %message.alert_id, error = %e, ?delay, "chat.update unanswered; retrying");
                self.wait_holding(&attempt.entry, delay, stop).await?;
                Ok(None)
            }
            Called::Later(after) => self.retry_later(attempt, after, stop).await,
        }
    }

    /// Replies in the alert's thread. Like a post, the reply is noted in
    /// the ledger (`reply_pending`) before Slack sees it, so an unknown
    /// answer or a crash is looked up before replying again; once made it
    /// is recorded (`reply_key`) and the loop decides what is left.
    async fn reply(
        &self,
        attempt: &mut Attempt<'_>,
        thread: &str,
        key: &str,
        kind: ReplyKind,
        stop: &CancellationToken,
    ) -> Result<(), DeliverError> {
        let message = attempt.message;
        let channel = attempt.entry.channel_id.clone();
        attempt.entry.reply_pending = Some(key.to_owned());
        self.save(&attempt.entry, false).await?;
        self.paced(&attempt.entry, &channel).await?;
        if stop.is_cancelled() {
            attempt.entry.reply_pending = None;
            self.save(&attempt.entry, true).await?;
            return Err(DeliverError::Cancelled);
        }
        attempt.sends += 1;
        let reply = ReplyRef {
            alert_id: &message.alert_id,
            occurrence: attempt.entry.occurrence,
            key,
        };
        // A resolved notice is short: the message's text. New content is
        // the message itself, minus its buttons: they act on the alert,
        // whose message is the one at the top of the thread.
        let blocks = match kind {
            ReplyKind::Resolved => None,
            ReplyKind::Update => reply_blocks(&message.blocks),
        };
        let result = self
            .timed(
                self.slack
                    .reply(&channel, thread, &message.text, blocks.as_deref(), &reply),
            )
            .await;
        match self.called(result, &mut attempt.unknown_errors) {
            Called::Done(posted) => {
                let entry = &mut attempt.entry;
                entry.reply_pending = None;
                entry.reply_key = Some(key.to_owned());
                entry.reply_ts = Some(posted.ts.clone());
                attempt.replied = Some(posted.ts);
                attempt.http_status = Some(200);
                self.save(&attempt.entry, false).await
            }
            Called::Refused(e) => {
                // The alert is in Slack; only this reply is not. Recorded
                // as made, so it is not tried again for this content.
                tracing::warn!(alert_id = %message.alert_id, reply = key, error = %e, "Slack refused the thread reply");
                let entry = &mut attempt.entry;
                entry.reply_pending = None;
                entry.reply_key = Some(key.to_owned());
                entry.reply_ts = None;
                attempt.refused_reply = Some(e);
                self.save(&attempt.entry, false).await
            }
            Called::Auth(e) => {
                // Nothing was posted; the next run decides afresh.
                attempt.entry.reply_pending = None;
                self.save(&attempt.entry, true).await?;
                Err(DeliverError::Auth(e))
            }
            Called::Uncertain(e) => {
                self.metrics.ambiguous.inc();
                tracing::warn!(alert_id = %message.alert_id, reply = key, error = %e, "Slack's answer to a reply is unknown; looking before replying again");
                // Still pending: the next decision looks in the thread.
                attempt.failures += 1;
                let delay = self.settings.reconcile_delay;
                self.wait_holding(&attempt.entry, delay, stop).await
            }
            Called::Later(after) => {
                // Certainly not sent.
                attempt.entry.reply_pending = None;
                self.retry_later(attempt, after, stop).await.map(drop)
            }
        }
    }

    /// Looks in the thread for a reply that may have been made (after an
    /// unknown answer or a crash), and records what it found.
    async fn reconcile_reply(
        &self,
        attempt: &mut Attempt<'_>,
        thread: &str,
        key: &str,
        stop: &CancellationToken,
    ) -> Result<(), DeliverError> {
        let reply = ReplyRef {
            alert_id: &attempt.message.alert_id,
            occurrence: attempt.entry.occurrence,
            key,
        };
        let oldest = attempt.entry.updated_at - 5 * 60 * 1000;
        let channel = attempt.entry.channel_id.clone();
        let found = self
            .look_up(attempt, stop, "an earlier reply", || {
                self.slack
                    .find_reply(&channel, thread, &reply, Some(oldest))
            })
            .await?;
        let entry = &mut attempt.entry;
        entry.reply_pending = None;
        if let Some(ts) = found {
            tracing::info!(alert_id = %attempt.message.alert_id, reply = key, ts, "found the earlier reply; not replying again");
            entry.reply_key = Some(key.to_owned());
            entry.reply_ts = Some(ts.clone());
            attempt.replied = Some(ts);
        }
        self.save(&attempt.entry, false).await
    }

    /// Asks Slack, at the history tier's pace, whether something was
    /// already posted, until it answers. Not knowing is no reason to post:
    /// trouble on Slack's side waits (holding the claim) and asks again. A
    /// conversation or thread that cannot be read counts as absent: nothing
    /// can be proven there, and a post would be refused the same way.
    async fn look_up<Fut>(
        &self,
        attempt: &mut Attempt<'_>,
        stop: &CancellationToken,
        what: &'static str,
        mut ask: impl FnMut() -> Fut,
    ) -> Result<Option<String>, DeliverError>
    where
        Fut: std::future::Future<Output = Result<Option<String>, SlackError>>,
    {
        let found = loop {
            self.pacer.history_ready().await;
            match self.called(ask().await, &mut attempt.unknown_errors) {
                Called::Done(found) => break found,
                Called::Auth(e) => return Err(DeliverError::Auth(e)),
                Called::Later(after) => {
                    attempt.failures += 1;
                    let delay = self.backoff(attempt.failures, after);
                    self.wait_holding(&attempt.entry, delay, stop).await?;
                }
                Called::Uncertain(_) => {
                    attempt.failures += 1;
                    let delay = self.backoff(attempt.failures, None);
                    self.wait_holding(&attempt.entry, delay, stop).await?;
                }
                Called::Refused(e) => {
                    tracing::warn!(alert_id = %attempt.message.alert_id, channel = %attempt.entry.channel_id, error = %e, "cannot look for {what}");
                    break None;
                }
            }
        };
        self.metrics
            .reconciliations
            .with_label_values(&[if found.is_some() { "found" } else { "absent" }])
            .inc();
        Ok(found)
    }

    /// A post or edit, its latency recorded.
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, SlackError>>,
    ) -> Result<T, SlackError> {
        let started = tokio::time::Instant::now();
        let result = call.await;
        self.metrics
            .slack_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Backs off (Slack's `Retry-After` if it sent one) holding the claim;
    /// the loop then decides again.
    async fn retry_later(
        &self,
        attempt: &mut Attempt<'_>,
        after: Option<Duration>,
        stop: &CancellationToken,
    ) -> Result<Option<Delivery>, DeliverError> {
        attempt.failures += 1;
        let delay = self.backoff(attempt.failures, after);
        self.wait_holding(&attempt.entry, delay, stop).await?;
        Ok(None)
    }

    /// Waits for the channel's and workspace's pace with a freshly renewed
    /// claim. Nothing else may come between the pacer and the call: a
    /// database write there would bunch requests up at Slack (429s).
    async fn paced(&self, entry: &Entry, channel: &str) -> Result<(), DeliverError> {
        let waited = self.pacer.ready(channel).await;
        if waited > Duration::from_millis(1) {
            self.metrics
                .pacing_wait_seconds
                .observe(waited.as_secs_f64());
        }
        // The lease must outlast the call: a long wait renews it again.
        if waited > self.settings.claim_lease / 4 {
            self.renew(entry).await?;
        }
        Ok(())
    }

    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        retry_delay(&self.settings.retry, failures, retry_after, fastrand::f64())
    }

    /// Sorts a call's result into what the loops do next, and keeps the
    /// Slack-reachability detector and the metrics up to date.
    fn called<T>(&self, result: Result<T, SlackError>, unknown_errors: &mut u32) -> Called<T> {
        let error = match result {
            Ok(value) => {
                self.health.answered();
                return Called::Done(value);
            }
            Err(e) => e,
        };
        let failure = classify(&error);
        match failure {
            Failure::Unreachable | Failure::Ambiguous => self.health.no_answer(&error),
            _ => self.health.answered(),
        }
        match failure {
            Failure::Permanent => Called::Refused(error),
            Failure::Auth => Called::Auth(error),
            Failure::Unknown => {
                *unknown_errors += 1;
                if *unknown_errors >= self.settings.retry.max_attempts {
                    Called::Refused(error)
                } else {
                    self.metrics.retries.inc();
                    Called::Later(None)
                }
            }
            Failure::Retry { after } => {
                self.metrics.retries.inc();
                if after.is_some() {
                    self.metrics.rate_limited.inc();
                }
                Called::Later(after)
            }
            Failure::Unreachable => {
                self.metrics.retries.inc();
                Called::Later(None)
            }
            Failure::Ambiguous => {
                self.metrics.retries.inc();
                Called::Uncertain(error)
            }
        }
    }
}

/// A message's blocks as a thread reply: without `actions` blocks (their
/// buttons belong on the alert's own message); `None` when nothing is left
/// or the blocks are not a JSON array.
fn reply_blocks(blocks: &str) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_str(blocks).ok()?;
    let kept: Vec<&serde_json::Value> = parsed
        .as_array()?
        .iter()
        .filter(|block| block["type"] != "actions")
        .collect();
    (!kept.is_empty())
        .then(|| serde_json::Value::from(kept.into_iter().cloned().collect::<Vec<_>>()).to_string())
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> Result<(), DeliverError> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = stop.cancelled() => Err(DeliverError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_the_blocks_without_buttons() {
        let blocks = r#"[{"type":"header","text":{"type":"plain_text","text":"x"}},
            {"type":"actions","elements":[]},{"type":"section","text":{"type":"mrkdwn","text":"y"}}]"#;
        let reply: serde_json::Value =
            serde_json::from_str(&reply_blocks(blocks).unwrap_or_default()).unwrap_or_default();
        let types: Vec<&str> = reply
            .as_array()
            .map(|b| b.iter().filter_map(|b| b["type"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(types, ["header", "section"]);
        assert_eq!(reply_blocks(r#"[{"type":"actions","elements":[]}]"#), None);
        assert_eq!(reply_blocks("not json"), None);
    }
}
