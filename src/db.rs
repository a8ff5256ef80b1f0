//! The state database shared by notify's ledger and produce's checkpoints:
//! SQLite by default, PostgreSQL when several replicas run. One schema,
//! `migrations/{sqlite,postgres}`, embedded in the binary. Also SQLite's
//! datetime text form, which produce binds and the demo's warehouse writes.

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("state database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("state database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("scratch database prefix {0:?}: only lowercase letters, digits and _")]
    ScratchName(String),
}

/// How every connection to an SQLite database is set up (the pool's, and
/// the ledger writer's own).
///
/// WAL: readers never block the writer, and commits survive a process
/// crash without an fsync each (a power loss may lose the last ones; both
/// users recover from that: notify reconciles pending rows, produce reads
/// back what its unfinished run sent).
pub const SQLITE_PRAGMAS: [(&str, &str); 3] = [
    ("journal_mode", "WAL"),
    ("synchronous", "NORMAL"),
    ("busy_timeout", "5000"),
];

/// A pool for `url` (`sqlite:…` or `postgres://…`).
pub async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, DbError> {
    connect_with(url, max_connections, &[]).await
}

/// [`connect`], running `postgres_session` (`SET` statements) on each new
/// PostgreSQL connection.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    postgres_session: &'static [&'static str],
) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    let sqlite = is_sqlite(url);
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    for (pragma, value) in SQLITE_PRAGMAS {
                        sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA {pragma} = {value}")))
                            .execute(&mut *conn)
                            .await?;
                    }
                } else if !postgres_session.is_empty() {
                    sqlx::raw_sql(session_sql(postgres_session))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// A pool of PostgreSQL's own connections for `url`, running
/// `postgres_session` on each new one as [`connect_with`] does: for the
/// reads that are hot enough that sqlx's `Any` rows cost (each row's values
/// copied into an `AnyRow`, its columns then found by name).
pub async fn connect_postgres(
    url: &str,
    max_connections: u32,
    postgres_session: &'static [&'static str],
) -> Result<sqlx::PgPool, DbError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if !postgres_session.is_empty() {
                    sqlx::raw_sql(session_sql(postgres_session))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// `statements` as one text, run in one round trip.
fn session_sql(statements: &'static [&'static str]) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(statements.join("; "))
}

// The URL schemes are known here only: `config` validates with
// `is_supported`, `config check` warns with `is_sqlite`.

/// A URL [`connect`] can open: `sqlite:…`, `postgres://…`, `postgresql://…`.
pub fn is_supported(url: &str) -> bool {
    is_sqlite(url) || url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// SQLite: a file of one host, which replicas cannot share.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres")
}

/// Applies `migrations/sqlite` or `migrations/postgres`.
pub async fn migrate(pool: &AnyPool, postgres: bool) -> Result<(), DbError> {
    if postgres {
        sqlx::migrate!("./migrations/postgres").run(pool).await?;
    } else {
        sqlx::migrate!("./migrations/sqlite").run(pool).await?;
    }
    Ok(())
}

/// A new, empty database on the PostgreSQL server at `server` (a URL
/// without a database name), named `prefix` plus the process id and a
/// random number, so concurrent tests and bench runs never share one;
/// answers its URL. For tests and benchmarks: the server must accept
/// `CREATE DATABASE` from the URL's user.
pub async fn create_scratch_database(server: &str, prefix: &str) -> Result<String, DbError> {
    use sqlx::Connection;
    // The name is spliced into SQL (CREATE DATABASE takes no parameter).
    if prefix.is_empty()
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(DbError::ScratchName(prefix.to_owned()));
    }
    let server = server.trim_end_matches('/');
    let name = format!("{prefix}_{}_{}", std::process::id(), fastrand::u64(..));
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    drop_abandoned_scratch_databases(&mut admin, server, prefix).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    Ok(format!("{server}/{name}"))
}

/// Drops the scratch databases of `prefix` whose process has ended: no one
/// drops them when a test or bench process ends, and a server that lives
/// from run to run (CI's, a developer's) gathered about a hundred per test
/// run. Only on a server on this machine, where the process id in a name
/// is one of this machine's; a database something still uses is refused by
/// the server (`DROP DATABASE` without `FORCE`) and left. Best effort: a
/// failure here only leaves them.
async fn drop_abandoned_scratch_databases(
    admin: &mut sqlx::PgConnection,
    server: &str,
    prefix: &str,
) {
    use std::str::FromStr;
    let local = sqlx::postgres::PgConnectOptions::from_str(server)
        .map(|options| {
            matches!(
                options.get_host(),
                "localhost" | "127.0.0.1" | "::1" | "[::1]"
            ) || options.get_host().starts_with('/')
        })
        .unwrap_or(false);
    if !local || !cfg!(target_os = "linux") {
        return;
    }
    let names: Vec<String> =
        match sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(format!("{prefix}_"))
            .fetch_all(&mut *admin)
            .await
        {
            Ok(names) => names,
            Err(e) => {
                tracing::debug!(error = %e, "listing scratch databases failed");
                return;
            }
        };
    for name in names.iter().filter(|name| abandoned(name, prefix)) {
        // `prefix` (checked by the caller), digits and `_`: safe to splice.
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
            .execute(&mut *admin)
            .await
        {
            tracing::debug!(error = %e, database = %name, "an abandoned scratch database stays");
        }
    }
}

/// Whether `name` is `prefix_<pid>_<n>` of a process no longer running
/// here (Linux: no `/proc/<pid>`).
fn abandoned(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    let mut parts = rest.split('_');
    let (Some(pid), Some(n), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) || pid == std::process::id().to_string() {
        return false;
    }
    !std::path::Path::new("/proc").join(pid).exists()
}

/// `2026-11-21 10:00:00.25`: SQLite's own datetime form, so a bound
/// value (produce's checkpoint, the demo's warehouse rows) compares as text
/// against columns written by `datetime()` or `CURRENT_TIMESTAMP`.
pub fn sqlite_datetime(micros: i64) -> String {
    let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    let base = t.format("%Y-%m-%d %H:%M:%S").to_string();
    let fraction = micros.rem_euclid(1_000_000);
    if fraction == 0 {
        base
    } else {
        let digits = format!("{fraction:06}");
        format!("{base}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::{create_scratch_database, sqlite_datetime, DbError};

    const T: i64 = 1_763_719_200_000_000; // 2025-11-21T10:00:00Z

    #[test]
    fn sqlite_datetimes_keep_time_order_as_text() {
        assert_eq!(sqlite_datetime(T), "2025-11-21 10:00:00");
        assert_eq!(sqlite_datetime(T + 250_000), "2025-11-21 10:00:00.25");
        assert!(sqlite_datetime(T + 1) > sqlite_datetime(T));
    }

    #[test]
    fn only_scratch_names_of_ended_processes_are_abandoned() {
        use super::abandoned;
        let running = std::process::id();
        // Process ids on Linux stay below 2^22.
        let ended = 4_194_304 + 17;
        assert!(abandoned(
            &format!("alertsvc_test_{ended}_42"),
            "alertsvc_test"
        ));
        assert!(!abandoned(
            &format!("alertsvc_test_{running}_42"),
            "alertsvc_test"
        ));
        // The init process always runs.
        assert!(!abandoned("alertsvc_test_1_42", "alertsvc_test"));
        for other in [
            format!("alertsvc_unit_{ended}_42"),
            format!("alertsvc_test_{ended}"),
            format!("alertsvc_test_{ended}_42_1"),
            format!("alertsvc_test_{ended}_x"),
            format!("alertsvc_testing_{ended}_42"),
            "alertsvc_test__42".to_owned(),
            "test".to_owned(),
        ] {
            assert!(!abandoned(&other, "alertsvc_test"), "{other}");
        }
    }

    #[tokio::test]
    async fn a_scratch_database_name_is_checked_before_any_sql() {
        // Refused before connecting: the server URL here is unreachable.
        for prefix in ["", "Bad", "a-b", "x; DROP DATABASE test"] {
            let answer = create_scratch_database("postgres://nobody@127.0.0.1:1", prefix).await;
            assert!(
                matches!(answer, Err(DbError::ScratchName(ref p)) if p == prefix),
                "{prefix:?}: {answer:?}"
            );
        }
    }
}
