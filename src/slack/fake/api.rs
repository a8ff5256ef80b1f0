//! The Web API methods of the fake. Bad input gets the error code Slack
//! would give it, never a panic: a fake that crashes on what notify sends
//! would hide the bug it should show.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::faults::PostAnswer;
use super::{dm_channel, lock, FakeMessage, Shared, SlackState};
use crate::slack::blockkit;

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/chat.postMessage", post(post_message))
        .route("/api/chat.update", post(update_message))
        .route(
            "/api/conversations.history",
            get(history_get).post(history_post),
        )
        .route(
            "/api/conversations.replies",
            get(replies_get).post(replies_post),
        )
        .route("/api/conversations.open", post(open_conversation))
        .route("/api/auth.test", get(auth_test).post(auth_test))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::server::outage,
        ))
        .with_state(state)
}

fn slack_ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
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

/// A method's answer: the success body or the refusal.
fn answer(result: Result<Value, Refusal>) -> Response {
    match result {
        Ok(body) => slack_ok(body),
        Err(refusal) => refusal.into_response(),
    }
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
    if !s.config.channels.iter().any(|c| c == channel) && s.dm_user(channel).is_none() {
        return Err("channel_not_found");
    }
    Ok(())
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
/// `reply_users_count`, `reply_users` and `latest_reply`.
fn message_json(s: &SlackState, m: &FakeMessage, with_metadata: bool) -> Value {
    let mut v = json!({"type": "message", "ts": m.ts, "text": m.text, "blocks": m.blocks,
                       "bot_id": "B0ALERTSVC", "user": BOT_USER, "channel": m.channel});
    if with_metadata {
        if let Some(meta) = &m.metadata {
            v["metadata"] = meta.clone();
        }
    }
    if m.edits > 0 {
        v["edited"] = json!({"user": "B0ALERTSVC", "ts": m.ts});
    }
    match &m.thread_ts {
        Some(parent) => {
            v["thread_ts"] = json!(parent);
            v["parent_user_id"] = json!(BOT_USER);
            if m.reply_broadcast {
                v["subtype"] = json!("thread_broadcast");
            }
        }
        None => {
            let replies: Vec<&FakeMessage> = s
                .messages
                .iter()
                .filter(|r| r.channel == m.channel && r.thread_ts.as_deref() == Some(&m.ts))
                .collect();
            if let Some(latest) = replies.last() {
                v["thread_ts"] = json!(m.ts);
                v["reply_count"] = json!(replies.len());
                v["reply_users_count"] = json!(1);
                v["reply_users"] = json!([BOT_USER]);
                v["latest_reply"] = json!(latest.ts);
            }
        }
    }
    v
}

/// The app's bot user, author of every message the fake stores.
const BOT_USER: &str = "U0ALERTSVC";

async fn post_message(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    let (fate, body) = match store_post(&state, &headers, &body) {
        Ok(stored) => stored,
        Err(refusal) => return refusal.into_response(),
    };
    match fate {
        PostAnswer::Success => slack_ok(body),
        PostAnswer::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (injected; the message was stored)",
        )
            .into_response(),
        PostAnswer::Late(delay) => {
            tokio::time::sleep(delay).await;
            slack_ok(body)
        }
    }
}

/// Checks and stores a post; the answer it gets and the success body.
fn store_post(
    state: &Shared,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(PostAnswer, Value), Refusal> {
    let mut s = lock(state);
    // Slack limits before it reads the request.
    if let Some(retry_after_secs) = s.faults.injected_rate_limit() {
        s.stats.rate_limited += 1;
        return Err(Refusal::RateLimited { retry_after_secs });
    }
    let request = parse_body(headers, body)?;
    let asked = string_arg(&request, "channel")?.unwrap_or_default();
    let channel = post_target(&s, asked).inspect_err(|_| s.stats.rejected += 1)?;
    admit(&mut s, &channel, &request)?;
    if let Err(retry_after_secs) = take_token(&mut s, &channel) {
        s.stats.rate_limited += 1;
        return Err(Refusal::RateLimited { retry_after_secs });
    }
    // A reply names its thread by the parent's ts: a top-level message of
    // this conversation (Slack asks for the parent, never a reply).
    let thread_ts = string_arg(&request, "thread_ts")?
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    if let Some(parent) = &thread_ts {
        let known = s
            .messages
            .iter()
            .any(|m| m.channel == channel && &m.ts == parent && m.thread_ts.is_none());
        if !known {
            s.stats.rejected += 1;
            return Err("thread_not_found".into());
        }
    }
    let reply_broadcast = thread_ts.is_some() && flag(&request["reply_broadcast"]);
    let text = request["text"].as_str().unwrap_or_default().to_owned();
    // Slack's ts: the post's epoch time in microseconds, unique per
    // channel (here: unique overall).
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let micros = now_micros.max(s.next_ts);
    s.next_ts = micros + 1;
    let ts = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    let message = FakeMessage {
        channel: channel.clone(),
        ts: ts.clone(),
        revisions: vec![text.clone()],
        text,
        blocks: request
            .get("blocks")
            .filter(|b| !b.is_null())
            .cloned()
            .unwrap_or(Value::Array(vec![])),
        metadata: request.get("metadata").filter(|m| !m.is_null()).cloned(),
        edits: 0,
        thread_ts,
        reply_broadcast,
    };
    if s.dm_user(&channel).is_some() {
        s.open_dms.insert(channel.clone());
    }
    s.stats.posts += 1;
    if message.thread_ts.is_some() {
        s.stats.replies += 1;
    }
    s.count_post(&message);
    s.messages.push(message.clone());
    s.listeners.retain(|l| l.send(message.clone()).is_ok());
    let fate = s.faults.post_answer();
    if fate != PostAnswer::Success {
        s.stats.ambiguous += 1;
    }
    let body = json!({"ok": true, "channel": channel, "ts": ts,
                      "message": message_json(&s, &message, true)});
    Ok((fate, body))
}

async fn update_message(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    answer(apply_update(&state, &headers, &body))
}

fn apply_update(state: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<Value, Refusal> {
    let request = parse_body(headers, body)?;
    let mut s = lock(state);
    let channel = string_arg(&request, "channel")?
        .unwrap_or_default()
        .to_owned();
    let ts = string_arg(&request, "ts")?.unwrap_or_default().to_owned();
    admit(&mut s, &channel, &request)?;
    let Some(index) = s
        .messages
        .iter()
        .position(|m| m.channel == channel && m.ts == ts)
    else {
        return Err("message_not_found".into());
    };
    let message = {
        let m = &mut s.messages[index];
        if let Some(text) = request["text"].as_str() {
            m.text = text.to_owned();
        }
        if let Some(blocks) = request.get("blocks").filter(|b| !b.is_null()) {
            m.blocks = blocks.clone();
        }
        if let Some(meta) = request.get("metadata").filter(|m| !m.is_null()) {
            m.metadata = Some(meta.clone());
        }
        m.edits += 1;
        m.revisions.push(m.text.clone());
        m.clone()
    };
    s.stats.updates += 1;
    s.listeners.retain(|l| l.send(message.clone()).is_ok());
    Ok(
        json!({"ok": true, "channel": channel, "ts": ts, "text": message.text,
              "message": message_json(&s, &message, false)}),
    )
}

async fn history_get(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let request = Value::Object(
        query
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    );
    history(state, headers, Ok(request)).await
}

async fn history_post(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request = parse_body(&headers, &body);
    history(state, headers, request).await
}

async fn history(
    state: Shared,
    headers: HeaderMap,
    request: Result<Value, &'static str>,
) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    answer(history_page(&state, request))
}

fn history_page(state: &Shared, request: Result<Value, &'static str>) -> Result<Value, Refusal> {
    let mut s = lock(state);
    s.stats.history_calls += 1;
    if let Err(retry_after_secs) = s.faults.admit_history(Instant::now()) {
        s.stats.rate_limited += 1;
        return Err(Refusal::RateLimited { retry_after_secs });
    }
    let request = request?;
    let channel = string_arg(&request, "channel")?.unwrap_or_default();
    check_channel(&s, channel)?;
    let with_metadata = flag(&request["include_all_metadata"]);
    let limit = request["limit"]
        .as_u64()
        .or_else(|| request["limit"].as_str().and_then(|l| l.parse().ok()))
        .unwrap_or(100)
        .clamp(1, 999) as usize;
    let offset: usize = request["cursor"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // `oldest`: only messages after this ts (a decimal string, as Slack's).
    let oldest: f64 = string_arg(&request, "oldest")?
        .and_then(|o| o.parse().ok())
        .unwrap_or(0.0);
    // The channel's messages: replies only when broadcast.
    let newest_first: Vec<&FakeMessage> = s
        .messages
        .iter()
        .rev()
        .filter(|m| m.channel == channel && m.in_channel())
        .filter(|m| m.ts.parse::<f64>().is_ok_and(|ts| ts > oldest))
        .collect();
    let page: Vec<Value> = newest_first
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| message_json(&s, m, with_metadata))
        .collect();
    let has_more = newest_first.len() > offset + limit;
    let next_cursor = if has_more {
        (offset + limit).to_string()
    } else {
        String::new()
    };
    Ok(json!({"ok": true, "messages": page, "has_more": has_more,
              "response_metadata": {"next_cursor": next_cursor}}))
}

async fn replies_get(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let request = Value::Object(
        query
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    );
    replies(state, headers, Ok(request)).await
}

async fn replies_post(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request = parse_body(&headers, &body);
    replies(state, headers, request).await
}

async fn replies(
    state: Shared,
    headers: HeaderMap,
    request: Result<Value, &'static str>,
) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    answer(replies_page(&state, request))
}

/// `conversations.replies`: a thread, oldest first — its parent, then the
/// replies after `oldest`. `ts` may name the parent or a reply in it;
/// anything else is `thread_not_found`.
fn replies_page(state: &Shared, request: Result<Value, &'static str>) -> Result<Value, Refusal> {
    let mut s = lock(state);
    s.stats.replies_calls += 1;
    let request = request?;
    let channel = string_arg(&request, "channel")?.unwrap_or_default();
    check_channel(&s, channel)?;
    let ts = string_arg(&request, "ts")?.unwrap_or_default();
    let Some(named) = s
        .messages
        .iter()
        .find(|m| m.channel == channel && m.ts == ts)
    else {
        return Err("thread_not_found".into());
    };
    let parent_ts = named.thread_ts.clone().unwrap_or_else(|| named.ts.clone());
    let with_metadata = flag(&request["include_all_metadata"]);
    let limit = request["limit"]
        .as_u64()
        .or_else(|| request["limit"].as_str().and_then(|l| l.parse().ok()))
        .unwrap_or(10)
        .clamp(1, 1000) as usize;
    let offset: usize = request["cursor"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let oldest: f64 = string_arg(&request, "oldest")?
        .and_then(|o| o.parse().ok())
        .unwrap_or(0.0);
    let thread: Vec<&FakeMessage> = s
        .messages
        .iter()
        .filter(|m| m.channel == channel)
        .filter(|m| {
            m.ts == parent_ts
                || (m.thread_ts.as_deref() == Some(parent_ts.as_str())
                    && m.ts.parse::<f64>().is_ok_and(|ts| ts > oldest))
        })
        .collect();
    let page: Vec<Value> = thread
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| message_json(&s, m, with_metadata))
        .collect();
    let has_more = thread.len() > offset + limit;
    let next_cursor = if has_more {
        (offset + limit).to_string()
    } else {
        String::new()
    };
    Ok(json!({"ok": true, "messages": page, "has_more": has_more,
              "response_metadata": {"next_cursor": next_cursor}}))
}

/// `auth.test`: who the token is; notify's probe while Slack seems away.
async fn auth_test(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    slack_ok(
        json!({"ok": true, "url": "https://alertsvc-fake.slack.com/", "team": "alertsvc",
                    "user": "alertsvc", "team_id": "T0ALERTSVC", "user_id": "U0ALERTSVC",
                    "bot_id": "B0ALERTSVC"}),
    )
}

async fn open_conversation(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    answer(open_dm(&state, &headers, &body))
}

/// `users` as slack-morphism sends it (a JSON array) or as Slack documents
/// it (a comma-separated string).
fn user_list(request: &Value) -> Result<Vec<String>, &'static str> {
    match &request["users"] {
        Value::Null => Ok(Vec::new()),
        Value::String(list) => Ok(list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()),
        Value::Array(items) => items
            .iter()
            .map(|u| u.as_str().map(str::to_owned).ok_or("invalid_arguments"))
            .collect(),
        _ => Err("invalid_arguments"),
    }
}

fn open_dm(state: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<Value, Refusal> {
    let mut s = lock(state);
    s.stats.opens += 1;
    let request = parse_body(headers, body)?;
    let users = user_list(&request)?;
    let resume = string_arg(&request, "channel")?;
    let dm = match (users.as_slice(), resume) {
        ([user], _) if s.config.users.contains(user) => dm_channel(user),
        ([_], _) => return Err("user_not_found".into()),
        ([], Some(channel)) if s.dm_user(channel).is_some() => channel.to_owned(),
        ([], Some(_)) => return Err("channel_not_found".into()),
        ([], None) => return Err("users_list_not_supplied".into()),
        // Group DMs are not modelled: a caller needing them must extend
        // the fake rather than get a made-up answer.
        _ => return Err("invalid_arguments".into()),
    };
    let already_open = !s.open_dms.insert(dm.clone());
    let mut channel = json!({"id": dm});
    // `return_im` asks for the whole conversation object.
    if flag(&request["return_im"]) {
        channel = json!({"id": dm, "created": 1_700_000_000, "is_im": true,
                         "is_org_shared": false, "user": s.dm_user(&dm)});
    }
    let mut opened = json!({"ok": true, "channel": channel});
    if already_open {
        opened["already_open"] = json!(true);
        opened["no_op"] = json!(true);
    }
    Ok(opened)
}
