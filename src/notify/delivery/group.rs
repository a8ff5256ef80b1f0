//! Grouping hooks: a grouped alert posts into its group's summary thread,
//! and an edited member makes the summary stale.

use tokio_util::sync::CancellationToken;

use super::calls::Called;
use super::{Attempt, DeliverError, Deliverer, Delivery};
use crate::messages::{DeliveryOutcome, SlackMessage};
use crate::notify::grouping::GroupThread;

impl Deliverer {
    /// A grouped alert's reply was edited (resolved, new content): its
    /// group's summary is out of date.
    pub(super) async fn group_member_changed(
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
    pub(super) async fn group_thread(
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
}
