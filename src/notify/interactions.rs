//! `POST /slack/interactions`: Slack's interactivity requests (button
//! clicks), accepted only when Slack's signature verifies
//! ([`crate::slack::signing`]). A verified click becomes a
//! `SlackInteraction` record; Acknowledge, Resolve and the Snooze menu also
//! change the alert's state ([`super::state`]): in the ledger, on its
//! message and on the alert-state topic.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rdkafka::producer::FutureProducer;
use serde_json::Value;

use super::grouping::{GroupLedger, GROUP_PREFIX};
use super::state::service::{describe, Applied};
use super::state::store::Place;
use super::state::{action_for, Actor, AlertStates};
use crate::avro::{Codec, KeyCodec};
use crate::config::Secret;
use crate::kafka::{enqueue, OutRecord, StageContext};
use crate::messages::SlackInteraction;
use crate::metrics::NotifyMetrics;
use crate::slack::signing::{verify, ReplayGuard, SignatureError};

pub use super::state::ACKNOWLEDGE_ACTION;

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

/// The value a click carries: a button's `value`, or the option chosen in
/// a menu (`static_select` sends `selected_option.value` and no `value`).
fn action_value(action: &Value) -> Option<&str> {
    action["value"]
        .as_str()
        .or_else(|| action["selected_option"]["value"].as_str())
}

/// The click as a record, from a `block_actions` payload.
pub fn interaction_from_payload(payload: &Value, now_ms: i64) -> Option<SlackInteraction> {
    let action = payload["actions"].get(0)?;
    // Only a button's value is the alert id (a menu's is the choice). A
    // group's summary names its group in its metadata instead.
    let metadata = &payload["message"]["metadata"]["event_payload"];
    let alert_id = metadata["alert_id"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            metadata["group_id"]
                .as_str()
                .map(|id| format!("{GROUP_PREFIX}{id}"))
        })
        .or_else(|| action["value"].as_str().map(str::to_owned))?;
    Some(SlackInteraction {
        alert_id,
        action_id: action["action_id"].as_str().unwrap_or_default().to_owned(),
        value: action_value(action).map(str::to_owned),
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

/// A click on a group's summary: the group's id, and the value the click's
/// action reads (the summary's snooze options are `group:<id>|4h`).
pub fn group_click<'a>(
    alert_id: &'a str,
    value: Option<&'a str>,
) -> Option<(&'a str, Option<&'a str>)> {
    let group_id = alert_id.strip_prefix(GROUP_PREFIX)?;
    let value = value.map(|v| match v.strip_prefix(GROUP_PREFIX) {
        Some(rest) => rest.split_once('|').map_or(rest, |(_, choice)| choice),
        None => v,
    });
    Some((group_id, value))
}

/// Where the clicked message is, for an alert with no recorded state yet
/// (posted before states were kept).
pub fn place_from_payload(payload: &Value, interaction: &SlackInteraction) -> Place {
    let message = &payload["message"];
    Place {
        channel_id: interaction.channel_id.clone(),
        message_ts: interaction.message_ts.clone(),
        pipeline: String::new(),
        // A group's summary names its group key.
        group_key: message["metadata"]["event_payload"]["group_key"]
            .as_str()
            .map(str::to_owned),
        text: message["text"].as_str().map(str::to_owned),
        blocks: message["blocks"]
            .is_array()
            .then(|| message["blocks"].to_string()),
    }
}

pub struct InteractionState {
    pub signing_secret: Option<Secret>,
    pub producer: FutureProducer<StageContext>,
    pub topic: String,
    pub codec: Arc<Codec>,
    /// Writes the alert id as the record key.
    pub key_codec: Arc<KeyCodec>,
    pub replay: ReplayGuard,
    pub metrics: NotifyMetrics,
    /// Changes alert states on Acknowledge, Resolve and Snooze.
    pub states: Option<Arc<AlertStates>>,
    /// A group summary's clicks act on every member of the group.
    pub groups: Option<GroupLedger>,
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
    let encoded = match state
        .codec
        .encode_record(&interaction, interaction.payload.len())
        .await
    {
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
    let actor = Actor {
        id: interaction.user_id.clone(),
        name: interaction.user_name.clone(),
    };
    let Some(states) = &state.states else {
        return (StatusCode::OK, "");
    };
    let fallback = place_from_payload(&payload, &interaction);
    let (targets, value) = match group_click(&interaction.alert_id, interaction.value.as_deref()) {
        Some((group_id, value)) => {
            let Some(groups) = &state.groups else {
                return (StatusCode::OK, "");
            };
            let members = match groups.members(group_id).await {
                Ok(members) => members,
                Err(e) => {
                    tracing::error!(group_id, error = %e, "cannot read the group's members");
                    return (StatusCode::SERVICE_UNAVAILABLE, "try again\n");
                }
            };
            // Members show their state on their own replies; the summary
            // (the clicked message) shows the group's.
            let mut targets: Vec<(String, Option<&Place>)> =
                members.into_iter().map(|m| (m.alert_id, None)).collect();
            targets.push((interaction.alert_id.clone(), Some(&fallback)));
            (targets, value)
        }
        None => (
            vec![(interaction.alert_id.clone(), Some(&fallback))],
            interaction.value.as_deref(),
        ),
    };
    let Some(action) = action_for(&interaction.action_id, value, actor) else {
        return (StatusCode::OK, "");
    };
    for (alert_id, place) in targets {
        let ids = [alert_id];
        for applied in states.act(&ids, &action, now_ms, place).await {
            match applied {
                Ok(applied) => {
                    let reason = match &applied {
                        Applied::Unchanged(reason, _) => Some(format!("{reason:?}")),
                        Applied::Changed(_) => None,
                    };
                    tracing::info!(alert_id = %ids[0], user = %interaction.user_id,
                        action = %interaction.action_id, state = describe(&applied), reason, "alert state click");
                }
                Err(e) => {
                    tracing::error!(alert_id = %ids[0], error = %e, "cannot change the alert's state");
                    return (StatusCode::SERVICE_UNAVAILABLE, "try again\n");
                }
            }
        }
    }
    (StatusCode::OK, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_summary_click_names_its_group_and_the_choice() {
        let payload = json!({"type": "block_actions", "user": {"id": "U1"},
            "message": {"ts": "1.2", "metadata": {"event_type": "alertsvc_group",
                        "event_payload": {"group_id": "g7", "group_key": "org-1"}}},
            "actions": [{"type": "static_select", "action_id": "alertsvc_snooze",
                         "selected_option": {"value": "group:g7|4h"}}]});
        let click = interaction_from_payload(&payload, 5).unwrap();
        assert_eq!(click.alert_id, "group:g7");
        assert_eq!(
            group_click(&click.alert_id, click.value.as_deref()),
            Some(("g7", Some("4h")))
        );
        assert_eq!(
            group_click("group:g7", Some("group:g7")),
            Some(("g7", Some("g7")))
        );
        assert_eq!(group_click("A-1", Some("4h")), None);
    }

    #[test]
    fn a_menu_choice_is_the_value_and_not_the_alert_id() {
        let payload = json!({"type": "block_actions", "user": {"id": "U1"},
            "container": {"message_ts": "1.2", "channel_id": "C1"},
            "message": {"ts": "1.2", "text": "t", "blocks": [{"type": "divider"}],
                        "metadata": {"event_payload": {"alert_id": "A-1"}}},
            "actions": [{"type": "static_select", "action_id": "alertsvc_snooze",
                         "selected_option": {"text": {"type": "plain_text", "text": "4 hours"}, "value": "4h"}}]});
        let i = interaction_from_payload(&payload, 5).unwrap();
        assert_eq!(
            (
                i.alert_id.as_str(),
                i.action_id.as_str(),
                i.value.as_deref()
            ),
            ("A-1", "alertsvc_snooze", Some("4h"))
        );
        let place = place_from_payload(&payload, &i);
        assert_eq!(
            place,
            Place {
                channel_id: Some("C1".into()),
                message_ts: Some("1.2".into()),
                pipeline: String::new(),
                group_key: None,
                text: Some("t".into()),
                blocks: Some(r#"[{"type":"divider"}]"#.into()),
            }
        );
        let no_metadata = json!({"user": {"id": "U1"},
            "actions": [{"type": "static_select", "action_id": "alertsvc_snooze",
                         "selected_option": {"value": "4h"}}]});
        assert_eq!(
            interaction_from_payload(&no_metadata, 5),
            None,
            "4h is no alert id"
        );
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
