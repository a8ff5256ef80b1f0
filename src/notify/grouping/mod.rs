//! Grouped alerts (a pipeline's `group_key` and `group_window`): alerts
//! with one key in one conversation within the window of the group's first
//! alert share one summary message, and each alert is a reply in its
//! thread.
//!
//! A member's own reply is an ordinary delivery in the alert ledger (posted
//! into the summary's thread, looked up before any re-post), so it is made
//! once. The summary is posted once per group under a claim on its row,
//! like an alert; afterwards members only mark it out of date, and the
//! flusher edits it at most once per `group_update_interval`, so a burst of
//! members costs a few edits, the last of which shows every member.
//!
//! [`plan`] decides, [`summary`] renders, [`ledger`] stores; this module
//! only carries the decisions out.

pub mod ledger;
pub mod plan;
pub mod summary;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use ledger::GroupLedger;

/// How a group's summary names its group, as the alert id of its clicks
/// and of its state.
pub const GROUP_PREFIX: &str = "group:";
use plan::{FlushPlan, GroupRow, GroupStatus, SummaryPlan};
use summary::Member;

use super::decision::Failure;
use super::delivery::error::DeliverError;
use super::ledger::Owner;
use super::pacing::Pacer;
use super::slack_health::SlackHealth;
use super::slack_side::SlackSide;
use super::state::decorate::decorated_blocks;
use super::state::store::StateStore;
use crate::clock::now_ms;
use crate::messages::SlackMessage;
use crate::slack::{GroupRef, SlackApi, SlackError};

#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub claim_lease: Duration,
    pub reconcile_delay: Duration,
    /// At most one edit of a summary per this long.
    pub update_interval: Duration,
}

pub struct Grouper {
    slack: Arc<SlackApi>,
    ledger: GroupLedger,
    pacer: Arc<Pacer>,
    health: Arc<SlackHealth>,
    owner: Owner,
    settings: GroupSettings,
    /// The group's own state (a click on the summary acknowledged or
    /// snoozed it), shown on every summary notify renders.
    states: StateStore,
    /// One summary change at a time in this process: claims are per
    /// instance, so they only arbitrate between replicas.
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// How one Slack call ended.
enum Outcome<T> {
    Done(T),
    Refused(SlackError),
    Auth(SlackError),
    /// Slack may have done it.
    Uncertain,
    /// Certainly not done; try again (after Slack's `Retry-After`).
    Later(Option<Duration>),
}

/// Where a grouped alert goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupThread {
    /// Into the summary's thread.
    Thread(String),
    /// On its own: not grouped, or Slack refused the group's summary.
    Ungrouped,
    /// The summary is not there yet: wait (backing off; Slack's
    /// `Retry-After` if given) and ask again.
    Wait(Option<Duration>),
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn member_of(message: &SlackMessage) -> Member {
    Member {
        alert_id: message.alert_id.clone(),
        text: message.text.clone(),
        status: message.status,
        created_at: message.created_at,
    }
}

/// How Slack's side names the group's summary message (its metadata).
fn summary_of(group: &GroupRow) -> GroupRef<'_> {
    GroupRef {
        group_id: &group.group_id,
        group_key: &group.group_key,
    }
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> Result<(), DeliverError> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = stop.cancelled() => Err(DeliverError::Cancelled),
    }
}

impl Grouper {
    pub fn new(
        side: SlackSide,
        ledger: GroupLedger,
        owner: Owner,
        settings: GroupSettings,
        states: StateStore,
    ) -> Grouper {
        let SlackSide { api, pacer, health } = side;
        Grouper {
            states,
            slack: api,
            ledger,
            pacer,
            health,
            owner,
            settings,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    pub fn ledger(&self) -> &GroupLedger {
        &self.ledger
    }

    /// A freshly rendered summary knows nothing of clicks on it: without
    /// the group's state applied, a count edit would drop its
    /// "Acknowledged by" line. Shown as rendered if the state cannot be read.
    async fn with_group_state(&self, group_id: &str, blocks: String) -> String {
        match self.states.get(&format!("{GROUP_PREFIX}{group_id}")).await {
            Ok(Some(row)) => decorated_blocks(&blocks, &row.state),
            Ok(None) => blocks,
            Err(e) => {
                tracing::warn!(group_id, error = %e, "cannot read the group's state; the summary shows none");
                blocks
            }
        }
    }

    /// The members of a group: what its summary's buttons act on.
    pub async fn members(&self, group_id: &str) -> Result<Vec<Member>, DeliverError> {
        Ok(self.ledger.members(group_id).await?)
    }

    /// Joins `message` to its group in `conversation` and says which
    /// thread it replies in (the summary's, posted first if need be).
    pub async fn thread_for(
        &self,
        message: &SlackMessage,
        conversation: &str,
    ) -> Result<GroupThread, DeliverError> {
        let Some((key, window_ms)) = message.group() else {
            return Ok(GroupThread::Ungrouped);
        };
        let now = now_ms();
        let head = self.ledger.head(conversation, key).await?;
        let wanted = plan::joins(
            head.as_ref(),
            conversation,
            key,
            message.created_at,
            window_ms,
        );
        let head = match head {
            Some(head) if head == wanted => head,
            _ => self.ledger.open(conversation, key, &wanted, now).await?,
        };
        self.ledger
            .upsert_member(&head.group_id, &member_of(message), now)
            .await?;
        self.summary(&head.group_id).await
    }

    /// A member in the thread of `thread_ts` changed (edited, resolved):
    /// its group's summary is out of date.
    pub async fn member_changed(
        &self,
        message: &SlackMessage,
        conversation: &str,
        thread_ts: &str,
    ) -> Result<(), DeliverError> {
        self.ledger
            .update_member_in_thread(conversation, thread_ts, &member_of(message), now_ms())
            .await?;
        Ok(())
    }

    fn call<T>(&self, result: Result<T, SlackError>) -> Outcome<T> {
        let (error, failure) = match self.health.observe(result) {
            Ok(value) => return Outcome::Done(value),
            Err(failed) => failed,
        };
        match failure {
            Failure::Permanent => Outcome::Refused(error),
            Failure::Auth => Outcome::Auth(error),
            Failure::Ambiguous => Outcome::Uncertain,
            Failure::Retry { after } => Outcome::Later(after),
            // Retried until the member is too old to post (max_age).
            Failure::Unknown | Failure::Unreachable => Outcome::Later(None),
        }
    }

    fn lease_until(&self, now: i64) -> i64 {
        now + millis(self.settings.claim_lease)
    }

    /// The group's summary in Slack: posted once (looked up first when a
    /// post may have landed), then its ts. Waits are the caller's, which
    /// holds the member's claim meanwhile.
    async fn summary(&self, group_id: &str) -> Result<GroupThread, DeliverError> {
        if let Some(group) = self.ledger.get(group_id).await? {
            match plan::plan_summary(&group) {
                SummaryPlan::Thread(ts) => return Ok(GroupThread::Thread(ts)),
                SummaryPlan::Ungrouped => return Ok(GroupThread::Ungrouped),
                SummaryPlan::Post | SummaryPlan::Reconcile => {}
            }
        }
        let _alone = self.one_at_a_time.lock().await;
        loop {
            let now = now_ms();
            let claimed = self
                .ledger
                .claim(group_id, &self.owner, now, self.lease_until(now))
                .await?;
            let Some(mut group) = claimed else {
                // A peer is posting it: its ts will be there shortly.
                return Ok(GroupThread::Wait(Some(Duration::from_millis(
                    100 + fastrand::u64(..200),
                ))));
            };
            let next = match plan::plan_summary(&group) {
                SummaryPlan::Thread(ts) => Some(GroupThread::Thread(ts)),
                SummaryPlan::Ungrouped => Some(GroupThread::Ungrouped),
                SummaryPlan::Reconcile => self.reconcile(&mut group).await?,
                SummaryPlan::Post => Some(self.post(&mut group).await?),
            };
            if let Some(next) = next {
                // Never held across a wait: a peer may take over meanwhile
                // (a pending summary is looked up by whoever comes next).
                self.release(&group).await;
                return Ok(next);
            }
        }
    }

    async fn release(&self, group: &GroupRow) {
        if let Err(e) = self.ledger.release(&group.group_id, &self.owner).await {
            tracing::warn!(group_id = %group.group_id, error = %e, "cannot release the group's claim");
        }
    }

    async fn save(&self, group: &GroupRow, keep: bool) -> Result<(), DeliverError> {
        let now = now_ms();
        let lease = keep.then(|| self.lease_until(now));
        Ok(self.ledger.save(group, &self.owner, now, lease).await?)
    }

    /// Posts the summary, recording it `pending` first.
    async fn post(&self, group: &mut GroupRow) -> Result<GroupThread, DeliverError> {
        // The revision is read before the members: a member joining in
        // between leaves the summary out of date, never shown as current.
        let revision = group.revision;
        let members = self.ledger.members(&group.group_id).await?;
        let mut rendered = summary::render(&group.group_id, &group.group_key, &members);
        rendered.blocks = self
            .with_group_state(&group.group_id, rendered.blocks)
            .await;
        group.status = GroupStatus::Pending;
        group.error = None;
        // Durable before Slack sees it: whoever finds it looks first.
        self.save(group, true).await?;
        let turn = self.pacer.ready(&group.channel_id).await;
        let result = self
            .slack
            .post(
                &group.channel_id,
                &rendered.text,
                &rendered.blocks,
                &summary_of(group),
            )
            .await;
        self.pacer.answered(turn);
        match self.call(result) {
            Outcome::Done(posted) => {
                group.status = GroupStatus::Posted;
                group.ts = Some(posted.ts.clone());
                group.shown_revision = revision;
                group.shown_at = Some(now_ms());
                self.save(group, true).await?;
                Ok(GroupThread::Thread(posted.ts))
            }
            Outcome::Refused(e) => {
                tracing::warn!(group_id = %group.group_id, error = %e, "Slack refused the group's summary; its alerts go out on their own");
                group.status = GroupStatus::Failed;
                group.error = Some(e.code());
                self.save(group, true).await?;
                Ok(GroupThread::Ungrouped)
            }
            Outcome::Auth(e) => {
                group.status = GroupStatus::New;
                self.save(group, false).await?;
                Err(DeliverError::Auth(e))
            }
            // Still pending: the next round looks for it.
            Outcome::Uncertain => Ok(GroupThread::Wait(Some(self.settings.reconcile_delay))),
            Outcome::Later(after) => {
                // Certainly not posted: the next round need not look.
                group.status = GroupStatus::New;
                self.save(group, false).await?;
                Ok(GroupThread::Wait(after))
            }
        }
    }

    /// Looks for a summary whose post may have landed and records what
    /// it found (posted, or nothing: free to post); `Some` when the caller
    /// must wait first.
    async fn reconcile(&self, group: &mut GroupRow) -> Result<Option<GroupThread>, DeliverError> {
        let oldest = group.updated_at - 5 * 60 * 1000;
        // Rare (a summary post answered ambiguously, or left pending by a
        // crash): the member waiting for its summary keeps its channel.
        self.pacer.history_ready(|| ()).await;
        let result = self
            .slack
            .find(&group.channel_id, None, &summary_of(group), Some(oldest))
            .await;
        let found = match self.call(result) {
            Outcome::Done(found) => found,
            Outcome::Auth(e) => return Err(DeliverError::Auth(e)),
            // Unreadable: nothing can be proven, and a post would be
            // refused the same way.
            Outcome::Refused(_) => None,
            Outcome::Uncertain => return Ok(Some(GroupThread::Wait(None))),
            Outcome::Later(after) => return Ok(Some(GroupThread::Wait(after))),
        };
        match found {
            Some(ts) => {
                tracing::info!(group_id = %group.group_id, ts, "found the group's earlier summary; not posting again");
                group.status = GroupStatus::Posted;
                group.ts = Some(ts);
                // What it shows is unknown: the flusher edits it.
                group.shown_revision = 0;
                group.shown_at = None;
            }
            None => group.status = GroupStatus::New,
        }
        self.save(group, true).await?;
        Ok(None)
    }

    /// Edits every posted summary that is out of date and was not edited
    /// within the interval; returns how many it edited.
    pub async fn flush(&self, stop: &CancellationToken) -> Result<usize, DeliverError> {
        let interval = millis(self.settings.update_interval);
        let mut edited = 0;
        for group in self.ledger.out_of_date().await? {
            if stop.is_cancelled() {
                return Err(DeliverError::Cancelled);
            }
            if let FlushPlan::Update { .. } = plan::plan_flush(&group, now_ms(), interval) {
                if self.edit(&group.group_id, interval).await? {
                    edited += 1;
                }
            }
        }
        Ok(edited)
    }

    /// Edits one summary to show its members as they are now.
    async fn edit(&self, group_id: &str, interval: i64) -> Result<bool, DeliverError> {
        let _alone = self.one_at_a_time.lock().await;
        let now = now_ms();
        let Some(mut group) = self
            .ledger
            .claim(group_id, &self.owner, now, self.lease_until(now))
            .await?
        else {
            return Ok(false);
        };
        let (FlushPlan::Update { revision }, Some(ts)) =
            (plan::plan_flush(&group, now, interval), group.ts.clone())
        else {
            self.release(&group).await;
            return Ok(false);
        };
        let members = self.ledger.members(group_id).await?;
        let mut rendered = summary::render(&group.group_id, &group.group_key, &members);
        rendered.blocks = self
            .with_group_state(&group.group_id, rendered.blocks)
            .await;
        let turn = self.pacer.update_ready(&group.channel_id).await;
        let result = self
            .slack
            .update(
                &group.channel_id,
                &ts,
                &rendered.text,
                &rendered.blocks,
                Some(&summary_of(&group)),
            )
            .await;
        self.pacer.answered(turn);
        match self.call(result) {
            Outcome::Done(_) => {
                group.shown_revision = revision;
                group.shown_at = Some(now_ms());
                group.error = None;
                self.save(&group, false).await?;
                Ok(true)
            }
            Outcome::Refused(e) => {
                // Deleted, or too old to edit: nothing more to show there.
                tracing::warn!(group_id, error = %e, "Slack refused the summary's edit");
                group.shown_revision = revision;
                group.error = Some(e.code());
                self.save(&group, false).await?;
                Ok(false)
            }
            Outcome::Auth(e) => {
                self.release(&group).await;
                Err(DeliverError::Auth(e))
            }
            // Edits are idempotent: tried again an interval later (not
            // every tick while Slack is in trouble).
            Outcome::Uncertain | Outcome::Later(_) => {
                group.shown_at = Some(now_ms());
                self.save(&group, false).await?;
                Ok(false)
            }
        }
    }

    /// Keeps summaries current until `stop`.
    pub async fn run_flusher(self: Arc<Self>, stop: CancellationToken) {
        let tick = (self.settings.update_interval / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        while sleep_or_stop(tick, &stop).await.is_ok() {
            match self.flush(&stop).await {
                Ok(_) | Err(DeliverError::Cancelled) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot bring group summaries up to date; trying again")
                }
            }
        }
    }
}
