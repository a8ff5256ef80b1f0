//! The alert's ledger claim: taking it, keeping it through waits, writing
//! the entry under it, and letting it go.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{millis, now_ms, DeliverError, Deliverer};
use crate::messages::SlackMessage;
use crate::notify::decision::{self, ClaimView, Incoming, Plan};
use crate::notify::ledger::{Claim, Entry, Version};

impl Deliverer {
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
