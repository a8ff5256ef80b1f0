//! Around every Slack call: pacing, latency, and sorting the result into
//! what the delivery loops do next (retry, look, give up, stop).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Attempt, DeliverError, Deliverer, Delivery, LetGo};
use crate::notify::decision::Failure;
use crate::notify::ledger::Entry;
use crate::notify::pacing::{retry_delay, Turn};
use crate::slack::SlackError;

/// How one Slack call ended, for the caller's loop.
pub(super) enum Called<T> {
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

impl Deliverer {
    /// A post or edit, its latency recorded.
    pub(super) async fn timed<T>(
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
    pub(super) async fn retry_later(
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
    pub(super) async fn paced(
        &self,
        entry: &Entry,
        channel: &str,
    ) -> Result<Turn<'_>, DeliverError> {
        let turn = self.pacer.ready(channel).await;
        self.after_pacing(entry, turn.waited).await?;
        Ok(turn)
    }

    /// [`Self::paced`] for a `chat.update`, which also waits for its tier
    /// (renewing the claim while it waits: the line can be long).
    pub(super) async fn paced_update(
        &self,
        entry: &Entry,
        channel: &str,
        stop: &CancellationToken,
    ) -> Result<Turn<'_>, DeliverError> {
        let ready = self.pacer.update_ready(channel);
        tokio::pin!(ready);
        let renew_every = self.settings.claim_lease / 4;
        let turn = loop {
            tokio::select! {
                turn = &mut ready => break turn,
                _ = tokio::time::sleep(renew_every) => self.renew(entry).await?,
                _ = stop.cancelled() => {
                    self.release(entry).await;
                    return Err(DeliverError::Cancelled);
                }
            }
        };
        self.after_pacing(entry, turn.waited).await?;
        Ok(turn)
    }

    /// Waits for the `conversations.history` tier with the claim renewed
    /// meanwhile. A lookup that has to wait lets its channel's worker go on
    /// first: the tier is workspace-wide, and a burst of ambiguous answers
    /// would otherwise hold up every other alert of those channels.
    pub(super) async fn paced_history(
        &self,
        attempt: &Attempt<'_>,
        stop: &CancellationToken,
    ) -> Result<(), DeliverError> {
        let channel = attempt.channel;
        let ready = self.pacer.history_ready(|| channel.release(LetGo::Aside));
        tokio::pin!(ready);
        let renew_every = self.settings.claim_lease / 4;
        loop {
            tokio::select! {
                () = &mut ready => return Ok(()),
                _ = tokio::time::sleep(renew_every) => self.renew(&attempt.entry).await?,
                _ = stop.cancelled() => {
                    self.release(&attempt.entry).await;
                    return Err(DeliverError::Cancelled);
                }
            }
        }
    }

    async fn after_pacing(&self, entry: &Entry, waited: Duration) -> Result<(), DeliverError> {
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

    pub(super) fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        retry_delay(&self.settings.retry, failures, retry_after, fastrand::f64())
    }

    /// Sorts a call's result into what the loops do next, and keeps the
    /// Slack-reachability detector and the metrics up to date.
    pub(super) fn called<T>(
        &self,
        result: Result<T, SlackError>,
        unknown_errors: &mut u32,
    ) -> Called<T> {
        let (error, failure) = match self.health.observe(result) {
            Ok(value) => return Called::Done(value),
            Err(failed) => failed,
        };
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
