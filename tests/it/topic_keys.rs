//! `topics.<id>.key_format`: keys decoded as JSON, Avro single-object or
//! Registry-framed Avro reach filters, joins and templates as values; tables
//! are keyed by the canonical text of the decoded key; undecodable keys are
//! dead-lettered naming the key; every key alertsvc writes is encoded in
//! its topic's key format.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::common::registry::{assert_nothing_written, FakeRegistry};
use crate::common::slack::{fake_slack, ledger_url, message, notify_toml, Backend};
use crate::common::sorted_alert_ids;
use crate::common::warehouse::{failure, produce_toml, Failure, Warehouse};
use crate::common::{connector_event, metric_value, Broker, Record, TestEnv};

const WAIT: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
        .display()
        .to_string()
}

/// Waits until `check` holds, polling; panics with `what` after `WAIT`.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    crate::common::eventually(WAIT, what, async || check().await.then_some(())).await
}

fn header<'a>(record: &'a Record, name: &str) -> &'a str {
    record
        .headers
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no header {name} in {:?}", record.headers))
}

/// A stream keyed by JSON objects and a table keyed by Avro single-object
/// records (as a Java producer with an Avro key serializer writes them):
/// the filter reads the key's fields, the join builds the table's key as a
/// CEL map (in another field order), the templates print key fields, a
/// tombstone deletes by record key, and keys that cannot be decoded go to
/// the dead-letter topics with the key named in the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_json_stream_joins_a_table_keyed_by_avro_records() {
    let env = TestEnv::new(&format!(
        r#"
        [topics.notifications]
        key_format = "json"
        [topics.csdr_assignment]
        key_format = "avro-single-object"
        key_schema = "{key_schema}"
        [enrich.pipelines.connector-provisioning-failure]
        enabled = false
        [enrich.pipelines.by-region]
        input = "notifications"
        output = "slack_messages"
        json_fields = ["data"]
        filter = 'key.region == "eu" && event.data.labels.connector_old_status == "Provisioning"'
        joins = [
          {{ name = "assignment", table = "csdr_assignment", key = "{{'region': key.region, 'org_id': key.org}}", kind = "inner" }},
          {{ name = "slack_user", table = "slack_users", key = "assignment.csdr_email", kind = "left" }},
        ]
        [enrich.pipelines.by-region.message]
        alert_id = "{{{{ key.org }}}}-{{{{ key.region }}}}-{{{{ event.data.connector_id }}}}"
        channel = "{{{{ slack_user.slack_user_id if slack_user else 'C0ALERTS' }}}}"
        text = "Connector failure for {{{{ key.org }}}} in {{{{ key.region }}}}"
        blocks = '[{{"type": "section", "text": {{"type": "mrkdwn", "text": "{{{{ assignment.org_name }}}} ({{{{ key.org }}}})"}}}}]'
        "#,
        key_schema = fixture("org_region_key.avsc"),
    ))
    .await;
    let assignment = |org: &str, name: &str, email: &str| {
        json!({"org_id": org, "org_name": name, "csdr_name": null, "csdr_email": email,
               "account_name": null, "updated_at": 1})
    };
    let table = env.topic("csdr_assignment");
    env.produce_keyed(
        "csdr_assignment",
        &json!({"org_id": "org-1", "region": "eu"}),
        &assignment("org-1", "One EU", "a@example.com"),
    )
    .await;
    env.produce_keyed(
        "csdr_assignment",
        &json!({"org_id": "org-2", "region": "us"}),
        &assignment("org-2", "Two US", "b@example.com"),
    )
    .await;
    let org3 = json!({"org_id": "org-3", "region": "eu"});
    env.produce_keyed(
        "csdr_assignment",
        &org3,
        &assignment("org-3", "Three EU", "c@example.com"),
    )
    .await;
    let org3_key = env.encode_key("csdr_assignment", &org3).await;
    env.produce_raw_key(&table, Some(&org3_key), None).await;
    // A record key written with a schema the topic does not know.
    let mut foreign_key = env
        .encode_key(
            "csdr_assignment",
            &json!({"org_id": "org-4", "region": "eu"}),
        )
        .await;
    foreign_key[2] ^= 0xff;
    let foreign_fingerprint: String = foreign_key[2..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let assignment4 = env
        .encode(
            "csdr_assignment",
            &assignment("org-4", "Four", "d@example.com"),
        )
        .await;
    let foreign = env
        .produce_raw_key(&table, Some(&foreign_key), Some(&assignment4))
        .await;
    env.put_slack_user("a@example.com", "U1").await;

    let stream = env.topic("notifications");
    let event = |id: &str, connector: &str| connector_event(id, "env", connector, "Provisioning");
    env.produce_keyed(
        "notifications",
        &json!({"org": "org-1", "region": "eu"}),
        &event("e1", "c1"),
    )
    .await;
    // Filtered by the key's region.
    env.produce_keyed(
        "notifications",
        &json!({"org": "org-1", "region": "us"}),
        &event("e2", "c2"),
    )
    .await;
    // No assignment for org-2 in eu; org-3's was deleted.
    env.produce_keyed(
        "notifications",
        &json!({"org": "org-2", "region": "eu"}),
        &event("e3", "c3"),
    )
    .await;
    env.produce_keyed(
        "notifications",
        &json!({"org": "org-3", "region": "eu"}),
        &event("e4", "c4"),
    )
    .await;
    // A plain string where the topic's keys are JSON documents.
    let payload = env.encode("notifications", &event("e5", "c5")).await;
    let not_json = env
        .produce_raw_key(&stream, Some(b"org-1"), Some(&payload))
        .await;

    let enrich = env.start_enrich().await;
    env.wait_metric(
        "alertsvc_enrich_records_in_total{pipeline=\"by-region\"}",
        5.0,
        WAIT,
    )
    .await;
    let messages = env.read_messages(1, WAIT).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let (record, message) = &messages[0];
    assert_eq!(message.alert_id, "org-1-eu-c1");
    assert_eq!(message.channel_id, "U1");
    assert_eq!(message.text, "Connector failure for org-1 in eu");
    assert_eq!(
        serde_json::from_str::<Value>(&message.blocks).unwrap(),
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "One EU (org-1)"}}])
    );
    assert_eq!(
        record.key.as_deref(),
        Some("U1"),
        "slack_messages keys stay strings"
    );
    let metrics = env.metrics().await;
    for (series, expected) in [
        (
            "alertsvc_enrich_records_dropped_total{pipeline=\"by-region\",reason=\"filtered\"}",
            1.0,
        ),
        (
            "alertsvc_enrich_join_misses_total{pipeline=\"by-region\",table=\"csdr_assignment\"}",
            2.0,
        ),
        (
            "alertsvc_enrich_records_dlq_total{pipeline=\"by-region\",stage=\"decode\"}",
            1.0,
        ),
        (
            "alertsvc_table_updates_total{kind=\"delete\",table=\"csdr_assignment\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric_value(&metrics, series), Some(expected), "{series}");
    }

    let dead = env.read(&env.dlq("notifications"), 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "alertsvc.dlq.stage"), "decode");
    assert_eq!(
        header(&dead[0], "alertsvc.dlq.source.offset"),
        not_json.1.to_string()
    );
    let reason = header(&dead[0], "alertsvc.dlq.reason");
    assert!(
        reason.starts_with("cannot decode key: not valid JSON"),
        "{reason}"
    );
    assert_eq!(dead[0].key_bytes.as_deref(), Some(&b"org-1"[..]));
    assert_eq!(dead[0].payload.as_deref(), Some(payload.as_slice()));

    let dead = env.read(&env.dlq("csdr_assignment"), 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "alertsvc.dlq.source.offset"),
        foreign.1.to_string()
    );
    let reason = header(&dead[0], "alertsvc.dlq.reason");
    assert!(
        reason.starts_with("cannot decode key: unknown schema fingerprint")
            && reason.contains(&foreign_fingerprint),
        "{reason}"
    );
    assert_eq!(dead[0].key_bytes.as_deref(), Some(foreign_key.as_slice()));
    enrich.stop().await.expect("clean stop");
}

/// `avro-confluent` keys: registered under `<topic>-key` (not `-value`),
/// read on the stream and written on the output; a key with a schema id the
/// registry never issued is dead-lettered naming the key; and a registry
/// outage while keys are decoded is waited out, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_avro_confluent_use_the_key_subject_and_wait_out_an_outage() {
    let registry = FakeRegistry::start().await;
    let env = TestEnv::new(&format!(
        r#"
        [schema_registry]
        url = "{url}"
        [topics.notifications]
        key_format = "avro-confluent"
        key_schema = "{key_schema}"
        [topics.slack_messages]
        key_format = "avro-confluent"
        key_schema = "{key_schema}"
        "#,
        url = registry.url,
        key_schema = fixture("string_key.avsc"),
    ))
    .await;
    env.put_assignment("org-1", "a@example.com", "One").await;
    env.put_slack_user("a@example.com", "U1").await;
    let key = env.encode_key("notifications", &json!("org-1")).await;
    assert_eq!(key[0], 0, "Confluent magic byte");
    let key_id = u32::from_be_bytes([key[1], key[2], key[3], key[4]]);
    let topic = env.topic("notifications");
    let event =
        |i: usize| connector_event(&format!("e{i}"), "env", &format!("c{i}"), "Provisioning");
    let mut payloads = Vec::new();
    for i in 0..3 {
        payloads.push(env.encode("notifications", &event(i)).await);
    }

    // Ready first: enrich finds its output key's schema id at startup.
    let enrich = env.start_enrich().await;
    env.wait_ready(WAIT).await;
    registry.start_outage(StatusCode::SERVICE_UNAVAILABLE);
    for payload in &payloads[..2] {
        env.produce_raw_key(&topic, Some(&key), Some(payload)).await;
    }
    let unknown_id = env
        .produce_raw_key(
            &topic,
            Some(&[0, 0, 0, 3, 231, 2, b'x']),
            Some(&payloads[2]),
        )
        .await;
    let key_schema = format!("/schemas/ids/{key_id}");
    eventually("the stream keeps asking for the key's schema", async || {
        registry.refused(&key_schema) >= 3
    })
    .await;
    env.wait_metric("alertsvc_enrich_registry_unavailable", 1.0, WAIT)
        .await;
    assert_nothing_written(&env);

    registry.end_outage();
    let messages = env.read_messages(2, WAIT).await;
    assert_eq!(
        sorted_alert_ids(&messages),
        [
            "org-1-env-c0-connector-failure",
            "org-1-env-c1-connector-failure"
        ]
    );
    for (record, message) in &messages {
        assert_eq!(message.channel_id, "U1");
        let key = record.key_bytes.as_deref().expect("a key");
        assert_eq!(key[0], 0, "the output key is registry-framed");
        assert_eq!(env.decode_key("slack_messages", key).await, json!("U1"));
    }
    let dead = env.read(&env.dlq("notifications"), 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "alertsvc.dlq.source.offset"),
        unknown_id.1.to_string()
    );
    let reason = header(&dead[0], "alertsvc.dlq.reason");
    assert!(
        reason.starts_with("cannot decode key: schema registry: schema id 999"),
        "{reason}"
    );
    let subjects = registry.subjects();
    for subject in [
        format!("{}-key", env.topic("notifications")),
        format!("{}-key", env.topic("slack_messages")),
    ] {
        assert!(subjects.contains(&subject), "{subject} in {subjects:?}");
    }
    assert!(
        !subjects.iter().any(|s| s.ends_with("-value")),
        "values stay single-object: {subjects:?}"
    );
    enrich.stop().await.expect("clean stop");
}

/// produce writes the key column as a JSON string (`"org-1"`, quotes
/// included) on a `json`-keyed topic, and enrich decodes it back to the
/// string the shipped join (`key = "key"`) and templates expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_produce_writes_json_keys_that_enrich_reads() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let rows: Vec<Failure> = (0..10).map(failure).collect();
    warehouse.insert(&rows).await;
    let mut toml = produce_toml(dir.path(), &warehouse, "", "");
    toml.push_str("\n[topics.notifications]\nkey_format = \"json\"\n");
    let env = TestEnv::new(&toml).await;
    for org in 0..7 {
        let org = format!("org-{org}");
        env.put_assignment(&org, &format!("{org}@example.com"), &org)
            .await;
    }
    env.put_slack_user("org-1@example.com", "U1").await;

    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "produce --once failed: {stderr}");
    let records = env
        .read(&env.topic("notifications"), rows.len(), WAIT)
        .await;
    let mut keys: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.key_bytes.clone().expect("a key")).expect("UTF-8"))
        .collect();
    keys.sort();
    let mut expected_keys: Vec<String> = rows
        .iter()
        .map(|r| format!("\"{}\"", r.org.as_deref().unwrap_or_default()))
        .collect();
    expected_keys.sort();
    assert_eq!(keys, expected_keys, "keys are JSON strings");

    let enrich = env.start_enrich().await;
    // Rows 0 and 5 were Running, not Provisioning: filtered.
    let expected: Vec<(String, String)> = (0..10usize)
        .filter(|i| i % 5 != 0)
        .map(|i| {
            let org = format!("org-{}", i % 7);
            let channel = if org == "org-1" { "U1" } else { "C0ALERTS" };
            (
                format!("{org}-env-{}-lcc-{i:05}-connector-failure", i % 3),
                channel.to_owned(),
            )
        })
        .collect();
    let messages = env.read_messages(expected.len(), WAIT).await;
    let mut got: Vec<(String, String)> = messages
        .iter()
        .map(|(_, m)| (m.alert_id.clone(), m.channel_id.clone()))
        .collect();
    got.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(env.end_offsets(&env.dlq("notifications"), 1), [0]);
    enrich.stop().await.expect("clean stop");
}

/// notify reads a `json`-keyed `slack-messages` (it never needs the key)
/// and writes its responses keyed by alert id in the responses topic's key
/// format, here an Avro string in single-object encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_notify_writes_response_keys_in_the_topic_format() {
    let slack = fake_slack(&["C1"], None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_url(Backend::Sqlite, dir.path()).await;
    let keys = format!(
        r#"
        [topics.slack_messages]
        key_format = "json"
        [topics.slack_responses]
        key_format = "avro-single-object"
        key_schema = "{}"
        "#,
        fixture("string_key.avsc")
    );
    let env =
        TestEnv::with_layers(Broker::start(), &[&notify_toml(&slack, &ledger, 50), &keys]).await;
    for alert in ["alert-1", "alert-2"] {
        let message = message(alert, "C1", alert);
        env.produce_keyed(
            "slack_messages",
            &json!("C1"),
            &alertsvc::messages::to_json(&message),
        )
        .await;
    }
    let notify = env.start_notify().await;
    let records = env.read(&env.topic("slack_responses"), 2, WAIT).await;
    let mut keys = Vec::new();
    for record in &records {
        let key = record.key_bytes.as_deref().expect("a key");
        assert_eq!(&key[..2], &[0xC3, 0x01], "single-object key");
        keys.push(env.decode_key("slack_responses", key).await);
    }
    assert_eq!(keys, [json!("alert-1"), json!("alert-2")]);
    assert_eq!(slack.messages().len(), 2);
    notify.stop().await.expect("clean stop");
}
