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
    // Every file of the backend's migrations, once.
    let dir = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let shipped = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir),
    )
    .unwrap()
    .filter(|f| {
        f.as_ref()
            .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "sql"))
    })
    .count();
    assert!(shipped >= 5, "migrations/{dir} has {shipped} files");
    assert_eq!(applied, i64::try_from(shipped).unwrap());
    for table in [
        "deliveries",
        "produce_checkpoints",
        "produce_emitted",
        "produce_runs",
        "dlq_replays",
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

crate::on_both_ledgers!(migrate_twice_then_use => migrate_sqlite, migrate_postgres);

#[test]
fn a_bad_database_url_is_refused_without_echoing_it() {
    let output = migrate("mysql://admin:hunter2@db/ledger");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("notify.ledger.database_url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A new, migrated ledger on `backend`, its URL, and the directory an
/// SQLite file lives in (keep it until the test ends).
async fn migrated_ledger(
    backend: Backend,
    connections: u32,
) -> (tempfile::TempDir, String, alertsvc::notify::ledger::Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let url = ledger_url(backend, dir.path()).await;
    let ledger = alertsvc::notify::ledger::Ledger::connect(&url, connections)
        .await
        .unwrap();
    ledger.migrate().await.unwrap();
    (dir, url, ledger)
}

/// The claim is atomic: of many concurrent claimants exactly one holds the
/// alert; a live lease is respected, a lapsed one taken over, and a writer
/// whose claim was taken over is refused. Pruning spares held rows.
async fn claims_are_exclusive_and_pruning_spares_held_rows(backend: Backend) {
    use alertsvc::notify::ledger::{Claim, LedgerError, Owner, Status};

    let (_dir, _url, ledger) = migrated_ledger(backend, 8).await;
    let now = 1_800_000_000_000i64;
    let owners: Vec<Owner> = (0..8)
        .map(|i| Owner::new(&format!("replica-{i}")))
        .collect();
    let attempts = owners
        .iter()
        .map(|owner| ledger.claim("a1", "C1", owner, now, now + 10_000));
    let results = futures::future::join_all(attempts).await;
    let held: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Ok(Claim::Held(_))))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(held.len(), 1, "{results:?}");
    let holder = &owners[held[0]];
    let other = &owners[(held[0] + 1) % owners.len()];

    // A live lease is waited for…
    match ledger
        .claim("a1", "C1", other, now + 5_000, now + 15_000)
        .await
        .unwrap()
    {
        Claim::Busy { owner, lease_until } => {
            assert_eq!(
                (owner.as_str(), lease_until),
                (holder.instance.as_str(), now + 10_000)
            );
        }
        held => panic!("a live claim was taken over: {held:?}"),
    }
    // …a lapsed one is taken over, and its former holder is fenced off.
    let Claim::Held(entry) = ledger
        .claim("a1", "C1", other, now + 10_001, now + 20_000)
        .await
        .unwrap()
    else {
        panic!("a lapsed claim was not taken over");
    };
    let mut entry = *entry;
    entry.status = Status::Pending;
    assert!(matches!(
        ledger
            .save(&entry, holder, now + 10_002, Some(now + 30_000))
            .await,
        Err(LedgerError::ClaimLost { .. })
    ));
    ledger
        .save(&entry, other, now + 10_002, None)
        .await
        .unwrap();
    // The same instance after a restart (a new run) takes its claim back.
    let restarted = Owner::new(&other.instance);
    ledger
        .claim("a2", "C1", other, now, now + 60_000)
        .await
        .unwrap();
    assert!(matches!(
        ledger
            .claim("a2", "C1", &restarted, now + 1, now + 60_000)
            .await
            .unwrap(),
        Claim::Held(_)
    ));

    // Pruning: a1 (released, old) goes; a2 (held) stays.
    let pruned = ledger.prune(now + 1_000_000, now + 20_000).await.unwrap();
    assert_eq!(pruned, 1);
    assert!(ledger.get("a1").await.unwrap().is_none());
    assert!(ledger.get("a2").await.unwrap().is_some());
}

crate::on_both_ledgers!(claims_are_exclusive_and_pruning_spares_held_rows => claims_sqlite, claims_postgres);

/// Retention goes by a row's last write, and no index of `deliveries` is on
/// a column a post rewrites: a post writes its row twice (the claim, then
/// `posted`), and an index on a rewritten column (`updated_at`, `status`)
/// made the second write a new entry in every index of the table (on
/// PostgreSQL, a row version that could not stay on its page).
async fn retention_goes_by_last_write_and_indexes_spare_rewritten_columns(backend: Backend) {
    use alertsvc::notify::ledger::{Claim, Owner, Status};

    let (_dir, url, ledger) = migrated_ledger(backend, 4).await;
    let t0 = 1_800_000_000_000i64;
    let owner = Owner::new("replica-0");
    // (alert, claimed at, last written at)
    let rows = [
        ("old", t0, t0 + 1),
        ("rewritten-since", t0, t0 + 2_000_000),
        ("young", t0 + 2_000_000, t0 + 2_000_001),
    ];
    for (alert, claimed, written) in rows {
        let Claim::Held(entry) = ledger
            .claim(alert, "C1", &owner, claimed, claimed + 10_000)
            .await
            .unwrap()
        else {
            panic!("{alert}: not claimed");
        };
        let mut entry = *entry;
        entry.status = Status::Posted;
        entry.ts = Some("1800000000.000001".into());
        ledger.save(&entry, &owner, written, None).await.unwrap();
    }
    assert_eq!(
        ledger.prune(t0 + 1_000_000, t0 + 3_000_000).await.unwrap(),
        1
    );
    assert!(ledger.get("old").await.unwrap().is_none());
    for kept in ["rewritten-since", "young"] {
        assert!(ledger.get(kept).await.unwrap().is_some(), "{kept} pruned");
    }

    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let indexed_sql = match backend {
        Backend::Sqlite => {
            "SELECT DISTINCT ii.name AS col FROM pragma_index_list('deliveries') AS il, \
             pragma_index_info(il.name) AS ii ORDER BY col"
        }
        Backend::Postgres => {
            "SELECT DISTINCT a.attname::text AS col FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = 'deliveries'::regclass ORDER BY col"
        }
    };
    let indexed: Vec<String> = sqlx::query(indexed_sql)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get("col").unwrap())
        .collect();
    assert_eq!(indexed, ["alert_id", "created_at"]);
    if backend == Backend::Postgres {
        // Room on each page for a row's next version, and ids compared as
        // bytes (see migrations/postgres/0012).
        let options: String = sqlx::query(
            "SELECT array_to_string(reloptions, ',') AS o FROM pg_class \
             WHERE oid = 'deliveries'::regclass",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .try_get("o")
        .unwrap();
        assert_eq!(options, "fillfactor=50");
        for table in ["deliveries", "alert_states"] {
            let collation: String = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT collation_name::text AS c FROM information_schema.columns \
                 WHERE table_name = '{table}' AND column_name = 'alert_id'"
            )))
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .try_get("c")
            .unwrap();
            assert_eq!(collation, "C", "{table}.alert_id");
        }
    }
}

crate::on_both_ledgers!(
    retention_goes_by_last_write_and_indexes_spare_rewritten_columns
        => retention_by_last_write_sqlite, retention_by_last_write_postgres
);
