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
}

impl SlackMessage {
    pub fn to_json(&self) -> serde_json::Value {
        to_json(self)
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
