//! `alertsvc config check`: broken configurations are refused with a message
//! naming the key, and no secret reaches any output.

use std::process::Command;

use crate::common::config_dir;

const SASL_SECRET: &str = "s3cr3t-sasl-VALUE";
const PEM_SECRET: &str = "pem-pass-Q7x";

struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

fn check(overlay: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlay.toml");
    std::fs::write(&path, overlay).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_alertsvc"))
        .arg("--config-dir")
        .arg(config_dir())
        .arg("--config")
        .arg(&path)
        .args(["config", "check"])
        .env("ALERTSVC__KAFKA__SASL_USERNAME", "API-KEY-1")
        .env("ALERTSVC__KAFKA__SASL_PASSWORD", SASL_SECRET)
        .env_remove("ALERTSVC_ENV")
        .output()
        .expect("run alertsvc");
    let outcome = Outcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for secret in [SASL_SECRET, PEM_SECRET] {
        assert!(
            !outcome.stdout.contains(secret),
            "secret in stdout: {}",
            outcome.stdout
        );
        assert!(
            !outcome.stderr.contains(secret),
            "secret in stderr: {}",
            outcome.stderr
        );
    }
    outcome
}

fn assert_refused(overlay: &str, expected: &[&str]) {
    let outcome = check(overlay);
    assert!(!outcome.success, "accepted: {overlay}");
    for fragment in expected {
        assert!(
            outcome.stderr.contains(fragment),
            "{fragment:?} not in: {}",
            outcome.stderr
        );
    }
}

#[test]
fn valid_config_prints_resolved_values_with_secrets_redacted() {
    let outcome = check(&format!(
        "[kafka.client]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"ssl.key.password\" = \"{PEM_SECRET}\"\n"
    ));
    assert!(outcome.success, "{}", outcome.stderr);
    assert!(
        outcome.stdout.contains("sasl_password = \"[REDACTED]\""),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome
            .stdout
            .contains("\"ssl.key.password\" = \"[REDACTED]\""),
        "{}",
        outcome.stdout
    );
    assert!(outcome
        .stdout
        .contains("\"security.protocol\" = \"SASL_SSL\""));
    assert!(outcome
        .stdout
        .contains("[enrich.pipelines.connector-provisioning-failure.message]"));
    assert!(outcome.stderr.contains("configuration OK"));
}

#[test]
fn unknown_key_is_refused() {
    assert_refused(
        "[enrich]\nunknown_knob = 1\n",
        &["unknown field `unknown_knob`"],
    );
}

#[test]
fn bad_filter_expression_is_refused() {
    assert_refused(
        "[enrich.pipelines.connector-provisioning-failure]\nfilter = \"event.data ==\"\n",
        &[
            "enrich.pipelines.connector-provisioning-failure.filter",
            "invalid CEL expression",
        ],
    );
}

#[test]
fn missing_template_file_is_refused() {
    assert_refused(
        "[enrich.pipelines.connector-provisioning-failure.message]\nblocks_file = \"templates/nope.json.j2\"\n",
        &["enrich.pipelines.connector-provisioning-failure.message.blocks_file", "nope.json.j2"],
    );
}

#[test]
fn broken_template_is_refused() {
    assert_refused(
        "[enrich.pipelines.connector-provisioning-failure.message]\ntext = \"{{ key \"\n",
        &[
            "enrich.pipelines.connector-provisioning-failure.message.text",
            "invalid template",
        ],
    );
}

#[test]
fn bad_kafka_property_is_refused() {
    assert_refused(
        "[kafka.client]\n\"no.such.property\" = \"1\"\n",
        &[
            "kafka.client.\"no.such.property\"",
            "No such configuration property",
        ],
    );
}

#[test]
fn bad_topic_name_and_dangling_references_are_refused() {
    assert_refused(
        "[topics.slack_messages]\nname = \"slack messages!\"\n",
        &[
            "topics.slack_messages.name",
            "only [a-zA-Z0-9._-] are allowed",
        ],
    );
    assert_refused(
        "[enrich.pipelines.connector-provisioning-failure]\ninput = \"nowhere\"\n",
        &[
            "enrich.pipelines.connector-provisioning-failure.input",
            "no topic \"nowhere\"",
        ],
    );
}

#[test]
fn bad_schema_is_refused() {
    assert_refused(
        "[topics.slack_users]\nschema = \"templates/connector_failure.blocks.json.j2\"\n",
        &["topics.slack_users", "invalid Avro schema"],
    );
}

#[test]
fn wrong_value_type_names_the_key() {
    assert_refused(
        "[enrich]\nmax_batch_records = \"many\"\n",
        &["max_batch_records"],
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn layers_apply_in_order_environment_file_then_overlay_then_env_vars() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&config_dir(), dir.path());
    std::fs::write(
        dir.path().join("production.toml"),
        "[log]\nformat = \"json\"\n[enrich]\nmax_batch_records = 10\nmax_batch_wait = \"1s\"\n",
    )
    .unwrap();
    let overlay = dir.path().join("overlay.toml");
    std::fs::write(&overlay, "[enrich]\nmax_batch_records = 20\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_alertsvc"))
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(&overlay)
        .args(["config", "check"])
        .env("ALERTSVC_ENV", "production")
        .env("ALERTSVC__ENRICH__MAX_BATCH_WAIT", "250ms")
        .env(
            "ALERTSVC__KAFKA__BOOTSTRAP_SERVERS",
            "broker-1:9092,broker-2:9092",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("format = \"json\""),
        "environment file: {stdout}"
    );
    assert!(
        stdout.contains("max_batch_records = 20"),
        "overlay beats environment file"
    );
    assert!(
        stdout.contains("max_batch_wait = \"250ms\""),
        "env var beats every file"
    );
    assert!(stdout.contains("bootstrap_servers = \"broker-1:9092,broker-2:9092\""));
}

#[test]
fn writer_schemas_must_resolve_to_the_topic_schema() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/avro");
    let old = fixtures.join("slack_message_v0.avsc");
    let outcome = check(&format!(
        "[topics.slack_messages]\nwriter_schemas = [{:?}]\n",
        old.display().to_string()
    ));
    assert!(outcome.success, "{}", outcome.stderr);
    assert!(
        outcome.stdout.contains("slack_message_v0.avsc"),
        "{}",
        outcome.stdout
    );

    // `createdAt` a string: no Avro rule reads it as the reader's long.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("slack_message_broken.avsc");
    std::fs::write(
        &broken,
        r#"{"type":"record","name":"SlackMessage","namespace":"io.alertsvc","fields":[
            {"name":"alertId","type":"string"},{"name":"channelId","type":"string"},
            {"name":"text","type":"string"},{"name":"blocks","type":"string"},
            {"name":"createdAt","type":"string"}]}"#,
    )
    .unwrap();
    assert_refused(
        &format!(
            "[topics.slack_messages]\nwriter_schemas = [{:?}]\n",
            broken.display().to_string()
        ),
        &[
            "topics.slack_messages",
            "slack_message_broken.avsc",
            "cannot be resolved",
        ],
    );
    assert_refused(
        &format!(
            "[topics.slack_users]\nformat = \"json\"\nwriter_schemas = [{:?}]\n",
            old.display().to_string()
        ),
        &["topics.slack_users", "only for avro-single-object"],
    );
}

#[test]
fn lifecycle_settings_are_checked_by_name() {
    assert_refused(
        "[enrich.pipelines.connector-provisioning-failure]\nupdates = \"edits\"\n",
        &[
            "enrich.pipelines.connector-provisioning-failure.updates",
            "edits",
        ],
    );
    assert_refused(
        "[enrich.pipelines.connector-provisioning-failure]\nrecurrence = \"always\"\n",
        &["enrich.pipelines.connector-provisioning-failure.recurrence"],
    );
    assert_refused(
        "[enrich.pipelines.connector-provisioning-failure.message]\nstatus = \"{{ x \"\n",
        &["enrich.pipelines.connector-provisioning-failure.message.status"],
    );
    assert_refused(
        "[enrich.pipelines.connector-provisioning-failure]\njoins = [\n  { name = \"status\", table = \"slack_users\", key = \"key\", kind = \"left\" },\n]\n",
        &["joins[0].name", "reserved"],
    );
}
