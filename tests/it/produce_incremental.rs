//! Incremental runs: the checkpoint limits each run to new rows, emitted
//! event ids are never emitted again, and a run killed half-way is
//! finished by the next one with nothing missing and nothing twice.

use std::time::Duration;

use crate::common::warehouse::{failure, produce_toml, Failure, Warehouse};
use crate::common::TestEnv;
use crate::produce_sources::{assert_events, by_event_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_emits_only_rows_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let first: Vec<Failure> = (0..100).map(failure).collect();
    warehouse.insert(&first).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &first).await;

    // New rows after the checkpoint, and one late row before it (the
    // query excludes it: that is what the checkpoint is for).
    let new: Vec<Failure> = (100..150).map(failure).collect();
    let mut late = failure(500);
    late.failed_at = first[10].failed_at;
    warehouse.insert(&new).await;
    warehouse.insert(&[late]).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    let all: Vec<Failure> = first.iter().chain(&new).cloned().collect();
    assert_events(&env, &warehouse, &all).await;

    // Nothing new: nothing produced.
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &all).await;
}

/// Without a checkpoint every run reads every row; the emitted ids keep
/// each event to one emission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_checkpoint_never_repeats_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::postgres().await;
    let rows: Vec<Failure> = (0..60).map(failure).collect();
    warehouse.insert(&rows[..40]).await;
    let sql = dir.path().join("all.sql");
    std::fs::write(
        &sql,
        format!(
            "SELECT * FROM {} WHERE new_status = @status ORDER BY failed_at",
            warehouse.table()
        ),
    )
    .unwrap();
    let toml = produce_toml(dir.path(), &warehouse, "", "");
    let env = TestEnv::new(&format!(
        "{toml}\n[produce.jobs.failures-full-scan]\nsource = \"test_warehouse\"\n\
         topic = \"notifications\"\nevent_type = \"connector-failure\"\nsql_file = \"{}\"\n\
         key_column = \"org_id\"\nevent_id = [\"org_id\", \"env_id\", \"connector_id\", \"failed_at\"]\n\
         params = {{ status = \"Failed\" }}\n\
         value = {{ eventId = {{ meta = \"event_id\" }}, eventType = {{ meta = \"event_type\" }}, \
         source = {{ const = \"bigquery:ops.connector_status_changes\" }}, time = \"failed_at\", \
         data = {{ json = [\"env_id\", \"connector_id\", \"connector_name\", \"connector_type\", \
         \"failure_reason\", \"labels.connector_old_status = old_status\", \
         \"labels.connector_new_status = new_status\"] }} }}\n",
        sql.display()
    ))
    .await;
    let args = ["--once", "--job", "failures-full-scan"];
    let (code, _, stderr) = env.run_produce(&args).await;
    assert_eq!(code, 0, "{stderr}");
    warehouse.insert(&rows[40..]).await;
    let (code, _, stderr) = env.run_produce(&args).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = env.run_produce(&args).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &rows).await;
}

/// A run is killed (SIGKILL, like an evicted pod) while events are still
/// being produced; the next run reads back what made it to Kafka, emits
/// the rest, and the topic ends with each row's event exactly once. (8,000
/// events stay under the mock broker's per-partition retention.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_is_finished_without_duplicates_or_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let rows: Vec<Failure> = (0..8_000).map(failure).collect();
    warehouse.insert(&rows).await;
    // Slow the run down so that the kill lands in the middle of it.
    let mut toml = produce_toml(
        dir.path(),
        &warehouse,
        "",
        "max_in_flight = 50\nrecovery_settle = \"5s\"",
    );
    toml.push_str("\n[produce.producer]\n\"linger.ms\" = \"100\"\n");
    let env = TestEnv::new(&toml).await;
    let mut child = env
        .produce_command(&["--once"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn produce");
    let topic = env.topic("notifications");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let sent = loop {
        let sent: i64 = env.end_offsets(&topic, 3).iter().sum();
        if sent >= 1_500 || std::time::Instant::now() > deadline {
            break sent;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().expect("kill");
    let _ = child.wait();
    let after_kill: i64 = env.end_offsets(&topic, 3).iter().sum();
    assert!(
        sent >= 1_500 && after_kill < rows.len() as i64,
        "the kill should land mid-run ({sent} records before, {after_kill} after)"
    );

    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("recovered the events an unfinished run sent"),
        "{stderr}"
    );
    let events = by_event_id(env.read_events("notifications", rows.len()).await);
    assert_eq!(events.len(), rows.len());
    assert_events(&env, &warehouse, &rows).await;
}
