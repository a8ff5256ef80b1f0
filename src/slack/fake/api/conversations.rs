//! `conversations.history`, `conversations.replies` (paged like Slack)
//! and `conversations.open` (a DM with users).

use super::*;

/// A GET's query parameters as the request body a POST would carry.
fn query_args(query: HashMap<String, String>) -> Result<Value, &'static str> {
    Ok(Value::Object(
        query
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    ))
}

/// A read method, whichever way it was called: token first, then the page.
async fn read_call(
    state: Shared,
    headers: HeaderMap,
    request: Result<Value, &'static str>,
    page: fn(&Shared, Result<Value, &'static str>) -> Result<Value, Refusal>,
) -> Response {
    if let Err(response) = gate(&state, &headers).await {
        return response;
    }
    answer(page(&state, request))
}

pub(super) async fn history_get(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    read_call(state, headers, query_args(query), history_page).await
}

pub(super) async fn history_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = parse_body(&headers, &body);
    read_call(state, headers, request, history_page).await
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

pub(super) async fn replies_get(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    read_call(state, headers, query_args(query), replies_page).await
}

pub(super) async fn replies_post(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = parse_body(&headers, &body);
    read_call(state, headers, request, replies_page).await
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

pub(super) async fn open_conversation(
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
