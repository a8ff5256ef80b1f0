//! The reference topology end to end: filter → inner join on org id → left
//! join on the assignee's email → Block Kit message keyed by channel.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::common::{connector_event, TestEnv};

const PIPELINE: &str = "connector-provisioning-failure";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_topology_emits_exactly_the_expected_messages() {
    let env = TestEnv::new("").await;
    env.put_assignment("org-a", "ada@example.com", "Acme").await;
    env.put_assignment("org-b", "bob@example.com", "Bobcorp")
        .await;
    env.put_assignment("org-c", "carol@example.com", "Carolco")
        .await;
    env.put_slack_user("ada@example.com", "U0ADA").await;
    env.put_slack_user("carol@example.com", "U0CAROL").await;

    let events = [
        (
            "org-a",
            connector_event("e1", "env-1", "lcc-1", "Provisioning"),
        ),
        ("org-a", connector_event("e2", "env-1", "lcc-2", "Running")),
        (
            "org-b",
            connector_event("e3", "env-2", "lcc-3", "Provisioning"),
        ),
        (
            "org-x",
            connector_event("e4", "env-3", "lcc-4", "Provisioning"),
        ),
        (
            "org-c",
            connector_event("e5", "env-4", "lcc-5", "Provisioning"),
        ),
        ("org-c", connector_event("e6", "env-4", "lcc-6", "Paused")),
    ];
    for (org, event) in &events {
        env.produce_event(org, event).await;
    }

    let enrich = env.start_enrich().await;
    let messages = env.read_messages(3, WAIT).await;

    let got: BTreeSet<(String, String, String, String)> = messages
        .iter()
        .map(|(record, m)| {
            (
                record.key.clone().unwrap_or_default(),
                m.alert_id.clone(),
                m.channel_id.clone(),
                m.text.clone(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String, String)> = [
        (
            "U0ADA",
            "org-a-env-1-lcc-1-connector-failure",
            "U0ADA",
            "Connector Failure for Org org-a!",
        ),
        (
            "C0ALERTS",
            "org-b-env-2-lcc-3-connector-failure",
            "C0ALERTS",
            "Connector Failure for Org org-b!",
        ),
        (
            "U0CAROL",
            "org-c-env-4-lcc-5-connector-failure",
            "U0CAROL",
            "Connector Failure for Org org-c!",
        ),
    ]
    .iter()
    .map(|(k, a, c, t)| (k.to_string(), a.to_string(), c.to_string(), t.to_string()))
    .collect();
    assert_eq!(messages.len(), 3, "no extra messages");
    assert_eq!(got, expected);

    for (_, message) in &messages {
        assert_eq!(message.pipeline, PIPELINE);
        assert_eq!(message.source_topic, env.topic("notifications"));
        assert!(message.created_at > 0);
        let blocks: Value = serde_json::from_str(&message.blocks).expect("blocks are JSON");
        let blocks = blocks.as_array().expect("array");
        assert_eq!(blocks[0]["type"], "header");
        let actions = blocks.last().expect("actions block");
        assert_eq!(actions["type"], "actions");
        assert_eq!(actions["elements"][0]["text"]["text"], "Acknowledge");
        assert_eq!(actions["elements"][0]["value"], message.alert_id.as_str());
    }
    let acme = &messages
        .iter()
        .find(|(_, m)| m.channel_id == "U0ADA")
        .expect("acme alert")
        .1;
    assert!(
        acme.blocks.contains("*Organization*\\nAcme (`org-a`)"),
        "{}",
        acme.blocks
    );
    assert!(acme.blocks.contains("bad credentials for lcc-1"));

    env.wait_metric(
        &format!("alertsvc_enrich_join_misses_total{{pipeline=\"{PIPELINE}\",table=\"csdr_assignment\"}}"),
        1.0,
        WAIT,
    )
    .await;
    let metrics = env.metrics().await;
    let series = |s: &str| crate::common::metric_value(&metrics, s);
    assert_eq!(
        series(&format!(
            "alertsvc_enrich_records_dropped_total{{pipeline=\"{PIPELINE}\",reason=\"filtered\"}}"
        )),
        Some(2.0)
    );
    assert_eq!(
        series(&format!(
            "alertsvc_enrich_records_out_total{{pipeline=\"{PIPELINE}\"}}"
        )),
        Some(3.0)
    );
    assert_eq!(
        series(&format!(
            "alertsvc_enrich_records_in_total{{pipeline=\"{PIPELINE}\"}}"
        )),
        Some(6.0)
    );
    assert_eq!(
        series("alertsvc_table_size{table=\"csdr_assignment\"}"),
        Some(3.0)
    );

    enrich.stop().await.expect("clean stop");
}
