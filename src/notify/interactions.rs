//! `POST /slack/interactions`: Slack's interactivity requests (button
//! clicks), accepted only when Slack's signature verifies
//! ([`crate::slack::signing`]). A verified
//! click becomes a `SlackInteraction` record; "Acknowledge" also updates the
//! message to say who acknowledged it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};

use crate::avro::{Codec, KeyCodec};
use crate::config::Secret;
use crate::kafka::{enqueue, OutRecord, StageContext};
use crate::messages::{to_json, SlackInteraction};
use crate::metrics::NotifyMetrics;
use crate::slack::signing::{verify, ReplayGuard, SignatureError};
use crate::slack::{AlertRef, SlackApi};

pub const ACKNOWLEDGE_ACTION: &str = "alertsvc_acknowledge";
const ACTIONS_BLOCK_ID: &str = "alertsvc_actions";

/// The payload as stored in `SlackInteraction.payload`: Slack's own JSON
/// minus every `token` field. That is Slack's deprecated verification token,
/// a shared secret of the app that requests are no longer checked against
/// (the signature is) and that nobody reading the topic needs. What stays
/// (`response_url`, `trigger_id`, user and team ids) is described in the
/// README.
pub fn stored_payload(payload: &Value) -> String {
    let mut payload = payload.clone();
    drop_tokens(&mut payload);
    payload.to_string()
}

fn drop_tokens(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("token");
            map.values_mut().for_each(drop_tokens);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_tokens),
        _ => {}
    }
}

/// The click as a record, from a `block_actions` payload.
pub fn interaction_from_payload(payload: &Value, now_ms: i64) -> Option<SlackInteraction> {
    let action = payload["actions"].get(0)?;
    let alert_id = payload["message"]["metadata"]["event_payload"]["alert_id"]
        .as_str()
        .or_else(|| action["value"].as_str())?;
    Some(SlackInteraction {
        alert_id: alert_id.to_owned(),
        action_id: action["action_id"].as_str().unwrap_or_default().to_owned(),
        value: action["value"].as_str().map(str::to_owned),
        user_id: payload["user"]["id"].as_str()?.to_owned(),
        user_name: payload["user"]["username"]
            .as_str()
            .or_else(|| payload["user"]["name"].as_str())
            .map(str::to_owned),
        channel_id: payload["channel"]["id"]
            .as_str()
            .or_else(|| payload["container"]["channel_id"].as_str())
            .map(str::to_owned),
        message_ts: payload["container"]["message_ts"]
            .as_str()
            .or_else(|| payload["message"]["ts"].as_str())
            .map(str::to_owned),
        received_at: now_ms,
        payload: stored_payload(payload),
    })
}

/// The message's blocks after an acknowledgement: the actions block gives
/// way to a line saying who acknowledged it.
pub fn acknowledged_blocks(blocks: &Value, user_id: &str) -> Value {
    let mut kept: Vec<Value> = blocks
        .as_array()
        .map(|b| {
            b.iter()
                .filter(|block| block["block_id"] != ACTIONS_BLOCK_ID && block["type"] != "actions")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    kept.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": format!(":white_check_mark: Acknowledged by <@{user_id}>")}
    ]}));
    Value::Array(kept)
}

pub struct InteractionState {
    pub signing_secret: Option<Secret>,
    pub producer: FutureProducer<StageContext>,
    pub topic: String,
    pub codec: Arc<Codec>,
    /// Writes the alert id as the record key.
    pub key_codec: Arc<KeyCodec>,
    pub slack: Option<Arc<SlackApi>>,
    pub replay: ReplayGuard,
    pub metrics: NotifyMetrics,
}

fn now() -> (i64, i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() as i64, now.as_millis() as i64)
}

pub async fn handle(
    State(state): State<Arc<InteractionState>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let reject = |reason: &str| {
        state
            .metrics
            .interactions
            .with_label_values(&["rejected"])
            .inc();
        tracing::warn!(reason, "interaction rejected");
        (StatusCode::UNAUTHORIZED, "invalid request signature\n")
    };
    let Some(secret) = &state.signing_secret else {
        return reject("no signing secret configured");
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
    ) else {
        return reject(&SignatureError::Missing.to_string());
    };
    let (now_secs, now_ms) = now();
    if let Err(e) = verify(secret.expose(), timestamp, signature, &body, now_secs) {
        return reject(&e.to_string());
    }
    if !state
        .replay
        .first_use(signature, timestamp.parse().unwrap_or_default(), now_secs)
    {
        return reject(&SignatureError::Replayed.to_string());
    }
    let raw = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Ok(payload) = serde_json::from_str::<Value>(&raw) else {
        return (StatusCode::BAD_REQUEST, "payload is not JSON\n");
    };
    let Some(interaction) = interaction_from_payload(&payload, now_ms) else {
        // Signed, but not a button click on an alert: acknowledge and ignore.
        return (StatusCode::OK, "");
    };
    let encoded = match state.codec.encode(&to_json(&interaction)).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode interaction");
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n");
        }
    };
    let key = match state.key_codec.encode_str(&interaction.alert_id).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the interaction's key (its alert id)");
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n");
        }
    };
    let record = OutRecord {
        topic: state.topic.clone(),
        key: Some(key),
        payload: Some(encoded),
        headers: None,
    };
    // Slack wants an answer within 3 s; it retries when it gets none.
    let produced = tokio::time::timeout(std::time::Duration::from_millis(2500), async {
        enqueue(&state.producer, &record)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|_| "cancelled".to_owned())?
            .map_err(|(e, _)| e.to_string())
    })
    .await;
    if !matches!(produced, Ok(Ok(_))) {
        tracing::error!(?produced, "interaction not stored");
        return (StatusCode::SERVICE_UNAVAILABLE, "try again\n");
    }
    state
        .metrics
        .interactions
        .with_label_values(&["accepted"])
        .inc();
    if interaction.action_id == ACKNOWLEDGE_ACTION {
        if let (Some(slack), Some(channel), Some(ts)) = (
            state.slack.clone(),
            interaction.channel_id.clone(),
            interaction.message_ts.clone(),
        ) {
            let blocks = acknowledged_blocks(&payload["message"]["blocks"], &interaction.user_id);
            let text = payload["message"]["text"]
                .as_str()
                .unwrap_or("Alert")
                .to_owned();
            let alert_id = interaction.alert_id.clone();
            // The edit keeps the message's metadata, occurrence included,
            // so a later reconciliation still finds it.
            let occurrence = payload["message"]["metadata"]["event_payload"]["occurrence"]
                .as_str()
                .and_then(|o| o.parse().ok())
                .unwrap_or(1);
            let user = interaction.user_id.clone();
            tokio::spawn(async move {
                let alert = AlertRef {
                    alert_id: &alert_id,
                    occurrence,
                };
                match slack
                    .update(&channel, &ts, &text, &blocks.to_string(), Some(&alert))
                    .await
                {
                    Ok(_) => tracing::info!(%alert_id, %user, "alert acknowledged"),
                    Err(e) => {
                        tracing::warn!(%alert_id, error = %e, "cannot mark the alert acknowledged")
                    }
                }
            });
        }
    }
    (StatusCode::OK, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgement_replaces_the_actions_block() {
        let blocks = json!([{"type": "header", "text": {"type": "plain_text", "text": "h"}},
                            {"type": "actions", "block_id": "alertsvc_actions", "elements": []}]);
        let after = acknowledged_blocks(&blocks, "U1");
        assert_eq!(after.as_array().map(Vec::len), Some(2));
        assert_eq!(after[1]["type"], "context");
        assert!(after[1]["elements"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("<@U1>"));
    }

    #[test]
    fn block_actions_payload_becomes_an_interaction() {
        let payload = json!({"type": "block_actions", "user": {"id": "U1", "username": "ada"},
            "channel": {"id": "C1"}, "container": {"message_ts": "1.2"},
            "message": {"ts": "1.2", "metadata": {"event_type": "alertsvc_alert", "event_payload": {"alert_id": "A-1"}}},
            "actions": [{"action_id": "alertsvc_acknowledge", "value": "A-1"}]});
        let i = interaction_from_payload(&payload, 5).unwrap();
        assert_eq!(
            (
                i.alert_id.as_str(),
                i.user_id.as_str(),
                i.channel_id.as_deref(),
                i.message_ts.as_deref()
            ),
            ("A-1", "U1", Some("C1"), Some("1.2"))
        );
        assert_eq!(i.action_id, ACKNOWLEDGE_ACTION);
    }

    #[test]
    fn stored_payload_keeps_everything_but_the_verification_token() {
        let payload = json!({"type": "block_actions", "token": "legacy-secret",
            "team": {"id": "T1", "domain": "acme"}, "user": {"id": "U1", "team_id": "T1"},
            "trigger_id": "1.2.abc", "response_url": "https://hooks.slack.test/actions/x",
            "container": {"message_ts": "1.2"},
            "message": {"ts": "1.2", "metadata": {"event_payload": {"alert_id": "A-1"}}},
            "actions": [{"action_id": "alertsvc_acknowledge", "value": "A-1",
                         "token": "nested-secret"}]});
        let i = interaction_from_payload(&payload, 5).unwrap();
        assert!(!i.payload.contains("secret"), "{}", i.payload);
        let stored: Value = serde_json::from_str(&i.payload).unwrap();
        assert!(stored.get("token").is_none());
        assert!(stored["actions"][0].get("token").is_none());
        let mut expected = payload.clone();
        expected.as_object_mut().map(|m| m.remove("token"));
        expected["actions"][0]
            .as_object_mut()
            .map(|m| m.remove("token"));
        assert_eq!(stored, expected, "nothing else is dropped");
        assert_eq!(stored["response_url"], "https://hooks.slack.test/actions/x");
        assert_eq!(stored["trigger_id"], "1.2.abc");
    }
}
