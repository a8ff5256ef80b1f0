//! What an alert's message shows for its state: a context line saying who
//! did what and when, and only the buttons that still make sense. Applied
//! to the rendered blocks on every edit notify makes, so new content never
//! hides an acknowledgement. Idempotent: decorating decorated blocks again
//! gives the same blocks.

use serde_json::{json, Value};

use super::{AlertState, StateKind, ACKNOWLEDGE_ACTION, RESOLVE_ACTION, SNOOZE_ACTION};
use crate::slack::blockkit::MAX_BLOCKS;

/// The block the state line lives in; replaced, never added twice.
pub const STATE_BLOCK_ID: &str = "alertsvc_state";

/// `blocks` (a Block Kit array) as they show an alert in `state`. Anything
/// but an array is returned unchanged.
pub fn decorate(blocks: &Value, state: &AlertState) -> Value {
    let Some(blocks) = blocks.as_array() else {
        return blocks.clone();
    };
    let hidden = hidden_actions(state.kind);
    let mut out: Vec<Value> = Vec::with_capacity(blocks.len() + 1);
    for block in blocks {
        if block["block_id"] == STATE_BLOCK_ID {
            continue;
        }
        if block["type"] != "actions" {
            out.push(block.clone());
            continue;
        }
        let mut block = block.clone();
        if let Some(elements) = block["elements"].as_array_mut() {
            elements.retain(|e| {
                e["action_id"]
                    .as_str()
                    .is_none_or(|id| !hidden.contains(&id))
            });
            if elements.is_empty() {
                continue;
            }
        }
        out.push(block);
    }
    // A message already at Slack's block limit keeps its content; the
    // state is still on the topic and in the buttons left.
    if let Some(line) = context_line(state).filter(|_| out.len() < MAX_BLOCKS) {
        let line = json!({"type": "context", "block_id": STATE_BLOCK_ID,
            "elements": [{"type": "mrkdwn", "text": line}]});
        // Right above the buttons, where the eye goes to act.
        let at = out
            .iter()
            .position(|b| b["type"] == "actions")
            .unwrap_or(out.len());
        out.insert(at, line);
    }
    Value::Array(out)
}

/// Buttons that make no sense in a state: acknowledging what is
/// acknowledged; anything once resolved.
fn hidden_actions(kind: StateKind) -> &'static [&'static str] {
    match kind {
        StateKind::Firing | StateKind::Snoozed => &[],
        StateKind::Acknowledged => &[ACKNOWLEDGE_ACTION],
        StateKind::Resolved => &[ACKNOWLEDGE_ACTION, RESOLVE_ACTION, SNOOZE_ACTION],
    }
}

/// The state line, `None` for a firing alert (nothing to say).
pub fn context_line(state: &AlertState) -> Option<String> {
    let who = state.actor.as_ref().map(|a| {
        if is_user_id(&a.id) {
            format!(" by <@{}>", a.id)
        } else {
            format!(" by {}", escape(a.name.as_deref().unwrap_or("someone")))
        }
    });
    let who = who.unwrap_or_default();
    let at = slack_time(state.at)?;
    Some(match state.kind {
        StateKind::Firing => return None,
        StateKind::Acknowledged => format!(":eyes: Acknowledged{who} at {at}"),
        StateKind::Resolved => format!(":white_check_mark: Resolved{who} at {at}"),
        StateKind::Snoozed => {
            let until = state.snoozed_until.and_then(slack_date_time)?;
            format!(":zzz: Snoozed{who} at {at} until {until}")
        }
    })
}

/// Slack user ids are upper-case letters and digits; anything else from a
/// payload is not turned into a mention.
fn is_user_id(id: &str) -> bool {
    (id.starts_with('U') || id.starts_with('W'))
        && id.len() > 1
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `<!date^SECS^{time}|14:02 UTC>`: each reader sees their own time zone.
fn slack_time(millis: i64) -> Option<String> {
    slack_date(millis, "{time}", "%H:%M UTC")
}

fn slack_date_time(millis: i64) -> Option<String> {
    slack_date(
        millis,
        "{date_short_pretty} at {time}",
        "%Y-%m-%d %H:%M UTC",
    )
}

/// Slack's date formatting: `tokens` in the reader's time zone, `fallback`
/// (a chrono format, in UTC) where Slack cannot.
fn slack_date(millis: i64, tokens: &str, fallback: &str) -> Option<String> {
    let at = chrono::DateTime::from_timestamp_millis(millis)?;
    Some(format!(
        "<!date^{}^{tokens}|{}>",
        at.timestamp(),
        at.format(fallback)
    ))
}

/// `blocks` (serialized) decorated for `state`; unparsable blocks are
/// returned as they are (Slack will say what is wrong with them).
pub fn decorated_blocks(blocks: &str, state: &AlertState) -> String {
    match serde_json::from_str::<Value>(blocks) {
        Ok(parsed) => decorate(&parsed, state).to_string(),
        Err(_) => blocks.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::state::Actor;

    const AT: i64 = 1_700_000_000_000; // 2023-11-14 22:13:20 UTC

    fn blocks() -> Value {
        json!([
            {"type": "header", "text": {"type": "plain_text", "text": "Connector failed"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "Alert `A-1`"}]},
            {"type": "actions", "block_id": "alertsvc_actions", "elements": [
                {"type": "button", "action_id": ACKNOWLEDGE_ACTION, "text": {"type": "plain_text", "text": "Acknowledge"}, "value": "A-1"},
                {"type": "button", "action_id": RESOLVE_ACTION, "text": {"type": "plain_text", "text": "Resolve"}, "value": "A-1"},
                {"type": "static_select", "action_id": SNOOZE_ACTION, "placeholder": {"type": "plain_text", "text": "Snooze"},
                 "options": [{"text": {"type": "plain_text", "text": "1 hour"}, "value": "1h"}]},
                {"type": "button", "action_id": "alertsvc_open_console", "text": {"type": "plain_text", "text": "Open"}, "url": "https://x"}
            ]}
        ])
    }

    fn state(kind: StateKind, actor: Option<&str>, until: Option<i64>) -> AlertState {
        AlertState {
            kind,
            actor: actor.map(|id| Actor {
                id: id.into(),
                name: Some("ada".into()),
            }),
            at: AT,
            snoozed_until: until,
            occurrence: 1,
        }
    }

    fn actions(blocks: &Value) -> Vec<String> {
        blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["action_id"].as_str().map(str::to_owned))
            .collect()
    }

    fn state_line(blocks: &Value) -> Option<String> {
        blocks
            .as_array()?
            .iter()
            .find(|b| b["block_id"] == STATE_BLOCK_ID)
            .and_then(|b| b["elements"][0]["text"].as_str().map(str::to_owned))
    }

    #[test]
    fn decorations_by_state() {
        let all = [
            ACKNOWLEDGE_ACTION,
            RESOLVE_ACTION,
            SNOOZE_ACTION,
            "alertsvc_open_console",
        ];
        let table = [
            (state(StateKind::Firing, None, None), None, &all[..]),
            (
                state(StateKind::Acknowledged, Some("U123"), None),
                Some(":eyes: Acknowledged by <@U123> at <!date^1700000000^{time}|22:13 UTC>"),
                &all[1..],
            ),
            (
                state(StateKind::Snoozed, Some("U123"), Some(AT + 4 * 3_600_000)),
                Some(":zzz: Snoozed by <@U123> at <!date^1700000000^{time}|22:13 UTC> until <!date^1700014400^{date_short_pretty} at {time}|2023-11-15 02:13 UTC>"),
                &all[..],
            ),
            (
                state(StateKind::Resolved, Some("U123"), None),
                Some(":white_check_mark: Resolved by <@U123> at <!date^1700000000^{time}|22:13 UTC>"),
                &all[3..],
            ),
            (
                state(StateKind::Resolved, None, None),
                Some(":white_check_mark: Resolved at <!date^1700000000^{time}|22:13 UTC>"),
                &all[3..],
            ),
        ];
        for (state, line, buttons) in table {
            let out = decorate(&blocks(), &state);
            assert_eq!(state_line(&out).as_deref(), line, "{state:?}");
            assert_eq!(actions(&out), buttons, "{state:?}");
            assert_eq!(decorate(&out, &state), out, "idempotent: {state:?}");
            assert!(
                crate::slack::blockkit::validate_message("t", &out).is_ok(),
                "{out}"
            );
            if line.is_some() {
                let types: Vec<&str> = out
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["type"].as_str())
                    .collect();
                assert_eq!(types, ["header", "context", "context", "actions"]);
            }
        }
    }

    #[test]
    fn a_new_state_replaces_the_old_line_and_buttons_come_back() {
        let acked = decorate(&blocks(), &state(StateKind::Acknowledged, Some("U1"), None));
        let firing = decorate(&acked, &state(StateKind::Firing, None, None));
        assert_eq!(state_line(&firing), None);
        // Buttons removed from Slack's copy are not invented back; notify
        // decorates the rendered blocks, which have them all.
        assert_eq!(actions(&firing).len(), 3);
        let resolved = decorate(&blocks(), &state(StateKind::Resolved, None, None));
        let only_links = json!([{"type": "actions", "elements": [
            {"type": "button", "action_id": RESOLVE_ACTION, "text": {"type": "plain_text", "text": "Resolve"}}]}]);
        assert_eq!(
            decorate(&only_links, &state(StateKind::Resolved, None, None))
                .as_array()
                .map(Vec::len),
            Some(1),
            "an actions block left empty goes; the state line stays"
        );
        assert_eq!(actions(&resolved), ["alertsvc_open_console"]);
    }

    #[test]
    fn names_are_text_and_odd_ids_are_no_mentions() {
        let mut s = state(StateKind::Acknowledged, Some("<!channel>"), None);
        if let Some(a) = s.actor.as_mut() {
            a.name = Some("<b>&".into());
        }
        let line = context_line(&s).unwrap_or_default();
        assert!(
            line.starts_with(":eyes: Acknowledged by &lt;b&gt;&amp; at"),
            "{line}"
        );
        assert_eq!(
            decorate(&json!({"not": "blocks"}), &s),
            json!({"not": "blocks"})
        );
    }
}
