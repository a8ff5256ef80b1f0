//! Looking in Slack for a post or reply that may already have been made
//! (after an unknown answer or a crash) before making it again.

use tokio_util::sync::CancellationToken;

use super::calls::Called;
use super::{Attempt, DeliverError, Deliverer};
use crate::notify::ledger::Status;
use crate::slack::{AlertRef, ReplyRef, SlackError};

impl Deliverer {
    /// Looks for the post a `pending` entry stands for; records what it
    /// found (posted, or nothing: free to post).
    pub(super) async fn reconcile(
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

    /// Looks in the thread for a reply that may have been made (after an
    /// unknown answer or a crash), and records what it found.
    pub(super) async fn reconcile_reply(
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
            self.paced_history(attempt, stop).await?;
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
}
