//! A group's summary message, rendered from its members: how many, how
//! many resolved, the newest few, "+N more", and buttons that act on the
//! whole group (their value names it: `group:<id>`).

use serde_json::{json, Value};

use crate::messages::AlertStatus;

/// Members shown in full on the summary; the rest are "+N more".
pub const NEWEST_SHOWN: usize = 5;

/// One alert of a group, as its summary lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub alert_id: String,
    /// The alert's text (already escaped as Slack text by enrich).
    pub text: String,
    pub status: AlertStatus,
    /// The alert's time (epoch ms), newest first on the summary.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub text: String,
    /// Block Kit blocks, a JSON array serialized.
    pub blocks: String,
}

/// The value of the summary's buttons: the group, for the handler that
/// applies an action to every member.
pub fn button_value(group_id: &str) -> String {
    format!("group:{group_id}")
}

/// The group id a button value names, if it names a group.
pub fn group_of_value(value: &str) -> Option<&str> {
    value
        .strip_prefix("group:")
        .map(|rest| rest.split_once('|').map_or(rest, |(id, _)| id))
        .filter(|id| !id.is_empty())
}

/// At most `max` characters, ending in `…` when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `Slack text` escaping for the group key (the members' text is escaped
/// by enrich already).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn render(group_id: &str, group_key: &str, members: &[Member]) -> Summary {
    let mut newest: Vec<&Member> = members.iter().collect();
    newest.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.alert_id.cmp(&b.alert_id))
    });
    let count = members.len();
    let resolved = members
        .iter()
        .filter(|m| m.status == AlertStatus::Resolved)
        .count();
    let all_resolved = count > 0 && resolved == count;
    let noun = if count == 1 { "alert" } else { "alerts" };
    let tally = match resolved {
        0 => format!("{count} {noun}"),
        _ if all_resolved => format!("{count} {noun} · all resolved"),
        _ => format!("{count} {noun} · {resolved} resolved"),
    };
    let text = format!("{tally}: {}", escape(group_key));
    let icon = if all_resolved {
        ":large_green_circle:"
    } else {
        ":rotating_light:"
    };
    let lines: Vec<String> = newest
        .iter()
        .take(NEWEST_SHOWN)
        .map(|m| match m.status {
            AlertStatus::Firing => format!("• {}", clip(&m.text, 400)),
            AlertStatus::Resolved => format!(":white_check_mark: ~{}~", clip(&m.text, 400)),
        })
        .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text",
            "text": clip(&format!("{icon} {tally}: {group_key}"), 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn",
            "text": clip(&lines.join("\n"), 3000)}}),
    ];
    let more = count.saturating_sub(NEWEST_SHOWN);
    let mut context = format!(
        "Group `{}` · every alert is in the thread",
        escape(group_key)
    );
    if more > 0 {
        context = format!("+{more} more in the thread · {context}");
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": clip(&context, 3000)}]}),
    );
    if !all_resolved {
        blocks.push(actions(group_id));
    }
    Summary {
        text,
        blocks: Value::from(blocks).to_string(),
    }
}

/// Acknowledge, Resolve and Snooze for the whole group; an option's value
/// is `group:<id>|<duration>`.
fn actions(group_id: &str) -> Value {
    let value = button_value(group_id);
    let option = |label: &str, duration: &str| json!({"text": {"type": "plain_text", "text": label}, "value": format!("{value}|{duration}")});
    json!({"type": "actions", "block_id": "alertsvc_group_actions", "elements": [
        {"type": "button", "action_id": "alertsvc_acknowledge", "style": "primary",
         "text": {"type": "plain_text", "text": "Acknowledge all"}, "value": value},
        {"type": "button", "action_id": "alertsvc_resolve",
         "text": {"type": "plain_text", "text": "Resolve all"}, "value": value},
        {"type": "static_select", "action_id": "alertsvc_snooze",
         "placeholder": {"type": "plain_text", "text": "Snooze all"},
         "options": [option("1 hour", "1h"), option("4 hours", "4h"), option("24 hours", "24h")]}
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: i64, status: AlertStatus) -> Member {
        Member {
            alert_id: format!("a-{i:02}"),
            text: format!("Connector {i} failed"),
            status,
            created_at: 1_000 + i,
        }
    }

    fn parsed(summary: &Summary) -> Value {
        serde_json::from_str(&summary.blocks).unwrap_or_default()
    }

    #[test]
    fn the_summary_counts_lists_the_newest_and_says_how_many_more() {
        let mut members: Vec<Member> = (1..=40).map(|i| member(i, AlertStatus::Firing)).collect();
        for m in members.iter_mut().take(3) {
            m.status = AlertStatus::Resolved;
        }
        let summary = render("g1", "org-1", &members);
        assert_eq!(summary.text, "40 alerts · 3 resolved: org-1");
        let blocks = parsed(&summary);
        assert_eq!(
            blocks[0]["text"]["text"],
            ":rotating_light: 40 alerts · 3 resolved: org-1"
        );
        assert_eq!(
            blocks[1]["text"]["text"],
            "• Connector 40 failed\n• Connector 39 failed\n• Connector 38 failed\n\
             • Connector 37 failed\n• Connector 36 failed"
        );
        assert_eq!(
            blocks[2]["elements"][0]["text"],
            "+35 more in the thread · Group `org-1` · every alert is in the thread"
        );
        let actions = &blocks[3]["elements"];
        assert_eq!(actions[0]["action_id"], "alertsvc_acknowledge");
        assert_eq!(actions[0]["value"], "group:g1");
        assert_eq!(actions[1]["action_id"], "alertsvc_resolve");
        assert_eq!(actions[1]["value"], "group:g1");
        assert_eq!(actions[2]["action_id"], "alertsvc_snooze");
        assert_eq!(actions[2]["options"][1]["value"], "group:g1|4h");
        assert_eq!(group_of_value("group:g1|4h"), Some("g1"));
        assert_eq!(group_of_value("group:g1"), Some("g1"));
        assert_eq!(group_of_value("a-1"), None);
        assert_eq!(group_of_value("group:"), None);
    }

    #[test]
    fn resolved_members_are_struck_and_an_all_resolved_group_has_no_buttons() {
        let one = render("g", "k", &[member(1, AlertStatus::Resolved)]);
        assert_eq!(one.text, "1 alert · all resolved: k");
        let blocks = parsed(&one);
        assert_eq!(
            blocks[1]["text"]["text"],
            ":white_check_mark: ~Connector 1 failed~"
        );
        assert_eq!(
            blocks[2]["elements"][0]["text"],
            "Group `k` · every alert is in the thread"
        );
        assert_eq!(blocks.as_array().map(Vec::len), Some(3), "no actions");
        assert!(blocks[0]["text"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(":large_green_circle:")));
    }

    #[test]
    fn long_text_is_clipped_to_slacks_limits_and_the_key_is_escaped() {
        let long = Member {
            text: "x".repeat(5_000),
            ..member(1, AlertStatus::Firing)
        };
        let key = format!("<!channel> {}", "k".repeat(300));
        let summary = render("g", &key, &[long]);
        let blocks = parsed(&summary);
        assert_eq!(
            blocks[0]["text"]["text"]
                .as_str()
                .map(|t| t.chars().count()),
            Some(150)
        );
        assert!(blocks[1]["text"]["text"]
            .as_str()
            .is_some_and(|t| t.chars().count() <= 402 && t.ends_with('…')));
        assert!(summary.text.contains("&lt;!channel&gt;"));
    }
}
