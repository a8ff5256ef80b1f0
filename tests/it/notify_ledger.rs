//! `alertsvc migrate` creates the state schema (notify's ledger, produce's
//! checkpoints) on SQLite and PostgreSQL, and is safe to run again.

use std::process::Command;

use sqlx::{Connection, Row};

use crate::common::config_dir;
use crate::common::slack::{ledger_url, Backend};

fn migrate(url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_alertsvc"))
        .arg("--config-dir")
        .arg(config_dir())
        .arg("migrate")
        .env("ALERTSVC__NOTIFY__LEDGER__DATABASE_URL", url)
        .env("ALERTSVC__PRODUCE__STATE__DATABASE_URL", url)
        .env_remove("ALERTSVC_ENV")
        .output()
        .expect("run alertsvc migrate")
}

async fn migrate_twice_then_use(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = ledger_url(backend, dir.path()).await;
    for run in 0..2 {
        let output = migrate(&url);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "run {run}: {stderr}");
        assert!(stderr.contains("notify.ledger: database migrated"));
        // The same database serves both: migrated once.
        assert!(!stderr.contains("produce.state"), "{stderr}");
    }
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(applied, 3);
    for table in [
        "deliveries",
        "produce_checkpoints",
        "produce_emitted",
        "produce_runs",
    ] {
        let rows: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM {table}"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
        assert_eq!(rows, 0, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_sqlite() {
    migrate_twice_then_use(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_postgres() {
    migrate_twice_then_use(Backend::Postgres).await;
}

#[test]
fn a_bad_database_url_is_refused_without_echoing_it() {
    let output = migrate("mysql://admin:hunter2@db/ledger");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("notify.ledger.database_url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
