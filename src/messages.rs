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
