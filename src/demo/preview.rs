//! The preview page: the Slack stand-in's messages rendered from their
//! Block Kit, newest first, refreshing itself. Its Acknowledge button goes
//! through notify's real `/slack/interactions` endpoint, signed the way
//! Slack signs, so the message updates exactly as it would in Slack.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::notify::interactions::sign;
use crate::slack::fake::FakeSlack;

const PAGE: &str = include_str!("preview.html");

/// The demo's clicker, as Slack would name them.
const DEMO_USER: &str = "U0DEMO";

#[derive(Clone)]
struct Preview {
    slack: Arc<FakeSlack>,
    interactions_url: String,
    signing_secret: String,
    http: reqwest::Client,
}

/// Serves the page until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    slack: Arc<FakeSlack>,
    notify_addr: SocketAddr,
    signing_secret: String,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let notify_host = if notify_addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], notify_addr.port()))
    } else {
        notify_addr
    };
    let state = Preview {
        slack,
        interactions_url: format!("http://{notify_host}/slack/interactions"),
        signing_secret,
        http: reqwest::Client::new(),
    };
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/messages", get(messages))
        .route("/api/acknowledge", post(acknowledge))
        .with_state(state);
    let (bound, _) = crate::http::serve(addr, router, shutdown).await?;
    Ok(bound)
}

/// Every message the channel shows (top-level and broadcast replies),
/// newest first, each with the replies in its thread, oldest first.
async fn messages(State(preview): State<Preview>) -> Json<Value> {
    let all = preview.slack.messages();
    let replies = |m: &crate::slack::fake::FakeMessage| -> Vec<Value> {
        all.iter()
            .filter(|r| r.channel == m.channel && r.thread_ts.as_deref() == Some(m.ts.as_str()))
            .map(|r| json!({"ts": r.ts, "text": r.text, "broadcast": r.reply_broadcast}))
            .collect()
    };
    Json(Value::Array(
        all.iter()
            .rev()
            .filter(|m| m.in_channel())
            .map(|m| {
                json!({
                    "channel": m.channel,
                    "dmUser": preview.slack.dm_user(&m.channel),
                    "ts": m.ts,
                    "text": m.text,
                    "blocks": m.blocks,
                    "alertId": m.alert_id(),
                    "edits": m.edits,
                    "threadTs": m.thread_ts,
                    "replies": replies(m),
                })
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
struct Click {
    channel: String,
    ts: String,
    action_id: String,
    value: String,
    /// A menu choice (`static_select`): Slack sends it as
    /// `selected_option`, not `value`.
    #[serde(default)]
    menu: bool,
}

/// A button click, delivered to notify as Slack would deliver it.
async fn acknowledge(
    State(preview): State<Preview>,
    Json(click): Json<Click>,
) -> impl IntoResponse {
    let Some(message) = preview
        .slack
        .messages()
        .into_iter()
        .find(|m| m.channel == click.channel && m.ts == click.ts)
    else {
        return (StatusCode::NOT_FOUND, "no such message".to_owned());
    };
    let action = if click.menu {
        json!({"type": "static_select", "action_id": click.action_id, "block_id": "alertsvc_actions",
               "selected_option": {"text": {"type": "plain_text", "text": click.value}, "value": click.value}})
    } else {
        json!({"type": "button", "action_id": click.action_id,
               "block_id": "alertsvc_actions", "value": click.value})
    };
    let payload = json!({
        "type": "block_actions",
        "user": {"id": DEMO_USER, "username": "demo", "team_id": "T0DEMO"},
        "channel": {"id": message.channel, "name": message.channel},
        "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel},
        "message": {"type": "message", "ts": message.ts, "text": message.text,
                    "blocks": message.blocks, "metadata": message.metadata},
        "actions": [action],
    });
    let body = format!(
        "payload={}",
        form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
    );
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = sign(&preview.signing_secret, &timestamp, body.as_bytes());
    let sent = preview
        .http
        .post(&preview.interactions_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", timestamp)
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("notify did not answer: {e}"),
        ),
    }
}
