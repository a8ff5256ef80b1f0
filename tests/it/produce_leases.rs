//! One run per job: a run holds a lease on its job in the state database.
//! A second run of the job — started at the same moment, or while a slow
//! first run is still reading — never mistakes the live run for a crashed
//! one: it gives up with exit code 75 and a message naming the holder, or,
//! with `--wait-for-lease`, runs once the first has finished. Every row is
//! emitted once.
//!
//! The warehouse is PostgreSQL so that the query can be made slow on
//! purpose (`pg_sleep`, evaluated once before the first row).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::slack::{ledger_url, Backend};
use crate::common::testkit::{address_after, KillOnDrop};
use crate::common::warehouse::{failure, produce_toml, Failure, Warehouse};
use crate::common::{eventually, http_get, kill_child, metric_value, TestEnv};
use crate::produce_sources::assert_events;

const HOLDER_MESSAGE: &str = "job connector-failures is already running";

/// A produce environment whose query sleeps `seconds` before its first row.
async fn slow_env(
    dir: &tempfile::TempDir,
    warehouse: &Warehouse,
    seconds: u32,
    produce_keys: &str,
) -> TestEnv {
    let sleep = format!("AND (SELECT true FROM pg_sleep({seconds}))");
    TestEnv::new(&produce_toml(dir.path(), warehouse, &sleep, produce_keys)).await
}

/// Waits until a run holds the job in the SQLite state database of `dir`.
async fn wait_until_held(dir: &tempfile::TempDir) {
    use sqlx::Connection;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("produce-state.db").display()
    );
    eventually(
        Duration::from_secs(30),
        "a run taking the job's lease",
        || async {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.ok()?;
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM produce_runs WHERE job = 'connector-failures'",
            )
            .fetch_one(&mut conn)
            .await
            .ok()?;
            (held > 0).then_some(())
        },
    )
    .await
}

fn spawn(env: &TestEnv, args: &[&str]) -> Child {
    env.produce_command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn alertsvc produce")
}

/// Waits for a child: (exit code, stderr).
async fn finish(child: Child) -> (i32, String) {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait for alertsvc produce");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Two runs of the job started together: one runs, the other exits 75
/// naming the run that holds the job; no raw database error anywhere.
async fn two_runs_started_together(state: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::postgres().await;
    let rows: Vec<Failure> = (0..300).map(failure).collect();
    warehouse.insert(&rows).await;
    let env = slow_env(&dir, &warehouse, 2, "").await;
    if let Backend::Postgres = state {
        let url = ledger_url(state, dir.path()).await;
        env.set_overlay_key(&["produce", "state", "database_url"], url.into());
    }
    // Migrate first: two processes migrating one fresh database at once is
    // `alertsvc migrate`'s business, not this test's.
    let (code, _, stderr) = env.run_produce(&["--once", "--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");

    let (a, b) = (spawn(&env, &["--once"]), spawn(&env, &["--once"]));
    let (a, b) = (finish(a).await, finish(b).await);
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [0, 75], "first: {}\nsecond: {}", a.1, b.1);
    let loser = if a.0 == 75 { &a.1 } else { &b.1 };
    assert!(
        loser.contains(HOLDER_MESSAGE) && loser.contains("this run did nothing"),
        "{loser}"
    );
    for stderr in [&a.1, &b.1] {
        assert!(!stderr.contains("UNIQUE"), "{stderr}");
        assert!(!stderr.contains("duplicate key"), "{stderr}");
        assert!(!stderr.contains("recovered the events"), "{stderr}");
    }
    assert_events(&env, &warehouse, &rows).await;
}

crate::on_both_ledgers!(two_runs_started_together => two_runs_started_together_emit_every_row_once_sqlite_state, two_runs_started_together_emit_every_row_once_postgres_state);

/// A first run whose query takes 6 s — longer than `recovery_settle` (1 s)
/// and than its lease (3 s), which it keeps renewing. Started 1.5 s after
/// the first took the job, a second run gives up (75) instead of taking the first for crashed; a
/// third, with `--wait-for-lease`, waits, then runs and finds every row
/// already emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_during_a_slow_run_does_not_take_it_over() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::postgres().await;
    let rows: Vec<Failure> = (0..300).map(failure).collect();
    warehouse.insert(&rows).await;
    let env = slow_env(
        &dir,
        &warehouse,
        6,
        "recovery_settle = \"1s\"\nlease = \"3s\"",
    )
    .await;
    let started = Instant::now();
    let first = spawn(&env, &["--once"]);
    wait_until_held(&dir).await;
    // Past recovery_settle: a run that took the first for crashed would now
    // read back, find nothing, and emit every row a second time. This only
    // paces the second start; what the runs did not do is read from their
    // output after all three exited.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = spawn(&env, &["--once"]);
    let third = spawn(&env, &["--once", "--wait-for-lease", "60s"]);
    let (second, third, first) = (
        finish(second).await,
        finish(third).await,
        finish(first).await,
    );
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "the first run should have taken the query's 6 s"
    );
    assert_eq!(first.0, 0, "{}", first.1);
    assert_eq!(second.0, 75, "{}", second.1);
    assert!(second.1.contains(HOLDER_MESSAGE), "{}", second.1);
    assert_eq!(third.0, 0, "{}", third.1);
    assert!(
        third
            .1
            .contains("another run holds the job; waiting for it"),
        "{}",
        third.1
    );
    for stderr in [&first.1, &second.1, &third.1] {
        assert!(!stderr.contains("took over the lease"), "{stderr}");
        assert!(!stderr.contains("recovered the events"), "{stderr}");
    }
    assert_events(&env, &warehouse, &rows).await;
}

/// `--schedule` while a slow `--once` run holds the job: its fires are
/// skipped and counted as lease conflicts, not as failed runs, and once the
/// other run is done its own runs succeed (and emit nothing twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_skip_while_another_run_holds_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::postgres().await;
    let rows: Vec<Failure> = (0..50).map(failure).collect();
    warehouse.insert(&rows).await;
    let env = slow_env(&dir, &warehouse, 4, "").await;
    let once = spawn(&env, &["--once"]);
    wait_until_held(&dir).await;
    let log = dir.path().join("scheduled.log");
    let mut scheduled = KillOnDrop(
        env.produce_command(&["--schedule", "* * * * * *"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn alertsvc produce"),
    );
    let addr = address_after(&log, 0, alertsvc::stage::SERVING_ON, &mut scheduled.0);

    let url = format!("http://{addr}/metrics");
    let conflicts = "alertsvc_produce_lease_conflicts_total{job=\"connector-failures\"}";
    let ok = "alertsvc_produce_runs_total{job=\"connector-failures\",outcome=\"ok\"}";
    let failed = "alertsvc_produce_runs_total{job=\"connector-failures\",outcome=\"failed\"}";
    let mut saw_conflict = false;
    let text = eventually(
        Duration::from_secs(40),
        "a lease conflict, then a successful scheduled run",
        async || {
            if let Ok(Some(status)) = scheduled.try_wait() {
                panic!("the scheduler exited: {status}");
            }
            let (_, text) = http_get(&url).await?;
            saw_conflict |= metric_value(&text, conflicts).unwrap_or(0.0) >= 1.0;
            (saw_conflict && metric_value(&text, ok).unwrap_or(0.0) >= 1.0).then_some(text)
        },
    )
    .await;
    kill_child(&mut scheduled);
    let (code, stderr) = finish(once).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(metric_value(&text, failed), None, "{text}");
    assert_eq!(
        metric_value(
            &text,
            "alertsvc_produce_events_produced_total{job=\"connector-failures\"}"
        ),
        None,
        "the scheduled runs had nothing left to emit: {text}"
    );
    assert_events(&env, &warehouse, &rows).await;
}
