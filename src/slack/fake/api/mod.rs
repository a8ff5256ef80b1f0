//! The Web API methods of the fake. Bad input gets the error code Slack
//! would give it, never a panic: a fake that crashes on what notify sends
//! would hide the bug it should show.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::faults::PostAnswer;
use super::{dm_channel, lock, FakeMessage, Shared, SlackState};
use crate::slack::blockkit;

mod auth;
mod chat;
mod conversations;

pub(super) fn router(state: Shared) -> Router {
    let history = |call: Call| async move { call.answer(conversations::history) };
    let replies = |call: Call| async move { call.answer(conversations::replies) };
    Router::new()
        .route("/api/chat.postMessage", post(chat::post_message))
        .route(
            "/api/chat.update",
            post(|call: Call| async move { call.answer(chat::update) }),
        )
        .route("/api/conversations.history", get(history).post(history))
        .route("/api/conversations.replies", get(replies).post(replies))
        .route(
            "/api/conversations.open",
            post(|call: Call| async move { call.answer(conversations::open) }),
        )
        .route("/api/auth.test", get(auth::auth_test).post(auth::auth_test))
        .with_state(state)
}

fn slack_ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// An answer already written as JSON.
fn slack_ok_bytes(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn slack_error(code: &str) -> Response {
    slack_ok(json!({"ok": false, "error": code}))
}

/// Why a call is refused, answered as Slack answers it.
enum Refusal {
    Code(&'static str),
    RateLimited { retry_after_secs: u64 },
}

impl From<&'static str> for Refusal {
    fn from(code: &'static str) -> Self {
        Refusal::Code(code)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Code(code) => slack_error(code),
            Refusal::RateLimited { retry_after_secs } => rate_limited(retry_after_secs),
        }
    }
}

/// A method's arguments, or Slack's code for a request it cannot read.
type Args = Result<Value, &'static str>;

/// A call past the [`gate`], with its arguments as a GET's query or a
/// POST's form or JSON body, whichever way it came. Unreadable arguments
/// are kept for the method to refuse in its own order (a rate limit comes
/// before them, as in Slack).
struct Call {
    state: Shared,
    args: Args,
}

impl Call {
    /// The answer of a method that needs nothing but its arguments.
    fn answer(self, method: fn(&Shared, Args) -> Result<Value, Refusal>) -> Response {
        match method(&self.state, self.args) {
            Ok(body) => slack_ok(body),
            Err(refusal) => refusal.into_response(),
        }
    }
}

impl FromRequest<Shared> for Call {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let args = if matches!(*request.method(), Method::GET | Method::HEAD) {
            let Query(query) = Query::<HashMap<String, String>>::try_from_uri(request.uri())
                .map_err(IntoResponse::into_response)?;
            Ok(query_args(query))
        } else {
            let body = Bytes::from_request(request, state)
                .await
                .map_err(IntoResponse::into_response)?;
            parse_body(&headers, &body)
        };
        gate(state, &headers).await?;
        Ok(Call {
            state: state.clone(),
            args,
        })
    }
}

/// A call past the [`gate`] to a method that takes no arguments.
struct Gated;

impl FromRequestParts<Shared> for Gated {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        gate(state, &parts.headers).await.map(|()| Gated)
    }
}

/// A GET's query parameters as the body a POST would carry.
fn query_args(query: HashMap<String, String>) -> Value {
    Value::Object(
        query
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )
}

fn rate_limited(retry_after_secs: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after_secs.to_string())],
        axum::Json(json!({"ok": false, "error": "ratelimited"})),
    )
        .into_response()
}

/// A JSON or form body as a JSON object; Slack's codes for bodies it
/// cannot read.
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, &'static str> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return match serde_json::from_slice(body) {
            Ok(object @ Value::Object(_)) => Ok(object),
            Ok(_) => Err("json_not_object"),
            Err(_) => Err("invalid_json"),
        };
    }
    let mut object = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(body).into_owned() {
        let value = match k.as_str() {
            "blocks" | "metadata" => serde_json::from_str(&v).unwrap_or(Value::String(v)),
            _ => Value::String(v),
        };
        object.insert(k, value);
    }
    Ok(Value::Object(object))
}

/// A string argument; absent is `None`, any other type is Slack's
/// `invalid_arguments`.
fn string_arg<'a>(request: &'a Value, name: &str) -> Result<Option<&'a str>, &'static str> {
    match &request[name] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err("invalid_arguments"),
    }
}

fn flag(v: &Value) -> bool {
    v.as_bool()
        .unwrap_or_else(|| v.as_str() == Some("true") || v.as_str() == Some("1"))
}

/// Common gate of every call past the outage: injected faults, latency,
/// auth.
async fn gate(state: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let (latency, failure) = {
        let mut s = lock(state);
        let failure = s.fail_next.pop_front();
        if failure.is_some() {
            s.stats.server_errors += 1;
        }
        (s.latency, failure)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err((status, "upstream failure (injected)").into_response());
    }
    let s = lock(state);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        None => Err(slack_error("not_authed")),
        Some(t) if t != s.config.token => Err(slack_error("invalid_auth")),
        Some(_) if s.revoked => Err(slack_error("token_revoked")),
        Some(_) => Ok(()),
    }
}

fn is_user_id(id: &str) -> bool {
    id.starts_with('U') || id.starts_with('W')
}

/// Where a post to `channel` lands: a user id means the app's DM with
/// that user, as in Slack.
fn post_target(s: &SlackState, channel: &str) -> Result<String, &'static str> {
    if !is_user_id(channel) {
        return Ok(channel.to_owned());
    }
    if s.config.users.iter().any(|u| u == channel) {
        Ok(dm_channel(channel))
    } else {
        Err("channel_not_found")
    }
}

/// Whether the app can use conversation `channel`; user ids are not
/// conversations (Slack: `channel_not_found`).
fn check_channel(s: &SlackState, channel: &str) -> Result<(), &'static str> {
    if s.config.archived.iter().any(|c| c == channel) {
        return Err("is_archived");
    }
    if s.config.not_in_channel.iter().any(|c| c == channel) {
        return Err("not_in_channel");
    }
    if !s.channels.contains(channel) && s.dm_user(channel).is_none() {
        return Err("channel_not_found");
    }
    Ok(())
}

/// Where message `ts` of `channel` is among the stored messages.
fn position_of(s: &SlackState, channel: &str, ts: &str) -> Option<usize> {
    s.positions
        .get(&(channel.to_owned(), ts.to_owned()))
        .copied()
}

/// Token bucket per channel; `Err(seconds)` when the caller must wait.
fn take_token(s: &mut SlackState, channel: &str) -> Result<(), u64> {
    let Some(rate) = s.config.per_channel_per_second else {
        return Ok(());
    };
    let burst = f64::from(s.config.burst.max(1));
    let now = Instant::now();
    let bucket = s
        .buckets
        .entry(channel.to_owned())
        .or_insert(super::Bucket {
            tokens: burst,
            updated: now,
        });
    bucket.tokens =
        (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(burst);
    bucket.updated = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        Ok(())
    } else {
        Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
    }
}

fn check_content(text: Option<&str>, blocks: Option<&Value>) -> Result<(), &'static str> {
    if text.is_none_or(str::is_empty) && blocks.is_none() {
        return Err("no_text");
    }
    if text.is_some_and(|t| t.chars().count() > blockkit::MAX_MESSAGE_TEXT) {
        return Err("msg_too_long");
    }
    if let Some(blocks) = blocks {
        if blockkit::validate_message(text.unwrap_or("fallback"), blocks).is_err() {
            return Err("invalid_blocks");
        }
    }
    Ok(())
}

/// What `chat.postMessage` and `chat.update` both check: the channel, then
/// the content; a refusal is counted and named by Slack's error code.
fn admit(s: &mut SlackState, channel: &str, request: &Value) -> Result<(), &'static str> {
    let text = request["text"].as_str();
    let blocks = request.get("blocks").filter(|b| !b.is_null());
    let checked = check_channel(s, channel).and_then(|()| check_content(text, blocks));
    if checked.is_err() {
        s.stats.rejected += 1;
    }
    checked
}

/// A message as Slack lists it: a reply names its thread (and is a
/// `thread_broadcast` when also sent to the channel); a parent with
/// replies carries `thread_ts` (its own ts), `reply_count`,
/// `reply_users_count`, `reply_users` and `latest_reply`. It borrows the
/// stored message: a post's answer echoes it without copying its blocks.
#[derive(serde::Serialize)]
struct MessageJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: &'a str,
    text: &'a str,
    blocks: &'a Value,
    bot_id: &'static str,
    user: &'static str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited: Option<Edited<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_ts: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_user_id: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subtype: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_users_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_users: Option<[&'static str; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latest_reply: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Edited<'a> {
    user: &'static str,
    ts: &'a str,
}

fn message_json<'a>(s: &'a SlackState, m: &'a FakeMessage, with_metadata: bool) -> MessageJson<'a> {
    let mut v = MessageJson {
        kind: "message",
        ts: &m.ts,
        text: &m.text,
        blocks: &m.blocks,
        bot_id: "B0ALERTSVC",
        user: BOT_USER,
        channel: &m.channel,
        metadata: m.metadata.as_ref().filter(|_| with_metadata),
        edited: (m.edits > 0).then_some(Edited {
            user: "B0ALERTSVC",
            ts: &m.ts,
        }),
        thread_ts: None,
        parent_user_id: None,
        subtype: None,
        reply_count: None,
        reply_users_count: None,
        reply_users: None,
        latest_reply: None,
    };
    match &m.thread_ts {
        Some(parent) => {
            v.thread_ts = Some(parent);
            v.parent_user_id = Some(BOT_USER);
            if m.reply_broadcast {
                v.subtype = Some("thread_broadcast");
            }
        }
        None => {
            if let Some(thread) = s.threads.get(&(m.channel.clone(), m.ts.clone())) {
                v.thread_ts = Some(&m.ts);
                v.reply_count = Some(thread.replies);
                v.reply_users_count = Some(1);
                v.reply_users = Some([BOT_USER]);
                v.latest_reply = Some(&thread.latest);
            }
        }
    }
    v
}

/// The app's bot user, author of every message the fake stores.
const BOT_USER: &str = "U0ALERTSVC";
