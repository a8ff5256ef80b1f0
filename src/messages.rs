//! Records exchanged between stages, in the field names of their Avro
//! schemas (`config/schemas/*.avsc`).

use serde::{Deserialize, Serialize};

/// One Slack message to deliver; the value of `slack-messages`, keyed by
/// `channel_id` so one channel's messages share one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlackMessage {
    pub alert_id: String,
    pub channel_id: String,
    /// Fallback / notification text.
    pub text: String,
    /// Block Kit blocks as a JSON array, serialized.
    pub blocks: String,
    /// Epoch milliseconds of the source record: deterministic, so a record
    /// processed twice yields identical bytes.
    pub created_at: i64,
    pub pipeline: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// What the alert says now: `resolved` edits its message to the
    /// resolved content and replies in its thread; it never posts anew.
    #[serde(default)]
    pub status: AlertStatus,
    /// How a change of content reaches Slack.
    #[serde(default)]
    pub updates: UpdateMode,
    /// Where a new occurrence of a known alert goes.
    #[serde(default)]
    pub recurrence: RecurrenceMode,
    /// What a `resolved` record of an alert never posted does.
    #[serde(default)]
    pub resolved_unposted: ResolvedUnposted,
    /// Alerts with the same key in one channel within `group_window_ms`
    /// of the group's first alert share one summary message, each alert a
    /// reply in its thread; `None`: not grouped.
    #[serde(default)]
    pub group_key: Option<String>,
    /// The group's window; 0: not grouped.
    #[serde(default)]
    pub group_window_ms: i64,
}

/// An alert's lifecycle status as the event tells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    #[default]
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertStatus> {
        match s {
            "firing" => Some(AlertStatus::Firing),
            "resolved" => Some(AlertStatus::Resolved),
            _ => None,
        }
    }
}

/// How a posted alert's new content (same status) reaches Slack: an edit
/// of its message, a reply in its thread, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMode {
    #[default]
    Edit,
    Thread,
    EditAndThread,
}

impl UpdateMode {
    /// The name serde gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateMode::Edit => "edit",
            UpdateMode::Thread => "thread",
            UpdateMode::EditAndThread => "edit_and_thread",
        }
    }

    pub fn edits(self) -> bool {
        matches!(self, UpdateMode::Edit | UpdateMode::EditAndThread)
    }

    pub fn replies(self) -> bool {
        matches!(self, UpdateMode::Thread | UpdateMode::EditAndThread)
    }
}

/// Where a new occurrence of a known alert goes: a new top-level message,
/// or a reply in the previous occurrence's thread, also sent to the
/// channel (`reply_broadcast`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecurrenceMode {
    #[default]
    New,
    Thread,
}

impl RecurrenceMode {
    /// The name serde gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecurrenceMode::New => "new",
            RecurrenceMode::Thread => "thread",
        }
    }
}

/// What a `resolved` record of an alert that was never posted does:
/// nothing (answered `resolved_unposted`), or a post of the resolved
/// message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolvedUnposted {
    #[default]
    Skip,
    Post,
}

impl ResolvedUnposted {
    /// The name serde gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedUnposted::Skip => "skip",
            ResolvedUnposted::Post => "post",
        }
    }
}

impl SlackMessage {
    /// The group this message joins, if its pipeline groups alerts.
    pub fn group(&self) -> Option<(&str, i64)> {
        match &self.group_key {
            Some(key) if self.group_window_ms > 0 && !key.is_empty() => {
                Some((key.as_str(), self.group_window_ms))
            }
            _ => None,
        }
    }

    /// The record as its codec takes it: what `to_json(self)` (serde's
    /// `to_value`) gives, built directly. The members are listed in name
    /// order, so the map is built from them in one pass (inserted one by
    /// one, each insert compared names along the tree).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        let text = |s: &str| Value::from(s);
        let group_key = self.group_key.as_deref().map_or(Value::Null, text);
        let members: [(&str, Value); 15] = [
            ("alertId", text(&self.alert_id)),
            ("blocks", text(&self.blocks)),
            ("channelId", text(&self.channel_id)),
            ("createdAt", Value::from(self.created_at)),
            ("groupKey", group_key),
            ("groupWindowMs", Value::from(self.group_window_ms)),
            ("pipeline", text(&self.pipeline)),
            ("recurrence", text(self.recurrence.as_str())),
            ("resolvedUnposted", text(self.resolved_unposted.as_str())),
            ("sourceOffset", Value::from(self.source_offset)),
            ("sourcePartition", Value::from(self.source_partition)),
            ("sourceTopic", text(&self.source_topic)),
            ("status", text(self.status.as_str())),
            ("text", text(&self.text)),
            ("updates", text(self.updates.as_str())),
        ];
        Value::Object(
            members
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
        )
    }

    pub fn from_json(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(value)
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOutcome {
    Posted,
    Updated,
    Duplicate,
    Expired,
    Failed,
    /// A `resolved` record for an alert that was never posted: nothing
    /// was sent.
    #[serde(rename = "resolved_unposted")]
    ResolvedUnposted,
}

/// The outcome of one delivery; the value of `slack-responses`, keyed by
/// alert id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlackResponse {
    pub alert_id: String,
    pub channel_id: String,
    pub ok: bool,
    pub outcome: DeliveryOutcome,
    pub ts: Option<String>,
    pub error: Option<String>,
    pub posted_at: i64,
    pub attempts: i32,
    pub http_status: Option<i32>,
    pub source_partition: i32,
    pub source_offset: i64,
    /// The thread the alert's replies go to: its first message's ts (the
    /// alert's own message, or the earlier occurrence it recurred under).
    #[serde(default)]
    pub thread_ts: Option<String>,
    /// The reply this record added to the thread, if it added one.
    #[serde(default)]
    pub reply_ts: Option<String>,
}

/// A button click on an alert; the value of `slack-interactions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlackInteraction {
    pub alert_id: String,
    pub action_id: String,
    pub value: Option<String>,
    pub user_id: String,
    pub user_name: Option<String>,
    pub channel_id: Option<String>,
    pub message_ts: Option<String>,
    pub received_at: i64,
    /// The payload as Slack sent it.
    pub payload: String,
}

/// Serializes a record for a codec; these types always serialize.
pub fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SlackMessage::to_json` gives what serde gives, in the same member
    /// order, for every variant of every mode and odd field values.
    #[test]
    fn a_message_is_the_record_serde_would_make() {
        let statuses = [AlertStatus::Firing, AlertStatus::Resolved];
        let updates = [
            UpdateMode::Edit,
            UpdateMode::Thread,
            UpdateMode::EditAndThread,
        ];
        let recurrences = [RecurrenceMode::New, RecurrenceMode::Thread];
        let unposted = [ResolvedUnposted::Skip, ResolvedUnposted::Post];
        let mut n = 0i64;
        for status in statuses {
            for update in updates {
                for recurrence in recurrences {
                    for resolved_unposted in unposted {
                        for group_key in [None, Some(""), Some("org-1 \"é\"")] {
                            n += 1;
                            let message = SlackMessage {
                                alert_id: format!("a-{n}"),
                                channel_id: "C1".into(),
                                text: "t \u{1} ü".into(),
                                blocks: "[{\"type\":\"divider\"}]".into(),
                                created_at: if n % 2 == 0 { -n } else { i64::MAX - n },
                                pipeline: String::new(),
                                source_topic: "in".into(),
                                source_partition: if n % 3 == 0 { i32::MIN } else { 7 },
                                source_offset: n * 1_000_000_007,
                                status,
                                updates: update,
                                recurrence,
                                resolved_unposted,
                                group_key: group_key.map(String::from),
                                group_window_ms: n % 4,
                            };
                            let serde = to_json(&message);
                            let direct = message.to_json();
                            assert_eq!(direct, serde);
                            assert_eq!(direct.to_string(), serde.to_string());
                        }
                    }
                }
            }
        }
    }
}
