//! Confluent Cloud wire formats: Schema Registry framed Avro on the stream
//! and output topics (TopicNameStrategy, ids cached), JSON on a table topic.

use std::time::Duration;

use crate::common::registry::FakeRegistry;
use crate::common::{connector_event, TestEnv};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_framed_avro_in_and_out_with_a_json_table() {
    let registry = FakeRegistry::start().await;
    let env = TestEnv::new(&format!(
        r#"
        [schema_registry]
        url = "{}"
        [topics.notifications]
        format = "avro-confluent"
        [topics.slack_messages]
        format = "avro-confluent"
        [topics.csdr_assignment]
        format = "json"
        "#,
        registry.url
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

    let enrich = env.start_enrich();
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
