//! produce when things go wrong: rows that cannot be mapped go to the
//! dead-letter topic and fail the run by name; a broken query or an
//! unreachable source fails with the source's own error and no secret; a
//! dry run touches nothing; the schedule mode serves its endpoints.

use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::common::warehouse::{failure, produce_toml, Failure, Warehouse};
use crate::common::{config_dir, eventually, http_get, metric_value, TestEnv};
use crate::produce_sources::assert_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmappable_rows_go_to_the_dead_letter_topic_and_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let mut rows: Vec<Failure> = (0..30).map(failure).collect();
    rows[4].org = None; // row 5: no key
                        // Row 11 in the result (its order): not a time (though it sorts like one, so the checkpoint
                        // query of the next run passes over it).
    rows[11].failed_at_text = Some("2026-01-01 00:00:0x".into());
    warehouse.insert(&rows).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;

    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 2, "dead letters make exit status 2: {stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(
        last_line.contains("job connector-failures: 2 row(s) could not be mapped")
            && last_line.contains("row 5, column org_id: missing key (NULL)")
            && last_line.contains("row 11, column failed_at"),
        "{last_line}"
    );

    let good: Vec<Failure> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4 && *i != 11)
        .map(|(_, r)| r.clone())
        .collect();
    assert_events(&env, &warehouse, &good).await;
    let dead = env
        .read(&env.dlq("notifications"), 2, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 2);
    let no_key = &dead[0];
    assert_eq!(no_key.key, None);
    assert_eq!(no_key.headers["alertsvc.dlq.job"], "connector-failures");
    assert_eq!(no_key.headers["alertsvc.dlq.row"], "5");
    assert_eq!(no_key.headers["alertsvc.dlq.column"], "org_id");
    assert_eq!(no_key.headers["alertsvc.dlq.stage"], "produce");
    let row: serde_json::Value =
        serde_json::from_slice(no_key.payload.as_deref().unwrap()).unwrap();
    assert_eq!(row["connector_id"], "lcc-00004");
    assert_eq!(row["org_id"], serde_json::Value::Null);
    let bad_time = &dead[1];
    assert_eq!(bad_time.key.as_deref(), Some("org-4"));
    assert_eq!(bad_time.headers["alertsvc.dlq.column"], "failed_at");
    assert!(
        bad_time.headers["alertsvc.dlq.reason"].contains("\"2026-01-01 00:00:0x\""),
        "{:?}",
        bad_time.headers
    );

    // The dead letters hold the rows; the checkpoint moved past them. The
    // lookback reads them again, but they are not dead-lettered again.
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &good).await;
    let dead = env
        .read(&env.dlq("notifications"), 2, Duration::from_secs(20))
        .await;
    assert_eq!(dead.len(), 2);
}

/// Dead letters go through the retrying sender: their first writes fail
/// (injected into the mock broker) and are retried, the run still ends
/// with exit 2 and each dead letter written once, logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_retried_until_the_broker_acknowledges_them() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    // Every row lacks its key: the run writes dead letters and no event,
    // so the injected errors can only hit dead letters.
    let rows: Vec<Failure> = (0..2)
        .map(|i| Failure {
            org: None,
            ..failure(i)
        })
        .collect();
    warehouse.insert(&rows).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;
    let Some(cluster) = env.broker.mock() else {
        return; // needs the mock broker's error injection
    };
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3],
    );

    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 2, "dead letters, all acknowledged: {stderr}");
    assert!(
        stderr.contains("dead-letter write failed; retrying"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("record sent to the dead-letter topic")
            .count(),
        2,
        "each dead letter is logged once: {stderr}"
    );
    let dead = env
        .read(&env.dlq("notifications"), 2, Duration::from_secs(20))
        .await;
    // Retried one by one, they may land in any order.
    let mut rows: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d.headers["alertsvc.dlq.row"].as_str(),
                d.headers["alertsvc.dlq.column"].as_str(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [("1", "org_id"), ("2", "org_id")],
        "each written once"
    );
}

/// A query that names a column the table lacks: exit 1, one line naming
/// the job and source and quoting the source's own error.
async fn bad_sql_fails(warehouse: Warehouse, dir: tempfile::TempDir, source_error: &[&str]) {
    let toml = produce_toml(dir.path(), &warehouse, "AND no_such_column = 1", "");
    let env = TestEnv::new(&toml).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 1, "{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(
        last_line.starts_with(
            "error: produce failed: job connector-failures: source test_warehouse rejected the query"
        ),
        "{last_line}"
    );
    for part in source_error {
        assert!(last_line.contains(part), "{last_line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sql_fails_with_the_source_error() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    bad_sql_fails(warehouse, dir, &["no such column: no_such_column"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sql_on_bigquery_fails_with_the_emulator_error() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::bigquery("produce_bad_sql").await;
    bad_sql_fails(warehouse, dir, &["invalidQuery", "no_such_column"]).await;
}

/// A PostgreSQL URL with a password, pointing nowhere: the run fails
/// naming the source, and the password appears in no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_fails_without_leaking_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let mut toml = produce_toml(dir.path(), &warehouse, "", "");
    toml = toml.replace(
        "kind = \"sql\"\nurl = ",
        "kind = \"sql\"\nurl = \"postgres://reader:hunter2-secret@127.0.0.1:1/warehouse\"\n# url = ",
    );
    let env = TestEnv::new(&toml).await;
    let (code, stdout, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 1, "{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(
        last_line.contains("cannot connect to source test_warehouse"),
        "{last_line}"
    );
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "{stderr}"
    );

    let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_alertsvc"));
    let output = check
        .arg("--config-dir")
        .arg(config_dir())
        .arg("--config")
        .arg(&env.overlay)
        .args(["config", "check"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("[produce.sources.test_warehouse]"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
}

/// `--dry-run` prints each event as a JSON line and leaves Kafka and the
/// state alone: a real run afterwards still emits everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_events_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let rows: Vec<Failure> = (0..12).map(failure).collect();
    warehouse.insert(&rows).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;
    let (code, stdout, stderr) = env.run_produce(&["--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 12);
    assert_eq!(lines[3]["job"], "connector-failures");
    assert_eq!(lines[3]["key"], "org-3");
    assert_eq!(lines[3]["topic"], env.topic("notifications"));
    assert_eq!(
        lines[3]["value"]["eventId"],
        "org-3:env-0:lcc-00003:2026-01-01 00:00:03"
    );
    let topic = env.topic("notifications");
    assert_eq!(env.end_offsets(&topic, 3).iter().sum::<i64>(), 0);

    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &rows).await;
}

/// `--schedule` in-process: runs at each fire time, serves /healthz and
/// /metrics with the per-job counters, and stops on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_mode_runs_repeatedly_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let rows: Vec<Failure> = (0..5).map(failure).collect();
    warehouse.insert(&rows).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;
    let produce = env.start_produce_scheduled("* * * * * *").await;
    let addr = produce.http_addr;
    let metrics_url = format!("http://{addr}/metrics");
    let series = "alertsvc_produce_runs_total{job=\"connector-failures\",outcome=\"ok\"}";
    let text = eventually(Duration::from_secs(20), "a second run", || async {
        let (_, text) = http_get(&metrics_url).await?;
        (metric_value(&text, series).unwrap_or(0.0) >= 2.0).then_some(text)
    })
    .await;
    assert_eq!(
        metric_value(
            &text,
            "alertsvc_produce_events_produced_total{job=\"connector-failures\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        http_get(&format!("http://{addr}/healthz"))
            .await
            .map(|r| r.0),
        Some(200)
    );
    produce
        .stop()
        .await
        .expect("produce stops cleanly on shutdown");
    assert_events(&env, &warehouse, &rows).await;
}

/// A service-account key that cannot get a token: the run fails naming the
/// source, and no part of the key file shows in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_service_account_key_fails_without_leaking_it() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::bigquery("produce_bad_key").await;
    let key_file = dir.path().join("key.json");
    std::fs::write(
        &key_file,
        serde_json::json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "KEYID-SECRET-MARKER",
            "private_key": "-----BEGIN PRIVATE KEY-----\nPRIVATE-SECRET-MARKER\n-----END PRIVATE KEY-----\n",
            "client_email": "produce@test-project.iam.gserviceaccount.com",
            "client_id": "1",
            "auth_uri": "http://127.0.0.1:1/auth",
            "token_uri": "http://127.0.0.1:1/token",
        })
        .to_string(),
    )
    .unwrap();
    let toml = produce_toml(dir.path(), &warehouse, "", "").replace(
        "credentials = \"none\"",
        &format!(
            "credentials = \"service-account-key\"\nkey_file = \"{}\"",
            key_file.display()
        ),
    );
    let env = TestEnv::new(&toml).await;
    let (code, stdout, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 1, "{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert!(last_line.contains("source test_warehouse"), "{last_line}");
    for output in [&stdout, &stderr] {
        assert!(!output.contains("SECRET-MARKER"), "{output}");
    }
}
