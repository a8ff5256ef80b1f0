//! `chat.postMessage` and `chat.update`.

use super::*;

pub(super) async fn post_message(call: Call) -> Response {
    let (fate, body) = match store_post(&call.state, call.args) {
        Ok(stored) => stored,
        Err(refusal) => return refusal.into_response(),
    };
    match fate {
        PostAnswer::Success => slack_ok_bytes(body),
        PostAnswer::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (injected; the message was stored)",
        )
            .into_response(),
        PostAnswer::Late(delay) => {
            tokio::time::sleep(delay).await;
            slack_ok_bytes(body)
        }
    }
}

/// Checks and stores a post; the answer it gets and the success body.
fn store_post(state: &Shared, request: Args) -> Result<(PostAnswer, Vec<u8>), Refusal> {
    let mut s = lock(state);
    // Slack limits before it reads the request.
    if let Some(retry_after_secs) = s.faults.injected_rate_limit() {
        s.stats.rate_limited += 1;
        return Err(Refusal::RateLimited { retry_after_secs });
    }
    let mut request = request?;
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
        let known =
            position_of(&s, &channel, parent).is_some_and(|i| s.messages[i].thread_ts.is_none());
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
    if s.dm_user(&channel).is_some() {
        s.open_dms.insert(channel.clone());
    }
    // Stored as sent, and echoed from there.
    let mut sent = |name: &str| {
        request
            .get_mut(name)
            .map(Value::take)
            .filter(|v| !v.is_null())
    };
    let message = FakeMessage {
        channel,
        ts,
        revisions: vec![text.clone()],
        text,
        blocks: sent("blocks").unwrap_or(Value::Array(vec![])),
        metadata: sent("metadata"),
        edits: 0,
        thread_ts,
        reply_broadcast,
    };
    s.stats.posts += 1;
    if message.thread_ts.is_some() {
        s.stats.replies += 1;
    }
    s.count_post(&message);
    if !s.listeners.is_empty() {
        s.listeners.retain(|l| l.send(message.clone()).is_ok());
    }
    let fate = s.faults.post_answer();
    if fate != PostAnswer::Success {
        s.stats.ambiguous += 1;
    }
    s.store(message);
    let s = &*s;
    let stored = s.messages.last().ok_or("internal_error")?;
    let body = PostAnswerBody {
        ok: true,
        channel: &stored.channel,
        ts: &stored.ts,
        message: message_json(s, stored, true),
    };
    let body = serde_json::to_vec(&body).map_err(|_| "internal_error")?;
    Ok((fate, body))
}

/// `chat.postMessage`'s success answer, the message echoed as stored.
#[derive(serde::Serialize)]
struct PostAnswerBody<'a> {
    ok: bool,
    channel: &'a str,
    ts: &'a str,
    message: MessageJson<'a>,
}

/// `chat.update`: an earlier message's new content.
pub(super) fn update(state: &Shared, request: Args) -> Result<Value, Refusal> {
    let mut s = lock(state);
    // A tier limit, counted before the request is read, as for posts.
    if let Err(retry_after_secs) = s.faults.updates.admit(Instant::now()) {
        s.stats.rate_limited += 1;
        return Err(Refusal::RateLimited { retry_after_secs });
    }
    let request = request?;
    let channel = string_arg(&request, "channel")?
        .unwrap_or_default()
        .to_owned();
    let ts = string_arg(&request, "ts")?.unwrap_or_default().to_owned();
    admit(&mut s, &channel, &request)?;
    let Some(index) = position_of(&s, &channel, &ts) else {
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
