//! `alertsvc config check`: broken configurations are refused with a message
//! naming the key, and no secret reaches any output.

use std::process::Command;

use crate::common::config_dir;
use crate::common::registry::{shipped_schema, with_field, Access, FakeRegistry};

const SASL_SECRET: &str = "s3cr3t-sasl-VALUE";
const PEM_SECRET: &str = "pem-pass-Q7x";
const LEDGER_SECRET: &str = "ledger-pw-K9z";

pub(crate) struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) fn check(overlay: &str) -> Outcome {
    check_with_env(overlay, &[])
}

/// `config check` with these variables set over a clean environment.
fn check_with_env(overlay: &str, env: &[(&str, &str)]) -> Outcome {
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
        .env_remove("ALERTSVC_REPLICAS")
        .envs(env.iter().copied())
        .output()
        .expect("run alertsvc");
    let outcome = Outcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for secret in [SASL_SECRET, PEM_SECRET, LEDGER_SECRET] {
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

pub(crate) fn assert_refused(overlay: &str, expected: &[&str]) {
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
fn bad_suppress_expression_and_join_keys_are_refused() {
    const P: &str = "enrich.pipelines.connector-provisioning-failure";
    assert_refused(
        &format!("[{P}]\nsuppress = \"alert_state.state ==\"\n"),
        &[&format!("{P}.suppress"), "invalid CEL expression"],
    );
    let joins = |third: &str| {
        format!(
            "[{P}]\njoins = [\n  {{ name = \"assignment\", table = \"csdr_assignment\", key = \"key\", kind = \"inner\" }},\n  {{ name = \"slack_user\", table = \"slack_users\", key = \"assignment.csdr_email\", kind = \"left\" }},\n  {{ name = \"alert_state\", table = \"alert_state\", kind = \"left\", {third} }},\n]\n"
        )
    };
    assert_refused(
        &joins("key_template = \"{{ alert_id \""),
        &[&format!("{P}.joins[2].key_template"), "invalid template"],
    );
    assert_refused(
        &joins("key = \"alert_id\", key_template = \"{{ alert_id }}\""),
        &[
            &format!("{P}.joins[2]"),
            "join \"alert_state\": set exactly one of key (CEL) and key_template",
        ],
    );
    // The alert id the key reads must not need the status (rendered last).
    assert_refused(
        &format!(
            "{}[{P}.message]\nalert_id = \"{{{{ key }}}}-{{{{ status }}}}\"\n",
            joins("key = \"alert_id\"")
        ),
        &[
            &format!("{P}.joins[2].key"),
            "join \"alert_state\": the key reads alert_id, and message.alert_id reads status",
        ],
    );
    for name in ["alert_id", "now"] {
        assert_refused(
            &format!("[{P}]\njoins = [\n  {{ name = \"{name}\", table = \"alert_state\", key = \"key\", kind = \"left\" }},\n]\n"),
            &["joins[0].name", "reserved"],
        );
    }
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
    assert_refused(
        "[notify]\nalert_state = \"states\"\n",
        &["notify.alert_state", "no topic \"states\""],
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

/// `checkpoint.lookback` in the checkpoint's own unit: a duration for
/// timestamps, a count for integers, nothing for strings.
#[test]
fn a_lookback_in_the_wrong_unit_is_refused() {
    let key = "produce.jobs.connector-failures.checkpoint.lookback";
    let job = "[produce.jobs.connector-failures.checkpoint]\n";
    assert_refused(
        &format!("{job}lookback = 900\n"),
        &[
            key,
            "a timestamp checkpoint looks back by a duration such as \"15m\", not the number 900",
        ],
    );
    assert_refused(
        &format!("{job}lookback = \"15 parsecs\"\n"),
        &[key, "\"15 parsecs\" is not a duration"],
    );
    assert_refused(
        &format!("{job}kind = \"integer\"\nlookback = \"15m\"\n"),
        &[
            key,
            "an integer checkpoint looks back by a count of values such as 1000, not \"15m\"",
        ],
    );
    assert_refused(
        &format!("{job}kind = \"integer\"\nlookback = -3\n"),
        &[key, "must not be negative"],
    );
    assert_refused(
        &format!("{job}kind = \"string\"\n"),
        &[key, "a string checkpoint has no distance to look back by"],
    );
    assert_refused(
        "[produce]\nlease = \"200ms\"\n",
        &["produce.lease", "at least 1s"],
    );
    let outcome = check(&format!("{job}kind = \"integer\"\nlookback = 1000\n"));
    assert!(outcome.success, "{}", outcome.stderr);
    assert!(
        outcome.stdout.contains("lookback = 1000"),
        "{}",
        outcome.stdout
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

const SQLITE_REPLICAS_WARNING: &str = "warning: ALERTSVC_REPLICAS=2 with a SQLite ledger \
(notify.ledger.database_url): each replica keeps its own ledger file, so an alert can be \
posted twice when its partition moves to another replica; use PostgreSQL (postgres://…) \
for more than one notify replica\n";

/// The lines of stderr that are warnings.
fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("warning:"))
        .collect()
}

#[test]
fn sqlite_ledger_with_several_replicas_is_a_warning_not_an_error() {
    let sqlite = "sqlite:///var/lib/alertsvc/alertsvc-ledger.db?mode=rwc";
    let outcome = check_with_env(
        "",
        &[
            ("ALERTSVC_REPLICAS", "2"),
            ("ALERTSVC__NOTIFY__LEDGER__DATABASE_URL", sqlite),
        ],
    );
    assert!(outcome.success, "{}", outcome.stderr);
    assert_eq!(
        warnings(&outcome.stderr),
        vec![SQLITE_REPLICAS_WARNING.trim_end()],
        "{}",
        outcome.stderr
    );
    // The warning comes before the verdict, which is still OK.
    assert!(
        outcome
            .stderr
            .ends_with(&format!("{SQLITE_REPLICAS_WARNING}configuration OK\n")),
        "{}",
        outcome.stderr
    );
    // The default ledger (a relative SQLite file) warns the same way.
    let outcome = check_with_env("", &[("ALERTSVC_REPLICAS", "2")]);
    assert!(outcome.success, "{}", outcome.stderr);
    assert_eq!(
        warnings(&outcome.stderr),
        vec![SQLITE_REPLICAS_WARNING.trim_end()]
    );
}

#[test]
fn no_replica_warning_for_one_replica_postgres_or_an_unknown_count() {
    let postgres = format!("postgres://alertsvc:{LEDGER_SECRET}@postgres.invalid:5432/alertsvc");
    for env in [
        vec![],
        vec![("ALERTSVC_REPLICAS", "1")],
        vec![("ALERTSVC_REPLICAS", "0")],
        vec![
            ("ALERTSVC_REPLICAS", "3"),
            ("ALERTSVC__NOTIFY__LEDGER__DATABASE_URL", postgres.as_str()),
        ],
    ] {
        let outcome = check_with_env("", &env);
        assert!(outcome.success, "{env:?}: {}", outcome.stderr);
        assert_eq!(
            warnings(&outcome.stderr),
            Vec::<&str>::new(),
            "{env:?}: {}",
            outcome.stderr
        );
        assert!(outcome.stderr.ends_with("configuration OK\n"));
    }
    // Without [notify] there is no ledger to warn about.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&config_dir(), dir.path());
    let default = dir.path().join("default.toml");
    let text = std::fs::read_to_string(&default).unwrap();
    let start = text.find("[notify]").expect("[notify] in default.toml");
    let end = text[start..]
        .find("\n[produce")
        .map(|i| start + i)
        .expect("[produce] after [notify]");
    let without_notify: String = text[..start]
        .lines()
        .chain(text[end..].lines())
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&default, without_notify).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_alertsvc"))
        .arg("--config-dir")
        .arg(dir.path())
        .args(["config", "check"])
        .env_remove("ALERTSVC_ENV")
        .env("ALERTSVC_REPLICAS", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(warnings(&stderr), Vec::<&str>::new(), "{stderr}");
}

#[test]
fn replica_count_that_is_not_a_number_is_refused() {
    let outcome = check_with_env("", &[("ALERTSVC_REPLICAS", "two")]);
    assert!(!outcome.success);
    assert!(
        outcome.stderr.contains(
            "`ALERTSVC_REPLICAS`: `two` is not a replica count (a whole number, 0 or more)"
        ),
        "{}",
        outcome.stderr
    );
}

fn key_fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn key_formats_are_checked() {
    let record_key = key_fixture("org_region_key.avsc");
    // A record key on a table alertsvc only reads is fine.
    let outcome = check(&format!(
        "[topics.csdr_assignment]\nkey_format = \"avro-single-object\"\nkey_schema = {record_key:?}\n"
    ));
    assert!(outcome.success, "{}", outcome.stderr);
    assert!(
        outcome
            .stdout
            .contains("key_format = \"avro-single-object\""),
        "{}",
        outcome.stdout
    );
    assert!(outcome.stdout.contains("key_format = \"string\""));

    assert_refused(
        "[topics.notifications]\nkey_format = \"avro\"\n",
        &[
            "topics.notifications.key_format",
            "unknown key_format \"avro\"; expected one of \"string\", \"json\", \"avro-confluent\", \"avro-single-object\"",
        ],
    );
    assert_refused(
        "[topics.notifications]\nkey_format = \"avro-single-object\"\n",
        &[
            "topics.notifications.key_schema",
            "key_format = \"avro-single-object\" needs a key schema file",
        ],
    );
    assert_refused(
        &format!("[topics.notifications]\nkey_schema = {record_key:?}\n"),
        &[
            "topics.notifications.key_schema",
            "only used with key_format",
            "(key_format is \"string\")",
        ],
    );
    assert_refused(
        &format!(
            "[topics.notifications]\nkey_format = \"avro-confluent\"\nkey_schema = {record_key:?}\n"
        ),
        &[
            "topics.notifications.key_format",
            "avro-confluent keys need [schema_registry]",
        ],
    );
    assert_refused(
        "[topics.notifications]\nkey_format = \"avro-single-object\"\nkey_schema = \"schemas/nope.avsc\"\n",
        &["topics.notifications.key_schema", "nope.avsc"],
    );
}

/// enrich writes channel ids as keys of slack-messages, and produce writes
/// its key column: a record-typed key schema cannot hold them.
#[test]
fn topics_alertsvc_writes_need_string_key_schemas() {
    let record_key = key_fixture("org_region_key.avsc");
    assert_refused(
        &format!(
            "[topics.slack_messages]\nkey_format = \"avro-single-object\"\nkey_schema = {record_key:?}\n"
        ),
        &[
            "`topics.slack_messages.key_schema`",
            "org_region_key.avsc is of type record",
            "alertsvc writes string keys to this topic \
             (enrich.pipelines.connector-provisioning-failure.output)",
            "needs an Avro key schema of type \"string\"",
        ],
    );
    assert_refused(
        &format!(
            "[topics.notifications]\nkey_format = \"avro-single-object\"\nkey_schema = {record_key:?}\n"
        ),
        &["`topics.notifications.key_schema`", "produce.jobs.connector-failures"],
    );
    let outcome = check(&format!(
        "[topics.slack_messages]\nkey_format = \"avro-single-object\"\nkey_schema = {:?}\n",
        key_fixture("string_key.avsc")
    ));
    assert!(outcome.success, "{}", outcome.stderr);
}

/// `check` off the async runtime, which serves the fake registry meanwhile.
async fn check_async(overlay: String) -> Outcome {
    tokio::task::spawn_blocking(move || check(&overlay))
        .await
        .expect("config check")
}

const REGISTRY_SECRET: &str = "sr-secret-Z81";

/// The registry section of an overlay, with a read-only key's credentials.
fn registry_overlay(url: &str) -> String {
    format!(
        "[schema_registry]\nurl = \"{url}\"\nusername = \"SRKEY\"\npassword = \"{REGISTRY_SECRET}\"\n"
    )
}

fn assert_no_registry_secret(outcome: &Outcome) {
    assert!(
        !outcome.stdout.contains(REGISTRY_SECRET),
        "{}",
        outcome.stdout
    );
    assert!(
        !outcome.stderr.contains(REGISTRY_SECRET),
        "{}",
        outcome.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_subjects_modes_and_ids_are_listed_without_registering() {
    let registry = FakeRegistry::start().await;
    registry.add_key("SRKEY", REGISTRY_SECRET, Access::ReadOnly);
    let message_id = registry.register(
        "slack-messages-value",
        &shipped_schema("slack_message.avsc"),
    );
    let user_schema = shipped_schema("slack_user.avsc");
    registry.register("data-slack-users-value", &user_schema);
    let latest_user_id = registry.register(
        "data-slack-users-value",
        &with_field(
            &user_schema,
            serde_json::json!({"name": "timezone", "type": "string", "default": "UTC"}),
        ),
    );
    let overlay = format!(
        "{}\
         [topics.slack_messages]\nformat = \"avro-confluent\"\nauto_register = false\n\
         [topics.slack_responses]\nformat = \"avro-confluent\"\n\
         [topics.slack_users]\nformat = \"avro-confluent\"\nuse_latest_version = true\n",
        registry_overlay(&registry.url)
    );
    let outcome = check_async(overlay).await;
    assert!(outcome.success, "{}", outcome.stderr);
    assert_no_registry_secret(&outcome);
    assert!(
        outcome.stderr.contains(&format!(
            "Schema Registry subjects of avro-confluent topics:\n\
             \x20 topics.slack_messages: subject slack-messages-value, auto_register = false: \
             schema id {message_id}, version 1\n\
             \x20 topics.slack_responses: subject slack-responses-value, auto_register = true: \
             not registered yet (the first write registers it)\n\
             \x20 topics.slack_users: subject data-slack-users-value, use_latest_version = true: \
             latest is schema id {latest_user_id}, version 2\n\
             configuration OK\n"
        )),
        "{}",
        outcome.stderr
    );
    // The topic's own keys are shown in the resolved configuration.
    assert!(
        outcome.stdout.contains("use_latest_version = true"),
        "{}",
        outcome.stdout
    );
    let registrations: Vec<_> = registry
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/versions"))
        .collect();
    assert!(
        registrations.is_empty(),
        "config check registers nothing: {registrations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_answers_a_stage_would_refuse_fail_the_check() {
    let registry = FakeRegistry::start().await;
    registry.add_key("SRKEY", REGISTRY_SECRET, Access::ReadOnly);
    // The subject has a schema, but not ours.
    registry.register(
        "slack-messages-value",
        &shipped_schema("slack_response.avsc"),
    );
    let outcome = check_async(format!(
        "{}[topics.slack_messages]\nformat = \"avro-confluent\"\nauto_register = false\n",
        registry_overlay(&registry.url)
    ))
    .await;
    assert!(!outcome.success, "accepted: {}", outcome.stderr);
    assert_no_registry_secret(&outcome);
    let refusal = "schema io.alertsvc.SlackMessage is not registered under subject \
                   slack-messages-value (HTTP request to schema registry failed with status \
                   404 Not Found: error_code: 40403, message: Schema not found)";
    assert!(
        outcome.stderr.contains(&format!(
            "  topics.slack_messages: subject slack-messages-value, auto_register = false: ERROR: {refusal}"
        )),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome
            .stderr
            .contains(&format!("`topics.slack_messages`: {refusal}")),
        "{}",
        outcome.stderr
    );

    // A latest version that dropped a field alertsvc writes.
    registry.register(
        "data-slack-users-value",
        r#"{"type":"record","name":"SlackUser","namespace":"io.alertsvc","fields":[
            {"name":"email","type":"string"},{"name":"slack_user_id","type":"string"}]}"#,
    );
    let outcome = check_async(format!(
        "{}[topics.slack_users]\nformat = \"avro-confluent\"\nuse_latest_version = true\n",
        registry_overlay(&registry.url)
    ))
    .await;
    assert!(!outcome.success, "accepted: {}", outcome.stderr);
    assert!(
        outcome.stderr.contains(
            "`topics.slack_users`: the latest version of subject data-slack-users-value \
             (version 1, id 2) cannot be written with records of schema io.alertsvc.SlackUser: \
             it has no field display_name, team_id (fields alertsvc writes)"
        ),
        "{}",
        outcome.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_reported_not_fatal() {
    let url = format!("http://127.0.0.1:{}", crate::common::free_port());
    let outcome = check_async(format!(
        "{}[topics.slack_messages]\nformat = \"avro-confluent\"\nauto_register = false\n",
        registry_overlay(&url)
    ))
    .await;
    assert!(outcome.success, "{}", outcome.stderr);
    assert_no_registry_secret(&outcome);
    assert!(
        outcome.stderr.contains(
            "  topics.slack_messages: subject slack-messages-value, auto_register = false: \
             not checked: schema registry unavailable: looking up the schema under subject \
             slack-messages-value: http call to schema registry failed"
        ),
        "{}",
        outcome.stderr
    );
}

#[test]
fn registry_modes_are_checked_against_the_topic_format() {
    assert_refused(
        "[topics.slack_messages]\nauto_register = false\n",
        &[
            "topics.slack_messages.auto_register",
            "only for avro-confluent topics",
        ],
    );
    assert_refused(
        "[schema_registry]\nurl = \"http://127.0.0.1:1\"\nauto_register = true\nuse_latest_version = true\n",
        &[
            "schema_registry.use_latest_version",
            "cannot be combined with auto_register = true",
        ],
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

/// `group_key` is a template checked like the message's, and comes with
/// `group_window`; unknown keys next to them are refused.
#[test]
fn grouping_settings_are_checked() {
    let pipeline = "[enrich.pipelines.connector-provisioning-failure]";
    let outcome = check(&format!(
        "{pipeline}\ngroup_key = \"{{{{ key }}}}\"\ngroup_window = \"10m\"\n\
         [notify]\ngroup_update_interval = \"2s\"\n"
    ));
    assert!(outcome.success, "{}", outcome.stderr);
    assert_refused(
        &format!("{pipeline}\ngroup_key = \"{{{{ key \"\ngroup_window = \"10m\"\n"),
        &[
            "enrich.pipelines.connector-provisioning-failure.group_key",
            "invalid template",
        ],
    );
    assert_refused(
        &format!("{pipeline}\ngroup_key = \"{{{{ key }}}}\"\n"),
        &[
            "enrich.pipelines.connector-provisioning-failure.group_window",
            "set group_window with group_key",
        ],
    );
    assert_refused(
        &format!("{pipeline}\ngroup_key = \"{{{{ key }}}}\"\ngroup_windows = \"10m\"\n"),
        &["group_windows"],
    );
}

/// `[kafka.client]` is applied last, so it can override what a stage's
/// client relies on: each such property is a warning naming the clients it
/// overrides and why it matters; tuning properties and values equal to the
/// stage's are not.
#[test]
fn kafka_client_overriding_a_relied_on_property_is_a_warning() {
    let outcome = check(&format!(
        "[kafka.client]\n\"isolation.level\" = \"read_uncommitted\"\n\
         \"enable.idempotence\" = \"false\"\n\"acks\" = \"all\"\n\"linger.ms\" = \"50\"\n\
         \"ssl.key.password\" = \"{PEM_SECRET}\"\n"
    ));
    assert!(outcome.success, "{}", outcome.stderr);
    assert_eq!(
        warnings(&outcome.stderr),
        vec![
            "warning: kafka.client.isolation.level = read_uncommitted overrides what the enrich \
             consumer, the enrich table reader of alert_state, the enrich table reader of \
             csdr_assignment, the enrich table reader of slack_users, the notify consumer, the \
             produce read-back reader, the dlq replay reader set (read_committed): records of \
             aborted or still open transactions would be read as if committed",
            "warning: kafka.client.enable.idempotence = false overrides what the enrich \
             producer, the enrich dead-letter producer, the notify producer, the produce \
             producer, the dlq replay producer set (true): a retried send could be written twice",
        ],
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.ends_with("configuration OK\n"));
    // The shipped `[kafka.client]` (client.id) overrides nothing.
    assert_eq!(warnings(&check("").stderr), Vec::<&str>::new());
    // `[produce.producer]`, applied after `[kafka.client]`, is checked
    // against produce's producer.
    let outcome = check("[produce.producer]\n\"acks\" = \"1\"\n\"linger.ms\" = \"5\"\n");
    assert!(outcome.success, "{}", outcome.stderr);
    assert_eq!(
        warnings(&outcome.stderr),
        vec![
            "warning: produce.producer.acks = 1 overrides what the produce producer sets (all): \
             a record acknowledged by the leader alone can be lost with it"
        ],
        "{}",
        outcome.stderr
    );
}
