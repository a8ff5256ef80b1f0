//! Schema Registry modes for the topics alertsvc writes, against a registry
//! whose key may read but not write (as Confluent Cloud teams hand out when
//! a pipeline registers the schemas): `auto_register = false` looks the
//! schema up and writes with its id, `use_latest_version` writes as the
//! subject's latest version, and `auto_register = true` with such a key
//! waits, not ready, with the fix on `/readyz`.

use std::time::Duration;

use alertsvc::clock::now_ms;
use serde_json::{json, Value};

use crate::common::registry::{
    shipped_schema, value_subject, with_field, Access, Call, FakeRegistry,
};
use crate::common::warehouse::{failure, produce_toml, Warehouse};
use crate::common::{connector_event, eventually, http_get, metric_value, Broker, Record, TestEnv};

const WAIT: Duration = Duration::from_secs(30);
const PIPELINE: &str = "connector-provisioning-failure";
const KEY: &str = "READONLYKEY";
const SECRET: &str = "read-only-secret-9f";

/// The registry's schemas are registered by the pipeline, not by alertsvc.
const NO_AUTO_REGISTER: &str = "[schema_registry]\nauto_register = false\n";

/// A registry with one read-only key, and a test environment using it with
/// `topics` (TOML) on top: the stream and the output in `avro-confluent`,
/// the assignments table in JSON.
async fn read_only_env(topics: &str) -> (FakeRegistry, TestEnv) {
    let registry = FakeRegistry::start().await;
    registry.add_key(KEY, SECRET, Access::ReadOnly);
    let base = registry.overlay(
        Some((KEY, SECRET)),
        &[
            ("notifications", "avro-confluent"),
            ("slack_messages", "avro-confluent"),
            ("csdr_assignment", "json"),
        ],
    );
    let env = TestEnv::with_layers(Broker::start(), &[&base, topics]).await;
    // What the pipeline owning the stream registered.
    registry.register(
        &value_subject(&env.topic("notifications")),
        &shipped_schema("notifications_pipeline_event.avsc"),
    );
    env.put_assignment("org-1", "a@example.com", "One").await;
    env.put_slack_user("a@example.com", "U1").await;
    (registry, env)
}

/// The schema id of a Confluent-framed record, and its datum decoded with
/// `schema` (not with alertsvc's codec).
#[allow(deprecated)]
fn decode_framed(schema: &str, payload: &[u8]) -> (u32, Value) {
    assert_eq!(payload[0], 0, "Confluent magic byte");
    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    let schema = apache_avro::Schema::parse_str(schema).expect("schema");
    let mut datum = &payload[5..];
    let value = apache_avro::from_avro_datum(&schema, &mut datum, None).expect("datum");
    assert!(datum.is_empty(), "trailing bytes");
    (id, alertsvc::avro::avro_to_json(value))
}

/// The alert enrich renders for `connector_event("e0", "env", "c0", …)` of
/// org-1 at `position`, `blocks` and `createdAt` left out (checked apart).
fn expected_alert(env: &TestEnv, position: (i32, i64)) -> Value {
    json!({
        "alertId": "org-1-env-c0-connector-failure",
        "channelId": "U1",
        "text": "Connector Failure for Org org-1!",
        "pipeline": PIPELINE,
        "sourceTopic": env.topic("notifications"),
        "sourcePartition": position.0,
        "sourceOffset": position.1,
        // The shipped pipeline's lifecycle settings (issue 12).
        "status": "firing",
        "updates": "edit",
        "recurrence": "thread",
        "resolvedUnposted": "skip",
        // Not grouped as shipped.
        "groupKey": null,
        "groupWindowMs": 0,
    })
}

/// Checks the parts of a decoded alert `expected_alert` leaves out and
/// returns the rest.
fn without_blocks_and_time(mut alert: Value, written_after_ms: i64) -> Value {
    let object = alert.as_object_mut().expect("a record");
    let created_at = object
        .remove("createdAt")
        .and_then(|v| v.as_i64())
        .expect("createdAt");
    assert!(
        (written_after_ms..=now_ms()).contains(&created_at),
        "createdAt {created_at} is the input record's time"
    );
    let blocks: Value = object
        .remove("blocks")
        .and_then(|b| {
            b.as_str()
                .map(|s| serde_json::from_str(s).expect("blocks JSON"))
        })
        .expect("blocks");
    assert_eq!(
        blocks[5]["elements"][0]["text"],
        format!("Alert `org-1-env-c0-connector-failure` · pipeline {PIPELINE}")
    );
    alert
}

fn registrations(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/versions"))
        .collect()
}

async fn one_alert(env: &TestEnv) -> ((i32, i64), Record) {
    let position = env
        .produce_event("org-1", &connector_event("e0", "env", "c0", "Provisioning"))
        .await;
    let records = env.read(&env.topic("slack_messages"), 1, WAIT).await;
    assert_eq!(records.len(), 1, "one alert: {records:?}");
    (position, records[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_register_false_writes_with_the_id_the_pipeline_registered() {
    let (registry, env) = read_only_env(NO_AUTO_REGISTER).await;
    let subject = value_subject(&env.topic("slack_messages"));
    let schema = shipped_schema("slack_message.avsc");
    // Another schema first, so the output's id is not 1 by chance.
    registry.register("unrelated-value", &shipped_schema("slack_user.avsc"));
    let id = registry.register(&subject, &schema);
    let started = now_ms();

    let enrich = env.start_enrich().await;
    let (position, record) = one_alert(&env).await;
    let (written_id, alert) = decode_framed(&schema, record.payload.as_deref().expect("payload"));
    assert_eq!(written_id, id, "framed with the registered id");
    assert_eq!(
        without_blocks_and_time(alert, started),
        expected_alert(&env, position)
    );
    assert_eq!(record.key.as_deref(), Some("U1"));

    let calls = registry.calls();
    assert_eq!(
        registrations(&calls),
        Vec::<&Call>::new(),
        "never registers"
    );
    assert!(
        calls.iter().all(|c| c.status == 200),
        "every call allowed to a read-only key: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.method == "POST" && c.path == format!("/subjects/{subject}")),
        "looked up: {calls:?}"
    );
    assert_eq!(registry.versions(&subject), [id]);
    assert_eq!(env.end_offsets(&env.dlq("notifications"), 1), [0]);
    enrich.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_latest_version_writes_records_as_the_newer_registered_schema() {
    let (registry, env) = read_only_env(
        r#"
        [topics.notifications]
        auto_register = false
        [topics.slack_messages]
        use_latest_version = true
        "#,
    )
    .await;
    let subject = value_subject(&env.topic("slack_messages"));
    let ours = shipped_schema("slack_message.avsc");
    let v1 = registry.register(&subject, &ours);
    // A version alertsvc's schema file does not know yet: one field more,
    // with a default, as a BACKWARD-compatible evolution adds it.
    let latest = with_field(
        &ours,
        json!({"name": "priority", "type": "string", "default": "normal"}),
    );
    let v2 = registry.register(&subject, &latest);
    assert_ne!(v1, v2);
    let started = now_ms();

    let enrich = env.start_enrich().await;
    let (position, record) = one_alert(&env).await;
    let (written_id, alert) = decode_framed(&latest, record.payload.as_deref().expect("payload"));
    assert_eq!(written_id, v2, "framed with the latest version's id");
    let mut expected = expected_alert(&env, position);
    expected["priority"] = json!("normal");
    assert_eq!(without_blocks_and_time(alert, started), expected);
    // alertsvc's own reader takes it too (notify reads slack-messages).
    let messages = env.read_messages(1, WAIT).await;
    assert_eq!(messages[0].1.alert_id, "org-1-env-c0-connector-failure");

    let calls = registry.calls();
    assert_eq!(
        registrations(&calls),
        Vec::<&Call>::new(),
        "never registers"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.method == "GET" && c.path == format!("/subjects/{subject}/versions/latest")),
        "{calls:?}"
    );
    assert_eq!(registry.versions(&subject), [v1, v2]);
    enrich.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_with_auto_register_waits_with_the_fix_on_readyz() {
    // The stream's schema is looked up; the output keeps the default.
    let (registry, env) = read_only_env(
        r#"
        [topics.notifications]
        auto_register = false
        "#,
    )
    .await;
    let subject = value_subject(&env.topic("slack_messages"));
    let enrich = env.start_enrich().await;
    env.produce_event("org-1", &connector_event("e0", "env", "c0", "Provisioning"))
        .await;

    let readyz = format!("http://{}/readyz", env.enrich_addr());
    let expected = format!(
        "not ready: output topic slack_messages waits for the Schema Registry: \
         the registry refused to register schema io.alertsvc.SlackMessage under subject {subject} \
         (auto_register = true): HTTP request to schema registry failed with status 403 Forbidden: \
         error_code: 40301, message: User is denied operation Write on Subject: {subject}; \
         set schema_registry.auto_register = false if schemas are registered by your pipeline\n"
    );
    let status = eventually(WAIT, "readyz naming the fix", || async {
        http_get(&readyz)
            .await
            .filter(|(_, body)| body == &expected)
            .map(|(status, _)| status)
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        metric_value(&env.metrics().await, "alertsvc_enrich_registry_unavailable"),
        Some(1.0)
    );
    let refused: Vec<Call> = registry
        .calls()
        .into_iter()
        .filter(|c| c.path == format!("/subjects/{subject}/versions"))
        .collect();
    assert!(
        !refused.is_empty()
            && refused
                .iter()
                .all(|c| c.method == "POST" && c.status == 403),
        "{refused:?}"
    );
    // Waiting, not dead-lettering and not writing.
    assert_eq!(env.end_offsets(&env.dlq("notifications"), 1), [0]);
    assert_eq!(
        env.end_offsets(&env.topic("slack_messages"), 3)
            .iter()
            .sum::<i64>(),
        0
    );

    // The key is granted write access (or rotated to one that has it):
    // enrich registers and goes on without a restart.
    registry.set_access(KEY, Access::ReadWrite);
    env.wait_ready(WAIT).await;
    let messages = env.read_messages(1, WAIT).await;
    assert_eq!(messages[0].1.alert_id, "org-1-env-c0-connector-failure");
    assert_eq!(registry.versions(&subject).len(), 1, "registered once");
    enrich.stop().await.expect("clean stop");
}

/// Starts enrich with one event waiting and returns the error it stops
/// with at startup, having registered, dead-lettered and written nothing.
async fn refused_at_startup(registry: &FakeRegistry, env: &TestEnv) -> String {
    let calls_before = registry.calls().len();
    env.produce_event("org-1", &connector_event("e0", "env", "c0", "Provisioning"))
        .await;
    let enrich = env.start_enrich().await;
    let error = tokio::time::timeout(WAIT, enrich.handle)
        .await
        .expect("enrich stops by itself")
        .expect("enrich task")
        .expect_err("a configuration error");
    assert_eq!(
        registrations(&registry.calls()[calls_before..]),
        Vec::<&Call>::new()
    );
    assert_eq!(env.end_offsets(&env.dlq("notifications"), 1), [0]);
    let written = env.end_offsets(&env.topic("slack_messages"), 3);
    assert_eq!(written.iter().sum::<i64>(), 0);
    error
}

/// What a stage says when `schema` is missing from `subject` and it may
/// only look schemas up.
fn not_registered(schema: &str, subject: &str) -> String {
    format!(
        "topic slack_messages: schema {schema} is not registered under subject \
         {subject} (HTTP request to schema registry failed with status 404 Not Found: \
         error_code: 40401, message: Subject '{subject}' not found.); with auto_register = false \
         alertsvc only looks it up: register it under that subject (as the pipeline that owns \
         the subject does), or set auto_register = true"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_missing_from_a_read_only_subject_stops_enrich_at_startup() {
    let (registry, env) = read_only_env(NO_AUTO_REGISTER).await;
    let subject = value_subject(&env.topic("slack_messages"));
    assert_eq!(
        refused_at_startup(&registry, &env).await,
        not_registered("io.alertsvc.SlackMessage", &subject)
    );
}

/// The same for an output's keys (`avro-confluent`, subject `<topic>-key`):
/// with the value's schema registered and the key's not, enrich stops at
/// startup naming the key subject, before it reads a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_schema_missing_from_a_read_only_subject_stops_enrich_at_startup() {
    let key_schema = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys/string_key.avsc");
    let (registry, env) = read_only_env(&format!(
        r#"
        [schema_registry]
        auto_register = false
        [topics.slack_messages]
        key_format = "avro-confluent"
        key_schema = "{}"
        "#,
        key_schema.display()
    ))
    .await;
    let topic = env.topic("slack_messages");
    registry.register(
        &value_subject(&topic),
        &shipped_schema("slack_message.avsc"),
    );
    assert_eq!(
        refused_at_startup(&registry, &env).await,
        not_registered("\"string\"", &format!("{topic}-key"))
    );
}

/// produce writes its events with the id its read-only key looks up; with
/// the schema not registered yet it stops before reading a row, instead of
/// dead-lettering every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_looks_its_schema_up_and_stops_at_start_when_it_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let rows: Vec<_> = (1..4).map(failure).collect();
    warehouse.insert(&rows).await;
    let registry = FakeRegistry::start().await;
    registry.add_key(KEY, SECRET, Access::ReadOnly);
    let registry_toml = format!(
        r#"
        [schema_registry]
        url = "{}"
        username = "{KEY}"
        password = "{SECRET}"
        auto_register = false
        [topics.notifications]
        format = "avro-confluent"
        "#,
        registry.url
    );
    let env = TestEnv::with_layers(
        Broker::start(),
        &[
            &produce_toml(dir.path(), &warehouse, "", ""),
            &registry_toml,
        ],
    )
    .await;
    let topic = env.topic("notifications");
    let subject = value_subject(&topic);

    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last_line,
        format!(
            "error: produce failed: topic {topic}: schema io.alertsvc.NotificationsPipelineEvent \
             is not registered under subject {subject} (HTTP request to schema registry failed \
             with status 404 Not Found: error_code: 40401, message: Subject '{subject}' not found.); \
             with auto_register = false alertsvc only looks it up: register it under that subject \
             (as the pipeline that owns the subject does), or set auto_register = true"
        )
    );
    assert_eq!(env.end_offsets(&topic, 3).iter().sum::<i64>(), 0);
    assert_eq!(env.end_offsets(&env.dlq("notifications"), 1), [0]);

    // The pipeline registers it; the next run writes with its id.
    let schema = shipped_schema("notifications_pipeline_event.avsc");
    let id = registry.register(&subject, &schema);
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    let records = env.read(&topic, rows.len(), WAIT).await;
    assert_eq!(records.len(), rows.len());
    let mut connectors = Vec::new();
    for record in &records {
        let (written_id, event) =
            decode_framed(&schema, record.payload.as_deref().expect("payload"));
        assert_eq!(written_id, id);
        let data: Value =
            serde_json::from_str(event["data"].as_str().expect("data")).expect("JSON");
        connectors.push(data["connector_id"].as_str().unwrap_or_default().to_owned());
    }
    connectors.sort();
    assert_eq!(connectors, ["lcc-00001", "lcc-00002", "lcc-00003"]);
    assert_eq!(registrations(&registry.calls()), Vec::<&Call>::new());
}
