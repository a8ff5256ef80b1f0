//! Answers that need no Slack call (duplicate, expired, resolved before
//! it was posted, settled in the thread), and the delivery report every
//! step ends with.

use super::{Attempt, DeliverError, Deliverer, Delivery};
use crate::messages::{AlertStatus, DeliveryOutcome};
use crate::notify::ledger::Status;
use crate::slack::SlackError;

impl Deliverer {
    pub(super) fn answer(&self, attempt: &Attempt<'_>, outcome: DeliveryOutcome) -> Delivery {
        let entry = &attempt.entry;
        // A duplicate of a refused or expired alert repeats that answer.
        let never_shown = matches!(entry.status, Status::Failed | Status::Expired);
        let ok = match outcome {
            DeliveryOutcome::Failed | DeliveryOutcome::Expired => false,
            DeliveryOutcome::Duplicate => !never_shown,
            DeliveryOutcome::Posted
            | DeliveryOutcome::Updated
            | DeliveryOutcome::ResolvedUnposted => true,
        };
        Delivery {
            outcome,
            ok,
            channel: entry.channel_id.clone(),
            ts: entry.ts.clone(),
            thread_ts: entry
                .ts
                .as_ref()
                .map(|ts| entry.thread_ts.clone().unwrap_or_else(|| ts.clone())),
            reply_ts: attempt.replied.clone(),
            error: if ok { None } else { entry.error.clone() },
            attempts: attempt.sends,
            http_status: attempt.http_status,
            dead_letter: false,
        }
    }

    /// The answer after the last step: what this delivery changed in
    /// Slack (`outcome` if nothing), `failed` if its only step was refused.
    pub(super) fn answer_steps(&self, attempt: &Attempt<'_>, outcome: DeliveryOutcome) -> Delivery {
        let outcome = if attempt.found_unreported {
            DeliveryOutcome::Posted
        } else if attempt.replied.is_some() {
            DeliveryOutcome::Updated
        } else if attempt.refused_reply.is_some() && outcome != DeliveryOutcome::Updated {
            DeliveryOutcome::Failed
        } else {
            outcome
        };
        let mut delivery = self.answer(attempt, outcome);
        if outcome == DeliveryOutcome::Failed {
            if let Some(e) = &attempt.refused_reply {
                delivery.error = Some(e.code());
                delivery.http_status = e.http_status();
            }
        }
        delivery
    }

    pub(super) async fn duplicate(
        &self,
        attempt: &mut Attempt<'_>,
        newer: bool,
    ) -> Result<Delivery, DeliverError> {
        if newer {
            // Same content, newer record: the alert was seen again, which
            // keeps it inside its dedup window.
            attempt.entry.version = attempt.version.clone();
            self.save(&attempt.entry, true).await?;
        } else if attempt.found_unreported
            || attempt.replied.is_some()
            || attempt.refused_reply.is_some()
        {
            // What reconciliation or a reply recorded stays, unclaimed.
            self.save(&attempt.entry, true).await?;
        } else {
            self.release(&attempt.entry).await;
        }
        Ok(self.answer_steps(attempt, DeliveryOutcome::Duplicate))
    }

    /// A resolved record for an alert never posted: nothing is sent. The
    /// entry remembers that the alert is resolved (and as of which record),
    /// so an older firing record arriving late is not posted either.
    pub(super) async fn resolved_unposted(
        &self,
        attempt: &mut Attempt<'_>,
    ) -> Result<Delivery, DeliverError> {
        if attempt.message.status == AlertStatus::Resolved {
            let entry = &mut attempt.entry;
            entry.alert_status = AlertStatus::Resolved;
            entry.version = attempt.version.clone();
            if entry.status == Status::New {
                entry.content_hash = attempt.hash.clone();
            }
        }
        self.save(&attempt.entry, true).await?;
        let mut delivery = self.answer(attempt, DeliveryOutcome::ResolvedUnposted);
        delivery.channel = attempt.message.channel_id.clone();
        delivery.ts = None;
        delivery.thread_ts = None;
        Ok(delivery)
    }

    /// New content went to the thread only (`updates = "thread"`): the
    /// entry records it as delivered, so the same content is not replied
    /// again.
    pub(super) async fn settle(&self, attempt: &mut Attempt<'_>) -> Result<Delivery, DeliverError> {
        let entry = &mut attempt.entry;
        entry.content_hash = attempt.hash.clone();
        entry.version = attempt.version.clone();
        entry.alert_status = attempt.message.status;
        entry.error = attempt.refused_reply.as_ref().map(SlackError::code);
        self.save(&attempt.entry, true).await?;
        let outcome = if attempt.refused_reply.is_some() {
            DeliveryOutcome::Failed
        } else {
            DeliveryOutcome::Updated
        };
        Ok(self.answer_steps(attempt, outcome))
    }

    pub(super) async fn expire(&self, attempt: &mut Attempt<'_>) -> Result<Delivery, DeliverError> {
        if attempt.entry.ts.is_none() {
            attempt.never_shown(Status::Expired);
        }
        attempt.entry.error = Some("expired".into());
        self.save(&attempt.entry, true).await?;
        let mut delivery = self.answer(attempt, DeliveryOutcome::Expired);
        delivery.channel = attempt.message.channel_id.clone();
        delivery.ts = None;
        Ok(delivery)
    }
}
