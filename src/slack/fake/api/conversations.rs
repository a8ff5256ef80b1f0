//! `conversations.history`, `conversations.replies` (paged like Slack)
//! and `conversations.open` (a DM with users).

use super::*;

/// `conversations.history`: the channel's messages, newest first.
pub(super) fn history(state: &Shared, request: Args) -> Result<Value, Refusal> {
    let mut s = lock(state);
    s.stats.history_calls += 1;
    if let Err(retry_after_secs) = s.faults.history.admit(Instant::now()) {
        s.stats.rate_limited += 1;
        return Err(Refusal::RateLimited { retry_after_secs });
    }
    let request = request?;
    let channel = string_arg(&request, "channel")?.unwrap_or_default();
    check_channel(&s, channel)?;
    let oldest = oldest_arg(&request)?;
    // The channel's messages: replies only when broadcast.
    let newest_first: Vec<&FakeMessage> = s
        .messages
        .iter()
        .rev()
        .filter(|m| m.channel == channel && m.in_channel())
        .filter(|m| m.ts.parse::<f64>().is_ok_and(|ts| ts > oldest))
        .collect();
    Ok(page(&s, &request, &newest_first, HISTORY_LIMITS))
}

/// `conversations.replies`: a thread, oldest first — its parent, then the
/// replies after `oldest`. `ts` may name the parent or a reply in it;
/// anything else is `thread_not_found`.
pub(super) fn replies(state: &Shared, request: Args) -> Result<Value, Refusal> {
    let mut s = lock(state);
    s.stats.replies_calls += 1;
    let request = request?;
    let channel = string_arg(&request, "channel")?.unwrap_or_default();
    check_channel(&s, channel)?;
    let ts = string_arg(&request, "ts")?.unwrap_or_default();
    let Some(index) = position_of(&s, channel, ts) else {
        return Err("thread_not_found".into());
    };
    let named = &s.messages[index];
    let parent_ts = named.thread_ts.clone().unwrap_or_else(|| named.ts.clone());
    let oldest = oldest_arg(&request)?;
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
    Ok(page(&s, &request, &thread, REPLIES_LIMITS))
}

/// `limit`'s default and maximum, as Slack documents them per method.
const HISTORY_LIMITS: (u64, u64) = (100, 999);
const REPLIES_LIMITS: (u64, u64) = (10, 1000);

/// `oldest`: only messages after this ts (a decimal string, as Slack's).
fn oldest_arg(request: &Value) -> Result<f64, &'static str> {
    Ok(string_arg(request, "oldest")?
        .and_then(|o| o.parse().ok())
        .unwrap_or(0.0))
}

/// One page of `listed` as Slack pages a list: `limit` messages (within
/// `limits`) from the offset the `cursor` names, and the next cursor while
/// more are left.
fn page(s: &SlackState, request: &Value, listed: &[&FakeMessage], limits: (u64, u64)) -> Value {
    let (default_limit, max_limit) = limits;
    let with_metadata = flag(&request["include_all_metadata"]);
    let limit = request["limit"]
        .as_u64()
        .or_else(|| request["limit"].as_str().and_then(|l| l.parse().ok()))
        .unwrap_or(default_limit)
        .clamp(1, max_limit) as usize;
    let offset: usize = request["cursor"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let messages: Vec<MessageJson> = listed
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| message_json(s, m, with_metadata))
        .collect();
    let has_more = listed.len() > offset + limit;
    let next_cursor = if has_more {
        (offset + limit).to_string()
    } else {
        String::new()
    };
    json!({"ok": true, "messages": messages, "has_more": has_more,
           "response_metadata": {"next_cursor": next_cursor}})
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

/// `conversations.open`: the app's DM with one user.
pub(super) fn open(state: &Shared, request: Args) -> Result<Value, Refusal> {
    let mut s = lock(state);
    s.stats.opens += 1;
    let request = request?;
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
