//! Delivering one message: claim the alert in the ledger, ask
//! [`decision::decide`] what to do, and do it — post, edit, reply in the
//! alert's thread, look for an earlier post or reply, or answer without
//! touching Slack. Each step is written to the ledger before the next is
//! decided. Transient failures are retried for as long as the alert is
//! young enough; an ambiguous answer is reconciled against the
//! conversation (or thread) before any second post or reply. Auth
//! failures, ledger outages and cancellation are not outcomes: the message
//! stays unfinished and is not committed.

mod answer;
mod calls;
mod claim;
pub(super) mod error;
mod group;
mod in_process;
mod lookup;
mod post;
mod reply;
#[cfg(test)]
mod tests;
mod update;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use self::error::DeliverError;
use self::in_process::InProcess;
use super::decision::{self, ClaimView, Incoming, Plan, Rules};
use super::grouping::{GroupLedger, GroupSettings, Grouper};
use super::ledger::{Entry, Ledger, LedgerError, Owner, Status, Version};
use super::pacing::Pacer;
use super::slack_health::SlackHealth;
use super::slack_side::SlackSide;
use super::state::store::StateStore;
use super::state::AlertStates;
use crate::config::RetrySettings;
use crate::messages::{DeliveryOutcome, SlackMessage};
use crate::metrics::NotifyMetrics;
use crate::slack::{SlackApi, SlackError};

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

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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

/// Lets a delivery tell its channel's worker that it no longer needs the
/// channel to itself: an edit waiting for `chat.update`'s workspace-wide
/// tier would otherwise hold up every other alert of its channel, and a
/// post Slack answered would hold it up for its ledger write. The default
/// tells nobody.
#[derive(Default)]
pub struct ChannelRelease(Mutex<Option<oneshot::Sender<LetGo>>>);

/// How a delivery let its channel go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetGo {
    /// It waits for a workspace-wide tier: the channel's later messages go
    /// meanwhile, except this alert's own, which wait for it.
    Aside,
    /// It is done with Slack: the channel's next messages may start, but
    /// none overtakes a later message of this alert, which waits for it.
    InOrder,
}

impl ChannelRelease {
    /// A release and what its worker waits on.
    pub fn new() -> (ChannelRelease, oneshot::Receiver<LetGo>) {
        let (tx, rx) = oneshot::channel();
        (ChannelRelease(Mutex::new(Some(tx))), rx)
    }

    /// Only the first call tells the worker.
    pub fn release(&self, how: LetGo) {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = taken {
            // The worker may be gone (shutting down): nobody to tell.
            let _ = tx.send(how);
        }
    }
}

/// One delivery in progress: the claimed entry and the counters.
struct Attempt<'a> {
    message: &'a SlackMessage,
    channel: &'a ChannelRelease,
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
        side: SlackSide,
        ledger: Ledger,
        settings: DeliverySettings,
        owner: Owner,
        metrics: NotifyMetrics,
    ) -> Deliverer {
        let grouper = Arc::new(Grouper::new(
            side.clone(),
            GroupLedger::new(&ledger),
            owner.clone(),
            GroupSettings {
                claim_lease: settings.claim_lease,
                reconcile_delay: settings.reconcile_delay,
                update_interval: settings.group_update_interval,
            },
            StateStore::new(&ledger),
        ));
        let SlackSide { api, pacer, health } = side;
        Deliverer {
            slack: api,
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
    /// dead-letter topic (`alertsvc dlq replay`); `channel` is told when the
    /// delivery no longer holds up its channel.
    pub async fn deliver(
        &self,
        message: &SlackMessage,
        replayed: bool,
        channel: &ChannelRelease,
        stop: &CancellationToken,
    ) -> Result<Delivery, DeliverError> {
        let _alone = self.in_process.enter(&message.alert_id).await;
        loop {
            match self.deliver_claimed(message, replayed, channel, stop).await {
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

    async fn deliver_claimed(
        &self,
        message: &SlackMessage,
        replayed: bool,
        channel: &ChannelRelease,
        stop: &CancellationToken,
    ) -> Result<Delivery, DeliverError> {
        let mut attempt = Attempt {
            message,
            channel,
            hash: content_hash(message),
            version: version_of(message),
            // Replaced by the claim's row right below.
            entry: Entry::claimed_new(&message.alert_id, &message.channel_id, &self.owner, 0, 0),
            sends: 0,
            failures: 0,
            unknown_errors: 0,
            found_unreported: false,
            replied: None,
            refused_reply: None,
            http_status: None,
            grouped: false,
        };
        if let Some(occurrence) = self.claim_pending(&mut attempt, replayed, stop).await? {
            let conversation = message.channel_id.as_str();
            if let Some(delivery) = self
                .send_post(&mut attempt, occurrence, None, conversation, stop)
                .await?
            {
                return Ok(delivery);
            }
        }
        loop {
            if stop.is_cancelled() {
                self.release(&attempt.entry).await;
                return Err(DeliverError::Cancelled);
            }
            let plan = decision::decide(
                &ClaimView::Held(Some(attempt.entry.shown())),
                &attempt.incoming(replayed),
                crate::clock::now_ms(),
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
}
