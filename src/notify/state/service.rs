//! Applying state changes: a click (or a group summary's click, for every
//! member) or notify's own post or edit changes the state in the ledger,
//! the message in Slack and the `alert-state` topic.
//!
//! The ledger row is the truth. The topic gets the row's latest state at
//! least once: published right after a change and, if that fails (or the
//! process dies first), again by [`AlertStates::publish_pending`], which
//! notify runs in the background.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::producer::FutureProducer;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::decorate::decorated_blocks;
use super::publish::PublishQueue;
use super::show::Show;
use super::store::{Place, StateRow, StateStore};
use super::{transition, Action, NoChange, Transition};
use crate::avro::{Codec, KeyCodec};
use crate::kafka::StageContext;
use crate::messages::{AlertStatus, SlackMessage};
use crate::notify::keyed_locks::KeyedLocks;
use crate::notify::ledger::LedgerError;
use crate::notify::slack_side::SlackSide;

const PENDING_BATCH: i64 = 200;

/// Where state changes are published.
pub struct Publisher {
    pub producer: FutureProducer<StageContext>,
    pub topic: String,
    pub codec: Arc<Codec>,
    pub key_codec: Arc<KeyCodec>,
}

/// What applying an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Changed(StateRow),
    /// Nothing changed; the row as found (`None`: no state recorded).
    Unchanged(NoChange, Option<StateRow>),
}

impl Applied {
    pub fn row(&self) -> Option<&StateRow> {
        match self {
            Applied::Changed(row) => Some(row),
            Applied::Unchanged(_, row) => row.as_ref(),
        }
    }
}

/// An alert's message as it stands in Slack: the record shown, which
/// occurrence it is, and where.
#[derive(Debug, Clone, Copy)]
pub struct InSlack<'a> {
    pub message: &'a SlackMessage,
    pub occurrence: i64,
    pub channel: &'a str,
    pub ts: &'a str,
}

impl InSlack<'_> {
    /// What showing this message does to the alert's state, and where it
    /// is shown now.
    pub(super) fn shown(&self) -> (Action, Place) {
        let action = match self.message.status {
            AlertStatus::Firing => Action::Fired {
                occurrence: self.occurrence,
            },
            AlertStatus::Resolved => Action::UpstreamResolved,
        };
        let place = Place {
            channel_id: Some(self.channel.to_owned()),
            message_ts: Some(self.ts.to_owned()),
            pipeline: self.message.pipeline.clone(),
            group_key: self.message.group_key.clone(),
            text: Some(self.message.text.clone()),
            blocks: Some(self.message.blocks.clone()),
        };
        (action, place)
    }
}

/// What an edit by notify sends, and the state version it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub blocks: String,
    pub version: Option<i64>,
}

/// Where the change writes the message it is shown on.
enum Placing<'a> {
    /// notify (re)rendered the message: this is it now.
    Set(&'a Place),
    /// A click: the row's place stays; `if_absent` (from the click's
    /// payload) for an alert that has no row yet.
    Keep { if_absent: Option<&'a Place> },
}

pub struct AlertStates {
    pub(super) store: StateStore,
    pub(super) publisher: Option<Publisher>,
    pub(super) slack: Option<SlackSide>,
    /// One batch of publishes at a time per process, each of the rows'
    /// latest states, so an older state never lands after a newer one from
    /// here (`publish.rs`).
    pub(super) publishing: PublishQueue,
    /// Per alert, the show in flight in this process (see `show.rs`).
    pub(super) showing: KeyedLocks,
}

/// The record for the `alert-state` topic (`config/schemas/alert_state.avsc`),
/// its fields in the schema's order (the codec then writes it without a
/// JSON value in between).
#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRecord<'a> {
    pub alert_id: &'a str,
    pub state: &'static str,
    pub actor_id: Option<&'a str>,
    pub actor_name: Option<&'a str>,
    pub at: i64,
    pub snoozed_until: Option<i64>,
    pub group_key: Option<&'a str>,
    pub channel_id: Option<&'a str>,
    pub message_ts: Option<&'a str>,
    pub pipeline: &'a str,
}

pub fn state_record(row: &StateRow) -> StateRecord<'_> {
    let actor = row.state.actor.as_ref();
    StateRecord {
        alert_id: &row.alert_id,
        state: row.state.kind.as_str(),
        actor_id: actor.map(|a| a.id.as_str()),
        actor_name: actor.and_then(|a| a.name.as_deref()),
        at: row.state.at,
        snoozed_until: row.state.snoozed_until,
        group_key: row.place.group_key.as_deref(),
        channel_id: row.place.channel_id.as_deref(),
        message_ts: row.place.message_ts.as_deref(),
        pipeline: &row.place.pipeline,
    }
}

impl AlertStates {
    pub fn new(
        store: StateStore,
        publisher: Option<Publisher>,
        slack: Option<SlackSide>,
    ) -> AlertStates {
        AlertStates {
            store,
            publisher,
            slack,
            publishing: PublishQueue::default(),
            showing: KeyedLocks::default(),
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Applies `action` with compare-and-set: on a lost race it decides
    /// again from what the winner wrote.
    async fn apply(
        &self,
        alert_id: &str,
        action: &Action,
        now: i64,
        placing: Placing<'_>,
    ) -> Result<Applied, LedgerError> {
        loop {
            let current = self.store.get(alert_id).await?;
            let state = match transition(current.as_ref().map(|r| &r.state), action, now) {
                Transition::Same(reason) => {
                    if let (Placing::Set(place), Some(row)) = (&placing, &current) {
                        self.store.set_place(alert_id, place).await?;
                        let row = StateRow {
                            place: (*place).clone(),
                            ..row.clone()
                        };
                        return Ok(Applied::Unchanged(reason, Some(row)));
                    }
                    return Ok(Applied::Unchanged(reason, current));
                }
                Transition::Change(state) => state,
            };
            let place = match (&placing, &current) {
                (Placing::Set(place), _) => (*place).clone(),
                (Placing::Keep { .. }, Some(row)) => row.place.clone(),
                (Placing::Keep { if_absent }, None) => if_absent.cloned().unwrap_or_default(),
            };
            let expected = current.as_ref().map(|r| r.version);
            // notify's own post or edit carries the state it sets.
            let shown = matches!(placing, Placing::Set(_));
            if self
                .store
                .compare_and_set(alert_id, expected, &state, &place, shown)
                .await?
            {
                let version = expected.map_or(1, |v| v + 1);
                return Ok(Applied::Changed(StateRow {
                    alert_id: alert_id.to_owned(),
                    state,
                    version,
                    published_version: current.as_ref().map_or(0, |r| r.published_version),
                    shown_version: match (shown, &current) {
                        (true, _) => version,
                        (false, Some(row)) => row.shown_version,
                        (false, None) => 0,
                    },
                    place,
                }));
            }
            tracing::debug!(alert_id, "alert state changed concurrently; deciding again");
        }
    }

    /// A click's action on each of `alert_ids` (one alert, or every member
    /// of a group): each change is published and shown on its message in
    /// the background; an action that changes nothing does neither.
    /// `fallback` is where an alert without a recorded state is shown (the
    /// clicked message).
    pub async fn act(
        self: &Arc<Self>,
        alert_ids: &[String],
        action: &Action,
        now: i64,
        fallback: Option<&Place>,
    ) -> Vec<Result<Applied, LedgerError>> {
        let mut results = Vec::with_capacity(alert_ids.len());
        for alert_id in alert_ids {
            let applied = self
                .apply(
                    alert_id,
                    action,
                    now,
                    Placing::Keep {
                        if_absent: fallback,
                    },
                )
                .await;
            if let Ok(Applied::Changed(row)) = &applied {
                let (states, row) = (self.clone(), row.clone());
                // Side by side: the person who clicked sees the edit without
                // waiting for the broker's acknowledgement (up to 10 s when
                // Kafka is slow); each has its own retry sweep.
                tokio::spawn(async move {
                    tokio::join!(
                        states.publish(&row.alert_id),
                        states.show_retrying(&row, Show::Change)
                    );
                });
            }
            results.push(applied);
        }
        results
    }

    /// Before notify edits an alert's message: what the record says
    /// (firing, or resolved upstream) is applied, and the blocks to send
    /// are the message's, decorated with the resulting state.
    pub async fn before_edit(
        self: &Arc<Self>,
        alert: InSlack<'_>,
        now: i64,
    ) -> Result<Edit, LedgerError> {
        let message = alert.message;
        let applied = self.shown(alert, now).await?;
        Ok(match applied.row() {
            Some(row) => Edit {
                blocks: decorated_blocks(&message.blocks, &row.state),
                version: Some(row.version),
            },
            None => Edit {
                blocks: message.blocks.clone(),
                version: None,
            },
        })
    }

    /// After notify's edit: a click that changed the state meanwhile may
    /// have been shown before the edit landed, which then hid it; show the
    /// latest state (and content) again.
    pub async fn after_edit(self: &Arc<Self>, alert_id: &str, edit: &Edit) {
        match self.store.get(alert_id).await {
            Ok(Some(row)) if Some(row.version) != edit.version => {
                let states = self.clone();
                tokio::spawn(async move { states.show_retrying(&row, Show::AfterEdit).await });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(alert_id, error = %e, "cannot check the alert's state after an edit")
            }
        }
    }

    /// After notify posted an alert: a new occurrence is firing (or, a
    /// posted resolved record, resolved).
    pub async fn after_post(
        self: &Arc<Self>,
        alert: InSlack<'_>,
        now: i64,
    ) -> Result<(), LedgerError> {
        self.shown(alert, now).await.map(drop)
    }

    async fn shown(self: &Arc<Self>, alert: InSlack<'_>, now: i64) -> Result<Applied, LedgerError> {
        let (action, place) = alert.shown();
        let applied = self
            .apply(&alert.message.alert_id, &action, now, Placing::Set(&place))
            .await?;
        if let Applied::Changed(row) = &applied {
            let (states, alert_id) = (self.clone(), row.alert_id.clone());
            tokio::spawn(async move { states.publish(&alert_id).await });
        }
        Ok(applied)
    }

    /// Publishes every state the topic may not have (a failed publish, a
    /// crash right after a change); returns how many were published.
    pub async fn publish_pending(self: &Arc<Self>) -> Result<usize, LedgerError> {
        let rows = self.store.unpublished(PENDING_BATCH).await?;
        // Asked for together, they go out as one batch.
        let published = join_all(rows.iter().map(|row| self.publish(&row.alert_id))).await;
        Ok(published.into_iter().filter(|&p| p).count())
    }

    /// Alerts whose snooze ended are firing again: published, and their
    /// message shows them open (the buttons, no snooze line). Returns how
    /// many.
    pub async fn end_snoozes(self: &Arc<Self>, now: i64) -> Result<usize, LedgerError> {
        let ids = self.store.snoozes_ended(now, PENDING_BATCH).await?;
        let results = self.act(&ids, &Action::SnoozeEnded, now, None).await;
        let mut ended = 0;
        for result in results {
            if matches!(result?, Applied::Changed(_)) {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Until `stop`: every `every`, [`Self::end_snoozes`] and
    /// [`Self::publish_pending`]; beside them, [`Self::show_pending`] (its
    /// edits wait for Slack's pacing, which must not hold up the others).
    pub async fn run_background(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        tokio::join!(
            self.clone().run_show_sweep(every, stop.clone()),
            self.run_publish_sweep(every, stop)
        );
    }

    async fn run_publish_sweep(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            let now = crate::clock::now_ms();
            match self.end_snoozes(now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(ended = n, "snoozes ended; alerts firing again"),
                Err(e) => tracing::warn!(error = %e, "cannot end due snoozes"),
            }
            match self.publish_pending().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(published = n, "alert states published late"),
                Err(e) => tracing::warn!(error = %e, "cannot look for unpublished alert states"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// The state a click leaves, for its log line.
pub fn describe(applied: &Applied) -> &'static str {
    match applied {
        Applied::Changed(row) => row.state.kind.as_str(),
        Applied::Unchanged(..) => "unchanged",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::state::{Actor, AlertState, StateKind};
    use serde_json::json;

    #[test]
    fn the_record_has_every_schema_field() {
        let row = StateRow {
            alert_id: "A-1".into(),
            state: AlertState {
                kind: StateKind::Snoozed,
                actor: Some(Actor {
                    id: "U1".into(),
                    name: Some("ada".into()),
                }),
                at: 5,
                snoozed_until: Some(9),
                occurrence: 2,
            },
            version: 3,
            published_version: 2,
            shown_version: 3,
            place: Place {
                channel_id: Some("C1".into()),
                message_ts: Some("1.2".into()),
                pipeline: "p".into(),
                group_key: Some("org-1".into()),
                text: Some("t".into()),
                blocks: Some("[]".into()),
            },
        };
        assert_eq!(
            crate::messages::to_json(&state_record(&row)),
            json!({"alertId": "A-1", "state": "snoozed", "actorId": "U1", "actorName": "ada",
                   "at": 5, "snoozedUntil": 9, "groupKey": "org-1", "channelId": "C1",
                   "messageTs": "1.2", "pipeline": "p"})
        );
        assert_eq!(decorated_blocks("not json", &row.state), "not json");
    }
}
