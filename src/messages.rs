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
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_json(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(value)
    }
}
