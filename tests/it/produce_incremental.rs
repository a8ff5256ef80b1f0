//! Incremental runs: the checkpoint limits each run to new rows, a
//! lookback reads again below it so that rows landing late are emitted
//! once, emitted event ids are never emitted again, and a run killed
//! half-way is finished by the next one with nothing missing and nothing
//! twice.

use std::time::Duration;

use crate::common::warehouse::{failure, produce_toml, Failure, Warehouse, BASE_SECONDS};
use crate::common::{eventually, kill_child, TestEnv};
use crate::produce_sources::{assert_events, by_event_id};

/// The shipped job (checkpoint on `failed_at`, lookback 15 minutes): rows
/// that land after a run with a `failed_at` at or below its checkpoint are
/// emitted by the next run, once; the rows read again alongside them are
/// not; a later run emits nothing; a row later than the lookback is never
/// read (the lookback is the promise, and its limit).
async fn late_rows_are_emitted_once(warehouse: Warehouse, dir: tempfile::TempDir) {
    let first: Vec<Failure> = (0..100).map(failure).collect();
    warehouse.insert(&first).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &first).await;

    // The checkpoint is now rows[99].failed_at. Late: a row at the same
    // time as an emitted one, one exactly at the checkpoint, one 14
    // minutes below it; too late: one 20 minutes below. And new rows.
    let checkpoint = first[99].failed_at;
    let late_at = |i: usize, failed_at: i64| Failure {
        failed_at,
        ..failure(i)
    };
    let late = vec![
        late_at(500, first[10].failed_at),
        late_at(501, checkpoint),
        late_at(502, checkpoint - 14 * 60),
    ];
    let too_late = late_at(503, checkpoint - 20 * 60);
    let new: Vec<Failure> = (100..110).map(failure).collect();
    warehouse.insert(&late).await;
    warehouse.insert(std::slice::from_ref(&too_late)).await;
    warehouse.insert(&new).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    let all: Vec<Failure> = first.iter().chain(&late).chain(&new).cloned().collect();
    assert_events(&env, &warehouse, &all).await;

    // Nothing new: nothing produced, though the window reads the late rows
    // and the last 15 minutes again.
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_emitted_once_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    late_rows_are_emitted_once(warehouse, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_emitted_once_postgres() {
    let dir = tempfile::tempdir().unwrap();
    late_rows_are_emitted_once(Warehouse::postgres().await, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_emitted_once_bigquery() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::bigquery("produce_late_rows").await;
    late_rows_are_emitted_once(warehouse, dir).await;
}

/// An integer checkpoint looks back by a count of values: with
/// `lookback = 5` a row 3 below the checkpoint is emitted, one 8 below is
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integer_checkpoint_looks_back_by_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let first: Vec<Failure> = (0..20).map(failure).collect();
    warehouse.insert(&first).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;
    // `seq`: seconds since the first row, an integer column.
    let seq = format!("CAST(strftime('%s', failed_at) AS INTEGER) - {BASE_SECONDS}");
    let sql = dir.path().join("by_seq.sql");
    std::fs::write(
        &sql,
        format!(
            "SELECT *, {seq} AS seq FROM connector_status_changes \
             WHERE new_status = 'Failed' AND {seq} > @checkpoint ORDER BY seq"
        ),
    )
    .unwrap();
    let job = ["produce", "jobs", "connector-failures"];
    env.set_overlay_key(
        &[&job[..], &["sql_file"]].concat(),
        sql.display().to_string().into(),
    );
    env.set_overlay_key(
        &[&job[..], &["checkpoint"]].concat(),
        toml::toml! { column = "seq" kind = "integer" lookback = 5 }.into(),
    );
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &first).await;

    // The checkpoint is 19.
    let late = Failure {
        failed_at: BASE_SECONDS + 16,
        ..failure(600)
    };
    let too_late = Failure {
        failed_at: BASE_SECONDS + 11,
        ..failure(601)
    };
    warehouse.insert(&[late.clone(), too_late]).await;
    for _ in 0..2 {
        let (code, _, stderr) = env.run_produce(&["--once"]).await;
        assert_eq!(code, 0, "{stderr}");
    }
    let all: Vec<Failure> = first.iter().chain([&late]).cloned().collect();
    assert_events(&env, &warehouse, &all).await;
}

/// A lookback raised after runs without one (or a job checkpointed by a
/// version without lookback) must not emit again the rows whose ids the
/// ledger already let go: the window starts no lower than where the ledger
/// is complete, and grows to the full lookback as the checkpoint advances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_lookback_never_emits_twice() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    let first: Vec<Failure> = (0..100).map(failure).collect();
    warehouse.insert(&first).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;
    let lookback = [
        "produce",
        "jobs",
        "connector-failures",
        "checkpoint",
        "lookback",
    ];
    env.set_overlay_key(&lookback, "0s".into());
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &first).await;

    // The checkpoint is rows[99].failed_at; the ledger holds only the ids
    // at it. Raised to 15 minutes, the next run reads from the checkpoint.
    env.set_overlay_key(&lookback, "15m".into());
    let checkpoint = first[99].failed_at;
    let before_the_ledger = Failure {
        failed_at: checkpoint - 60,
        ..failure(700)
    };
    warehouse
        .insert(std::slice::from_ref(&before_the_ledger))
        .await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("the lookback reaches only as far down as the ledger is complete"),
        "{stderr}"
    );
    assert_events(&env, &warehouse, &first).await;

    // New rows move the checkpoint 50 s up: a row late by 30 s is now
    // inside what the ledger covers, and is emitted.
    let new: Vec<Failure> = (100..150).map(failure).collect();
    warehouse.insert(&new).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    let late = Failure {
        failed_at: new[49].failed_at - 30,
        ..failure(701)
    };
    warehouse.insert(std::slice::from_ref(&late)).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    let all: Vec<Failure> = first.iter().chain(&new).chain([&late]).cloned().collect();
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
/// being produced. Its lease has not lapsed yet, so a run started at once
/// cannot tell it from a live one and gives up (exit 75); a run that waits
/// for the lease takes over once it lapsed, reads back what made it to
/// Kafka, emits the rest, and the topic ends with each row's event exactly
/// once. (8,000 events stay under the mock broker's per-partition
/// retention.)
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
        "max_in_flight = 50\nrecovery_settle = \"5s\"\nlease = \"10s\"",
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
    let sent = eventually(Duration::from_secs(60), "1500 records sent", || async {
        Some(env.end_offsets(&topic, 3).iter().sum::<i64>()).filter(|sent| *sent >= 1_500)
    })
    .await;
    kill_child(&mut child);
    let after_kill: i64 = env.end_offsets(&topic, 3).iter().sum();
    assert!(
        sent >= 1_500 && after_kill < rows.len() as i64,
        "the kill should land mid-run ({sent} records before, {after_kill} after)"
    );

    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 75, "{stderr}");
    assert!(
        stderr.contains("job connector-failures is already running"),
        "{stderr}"
    );
    let (code, _, stderr) = env
        .run_produce(&["--once", "--wait-for-lease", "60s"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("took over the lease of a run that stopped renewing it")
            && stderr.contains("recovered the events an unfinished run sent"),
        "{stderr}"
    );
    let events = by_event_id(env.read_events("notifications", rows.len()).await);
    assert_eq!(events.len(), rows.len());
    assert_events(&env, &warehouse, &rows).await;
}
