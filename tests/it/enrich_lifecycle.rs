//! The shipped connector pipeline end to end through a connector's life:
//! it fails while provisioning (an alert), runs again (the same alert,
//! rendered `resolved`), and enrich and notify turn that into one Slack
//! message edited in place plus one reply in its thread.

use std::collections::BTreeMap;
use std::time::Duration;

use alertsvc::messages::{AlertStatus, DeliveryOutcome, RecurrenceMode, UpdateMode};
use serde_json::Value;

use crate::common::connector_status_event;
use crate::common::slack::{by_alert, notify_env, Backend, NotifyEnv};

const WAIT: Duration = Duration::from_secs(60);
const ALERT: &str = "org-a-env-1-lcc-1-connector-failure";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_running_again_resolves_its_alert_in_place() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["U0ADA", "C0ALERTS"], None, Backend::Sqlite, 50).await;
    env.put_assignment("org-a", "ada@example.com", "Acme").await;
    env.put_slack_user("ada@example.com", "U0ADA").await;
    let events = [
        connector_status_event("e1", "env-1", "lcc-1", "Provisioning", "Failed"),
        // The happy path of provisioning is not an alert.
        connector_status_event("e2", "env-1", "lcc-2", "Provisioning", "Running"),
        connector_status_event("e3", "env-1", "lcc-1", "Failed", "Running"),
        // A recovery of a connector that never alerted.
        connector_status_event("e4", "env-1", "lcc-3", "Failed", "Running"),
    ];
    for event in &events {
        env.produce_event("org-a", event).await;
    }
    let enrich = env.start_enrich().await;
    let messages = env.read_messages(3, WAIT).await;
    assert_eq!(messages.len(), 3, "the happy path is filtered");
    let (failed, resolved, unknown) = (&messages[0].1, &messages[1].1, &messages[2].1);
    assert_eq!(failed.alert_id, ALERT);
    assert_eq!(resolved.alert_id, ALERT, "the same alert");
    assert_eq!(failed.status, AlertStatus::Firing);
    assert_eq!(resolved.status, AlertStatus::Resolved);
    assert_eq!(unknown.status, AlertStatus::Resolved);
    assert_eq!(failed.text, "Connector Failure for Org org-a!");
    assert_eq!(
        resolved.text,
        "Resolved: the connector of Org org-a is running again"
    );
    for m in [failed, resolved] {
        assert_eq!(m.channel_id, "U0ADA");
        assert_eq!(m.updates, UpdateMode::Edit, "as shipped");
        assert_eq!(m.recurrence, RecurrenceMode::Thread, "as shipped");
    }
    let blocks: Value = serde_json::from_str(&resolved.blocks).expect("JSON blocks");
    assert_eq!(
        blocks[0]["text"]["text"],
        ":large_green_circle: Resolved: the connector is running again"
    );
    // The event's time (1_700_000_000_000) in each reader's time zone.
    assert!(
        resolved.blocks.contains(
            "Resolved <!date^1700000000^{date_short_pretty} at {time}|2023-11-14 22:13 UTC>."
        ),
        "{}",
        resolved.blocks
    );
    let actions = blocks.as_array().and_then(|b| b.last()).expect("actions");
    let buttons: Vec<&str> = actions["elements"]
        .as_array()
        .map(|e| e.iter().filter_map(|b| b["action_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        buttons,
        ["alertsvc_open_console"],
        "nothing to acknowledge once resolved"
    );

    let notify = env.start_notify().await;
    let responses = env.read_responses(3, WAIT).await;
    notify.stop().await.expect("clean stop");
    enrich.stop().await.expect("clean stop");
    // Each alert's answers are in its order; across alerts they need not
    // be (an edit waiting for its tier lets the channel's next go first).
    let outcomes: BTreeMap<String, Vec<DeliveryOutcome>> = by_alert(&responses)
        .into_iter()
        .map(|(alert, answers)| (alert, answers.iter().map(|r| r.outcome).collect()))
        .collect();
    assert_eq!(
        outcomes,
        BTreeMap::from([
            (
                ALERT.to_owned(),
                vec![DeliveryOutcome::Posted, DeliveryOutcome::Updated]
            ),
            (
                unknown.alert_id.clone(),
                vec![DeliveryOutcome::ResolvedUnposted]
            ),
        ])
    );
    let fake = slack.messages();
    assert_eq!(fake.len(), 2, "the alert and its reply: {fake:?}");
    let (top, reply) = (&fake[0], &fake[1]);
    assert_eq!(top.channel, "D0ADA");
    assert_eq!(top.alert_id(), Some(ALERT));
    assert_eq!(top.revisions, [failed.text.clone(), resolved.text.clone()]);
    // The resolved blocks, with notify's state line (resolved upstream: no
    // actor) right above the buttons.
    let mut shown = top.blocks.as_array().cloned().unwrap_or_default();
    let line = shown.remove(shown.len().saturating_sub(2));
    assert_eq!(line["block_id"], "alertsvc_state", "{line}");
    let text = line["elements"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with(":white_check_mark: Resolved at <!date^") && text.ends_with(" UTC>"),
        "{text}"
    );
    assert_eq!(
        serde_json::Value::Array(shown),
        blocks,
        "edited to the resolved blocks"
    );
    assert_eq!(reply.thread_ts.as_deref(), Some(top.ts.as_str()));
    assert_eq!(reply.text, resolved.text);
    assert_eq!(reply.reply_key(), Some("resolved"));
}
