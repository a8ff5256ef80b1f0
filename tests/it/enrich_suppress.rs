//! The shipped connector pipeline joins `alert-state` by the alert id it
//! renders and suppresses new firing records of alerts snoozed until
//! later: states written before enrich starts (the bootstrap, a tombstone
//! among them) and after (kept live) decide which records reach
//! `slack-messages`. Each phase ends with a marker alert produced last on
//! the same partition, so reading up to it proves what did not come.

use std::time::Duration;

use alertsvc::clock::now_ms;
use alertsvc::messages::AlertStatus;
use serde_json::json;

use crate::common::{connector_status_event, eventually, metric_value, TestEnv};

const WAIT: Duration = Duration::from_secs(60);
const PIPELINE: &str = "connector-provisioning-failure";

fn alert(connector: &str) -> String {
    format!("org-a-env-1-{connector}-connector-failure")
}

fn suppressed_series() -> String {
    format!(
        "alertsvc_enrich_records_dropped_total{{pipeline=\"{PIPELINE}\",reason=\"suppressed\"}}"
    )
}

fn table_series(kind: &str) -> String {
    format!("alertsvc_table_updates_total{{kind=\"{kind}\",table=\"alert_state\"}}")
}

/// `(alert id, status)` of every message on `slack-messages` once the one
/// for `marker` arrived.
async fn messages_through(env: &TestEnv, marker: &str) -> Vec<(String, AlertStatus)> {
    let topic = env.topic("slack_messages");
    let marker = alert(marker);
    let records = env
        .read_until(
            &topic,
            // Avro writes a string's UTF-8 bytes as they are.
            |records| {
                records.iter().any(|r| {
                    r.payload
                        .as_deref()
                        .is_some_and(|p| p.windows(marker.len()).any(|w| w == marker.as_bytes()))
                })
            },
            WAIT,
        )
        .await;
    let mut out = Vec::new();
    for record in records {
        let value = env.codecs["slack_messages"]
            .decode(record.payload.as_deref().expect("payload"))
            .await
            .expect("decode slack message");
        let message = alertsvc::messages::SlackMessage::from_json(value).expect("SlackMessage");
        out.push((message.alert_id, message.status));
    }
    assert!(
        out.iter().any(|(id, _)| *id == marker),
        "no message for the marker {marker}: {out:?}"
    );
    out
}

fn firing(connector: &str) -> (String, AlertStatus) {
    (alert(connector), AlertStatus::Firing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snoozed_alerts_are_not_sent_again_until_the_snooze_ends() {
    // at_least_once: the mock broker does not store offsets committed in a
    // transaction, and this test checks the offsets of suppressed records.
    let env = TestEnv::new("[enrich]\nprocessing_guarantee = \"at_least_once\"\n").await;
    env.put_assignment("org-a", "ada@example.com", "Acme").await;
    env.put_slack_user("ada@example.com", "U0ADA").await;
    let now = now_ms();
    let day = 24 * 3600 * 1000;
    let snoozed_until =
        |until: i64| json!({"state": "snoozed", "snoozedUntil": until, "actorId": "U0ADA"});
    env.put_alert_state(&alert("lcc-x"), &snoozed_until(now + day))
        .await;
    env.put_alert_state(&alert("lcc-z"), &snoozed_until(now - 3600 * 1000))
        .await;
    env.put_alert_state(&alert("lcc-w"), &snoozed_until(now + day))
        .await;
    env.delete_alert_state(&alert("lcc-w")).await;
    env.put_alert_state(
        &alert("lcc-v"),
        &json!({"state": "acknowledged", "actorId": "U0ADA"}),
    )
    .await;

    let fails = |id: &str, connector: &str| {
        connector_status_event(id, "env-1", connector, "Provisioning", "Failed")
    };
    for (id, connector) in [
        ("e1", "lcc-x"), // snoozed until tomorrow: not sent
        ("e2", "lcc-y"), // no state
        ("e3", "lcc-z"), // the snooze ended an hour ago
        ("e4", "lcc-w"), // its snooze was deleted (a tombstone)
        ("e5", "lcc-v"), // acknowledged: its update edits the one message
    ] {
        env.produce_event("org-a", &fails(id, connector)).await;
    }
    // A recovery always passes, snoozed or not: the message turns green.
    env.produce_event(
        "org-a",
        &connector_status_event("e6", "env-1", "lcc-x", "Failed", "Running"),
    )
    .await;
    env.produce_event("org-a", &fails("e7", "end-1")).await;

    let enrich = env.start_enrich().await;
    let messages = messages_through(&env, "end-1").await;
    assert_eq!(
        messages,
        [
            firing("lcc-y"),
            firing("lcc-z"),
            firing("lcc-w"),
            firing("lcc-v"),
            (alert("lcc-x"), AlertStatus::Resolved),
            firing("end-1"),
        ]
    );
    let metrics = env.metrics().await;
    assert_eq!(metric_value(&metrics, &suppressed_series()), Some(1.0));
    assert_eq!(
        metric_value(&metrics, &table_series("upsert")),
        Some(4.0),
        "bootstrapped: {metrics}"
    );

    // Live: y is snoozed now, x's state is deleted.
    env.put_alert_state(&alert("lcc-y"), &snoozed_until(now + day))
        .await;
    env.delete_alert_state(&alert("lcc-x")).await;
    env.wait_metric(&table_series("upsert"), 5.0, WAIT).await;
    env.wait_metric(&table_series("delete"), 2.0, WAIT).await;
    env.produce_event("org-a", &fails("e8", "lcc-y")).await;
    env.produce_event("org-a", &fails("e9", "lcc-x")).await;
    env.produce_event("org-a", &fails("e10", "end-2")).await;
    let messages = messages_through(&env, "end-2").await;
    assert_eq!(messages[6..], [firing("lcc-x"), firing("end-2")]);
    assert_eq!(messages.len(), 8);

    // The last record of the partition is suppressed: its offset is
    // committed all the same, and nothing is dead-lettered.
    let (partition, last) = env.produce_event("org-a", &fails("e11", "lcc-y")).await;
    env.wait_metric(&suppressed_series(), 3.0, WAIT).await;
    let group = env
        .settings
        .enrich
        .as_ref()
        .map(|e| e.group_id.clone())
        .unwrap_or_default();
    let topic = env.topic("notifications");
    eventually(
        WAIT,
        &format!("committed offset {} on partition {partition}", last + 1),
        || async {
            let committed = tokio::task::block_in_place(|| env.committed(&group, &topic, 3))
                [partition as usize];
            (committed == last + 1).then_some(())
        },
    )
    .await;
    let metrics = env.metrics().await;
    assert!(
        !metrics.contains("alertsvc_enrich_records_dlq_total"),
        "nothing dead-lettered: {metrics}"
    );
    assert_eq!(env.end_offsets(&env.dlq("notifications"), 1), [0]);
    assert_eq!(
        messages_through(&env, "end-2").await.len(),
        8,
        "nothing after end-2"
    );
    enrich.stop().await.expect("clean stop");
}
