//! Crash safety: `alertsvc enrich` killed with SIGKILL mid-stream and
//! restarted loses no alert, and any repeat is byte-identical to the first,
//! so notify's ledger (keyed by alert id and content) delivers exactly once.
//!
//! On the mock broker, transactional offsets are not stored and aborted
//! records stay visible, so restarts reprocess and repeats appear; against a
//! full Kafka (`ALERTSVC_TEST_BOOTSTRAP` + `ALERTSVC_TEST_FULL_KAFKA=1`) the
//! test also demands that no record is repeated at all.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::Duration;

use crate::common::{connector_event, eventually, kill_child, metric_value, stop_child, TestEnv};

const ORGS: usize = 12;
const EVENTS: usize = 360;
const WAIT: Duration = Duration::from_secs(90);

fn status(i: usize) -> &'static str {
    match i % 3 {
        0 => "Running",
        _ => "Provisioning",
    }
}

async fn wait_for_output(env: &TestEnv, child: &mut Child, at_least: f64) {
    eventually(WAIT, &format!("{at_least} records out"), async || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("enrich exited early: {status}");
        }
        metric_value(
            &env.metrics().await,
            "alertsvc_enrich_records_out_total{pipeline=\"connector-provisioning-failure\"}",
        )
        .filter(|v| *v >= at_least)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_enrich_loses_nothing_and_repeats_identically() {
    let env = TestEnv::new("[enrich]\nmax_batch_records = 20\nmax_batch_wait = \"10ms\"\n").await;
    for org in 0..ORGS {
        env.put_assignment(
            &format!("org-{org}"),
            &format!("csdr{org}@example.com"),
            "Org",
        )
        .await;
        env.put_slack_user(&format!("csdr{org}@example.com"), &format!("U{org}"))
            .await;
    }
    let mut expected = BTreeSet::new();
    let mut events = Vec::new();
    for i in 0..EVENTS {
        let org = format!("org-{}", i % ORGS);
        if status(i) == "Provisioning" {
            expected.insert(format!("{org}-env-{i}-conn-{i}-connector-failure"));
        }
        events.push((
            org,
            connector_event(
                &format!("e{i}"),
                &format!("env-{i}"),
                &format!("conn-{i}"),
                status(i),
            ),
        ));
    }

    // Events keep arriving while enrich is killed and restarted.
    let rest = events.split_off(EVENTS / 3);
    let (second, third) = rest.split_at(EVENTS / 3);
    for (org, event) in &events {
        env.produce_event(org, event).await;
    }
    let mut child = env.spawn_enrich_process("run-1.log");
    wait_for_output(&env, &mut child, 30.0).await;
    kill_child(&mut child);

    for (org, event) in second {
        env.produce_event(org, event).await;
    }
    let mut child = env.spawn_enrich_process("run-2.log");
    wait_for_output(&env, &mut child, 45.0).await;
    // Only paces this kill a few ms after the progress seen (it proves
    // nothing by itself).
    tokio::time::sleep(Duration::from_millis(7)).await;
    kill_child(&mut child);

    let mut child = env.spawn_enrich_process("run-3.log");
    for (org, event) in third {
        env.produce_event(org, event).await;
    }
    wait_for_output(&env, &mut child, 5.0).await;
    kill_child(&mut child);

    let mut child = env.spawn_enrich_process("run-4.log");
    let topic = env.topic("slack_messages");
    let codec = env.codecs["slack_messages"].clone();
    let wanted = expected.len();
    let records = env
        .read_until(
            &topic,
            |records| {
                records
                    .iter()
                    .filter_map(|r| r.payload.as_deref())
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= wanted
            },
            WAIT,
        )
        .await;

    // A polite stop of the last run exits cleanly.
    let status = stop_child(&mut child, WAIT).await;
    assert!(status.success(), "SIGTERM exit: {status}");

    let mut by_alert: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        let payload = record.payload.clone().expect("payload");
        let message =
            alertsvc::messages::SlackMessage::from_json(codec.decode(&payload).await.unwrap())
                .unwrap();
        assert_eq!(record.key.as_deref(), Some(message.channel_id.as_str()));
        by_alert
            .entry(message.alert_id.clone())
            .or_default()
            .insert(payload);
        *copies.entry(message.alert_id).or_default() += 1;
    }
    let got: BTreeSet<String> = by_alert.keys().cloned().collect();
    assert_eq!(got, expected, "every expected alert, nothing else");
    for (alert, versions) in &by_alert {
        assert_eq!(
            versions.len(),
            1,
            "alert {alert} repeated with different bytes"
        );
    }
    if std::env::var("ALERTSVC_TEST_FULL_KAFKA").is_ok_and(|v| v == "1") {
        let repeated: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
        assert!(repeated.is_empty(), "exactly-once broken: {repeated:?}");
    }
    eprintln!(
        "crash test: {} alerts, {} records read ({} repeats)",
        got.len(),
        records.len(),
        records.len() - got.len()
    );
}
