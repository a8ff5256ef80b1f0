//! Posting an alert (top-level, or into an earlier occurrence's or its
//! group's thread), into a channel or a user's DM.

use tokio_util::sync::CancellationToken;

use super::calls::Called;
use super::{Attempt, DeliverError, Deliverer, Delivery, LetGo};
use crate::clock::now_ms;
use crate::messages::DeliveryOutcome;
use crate::metrics::seconds_since;
use crate::notify::ledger::Status;
use crate::notify::state::{AlertStates, InSlack};
use crate::slack::{is_user_id, AlertRef, SlackError, Thread};

impl Attempt<'_> {
    /// The entry for a post of `occurrence` into `conversation`, about to
    /// be sent.
    pub(super) fn pending(&mut self, occurrence: i64, thread: Option<String>, conversation: &str) {
        let entry = &mut self.entry;
        if entry.occurrence != occurrence {
            // A new occurrence: its own message, its own replies.
            entry.ts = None;
            entry.reply_key = None;
            entry.reply_ts = None;
        }
        entry.thread_ts = thread;
        entry.alert_status = self.message.status;
        entry.status = Status::Pending;
        entry.channel_id = conversation.to_owned();
        entry.content_hash = self.hash.clone();
        entry.version = self.version.clone();
        entry.occurrence = occurrence;
        entry.attempts += 1;
        entry.error = None;
    }
}

impl Deliverer {
    /// The conversation to post into: a user id's DM, opened (and cached)
    /// first.
    pub(super) async fn conversation(&self, target: &str) -> Result<Called<String>, DeliverError> {
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
    pub(super) async fn post(
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
        attempt.pending(occurrence, thread.clone(), &conversation);
        // `pending` is durable before Slack sees anything: whoever finds it
        // later looks before posting again.
        self.save(&attempt.entry, false).await?;
        self.send_post(attempt, occurrence, thread, &conversation, stop)
            .await
    }

    /// Posts the message whose `pending` entry is durable; `None` when the
    /// loop must decide again.
    pub(super) async fn send_post(
        &self,
        attempt: &mut Attempt<'_>,
        occurrence: i64,
        thread: Option<String>,
        conversation: &str,
        stop: &CancellationToken,
    ) -> Result<Option<Delivery>, DeliverError> {
        let message = attempt.message;
        let turn = self.paced(&attempt.entry, conversation).await?;
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
                    conversation,
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
                        .post(conversation, &message.text, &message.blocks, &alert),
                )
                .await
            }
        };
        self.pacer.answered(turn);
        match self.called(result, &mut attempt.unknown_errors) {
            Called::Done(posted) => {
                self.metrics
                    .event_to_slack_seconds
                    .observe(seconds_since(message.created_at));
                let entry = &mut attempt.entry;
                entry.status = Status::Posted;
                entry.channel_id = posted.channel;
                entry.ts = Some(posted.ts);
                // Slack has it, in the channel's order: the channel's next
                // message need not wait for this one's `posted` commit (it
                // is claimed in the same group commit, mostly). This
                // alert's own later messages wait, and nothing overtakes
                // them; so does the channel after a grouped post: the next
                // member must find the group's summary in the ledger.
                if !attempt.grouped && message.group().is_none() {
                    attempt.channel.release(LetGo::InOrder);
                }
                self.save_posted(attempt, occurrence).await?;
                attempt.http_status = Some(200);
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

    /// Writes the posted entry (giving the claim up) and the alert's state:
    /// the state an alert without one gets is written in the same
    /// transaction; otherwise it is applied after.
    async fn save_posted(
        &self,
        attempt: &Attempt<'_>,
        occurrence: i64,
    ) -> Result<(), DeliverError> {
        let entry = &attempt.entry;
        let (Some(states), Some(ts)) = (&self.states, &entry.ts) else {
            return self.save(entry, true).await;
        };
        let shown = InSlack {
            message: attempt.message,
            occurrence,
            channel: &entry.channel_id,
            ts,
        };
        let now = now_ms();
        let result = match AlertStates::first_state(shown, now) {
            Some((statement, first)) => {
                let written = self
                    .ledger
                    .save_then(entry, &self.owner, now, None, statement)
                    .await?;
                states
                    .after_first_post(shown, now_ms(), first, written)
                    .await
            }
            None => {
                self.save(entry, true).await?;
                states.after_post(shown, now_ms()).await
            }
        };
        if let Err(e) = result {
            // The post stands; a first click records the state.
            tracing::warn!(alert_id = %attempt.message.alert_id, error = %e, "cannot record the alert's state");
        }
        Ok(())
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
}
