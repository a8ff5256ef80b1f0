//! Replying in the alert's thread (resolved notice, new content).

use tokio_util::sync::CancellationToken;

use super::calls::Called;
use super::{Attempt, DeliverError, Deliverer};
use crate::notify::decision::ReplyKind;
use crate::slack::ReplyRef;

impl Deliverer {
    /// Replies in the alert's thread. Like a post, the reply is noted in
    /// the ledger (`reply_pending`) before Slack sees it, so an unknown
    /// answer or a crash is looked up before replying again; once made it
    /// is recorded (`reply_key`) and the loop decides what is left.
    pub(super) async fn reply(
        &self,
        attempt: &mut Attempt<'_>,
        thread: &str,
        key: &str,
        kind: ReplyKind,
        stop: &CancellationToken,
    ) -> Result<(), DeliverError> {
        let message = attempt.message;
        let channel = attempt.entry.channel_id.clone();
        attempt.entry.reply_pending = Some(key.to_owned());
        self.save(&attempt.entry, false).await?;
        let turn = self.paced(&attempt.entry, &channel).await?;
        if stop.is_cancelled() {
            attempt.entry.reply_pending = None;
            self.save(&attempt.entry, true).await?;
            return Err(DeliverError::Cancelled);
        }
        attempt.sends += 1;
        let reply = ReplyRef {
            alert_id: &message.alert_id,
            occurrence: attempt.entry.occurrence,
            key,
        };
        // A resolved notice is short: the message's text. New content is
        // the message itself, minus its buttons: they act on the alert,
        // whose message is the one at the top of the thread.
        let blocks = match kind {
            ReplyKind::Resolved => None,
            ReplyKind::Update => reply_blocks(&message.blocks),
        };
        let result = self
            .timed(
                self.slack
                    .reply(&channel, thread, &message.text, blocks.as_deref(), &reply),
            )
            .await;
        self.pacer.answered(turn);
        match self.called(result, &mut attempt.unknown_errors) {
            Called::Done(posted) => {
                let entry = &mut attempt.entry;
                entry.reply_pending = None;
                entry.reply_key = Some(key.to_owned());
                entry.reply_ts = Some(posted.ts.clone());
                attempt.replied = Some(posted.ts);
                attempt.http_status = Some(200);
                self.save(&attempt.entry, false).await
            }
            Called::Refused(e) => {
                // The alert is in Slack; only this reply is not. Recorded
                // as made, so it is not tried again for this content.
                tracing::warn!(alert_id = %message.alert_id, reply = key, error = %e, "Slack refused the thread reply");
                let entry = &mut attempt.entry;
                entry.reply_pending = None;
                entry.reply_key = Some(key.to_owned());
                entry.reply_ts = None;
                attempt.refused_reply = Some(e);
                self.save(&attempt.entry, false).await
            }
            Called::Auth(e) => {
                // Nothing was posted; the next run decides afresh.
                attempt.entry.reply_pending = None;
                self.save(&attempt.entry, true).await?;
                Err(DeliverError::Auth(e))
            }
            Called::Uncertain(e) => {
                self.metrics.ambiguous.inc();
                tracing::warn!(alert_id = %message.alert_id, reply = key, error = %e, "Slack's answer to a reply is unknown; looking before replying again");
                // Still pending: the next decision looks in the thread.
                attempt.failures += 1;
                let delay = self.settings.reconcile_delay;
                self.wait_holding(&attempt.entry, delay, stop).await
            }
            Called::Later(after) => {
                // Certainly not sent.
                attempt.entry.reply_pending = None;
                self.retry_later(attempt, after, stop).await.map(drop)
            }
        }
    }
}

/// A message's blocks as a thread reply: without `actions` blocks (their
/// buttons belong on the alert's own message); `None` when nothing is left
/// or the blocks are not a JSON array.
fn reply_blocks(blocks: &str) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_str(blocks).ok()?;
    let kept: Vec<&serde_json::Value> = parsed
        .as_array()?
        .iter()
        .filter(|block| block["type"] != "actions")
        .collect();
    (!kept.is_empty())
        .then(|| serde_json::Value::from(kept.into_iter().cloned().collect::<Vec<_>>()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_the_blocks_without_buttons() {
        let blocks = r#"[{"type":"header","text":{"type":"plain_text","text":"x"}},
            {"type":"actions","elements":[]},{"type":"section","text":{"type":"mrkdwn","text":"y"}}]"#;
        let reply: serde_json::Value =
            serde_json::from_str(&reply_blocks(blocks).unwrap_or_default()).unwrap_or_default();
        let types: Vec<&str> = reply
            .as_array()
            .map(|b| b.iter().filter_map(|b| b["type"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(types, ["header", "section"]);
        assert_eq!(reply_blocks(r#"[{"type":"actions","elements":[]}]"#), None);
        assert_eq!(reply_blocks("not json"), None);
    }
}
