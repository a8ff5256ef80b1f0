//! Editing the posted message to show new content and the alert's state.

use tokio_util::sync::CancellationToken;

use super::calls::Called;
use super::{Attempt, DeliverError, Deliverer, Delivery, LetGo};
use crate::clock::now_ms;
use crate::messages::DeliveryOutcome;
use crate::notify::decision;
use crate::notify::ledger::Status;
use crate::notify::state::InSlack;
use crate::slack::AlertRef;

impl Deliverer {
    /// Edits the posted message; chat.update is idempotent, so an unknown
    /// answer is simply tried again.
    pub(super) async fn update(
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
                        .before_edit(
                            InSlack {
                                message,
                                occurrence,
                                channel: &channel,
                                ts: &ts,
                            },
                            now_ms(),
                        )
                        .await?,
                )
            }
            None => None,
        };
        let blocks = edit.as_ref().map_or(&message.blocks, |e| &e.blocks);
        self.renew(&attempt.entry).await?;
        // The tier is the workspace's: the channel's other alerts need
        // not wait for it.
        attempt.channel.release(LetGo::Aside);
        let turn = self.paced_update(&attempt.entry, &channel, stop).await?;
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
        self.pacer.answered(turn);
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
}
