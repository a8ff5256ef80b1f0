//! What the ledger's tests and its neighbours' (`state::store`) share.

use sqlx::Row;

use super::Ledger;

/// A new database on the test PostgreSQL server (`ALERTSVC_TEST_POSTGRES`,
/// else the one `scripts/install-test-deps.sh` starts), as the integration
/// tests make theirs.
async fn postgres_url() -> String {
    let server = std::env::var("ALERTSVC_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    crate::db::create_scratch_database(&server, "alertsvc_unit")
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/install-test-deps.sh starts one)")
}

/// A migrated ledger on a new PostgreSQL database, `connections` in its
/// pool.
pub(crate) async fn postgres_ledger(connections: u32) -> Ledger {
    let ledger = Ledger::connect(&postgres_url().await, connections)
        .await
        .expect("ledger");
    ledger.migrate().await.expect("migrate");
    ledger
}

/// The plan PostgreSQL keeps for `sql` (its parameters' types given by
/// their casts) prepared on one of `ledger`'s connections: the generic plan, made from
/// what the server knows of the tables now, as a statement kept prepared
/// uses it for as long as the connection lives.
pub(crate) async fn kept_plan(ledger: &Ledger, sql: &str) -> String {
    let mut conn = ledger.pool.acquire().await.expect("a connection");
    let prepare = format!("PREPARE kept AS {sql}");
    for statement in ["SET plan_cache_mode = force_generic_plan", prepare.as_str()] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    // The highest `$n`: the generic plan does not look at the values.
    let parameters = sql
        .split('$')
        .skip(1)
        .filter_map(|after| {
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0);
    let execute = format!(
        "EXPLAIN EXECUTE kept({})",
        vec!["NULL"; parameters].join(", ")
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(execute))
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    for statement in ["DEALLOCATE kept", "RESET plan_cache_mode"] {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .expect("reset");
    }
    rows.iter()
        .map(|row| row.try_get::<String, _>("QUERY PLAN").expect("plan line"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that `plan` reads `table` through its primary key, one key at a
/// time, and never the whole table (no sequential scan, no hash or merge
/// of it).
pub(crate) fn assert_looks_up_by_key(plan: &str, table: &str) {
    assert!(
        plan.contains(&format!("Index Scan using {table}_pkey on {table}")),
        "wants {table}_pkey:\n{plan}"
    );
    for word in ["Seq Scan", "Hash", "Merge"] {
        assert!(!plan.contains(word), "{word} in:\n{plan}");
    }
}
