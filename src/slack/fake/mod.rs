//! A local stand-in for Slack's Web API, faithful where notify depends on
//! it: bearer-token auth (`not_authed`, `invalid_auth`, `token_revoked`),
//! known channels (`channel_not_found`, `is_archived`, `not_in_channel`),
//! Block Kit and length checks (`invalid_blocks`, `msg_too_long`), a
//! per-channel rate limit answered with HTTP 429 and `Retry-After`,
//! `chat.update`, and `conversations.history` with message metadata.
//! Faults (5xx, latency) can be injected. Tests and the demo share it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::enrich::blockkit;

#[derive(Debug, Clone)]
pub struct FakeSlackConfig {
    pub token: String,
    pub channels: Vec<String>,
    pub archived: Vec<String>,
    pub not_in_channel: Vec<String>,
    /// Posts per second per channel before 429s; `None` = no limit.
    pub per_channel_per_second: Option<f64>,
    pub burst: u32,
}

impl Default for FakeSlackConfig {
    fn default() -> Self {
        FakeSlackConfig {
            token: "xoxb-fake-token".into(),
            channels: Vec::new(),
            archived: Vec::new(),
            not_in_channel: Vec::new(),
            per_channel_per_second: Some(1.0),
            burst: 1,
        }
    }
}

/// A message as the fake stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeMessage {
    pub channel: String,
    pub ts: String,
    pub text: String,
    pub blocks: Value,
    pub metadata: Option<Value>,
    pub edits: u32,
}

impl FakeMessage {
    pub fn alert_id(&self) -> Option<&str> {
        self.metadata.as_ref()?["event_payload"]["alert_id"].as_str()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FakeStats {
    pub posts: usize,
    pub updates: usize,
    pub history_calls: usize,
    pub rate_limited: usize,
    pub server_errors: usize,
    pub rejected: usize,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Default)]
struct SlackState {
    config: FakeSlackConfig,
    messages: Vec<FakeMessage>,
    buckets: HashMap<String, Bucket>,
    stats: FakeStats,
    next_ts: u64,
    fail_next: VecDeque<u16>,
    latency: Duration,
    revoked: bool,
    /// Lets the demo page show messages newest first as they arrive.
    listeners: Vec<tokio::sync::mpsc::UnboundedSender<FakeMessage>>,
}

#[derive(Clone)]
pub struct FakeSlack {
    /// Base URL of the Web API, e.g. `http://127.0.0.1:PORT/api`.
    pub url: String,
    pub addr: SocketAddr,
    state: Arc<Mutex<SlackState>>,
}

impl FakeSlack {
    pub async fn start(config: FakeSlackConfig) -> std::io::Result<FakeSlack> {
        Self::start_on(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            config,
        )
        .await
    }

    pub async fn start_on(addr: SocketAddr, config: FakeSlackConfig) -> std::io::Result<FakeSlack> {
        let state = Arc::new(Mutex::new(SlackState {
            config,
            next_ts: 1,
            ..SlackState::default()
        }));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Self::router(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeSlack {
            url: format!("http://{addr}/api"),
            addr,
            state,
        })
    }

    fn router(state: Arc<Mutex<SlackState>>) -> Router {
        Router::new()
            .route("/api/chat.postMessage", post(post_message))
            .route("/api/chat.update", post(update_message))
            .route(
                "/api/conversations.history",
                get(history_get).post(history_post),
            )
            .with_state(state)
    }

    fn lock(&self) -> MutexGuard<'_, SlackState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn messages(&self) -> Vec<FakeMessage> {
        self.lock().messages.clone()
    }

    pub fn stats(&self) -> FakeStats {
        self.lock().stats
    }

    /// The next `count` Web API calls answer HTTP `status`.
    pub fn fail_next(&self, status: u16, count: usize) {
        self.lock()
            .fail_next
            .extend(std::iter::repeat_n(status, count));
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub fn revoke_token(&self) {
        self.lock().revoked = true;
    }

    pub fn add_channel(&self, channel: &str) {
        self.lock().config.channels.push(channel.to_owned());
    }

    /// Every message stored from now on, as it is stored or updated.
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<FakeMessage> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().listeners.push(tx);
        rx
    }

    /// Stores a message as if posted by someone else (for history tests).
    pub fn insert_message(&self, message: FakeMessage) {
        self.lock().messages.push(message);
    }
}

fn slack_ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn slack_error(code: &str) -> Response {
    slack_ok(json!({"ok": false, "error": code}))
}

/// Parses a JSON or form body into a JSON object.
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Value {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return serde_json::from_slice(body).unwrap_or(Value::Null);
    }
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(body);
    let mut object = serde_json::Map::new();
    for (k, v) in pairs {
        let value = match k.as_str() {
            "blocks" | "metadata" => serde_json::from_str(&v).unwrap_or(Value::String(v)),
            _ => Value::String(v),
        };
        object.insert(k, value);
    }
    Value::Object(object)
}

fn serde_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Common gate of every call: injected faults, latency, auth.
async fn gate(state: &Arc<Mutex<SlackState>>, headers: &HeaderMap) -> Result<(), Response> {
    let (latency, failure) = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
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
    let s = state.lock().unwrap_or_else(|e| e.into_inner());
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

fn check_channel(s: &SlackState, channel: &str) -> Result<(), &'static str> {
    if s.config.archived.iter().any(|c| c == channel) {
        return Err("is_archived");
    }
    if s.config.not_in_channel.iter().any(|c| c == channel) {
        return Err("not_in_channel");
    }
    if !s.config.channels.iter().any(|c| c == channel) {
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
    let bucket = s.buckets.entry(channel.to_owned()).or_insert(Bucket {
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

fn message_json(m: &FakeMessage, with_metadata: bool) -> Value {
    let mut v = json!({"type": "message", "ts": m.ts, "text": m.text, "blocks": m.blocks,
                       "bot_id": "B0ALERTSVC", "channel": m.channel});
    if with_metadata {
        if let Some(meta) = &m.metadata {
            v["metadata"] = meta.clone();
        }
    }
    if m.edits > 0 {
        v["edited"] = json!({"user": "B0ALERTSVC", "ts": m.ts});
    }
    v
}

async fn post_message(
    State(state): State<Arc<Mutex<SlackState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    let request = parse_body(&headers, &body);
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let channel = request["channel"].as_str().unwrap_or_default().to_owned();
    if let Err(code) = admit(&mut s, &channel, &request) {
        return slack_error(code);
    }
    if let Err(seconds) = take_token(&mut s, &channel) {
        s.stats.rate_limited += 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            axum::Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response();
    }
    let text = request["text"].as_str();
    let blocks = request.get("blocks").filter(|b| !b.is_null());
    let ts = format!("1700000000.{:06}", s.next_ts);
    s.next_ts += 1;
    let message = FakeMessage {
        channel: channel.clone(),
        ts: ts.clone(),
        text: text.unwrap_or_default().to_owned(),
        blocks: blocks.cloned().unwrap_or(Value::Array(vec![])),
        metadata: request.get("metadata").filter(|m| !m.is_null()).cloned(),
        edits: 0,
    };
    s.stats.posts += 1;
    s.messages.push(message.clone());
    s.listeners.retain(|l| l.send(message.clone()).is_ok());
    slack_ok(
        json!({"ok": true, "channel": channel, "ts": ts, "message": message_json(&message, true)}),
    )
}

async fn update_message(
    State(state): State<Arc<Mutex<SlackState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    let request = parse_body(&headers, &body);
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let channel = request["channel"].as_str().unwrap_or_default().to_owned();
    let ts = request["ts"].as_str().unwrap_or_default().to_owned();
    if let Err(code) = admit(&mut s, &channel, &request) {
        return slack_error(code);
    }
    let text = request["text"].as_str();
    let blocks = request.get("blocks").filter(|b| !b.is_null());
    let Some(index) = s
        .messages
        .iter()
        .position(|m| m.channel == channel && m.ts == ts)
    else {
        return slack_error("message_not_found");
    };
    let message = {
        let m = &mut s.messages[index];
        if let Some(text) = text {
            m.text = text.to_owned();
        }
        if let Some(blocks) = blocks {
            m.blocks = blocks.clone();
        }
        if let Some(meta) = request.get("metadata").filter(|m| !m.is_null()) {
            m.metadata = Some(meta.clone());
        }
        m.edits += 1;
        m.clone()
    };
    s.stats.updates += 1;
    s.listeners.retain(|l| l.send(message.clone()).is_ok());
    slack_ok(
        json!({"ok": true, "channel": channel, "ts": ts, "text": message.text,
                    "message": message_json(&message, false)}),
    )
}

async fn history_get(
    State(state): State<Arc<Mutex<SlackState>>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let request = Value::Object(
        query
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    );
    history(state, headers, request).await
}

async fn history_post(
    State(state): State<Arc<Mutex<SlackState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = parse_body(&headers, &body);
    history(state, headers, request).await
}

async fn history(state: Arc<Mutex<SlackState>>, headers: HeaderMap, request: Value) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.stats.history_calls += 1;
    let channel = request["channel"].as_str().unwrap_or_default().to_owned();
    if let Err(code) = check_channel(&s, &channel) {
        return slack_error(code);
    }
    let flag = |v: &Value| {
        v.as_bool()
            .unwrap_or_else(|| v.as_str() == Some("true") || v.as_str() == Some("1"))
    };
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
    let newest_first: Vec<&FakeMessage> = s
        .messages
        .iter()
        .rev()
        .filter(|m| m.channel == channel)
        .collect();
    let page: Vec<Value> = newest_first
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| message_json(m, with_metadata))
        .collect();
    let has_more = newest_first.len() > offset + limit;
    let next_cursor = if has_more {
        (offset + limit).to_string()
    } else {
        String::new()
    };
    slack_ok(json!({"ok": true, "messages": page, "has_more": has_more,
                    "response_metadata": {"next_cursor": next_cursor}}))
}
