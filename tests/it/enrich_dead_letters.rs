//! Bad input ends in the dead-letter topic with a readable reason, and the
//! records around it still flow; the dead-letter sender outlasts failed
//! writes.

use std::time::{Duration, Instant};

use alertsvc::kafka::{
    client_config, send_dead_letter, DeadLetterRecord, Role, SourcePosition, StageContext,
};
use rdkafka::producer::FutureProducer;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{connector_event, TestEnv};

const WAIT: Duration = Duration::from_secs(30);

/// A second pipeline on the same input, with a template that can fail.
const QUOTA_PIPELINE: &str = r#"
[enrich.pipelines.quota-warning]
input = "notifications"
output = "slack_messages"
json_fields = ["data"]
filter = 'event.eventType == "quota-warning"'
[enrich.pipelines.quota-warning.message]
alert_id = "{{ key }}-quota-{{ event.eventId }}"
channel = "C0QUOTA"
text = "Quota used: {{ event.data.used // event.data.quota * 100 }}%"
blocks = '[{"type": "section", "text": {"type": "mrkdwn", "text": "Used {{ event.data.used }} of {{ event.data.quota }}"}}]'
"#;

fn quota_event(id: &str, used: i64, quota: i64) -> serde_json::Value {
    json!({"eventId": id, "eventType": "quota-warning", "source": "t", "time": 1,
           "data": json!({"used": used, "quota": quota}).to_string()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_and_the_rest_flows() {
    let env = TestEnv::new(QUOTA_PIPELINE).await;
    env.put_assignment("org-a", "ada@example.com", "Acme").await;
    env.put_slack_user("ada@example.com", "U0ADA").await;
    let topic = env.topic("notifications");

    let mut missing_env = connector_event("e3", "x", "lcc-3", "Provisioning");
    let mut data: serde_json::Value =
        serde_json::from_str(missing_env["data"].as_str().unwrap()).unwrap();
    data.as_object_mut().unwrap().remove("env_id");
    missing_env["data"] = json!(data.to_string());

    let mut too_long = connector_event("e5", "env-5", "lcc-5", "Provisioning");
    let mut data: serde_json::Value =
        serde_json::from_str(too_long["data"].as_str().unwrap()).unwrap();
    data["connector_name"] = json!("n".repeat(2500));
    too_long["data"] = json!(data.to_string());

    // All keyed org-a: one partition, so their order is the test's order.
    env.produce_event(
        "org-a",
        &connector_event("e1", "env-1", "lcc-1", "Provisioning"),
    )
    .await;
    let garbage = env
        .produce_raw(&topic, Some("org-a"), Some(b"\x00not avro"))
        .await;
    let missing = env.produce_event("org-a", &missing_env).await;
    let div_zero = env.produce_event("org-a", &quota_event("q1", 5, 0)).await;
    let block_kit = env.produce_event("org-a", &too_long).await;
    env.produce_event(
        "org-a",
        &connector_event("e6", "env-6", "lcc-6", "Provisioning"),
    )
    .await;
    env.produce_event("org-a", &quota_event("q2", 5, 10)).await;

    let enrich = env.start_enrich().await;
    let messages = env.read_messages(3, WAIT).await;
    let mut ids: Vec<&str> = messages.iter().map(|(_, m)| m.alert_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "org-a-env-1-lcc-1-connector-failure",
            "org-a-env-6-lcc-6-connector-failure",
            "org-a-quota-q2"
        ]
    );

    let dead = env.read(&env.dlq("notifications"), 4, WAIT).await;
    assert_eq!(dead.len(), 4);
    let expected = [
        (
            garbage,
            "decode",
            None,
            "cannot decode value: not single-object encoded",
        ),
        (
            missing,
            "render",
            Some("connector-provisioning-failure"),
            "template \"alert_id\" failed: undefined value",
        ),
        (
            div_zero,
            "render",
            Some("quota-warning"),
            "template \"text\" failed",
        ),
        (
            block_kit,
            "validate",
            Some("connector-provisioning-failure"),
            "Block Kit limit: blocks[2].fields[2].text: 2522 characters, Slack allows 2000",
        ),
    ];
    for (record, ((partition, offset), stage, pipeline, reason)) in dead.iter().zip(expected) {
        let headers = &record.headers;
        assert_eq!(headers["alertsvc.dlq.stage"], stage, "{headers:?}");
        assert!(
            headers["alertsvc.dlq.reason"].starts_with(reason),
            "{headers:?}"
        );
        assert_eq!(
            headers.get("alertsvc.dlq.pipeline").map(String::as_str),
            pipeline
        );
        assert_eq!(headers["alertsvc.dlq.source.topic"], topic);
        assert_eq!(
            headers["alertsvc.dlq.source.partition"],
            partition.to_string()
        );
        assert_eq!(headers["alertsvc.dlq.source.offset"], offset.to_string());
        assert_eq!(record.key.as_deref(), Some("org-a"));
    }
    assert_eq!(dead[0].payload.as_deref(), Some(&b"\x00not avro"[..]));
    let original = env.encode("notifications", &too_long).await;
    assert_eq!(
        dead[3].payload.as_deref(),
        Some(original.as_slice()),
        "original bytes kept"
    );

    let metrics = env.metrics().await;
    assert_eq!(
        crate::common::metric_value(
            &metrics,
            "alertsvc_enrich_records_dlq_total{pipeline=\"quota-warning\",stage=\"render\"}"
        ),
        Some(1.0)
    );
    enrich.stop().await.expect("clean stop");
}

/// The one dead-letter sender: failed writes (injected into the mock
/// broker) are retried until the broker acknowledges, and the record lands
/// once with every header; with the writes failing for good it returns
/// only when cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_sender_retries_until_acknowledged_or_cancelled() {
    let env = TestEnv::new("").await;
    let Some(cluster) = env.broker.mock() else {
        return; // needs the mock broker's error injection
    };
    // Configured as enrich's dead-letter producer.
    let producer: FutureProducer<StageContext> = client_config(
        &env.settings.kafka,
        "the enrich dead-letter producer",
        &Role::IdempotentProducer { linger_ms: 5 },
    )
    .create_with_context(StageContext::default())
    .expect("producer");
    let dlq = env.dlq("notifications");
    let letter = DeadLetterRecord {
        dlq_topic: dlq.clone(),
        source: Some(SourcePosition {
            topic: env.topic("notifications"),
            partition: 2,
            offset: 41,
        }),
        key: Some(b"org-a".to_vec()),
        payload: Some(b"\x00bytes".to_vec()),
        stage: "decode".into(),
        reason: "cannot decode value".into(),
        pipeline: Some("p1".into()),
        extra_headers: vec![("alertsvc.dlq.job", "j".into())],
    };

    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3],
    );
    let started = Instant::now();
    send_dead_letter(&producer, letter.clone(), &CancellationToken::new())
        .await
        .expect("acknowledged");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "three failures and their backoff (≥ 50+100+200 ms) come first: {:?}",
        started.elapsed()
    );
    let dead = env.read(&dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1, "written once");
    assert_eq!(dead[0].key.as_deref(), Some("org-a"));
    assert_eq!(dead[0].payload.as_deref(), Some(&b"\x00bytes"[..]));
    let headers: Vec<(&str, &str)> = dead[0]
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let topic = env.topic("notifications");
    assert_eq!(
        headers,
        [
            ("alertsvc.dlq.job", "j"),
            ("alertsvc.dlq.pipeline", "p1"),
            ("alertsvc.dlq.reason", "cannot decode value"),
            ("alertsvc.dlq.source.offset", "41"),
            ("alertsvc.dlq.source.partition", "2"),
            ("alertsvc.dlq.source.topic", topic.as_str()),
            ("alertsvc.dlq.stage", "decode"),
        ]
    );

    // Every write fails: the sender keeps trying until cancelled.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 1000],
    );
    let cancel = CancellationToken::new();
    let sending = send_dead_letter(&producer, letter, &cancel);
    tokio::pin!(sending);
    assert!(
        tokio::time::timeout(Duration::from_millis(800), &mut sending)
            .await
            .is_err(),
        "no acknowledgement, no return"
    );
    cancel.cancel();
    let cancelled = tokio::time::timeout(Duration::from_secs(1), sending)
        .await
        .expect("returns promptly when cancelled")
        .unwrap_err();
    assert_eq!(
        cancelled.to_string(),
        format!("stopped before {dlq} acknowledged the dead letter of {topic}[2]@41")
    );
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert_eq!(env.end_offsets(&dlq, 1), [1], "nothing more was written");
}

/// at_least_once writes dead letters outside any transaction: a failed
/// write is retried by the sender until acknowledged, and only then are the
/// offsets committed; the batch itself does not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_retries_a_failed_dead_letter_before_committing() {
    let env = TestEnv::new("[enrich]\nprocessing_guarantee = \"at_least_once\"\n").await;
    let Some(cluster) = env.broker.mock() else {
        return; // needs the mock broker's error injection
    };
    let topic = env.topic("notifications");
    let (partition, offset) = env
        .produce_raw(&topic, Some("org-a"), Some(b"\x00not avro"))
        .await;
    // The batch holds only the bad record, so these hit its dead letter.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3],
    );
    let enrich = env.start_enrich().await;
    let dead = env.read(&env.dlq("notifications"), 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers["alertsvc.dlq.source.offset"],
        offset.to_string()
    );
    env.wait_metric(
        "alertsvc_enrich_commits_total{outcome=\"committed\"}",
        1.0,
        WAIT,
    )
    .await;
    assert_eq!(
        crate::common::metric_value(
            &env.metrics().await,
            "alertsvc_enrich_commits_total{outcome=\"aborted\"}"
        ),
        None,
        "the dead letter was retried, not the batch"
    );
    enrich.stop().await.expect("clean stop");
    let group = env.settings.enrich.as_ref().unwrap().group_id.clone();
    assert_eq!(
        env.committed(&group, &topic, 3)[partition as usize],
        offset + 1
    );
}
