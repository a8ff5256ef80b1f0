//! Confluent Cloud wire formats: Schema Registry framed Avro on the stream
//! and output topics (TopicNameStrategy, ids cached), JSON on a table topic;
//! a registry outage waited out without dead letters.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use crate::common::registry::{assert_nothing_written, FakeRegistry};
use crate::common::sorted_alert_ids;
use crate::common::{connector_event, http_get, metric_value, TestEnv};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_framed_avro_in_and_out_with_a_json_table() {
    let registry = FakeRegistry::start().await;
    let env = TestEnv::new(&registry.overlay(
        None,
        &[
            ("notifications", "avro-confluent"),
            ("slack_messages", "avro-confluent"),
            ("csdr_assignment", "json"),
        ],
    ))
    .await;
    env.put_assignment("org-1", "a@example.com", "One").await;
    env.put_slack_user("a@example.com", "U1").await;
    let assignment = env.read(&env.topic("csdr_assignment"), 1, WAIT).await;
    let raw: serde_json::Value =
        serde_json::from_slice(assignment[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!(
        raw["csdr_email"], "a@example.com",
        "the table topic holds plain JSON"
    );

    for i in 0..5 {
        env.produce_event(
            "org-1",
            &connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Provisioning"),
        )
        .await;
    }
    // Framed with magic byte 0 and an id the registry never issued.
    let unknown_id = env
        .produce_raw(
            &env.topic("notifications"),
            Some("org-1"),
            Some(&[0, 0, 0, 3, 231, 2, 0]),
        )
        .await;

    let enrich = env.start_enrich().await;
    let messages = env.read_messages(5, WAIT).await;
    assert_eq!(messages.len(), 5);
    for (record, message) in &messages {
        let payload = record.payload.as_deref().unwrap();
        assert_eq!(payload[0], 0, "Confluent magic byte");
        assert_eq!(message.channel_id, "U1");
    }
    let dead = env.read(&env.dlq("notifications"), 1, WAIT).await;
    assert_eq!(
        dead[0].headers["alertsvc.dlq.source.offset"],
        unknown_id.1.to_string()
    );
    let reason = &dead[0].headers["alertsvc.dlq.reason"];
    assert!(
        reason.contains("schema registry") && reason.contains("999"),
        "{reason}"
    );

    let subjects = registry.subjects();
    assert!(
        subjects.contains(&format!("{}-value", env.topic("notifications"))),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&format!("{}-value", env.topic("slack_messages"))),
        "{subjects:?}"
    );
    enrich.stop().await.expect("clean stop");
}

/// Waits until `check` holds, polling; panics with `what` after `WAIT`.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    crate::common::eventually(WAIT, what, async || check().await.then_some(())).await
}

/// A Schema Registry outage is not the records' fault: nothing is
/// dead-lettered, enrich reports not ready (and the gauge) while it waits,
/// and after the outage every record comes out exactly once — on the stream
/// and on a table. The outage answers 503 (which the converter calls
/// retriable) and then 500 (which it caches as final: enrich must ask again).
/// An outage at startup keeps enrich from reading at all until its output
/// topic's schema id is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_pauses_enrich_and_loses_nothing() {
    const EVENTS: usize = 6;
    const GAUGE: &str = "alertsvc_enrich_registry_unavailable";
    let registry = FakeRegistry::start().await;
    let env = TestEnv::new(&registry.overlay(
        None,
        &[
            ("notifications", "avro-confluent"),
            ("slack_messages", "avro-confluent"),
            ("slack_users", "avro-confluent"),
            ("csdr_assignment", "json"),
        ],
    ))
    .await;
    env.put_assignment("org-1", "a@example.com", "One").await;
    // Encoded while the registry answers (the test's codecs keep the ids);
    // produced during the outage, so enrich meets them with nothing cached.
    let mut events = Vec::new();
    let mut expected = Vec::new();
    for i in 0..EVENTS {
        let event = connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Provisioning");
        events.push(env.encode("notifications", &event).await);
        expected.push(format!("org-1-env-c{i}-connector-failure"));
    }
    // A user nobody's assignment names: the table update changes no alert,
    // whichever of stream and table gets through first.
    let user = env
        .encode(
            "slack_users",
            &json!({"email": "late@example.com", "slack_user_id": "U0LATE", "display_name": "Late"}),
        )
        .await;

    registry.start_outage(StatusCode::SERVICE_UNAVAILABLE);
    let enrich = env.start_enrich().await;
    // Both tables bootstrap without the registry (JSON, and empty), but the
    // output's schema id needs it: not ready, and `/readyz` says why.
    let output_subject = format!("{}-value", env.topic("slack_messages"));
    eventually(
        "readyz names the output waiting for the registry",
        async || {
            http_get(&format!("http://{}/readyz", env.enrich_addr()))
                .await
                .is_some_and(|(status, body)| {
                    status == 503
                        && body.starts_with(&format!(
                        "not ready: output topic slack_messages waits for the Schema Registry: \
                         schema registry unavailable: registering under subject {output_subject}: \
                         HTTP request to schema registry failed with status 503 Service Unavailable"
                    ))
                })
        },
    )
    .await;
    env.wait_metric(GAUGE, 1.0, WAIT).await;
    registry.end_outage();
    env.wait_ready(WAIT).await;
    eventually("the gauge at 0 once the output's id is known", async || {
        metric_value(&env.metrics().await, GAUGE) == Some(0.0)
    })
    .await;

    registry.start_outage(StatusCode::SERVICE_UNAVAILABLE);
    let input = env.topic("notifications");
    for payload in &events {
        env.produce_raw(&input, Some("org-1"), Some(payload)).await;
    }
    let schema_path = |payload: &[u8]| {
        let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
        format!("/schemas/ids/{id}")
    };
    let (stream_schema, table_schema) = (schema_path(&events[0]), schema_path(&user));
    eventually("the stream asks for its writer schema", async || {
        registry.refused(&stream_schema) >= 1
    })
    .await;
    env.wait_metric(GAUGE, 1.0, WAIT).await;
    let readyz = format!("http://{}/readyz", env.enrich_addr());
    assert_eq!(http_get(&readyz).await.map(|r| r.0), Some(503));
    // Only now, so that the table's backoff starts fresh too.
    env.produce_raw(
        &env.topic("slack_users"),
        Some("late@example.com"),
        Some(&user),
    )
    .await;
    // Retried, not given up on: stream and table both keep asking.
    eventually("stream and table retry during the 503 outage", async || {
        registry.refused(&stream_schema) >= 3 && registry.refused(&table_schema) >= 3
    })
    .await;
    // A 500 the converter keeps in its cache as a final answer; only if
    // enrich clears it does the next try reach the registry again.
    registry.start_outage(StatusCode::INTERNAL_SERVER_ERROR);
    let asked = (
        registry.refused(&stream_schema),
        registry.refused(&table_schema),
    );
    eventually("stream and table retry during the 500 outage", async || {
        registry.refused(&stream_schema) > asked.0 && registry.refused(&table_schema) > asked.1
    })
    .await;
    assert_eq!(http_get(&readyz).await.map(|r| r.0), Some(503));
    assert_nothing_written(&env);
    assert_eq!(env.end_offsets(&env.dlq("slack_users"), 1), [0]);

    registry.end_outage();
    let messages = env.read_messages(EVENTS, WAIT).await;
    assert_eq!(
        sorted_alert_ids(&messages),
        expected,
        "every event exactly once"
    );
    for (record, message) in &messages {
        assert_eq!(record.payload.as_deref().map(|p| p[0]), Some(0), "framed");
        assert_eq!(message.channel_id, "C0ALERTS");
    }
    env.wait_metric(
        "alertsvc_table_updates_total{kind=\"upsert\",table=\"slack_users\"}",
        1.0,
        WAIT,
    )
    .await;
    env.wait_ready(WAIT).await;
    eventually("the gauge back at 0", async || {
        metric_value(&env.metrics().await, GAUGE) == Some(0.0)
    })
    .await;
    assert_eq!(env.end_offsets(&env.dlq("notifications"), 1), [0]);
    assert_eq!(env.end_offsets(&env.dlq("slack_users"), 1), [0]);
    assert_eq!(
        metric_value(
            &env.metrics().await,
            "alertsvc_table_updates_total{kind=\"invalid\",table=\"slack_users\"}"
        ),
        None
    );
    enrich.stop().await.expect("clean stop");
}
