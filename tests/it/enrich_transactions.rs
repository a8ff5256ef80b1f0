//! Processing guarantees. Exactly-once: outputs and input offsets commit in
//! one transaction; a failed transaction is aborted and its records are
//! processed again. At-least-once: offsets commit after outputs are acked.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::common::{
    broker::Broker, connector_event, eventually, metric_value, sorted_alert_ids, RunningStage,
    TestEnv,
};

const WAIT: Duration = Duration::from_secs(90);

async fn seed(env: &TestEnv, events: usize) -> BTreeSet<String> {
    env.put_assignment("org-1", "a@example.com", "One").await;
    env.put_slack_user("a@example.com", "U1").await;
    let mut expected = BTreeSet::new();
    for i in 0..events {
        env.produce_event(
            "org-1",
            &connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Provisioning"),
        )
        .await;
        expected.insert(format!("org-1-env-c{i}-connector-failure"));
    }
    expected
}

/// Committed offsets; a partition that never had a record counts as 0.
fn committed_or_zero(env: &TestEnv, group: &str, topic: &str) -> Vec<i64> {
    env.committed(group, topic, 3)
        .into_iter()
        .map(|o| o.max(0))
        .collect()
}

/// After a clean stop the group's offsets are the input's end offsets, and
/// a restarted enrich processes only what came after.
async fn offsets_committed_and_restart_resumes(env: &TestEnv, processed: usize) {
    let input = env.topic("notifications");
    let group = env.settings.enrich.as_ref().unwrap().group_id.clone();
    assert_eq!(
        committed_or_zero(env, &group, &input),
        env.end_offsets(&input, 3)
    );
    let enrich = env.start_enrich().await;
    env.produce_event(
        "org-1",
        &connector_event("late", "env", "late", "Provisioning"),
    )
    .await;
    let messages = env.read_messages(processed + 1, WAIT).await;
    assert_eq!(messages.len(), processed + 1, "no record processed twice");
    enrich.stop().await.expect("clean stop");
}

/// enrich, started, once it has written one message for each `expected`
/// alert.
async fn start_and_read_each_once(env: &TestEnv, expected: &BTreeSet<String>) -> RunningStage {
    let enrich = env.start_enrich().await;
    let messages = env.read_messages(expected.len(), WAIT).await;
    assert_eq!(
        sorted_alert_ids(&messages),
        Vec::from_iter(expected.iter().cloned()),
        "one message per alert"
    );
    enrich
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_transaction_is_aborted_and_its_records_reprocessed() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let env = TestEnv::with_broker(Broker::Mock(cluster), "").await;
    let expected = seed(&env, 10).await;
    let Broker::Mock(cluster) = &env.broker else {
        unreachable!()
    };
    // The next produce request (enrich's first output) fails for good: the
    // transaction cannot commit and must be aborted.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );

    let enrich = env.start_enrich().await;
    env.wait_metric(
        "alertsvc_enrich_commits_total{outcome=\"aborted\"}",
        1.0,
        WAIT,
    )
    .await;
    env.wait_metric(
        "alertsvc_enrich_commits_total{outcome=\"committed\"}",
        1.0,
        WAIT,
    )
    .await;
    let messages = env
        .read_until(
            &env.topic("slack_messages"),
            |r| {
                r.iter()
                    .filter_map(|r| r.payload.clone())
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= expected.len()
            },
            WAIT,
        )
        .await;
    let mut seen = BTreeSet::new();
    for record in &messages {
        let value = env.codecs["slack_messages"]
            .decode(record.payload.as_deref().unwrap())
            .await
            .unwrap();
        seen.insert(
            alertsvc::messages::SlackMessage::from_json(value)
                .unwrap()
                .alert_id,
        );
    }
    assert_eq!(seen, expected, "nothing lost to the aborted transaction");
    enrich.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_commits_offsets_after_outputs_are_acknowledged() {
    let env = TestEnv::new("[enrich]\nprocessing_guarantee = \"at_least_once\"\n").await;
    let expected = seed(&env, 8).await;
    let enrich = start_and_read_each_once(&env, &expected).await;
    enrich.stop().await.expect("clean stop");

    offsets_committed_and_restart_resumes(&env, expected.len()).await;
}

/// Needs a broker that stores transactional offsets (the mock does not):
/// CI runs it against tansu, `scripts/test.sh` sets ALERTSVC_TEST_BOOTSTRAP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a transactional broker in ALERTSVC_TEST_BOOTSTRAP (tansu in CI)"]
async fn eos_commits_outputs_and_offsets_in_one_transaction() {
    assert!(
        std::env::var(crate::common::broker::EXTERNAL_BOOTSTRAP_ENV).is_ok(),
        "set ALERTSVC_TEST_BOOTSTRAP to a broker with transactions"
    );
    let env = TestEnv::new("").await;
    let expected = seed(&env, 6).await;
    let enrich = start_and_read_each_once(&env, &expected).await;
    env.wait_metric(
        "alertsvc_enrich_commits_total{outcome=\"committed\"}",
        1.0,
        WAIT,
    )
    .await;
    assert_eq!(
        metric_value(
            &env.metrics().await,
            "alertsvc_enrich_commits_total{outcome=\"aborted\"}"
        ),
        None
    );
    enrich.stop().await.expect("clean stop");

    // The offsets went in with the transaction (send_offsets_to_transaction).
    offsets_committed_and_restart_resumes(&env, expected.len()).await;
}

/// `alertsvc_consumer_lag` of `topic`, by partition.
fn consumer_lags(metrics: &str, topic: &str) -> std::collections::BTreeMap<i32, f64> {
    let topic_label = format!("topic=\"{topic}\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("alertsvc_consumer_lag{"))
        .filter(|rest| rest.contains(&topic_label))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let partition = labels
                .split(',')
                .find_map(|l| l.strip_prefix("partition=\""))?
                .trim_end_matches('"')
                .parse()
                .ok()?;
            Some((partition, value.trim().parse().ok()?))
        })
        .collect()
}

/// Under exactly-once the offsets commit in the transaction, which
/// librdkafka's own lag figure never learns of (it would stay at its value
/// from the assignment, or never appear on a new group): the gauge must come
/// down to 0 once every record is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_consumer_lag_comes_down_to_zero() {
    let env = TestEnv::new("").await;
    let mut partitions = BTreeSet::new();
    let mut expected = BTreeSet::new();
    for org in ["org-a", "org-b", "org-c", "org-d"] {
        env.put_assignment(org, "a@example.com", org).await;
        for i in 0..3 {
            let (partition, _) = env
                .produce_event(
                    org,
                    &connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Provisioning"),
                )
                .await;
            partitions.insert(partition);
            expected.insert(format!("{org}-env-c{i}-connector-failure"));
        }
    }
    env.put_slack_user("a@example.com", "U1").await;
    let enrich = start_and_read_each_once(&env, &expected).await;

    // librdkafka reports statistics every 15 s (statistics.interval.ms).
    let input = env.topic("notifications");
    eventually(
        Duration::from_secs(60),
        &format!("alertsvc_consumer_lag of {input} 0 on partitions {partitions:?}"),
        || async {
            let lags = consumer_lags(&env.metrics().await, &input);
            let processed = lags
                .iter()
                .filter(|(p, lag)| partitions.contains(p) && **lag == 0.0)
                .count();
            (processed == partitions.len()).then_some(())
        },
    )
    .await;
    enrich.stop().await.expect("clean stop");
}

/// A batch large enough to be split among `enrich.workers` threads comes
/// out exactly as one worker would write it: every alert and every
/// dead letter, in input order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_processed_in_parallel_keeps_input_order() {
    let env = TestEnv::new("[enrich]\nworkers = 2\n").await;
    env.put_assignment("org-1", "a@example.com", "One").await;
    env.put_slack_user("a@example.com", "U1").await;
    let (mut expected_alerts, mut expected_dead) = (Vec::new(), Vec::new());
    // All keyed by one org: one input partition, one output partition (one
    // channel), so the topics' order is the processing order.
    for i in 0..400 {
        let mut event = connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Provisioning");
        match i % 5 {
            0 => event = connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Running"),
            3 => event["data"] = "{not json".into(),
            _ => {}
        }
        let (_, offset) = env.produce_event("org-1", &event).await;
        match i % 5 {
            0 => {}
            3 => expected_dead.push(offset.to_string()),
            _ => expected_alerts.push((format!("org-1-env-c{i}-connector-failure"), offset)),
        }
    }
    let enrich = env.start_enrich().await;
    let messages = env.read_messages(expected_alerts.len(), WAIT).await;
    let got: Vec<(String, i64)> = messages
        .iter()
        .map(|(_, m)| (m.alert_id.clone(), m.source_offset))
        .collect();
    assert_eq!(got, expected_alerts);
    let dead = env
        .read(&env.dlq("notifications"), expected_dead.len(), WAIT)
        .await;
    let dead_offsets: Vec<String> = dead
        .iter()
        .map(|r| r.headers["alertsvc.dlq.source.offset"].clone())
        .collect();
    assert_eq!(dead_offsets, expected_dead);
    enrich.stop().await.expect("clean stop");
}
