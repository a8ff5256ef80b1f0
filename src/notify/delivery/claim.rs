//! The alert's ledger claim: taking it, keeping it through waits, writing
//! the entry under it, and letting it go.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{millis, Attempt, DeliverError, Deliverer};
use crate::clock::now_ms;
use crate::messages::SlackMessage;
use crate::notify::decision::{self, ClaimView, Incoming, Plan};
use crate::notify::ledger::{Claim, Entry, Version};
use crate::slack::is_user_id;

impl Deliverer {
    /// Takes the alert's claim into `attempt.entry`. An alert the ledger
    /// has no row for, which the decision would simply post (into a
    /// channel, ungrouped, top-level), is claimed already `pending`: one
    /// statement instead of the claim and the `pending` write, and durable
    /// before Slack sees anything all the same. Its occurrence is returned
    /// then: post it now. Only a row the statement created counts, so a
    /// `pending` row left by a crashed run is reconciled as ever.
    pub(super) async fn claim_pending(
        &self,
        attempt: &mut Attempt<'_>,
        replayed: bool,
        stop: &CancellationToken,
    ) -> Result<Option<i64>, DeliverError> {
        let message = attempt.message;
        if !is_user_id(&message.channel_id) && message.group().is_none() {
            let now = now_ms();
            let lease_until = now + millis(self.settings.claim_lease);
            attempt.entry = Entry::claimed_new(
                &message.alert_id,
                &message.channel_id,
                &self.owner,
                now,
                lease_until,
            );
            let plan = decision::decide(
                &ClaimView::Held(Some(attempt.entry.shown())),
                &attempt.incoming(replayed),
                now,
                &self.settings.rules,
            );
            if let Plan::Post {
                occurrence,
                thread: None,
            } = plan
            {
                attempt.pending(occurrence, None, &message.channel_id);
                if let (Claim::Held(entry), inserted) = self
                    .ledger
                    .claim_fresh(&attempt.entry, now, lease_until)
                    .await?
                {
                    attempt.entry = *entry;
                    return Ok(inserted.then_some(occurrence));
                }
            }
        }
        attempt.entry = self.claim(message, stop).await?;
        Ok(None)
    }

    /// Waits until this instance holds the alert's claim.
    pub(super) async fn claim(
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

    pub(super) async fn release(&self, entry: &Entry) {
        if let Err(e) = self.ledger.release(&entry.alert_id, &self.owner).await {
            // The lease runs out by itself.
            tracing::warn!(alert_id = %entry.alert_id, error = %e, "cannot release the claim");
        }
    }

    /// Writes the entry; keeping the claim also extends its lease.
    pub(super) async fn save(&self, entry: &Entry, release: bool) -> Result<(), DeliverError> {
        let now = now_ms();
        let lease_until = (!release).then(|| now + millis(self.settings.claim_lease));
        Ok(self
            .ledger
            .save(entry, &self.owner, now, lease_until)
            .await?)
    }

    pub(super) async fn renew(&self, entry: &Entry) -> Result<(), DeliverError> {
        let until = now_ms() + millis(self.settings.claim_lease);
        Ok(self
            .ledger
            .renew(&entry.alert_id, &self.owner, until)
            .await?)
    }

    /// Sleeps `delay`, renewing the claim so that a long backoff (a Slack
    /// outage) does not hand the alert to a peer.
    pub(super) async fn wait_holding(
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
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> Result<(), DeliverError> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = stop.cancelled() => Err(DeliverError::Cancelled),
    }
}
