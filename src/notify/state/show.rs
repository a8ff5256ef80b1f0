//! Showing a state change on the alert's message. A click's edit goes
//! through the channel's pacing like every other call to it, waits out a
//! short `Retry-After`, and when it still cannot land (an outage, a long
//! rate limit, a crash before it ran) the background sweep shows it: every
//! row whose `shown_version` is behind its `version` is shown again, so a
//! click is never lost from the message, only late.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::decorate::decorated_blocks;
use super::service::AlertStates;
use super::store::StateRow;
use crate::notify::ledger::LedgerError;
use crate::slack::{AlertRef, ErrorClass};

/// Rows the sweep reads at a time.
const SWEEP_BATCH: i64 = 200;
/// Tries of a change's own show before the sweep takes over.
const INLINE_ATTEMPTS: u32 = 3;
/// A longer `Retry-After` is left to the sweep rather than held in a task.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(10);
/// Wait before an inline retry when Slack gave no `Retry-After`.
const INLINE_RETRY: Duration = Duration::from_secs(1);

/// Who asks for a show, which decides how it meets another one in flight
/// and whether the row's marker can skip it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Show {
    /// A change just made: waits for a show in flight for the alert, then
    /// shows the latest state unless that one did.
    Change,
    /// notify's own edit landed after a change was shown, hiding it: shown
    /// again whatever the marker says.
    AfterEdit,
    /// The background sweep: passes over an alert being shown, or one that
    /// is shown by the time its turn comes.
    Sweep,
}

/// How one show ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shown {
    Done,
    /// Nothing to do: shown already, or being shown by another task.
    Skipped,
    /// Will never be shown: no message is known for the alert, or Slack
    /// refused the edit for good (the message was deleted, …).
    GaveUp,
    /// Not now (rate limited, Slack unreachable); Slack's `Retry-After`.
    Later(Option<Duration>),
}

/// What to wait before the next inline try after `outcome`, if any.
pub(super) fn inline_retry(outcome: Shown, attempt: u32) -> Option<Duration> {
    match outcome {
        Shown::Later(wait) if attempt < INLINE_ATTEMPTS => {
            let wait = wait.unwrap_or(INLINE_RETRY);
            (wait <= MAX_INLINE_WAIT).then_some(wait)
        }
        _ => None,
    }
}

impl AlertStates {
    /// Shows `row`'s state (or a newer one), trying again after a short
    /// wait Slack asks for; what still did not land is the sweep's.
    pub(super) async fn show_retrying(&self, row: &StateRow, show: Show) -> Shown {
        let mut attempt = 1;
        loop {
            let outcome = self.show(row, show).await;
            match inline_retry(outcome, attempt) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return outcome,
            }
            attempt += 1;
        }
    }

    /// Edits the alert's message to show its latest state (`row`'s, or a
    /// newer one written since), and records the version shown.
    pub(super) async fn show(&self, row: &StateRow, show: Show) -> Shown {
        // One show in flight per alert in this process.
        let _showing = match show {
            Show::Sweep => match self.showing.try_lock(&row.alert_id) {
                Some(guard) => guard,
                None => return Shown::Skipped,
            },
            Show::Change | Show::AfterEdit => self.showing.lock(&row.alert_id).await,
        };
        self.show_locked(row, show).await
    }

    async fn show_locked(&self, row: &StateRow, show: Show) -> Shown {
        let fresh = match self.store.get(&row.alert_id).await {
            Ok(Some(fresh)) if fresh.version >= row.version => fresh,
            _ => row.clone(),
        };
        let row = &fresh;
        if show != Show::AfterEdit && row.shown_version >= row.version {
            return Shown::Skipped;
        }
        let (Some(slack), Some(channel), Some(ts), Some(blocks)) = (
            &self.slack,
            &row.place.channel_id,
            &row.place.message_ts,
            &row.place.blocks,
        ) else {
            tracing::warn!(alert_id = %row.alert_id, "no message known to show the alert's state on");
            self.mark_shown(row).await;
            return Shown::GaveUp;
        };
        let text = row.place.text.as_deref().unwrap_or("Alert");
        let blocks = decorated_blocks(blocks, &row.state);
        let alert = AlertRef {
            alert_id: &row.alert_id,
            occurrence: row.state.occurrence,
        };
        let turn = slack.pacer.update_ready(channel).await;
        let result = slack
            .api
            .update(channel, ts, text, &blocks, Some(&alert))
            .await;
        slack.pacer.answered(turn);
        match result {
            Ok(_) => {
                let actor = row.state.actor.as_ref().map(|a| a.id.as_str());
                tracing::info!(alert_id = %row.alert_id, state = row.state.kind.as_str(), actor, "alert state shown");
                self.mark_shown(row).await;
                Shown::Done
            }
            Err(e) => match e.class() {
                ErrorClass::Permanent => {
                    tracing::warn!(alert_id = %row.alert_id, error = %e, "Slack refused to show the alert's state on its message; giving up");
                    self.mark_shown(row).await;
                    Shown::GaveUp
                }
                ErrorClass::Transient { retry_after } => {
                    tracing::info!(alert_id = %row.alert_id, error = %e, "alert state not shown yet; trying again later");
                    Shown::Later(retry_after)
                }
                ErrorClass::Auth => {
                    tracing::warn!(alert_id = %row.alert_id, error = %e, "cannot show the alert's state: Slack refused the token");
                    Shown::Later(None)
                }
            },
        }
    }

    async fn mark_shown(&self, row: &StateRow) {
        if let Err(e) = self.store.mark_shown(&row.alert_id, row.version).await {
            // Shown again by the sweep: the same edit, harmless.
            tracing::warn!(alert_id = %row.alert_id, error = %e, "cannot record the alert state as shown");
        }
    }

    /// Shows every state not known to be on its message, oldest change
    /// first; stops at the first Slack asks to wait for. Returns how many.
    pub async fn show_pending(&self) -> Result<usize, LedgerError> {
        let mut shown = 0;
        for row in self.store.unshown(SWEEP_BATCH).await? {
            match self.show(&row, Show::Sweep).await {
                Shown::Done => shown += 1,
                Shown::Later(_) => break,
                Shown::Skipped | Shown::GaveUp => {}
            }
        }
        Ok(shown)
    }

    pub(super) async fn run_show_sweep(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let swept = tokio::select! {
                swept = self.show_pending() => swept,
                _ = stop.cancelled() => return,
            };
            match swept {
                Ok(0) => {}
                Ok(n) => tracing::info!(shown = n, "alert states shown late"),
                Err(e) => tracing::warn!(error = %e, "cannot look for alert states not shown"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_waits_out_short_limits_and_leaves_long_ones_to_the_sweep() {
        let after = |outcome, attempt| inline_retry(outcome, attempt);
        let secs = Duration::from_secs;
        assert_eq!(after(Shown::Later(Some(secs(2))), 1), Some(secs(2)));
        assert_eq!(after(Shown::Later(None), 2), Some(INLINE_RETRY));
        assert_eq!(after(Shown::Later(Some(secs(30))), 1), None, "too long");
        assert_eq!(after(Shown::Later(Some(secs(1))), INLINE_ATTEMPTS), None);
        for done in [Shown::Done, Shown::Skipped, Shown::GaveUp] {
            assert_eq!(after(done, 1), None);
        }
    }
}
