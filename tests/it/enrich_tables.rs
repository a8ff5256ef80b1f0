//! GlobalKTable semantics of join tables.

use std::time::{Duration, Instant};

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::common::{connector_event, wait_ready_at, TestEnv};

const WAIT: Duration = Duration::from_secs(30);
const ORGS: usize = 60;

fn series(kind: &str) -> String {
    format!("alertsvc_table_updates_total{{kind=\"{kind}\",table=\"csdr_assignment\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_bootstrap_then_follow_updates_and_tombstones() {
    let env = TestEnv::new("").await;
    // Written before enrich starts: every one must be visible to the very
    // first events.
    for i in 0..ORGS {
        env.put_assignment(
            &format!("org-{i}"),
            &format!("csdr{i}@example.com"),
            &format!("Org {i}"),
        )
        .await;
        env.put_slack_user(&format!("csdr{i}@example.com"), &format!("U{i:04}"))
            .await;
    }
    for i in 0..ORGS {
        env.produce_event(
            &format!("org-{i}"),
            &connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Provisioning"),
        )
        .await;
    }
    let enrich = env.start_enrich().await;
    let messages = env.read_messages(ORGS, WAIT).await;
    assert_eq!(messages.len(), ORGS);
    for (record, message) in &messages {
        let i: usize = message
            .alert_id
            .trim_start_matches("org-")
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(message.channel_id, format!("U{i:04}"));
        assert_eq!(record.key.as_deref(), Some(message.channel_id.as_str()));
    }
    let metrics = env.metrics().await;
    assert_eq!(
        crate::common::metric_value(&metrics, "alertsvc_enrich_join_misses_total{pipeline=\"connector-provisioning-failure\",table=\"csdr_assignment\"}"),
        None,
        "no join misses during bootstrap"
    );

    // An update after start is seen by later events.
    env.put_slack_user("new@example.com", "U0NEW").await;
    env.put_assignment("org-1", "new@example.com", "Org 1")
        .await;
    env.wait_metric(&series("upsert"), (ORGS + 1) as f64, WAIT)
        .await;
    env.wait_metric(
        "alertsvc_table_updates_total{kind=\"upsert\",table=\"slack_users\"}",
        (ORGS + 1) as f64,
        WAIT,
    )
    .await;
    env.produce_event(
        "org-1",
        &connector_event("e-new", "env", "c-new", "Provisioning"),
    )
    .await;

    // A tombstone removes the key: the next event for it is a join miss.
    env.delete_assignment("org-2").await;
    env.wait_metric(&series("delete"), 1.0, WAIT).await;
    env.produce_event(
        "org-2",
        &connector_event("e-gone", "env", "c-gone", "Provisioning"),
    )
    .await;
    env.wait_metric(
        "alertsvc_enrich_join_misses_total{pipeline=\"connector-provisioning-failure\",table=\"csdr_assignment\"}",
        1.0,
        WAIT,
    )
    .await;

    let messages = env.read_messages(ORGS + 1, WAIT).await;
    assert_eq!(
        messages.len(),
        ORGS + 1,
        "the tombstoned org produced nothing"
    );
    let updated = messages
        .iter()
        .find(|(_, m)| m.alert_id == "org-1-env-c-new-connector-failure")
        .expect("alert after the update");
    assert_eq!(updated.1.channel_id, "U0NEW");
    assert_eq!(
        crate::common::metric_value(
            &env.metrics().await,
            "alertsvc_table_size{table=\"csdr_assignment\"}"
        ),
        Some((ORGS - 1) as f64)
    );
    enrich.stop().await.expect("clean stop");
}

/// An undecodable table record goes to the dead-letter topic, and the
/// loader does not move past it before the broker acknowledged it: the
/// first dead-letter writes fail (injected into the mock broker), and
/// enrich becomes ready only after the retried write went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_records_are_dead_lettered_and_leave_the_table_intact() {
    const FAILED_WRITES: usize = 5;
    let env = TestEnv::new("").await;
    env.put_assignment("org-1", "a@example.com", "One").await;
    let (partition, offset) = env
        .produce_raw(
            &env.topic("csdr_assignment"),
            Some("org-bad"),
            Some(b"garbage"),
        )
        .await;
    let dlq = env.dlq("csdr_assignment");
    // The next produce requests (the dead letter's: enrich writes nothing
    // else before it is ready) fail for good.
    if let Some(cluster) = env.broker.mock() {
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; FAILED_WRITES],
        );
    }
    let started = Instant::now();
    let enrich = env.start_enrich().await;
    wait_ready_at(env.enrich_addr(), WAIT).await;
    assert_eq!(
        env.end_offsets(&dlq, 1),
        [1],
        "ready only once the dead letter is acknowledged"
    );
    if env.broker.mock().is_some() {
        // Five failed writes and their backoff (at least 50+100+200+400+800
        // ms) came first.
        assert!(
            started.elapsed() >= Duration::from_millis(1550),
            "ready after {:?}: the failed writes were not waited out",
            started.elapsed()
        );
    }
    let dead = env.read(&dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1, "one dead letter, however many tries");
    assert_eq!(dead[0].payload.as_deref(), Some(&b"garbage"[..]));
    assert_eq!(dead[0].key.as_deref(), Some("org-bad"));
    assert_eq!(
        dead[0].headers["alertsvc.dlq.source.partition"],
        partition.to_string()
    );
    assert_eq!(
        dead[0].headers["alertsvc.dlq.source.offset"],
        offset.to_string()
    );
    assert!(dead[0].headers["alertsvc.dlq.reason"].contains("cannot decode table record"));
    assert_eq!(
        crate::common::metric_value(
            &env.metrics().await,
            "alertsvc_table_size{table=\"csdr_assignment\"}"
        ),
        Some(1.0)
    );
    enrich.stop().await.expect("clean stop");
}
