//! The connection a writer runs its batches on, of one of three kinds:
//!
//! - for PostgreSQL, one of PostgreSQL's own sqlx connections (the
//!   ledger's `PgPool`, not the shared `Any` pool): through `Any`, each
//!   statement's values were converted into `Any`'s arguments and then into
//!   PostgreSQL's, and each returned row copied into an `AnyRow` and read
//!   by column name (PERFORMANCE.md, notify's sixteenth round);
//! - for an SQLite file, a rusqlite connection the writer's thread owns.
//!   sqlx runs each SQLite statement on the connection's own worker thread
//!   and sends the answer back: two thread hand-overs per statement, which
//!   made up most of the writer's time per post (PERFORMANCE.md, notify's
//!   eighth round). Here a whole batch runs where the writer is, in one go;
//! - sqlx's `Any`, from the ledger's shared pool: SQLite where no file can
//!   be opened (an in-memory database).
//!
//! All kinds take the same statement texts and the same values; SQLite's
//! `$n` placeholders are bound by their number as sqlx binds them.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rusqlite::types::{ToSqlOutput, ValueRef};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{
    Any, AnyConnection, AnyPool, Connection, Database, Encode, PgPool, Pool, Postgres, Row, Type,
};

use super::super::op::Arg;
use super::super::{entry_from, Entry, EntryRow, LedgerError};
use super::columns::Column;

/// A value bound to a statement.
#[derive(Debug, Clone, Copy)]
pub(super) enum Val<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
}

impl<'a> From<&'a Arg> for Val<'a> {
    fn from(arg: &'a Arg) -> Val<'a> {
        match arg {
            Arg::Text(value) => Val::Text(value.as_deref()),
            Arg::Int(value) => Val::Int(*value),
        }
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Val::Text(Some(text)) => ValueRef::Text(text.as_bytes()),
            Val::Int(Some(int)) => ValueRef::Integer(int),
            Val::Text(None) | Val::Int(None) => ValueRef::Null,
        }))
    }
}

/// Where a writer's connection comes from.
#[derive(Clone)]
pub(super) enum Source {
    /// The ledger's shared pool (an in-memory SQLite ledger's); `keep`:
    /// hold one connection between batches.
    Pool { pool: AnyPool, keep: bool },
    /// PostgreSQL's own pool, likewise.
    Postgres { pool: PgPool, keep: bool },
    /// An SQLite file the writer opens itself.
    Sqlite(PathBuf),
}

impl Source {
    /// The file an `sqlite:` URL names, unless it is an in-memory
    /// database (a connection of its own would see another database).
    pub(super) fn sqlite_file(url: &str) -> Option<PathBuf> {
        let options = SqliteConnectOptions::from_str(url).ok()?;
        let path = options.get_filename();
        let memory = url.contains("mode=memory")
            || path == Path::new(":memory:")
            || path.to_string_lossy().starts_with("file:sqlx-in-memory");
        (!memory).then(|| path.to_path_buf())
    }
}

/// Opens the writer's own connection to the SQLite file `path`, set up as
/// the pool's connections are (`crate::db::connect`).
pub(super) fn open_sqlite(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    for (pragma, value) in crate::db::SQLITE_PRAGMAS {
        // `journal_mode` answers with the mode set: a row, not a change.
        conn.query_row(&format!("PRAGMA {pragma} = {value}"), [], |_| Ok(()))
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(()),
                e => Err(e),
            })?;
    }
    // sqlx turns foreign keys on for its connections; the same here.
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    // Each kind of merged statement keeps a prepared statement per chunk
    // size (`merged::chunks`): a few dozen texts in all.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// A writer's connection, kept from batch to batch.
pub(super) enum Held {
    Pool(Pooled<Any>),
    Postgres(Pooled<Postgres>),
    Sqlite(rusqlite::Connection),
}

/// A pool's connection, taken when a batch needs one.
pub(super) struct Pooled<DB: Database> {
    pool: Pool<DB>,
    conn: Option<PoolConnection<DB>>,
    /// Hold the connection between batches (else it goes back after each).
    keep: bool,
}

impl<DB: Database> Pooled<DB> {
    pub(super) fn new(pool: Pool<DB>, keep: bool) -> Pooled<DB> {
        Pooled {
            pool,
            conn: None,
            keep,
        }
    }

    async fn get(&mut self) -> Result<&mut DB::Connection, LedgerError> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.acquire().await?);
        }
        Ok(self.conn.as_deref_mut().ok_or(sqlx::Error::PoolClosed)?)
    }
}

impl Held {
    pub(super) fn open(source: &Source) -> Result<Held, LedgerError> {
        Ok(match source {
            Source::Pool { pool, keep } => Held::Pool(Pooled::new(pool.clone(), *keep)),
            Source::Postgres { pool, keep } => Held::Postgres(Pooled::new(pool.clone(), *keep)),
            Source::Sqlite(path) => Held::Sqlite(open_sqlite(path)?),
        })
    }

    pub(super) async fn get(&mut self) -> Result<Conn<'_>, LedgerError> {
        Ok(match self {
            Held::Pool(pooled) => Conn::Any(pooled.get().await?),
            Held::Postgres(pooled) => Conn::Pg(pooled.get().await?),
            Held::Sqlite(conn) => Conn::Sqlite(conn),
        })
    }

    /// Starts a transaction on the connection.
    pub(super) async fn begin(&mut self) -> Result<Tx<'_>, LedgerError> {
        match self.get().await? {
            Conn::Any(conn) => Ok(Tx::Any(conn.begin().await?)),
            Conn::Pg(conn) => Ok(Tx::Pg(conn.begin().await?)),
            Conn::Sqlite(conn) => {
                // IMMEDIATE: the write lock is taken (or waited for, up to
                // `busy_timeout`) here, not on the first write, where a
                // deferred transaction may fail at once instead.
                run_sqlite(conn, "BEGIN IMMEDIATE", &[], true, |s| s.raw_execute())?;
                Ok(Tx::Sqlite(SqliteTx { conn, open: true }))
            }
        }
    }

    /// After a database error: a pool connection goes back to the pool,
    /// which checks it before anyone uses it again. SQLite's own connection
    /// stays (an error leaves it usable, its transaction rolled back).
    pub(super) fn give_back(&mut self) {
        match self {
            Held::Pool(pooled) => pooled.conn = None,
            Held::Postgres(pooled) => pooled.conn = None,
            Held::Sqlite(_) => {}
        }
    }

    /// After a batch: a pool connection not to be kept goes back.
    pub(super) fn after_batch(&mut self) {
        let keep = match self {
            Held::Pool(pooled) => pooled.keep,
            Held::Postgres(pooled) => pooled.keep,
            Held::Sqlite(_) => true,
        };
        if !keep {
            self.give_back();
        }
    }
}

/// A transaction on a writer's connection; dropped uncommitted, it is
/// rolled back.
pub(super) enum Tx<'c> {
    Any(sqlx::Transaction<'c, Any>),
    Pg(sqlx::Transaction<'c, Postgres>),
    Sqlite(SqliteTx<'c>),
}

pub(super) struct SqliteTx<'c> {
    conn: &'c mut rusqlite::Connection,
    open: bool,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::debug!(error = %e, "ledger rollback failed");
            }
        }
    }
}

impl Tx<'_> {
    pub(super) fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Any(tx) => Conn::Any(tx),
            Tx::Pg(tx) => Conn::Pg(tx),
            Tx::Sqlite(tx) => Conn::Sqlite(&mut *tx.conn),
        }
    }

    pub(super) async fn commit(self) -> Result<(), LedgerError> {
        match self {
            Tx::Any(tx) => Ok(tx.commit().await?),
            Tx::Pg(tx) => Ok(tx.commit().await?),
            Tx::Sqlite(mut tx) => {
                run_sqlite(tx.conn, "COMMIT", &[], true, |s| s.raw_execute())?;
                tx.open = false;
                Ok(())
            }
        }
    }
}

/// A connection to run statements on.
pub(super) enum Conn<'c> {
    Any(&'c mut AnyConnection),
    Pg(&'c mut PgConnection),
    Sqlite(&'c mut rusqlite::Connection),
}

/// What a statement's text is: kept prepared, or (built at run time, one
/// of many texts) prepared each time.
pub(super) type Sql = Cow<'static, str>;

impl Conn<'_> {
    /// Whether the connection takes a multi-row statement's rows as one
    /// array per column (`writer/columns.rs`): PostgreSQL's. Else they go
    /// as a `VALUES` list of anonymous `?` placeholders: SQLite takes
    /// numbered ones too, but looks each one up by name in a list of all
    /// of them when it parses the statement and again when it is bound:
    /// quadratic in a statement with thousands (the merged statements took
    /// 15% of the process's time so); its anonymous `?` are bound in order.
    /// (sqlx's `Any` connection is a writer's only for SQLite.)
    pub(super) fn by_columns(&self) -> bool {
        matches!(self, Conn::Pg(_))
    }

    /// Runs a statement that returns no rows: the rows it changed.
    pub(super) async fn execute(
        &mut self,
        sql: Sql,
        args: &[Val<'_>],
        keep: bool,
    ) -> Result<u64, LedgerError> {
        match self {
            Conn::Any(conn) => Ok(bound(sql, args, keep)
                .execute(&mut **conn)
                .await?
                .rows_affected()),
            Conn::Pg(conn) => Ok(bound(sql, args, keep)
                .execute(&mut **conn)
                .await?
                .rows_affected()),
            Conn::Sqlite(conn) => {
                // Rows it returns are passed over, as sqlx's `execute` does.
                run_sqlite(conn, &sql, args, keep, |s| {
                    let mut rows = s.raw_query();
                    while rows.next()?.is_some() {}
                    Ok(())
                })?;
                Ok(conn.changes())
            }
        }
    }

    /// Runs a statement returning [`super::super::COLUMNS`]: its first row.
    pub(super) async fn fetch_entry(
        &mut self,
        sql: Sql,
        args: &[Val<'_>],
    ) -> Result<Option<Entry>, LedgerError> {
        match self {
            Conn::Any(conn) => {
                let row = bound(sql, args, true).fetch_optional(&mut **conn).await?;
                row.as_ref().map(entry_from).transpose()
            }
            Conn::Pg(conn) => {
                let row = bound(sql, args, true).fetch_optional(&mut **conn).await?;
                row.as_ref().map(entry_from).transpose()
            }
            Conn::Sqlite(conn) => {
                let row = run_sqlite(conn, &sql, args, true, |s| {
                    let mut rows = s.raw_query();
                    match rows.next()? {
                        Some(row) => Ok(Some(SqliteEntry::read(row)?)),
                        None => Ok(None),
                    }
                })?;
                row.map(|row| entry_from(&row)).transpose()
            }
        }
    }

    /// Runs a statement returning one text column whose rows come as
    /// `columns`, `$1`… (only on a connection [`Self::by_columns`]): its
    /// values.
    pub(super) async fn fetch_keys_by_columns(
        &mut self,
        sql: Sql,
        columns: &[Column<'_>],
    ) -> Result<Vec<String>, LedgerError> {
        let Conn::Pg(conn) = self else {
            return Err(LedgerError::Rows("only PostgreSQL takes them as columns"));
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for column in columns {
            query = query.bind(*column);
        }
        let rows = query.fetch_all(&mut **conn).await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// Runs a statement returning one text column: its values.
    pub(super) async fn fetch_keys(
        &mut self,
        sql: Sql,
        args: &[Val<'_>],
        keep: bool,
    ) -> Result<Vec<String>, LedgerError> {
        match self {
            Conn::Any(conn) => {
                let rows = bound(sql, args, keep).fetch_all(&mut **conn).await?;
                Ok(rows
                    .iter()
                    .map(|row| row.try_get::<String, _>(0))
                    .collect::<Result<_, _>>()?)
            }
            Conn::Pg(conn) => {
                let rows = bound(sql, args, keep).fetch_all(&mut **conn).await?;
                Ok(rows
                    .iter()
                    .map(|row| row.try_get::<String, _>(0))
                    .collect::<Result<_, _>>()?)
            }
            Conn::Sqlite(conn) => Ok(run_sqlite(conn, &sql, args, keep, |s| {
                let mut rows = s.raw_query();
                let mut keys = Vec::new();
                while let Some(row) = rows.next()? {
                    keys.push(row.get::<_, String>(0)?);
                }
                Ok(keys)
            })?),
        }
    }
}

/// `sql` with `args` bound, for sqlx's `Any` or PostgreSQL's own driver.
fn bound<'q, DB>(
    sql: Sql,
    args: &[Val<'q>],
    keep: bool,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: Database + sqlx::database::HasStatementCache,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(keep);
    for arg in args {
        query = match *arg {
            Val::Text(value) => query.bind(value),
            Val::Int(value) => query.bind(value),
        };
    }
    query
}

/// Prepares `sql` (from the connection's cache when `keep`), binds
/// `args` and runs `then` on it.
fn run_sqlite<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Val<'_>],
    keep: bool,
    then: impl FnOnce(&mut rusqlite::Statement<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    if keep {
        let mut statement = conn.prepare_cached(sql)?;
        bind(&mut statement, args)?;
        then(&mut statement)
    } else {
        let mut statement = conn.prepare(sql)?;
        bind(&mut statement, args)?;
        then(&mut statement)
    }
}

/// Binds `args` to `statement`'s placeholders: `$n` (or `?n`) takes the
/// `n`-th value wherever it stands and however often, as sqlx binds them
/// on both databases; an anonymous `?` takes the next.
fn bind(statement: &mut rusqlite::Statement<'_>, args: &[Val<'_>]) -> rusqlite::Result<()> {
    for index in 1..=statement.parameter_count() {
        let number = match statement.parameter_name(index) {
            None => index,
            Some(name) => name
                .get(1..)
                .and_then(|digits| digits.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?,
        };
        let arg = args
            .get(number - 1)
            .ok_or(rusqlite::Error::InvalidParameterCount(number, args.len()))?;
        statement.raw_bind_parameter(index, arg)?;
    }
    Ok(())
}

/// A row of `COLUMNS` read out of rusqlite's row (which borrows the
/// statement), in their order.
pub(super) struct SqliteEntry(Vec<rusqlite::types::Value>);

impl SqliteEntry {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<SqliteEntry> {
        let count = row.as_ref().column_count();
        (0..count)
            .map(|i| row.get::<_, rusqlite::types::Value>(i))
            .collect::<Result<_, _>>()
            .map(SqliteEntry)
    }

    fn value(&self, index: usize, column: &str) -> Result<&rusqlite::types::Value, LedgerError> {
        self.0
            .get(index)
            .ok_or_else(|| LedgerError::Column(column.to_owned()))
    }
}

impl EntryRow for SqliteEntry {
    fn text(&self, index: usize, column: &str) -> Result<Option<String>, LedgerError> {
        use rusqlite::types::Value;
        match self.value(index, column)? {
            Value::Null => Ok(None),
            Value::Text(text) => Ok(Some(text.clone())),
            _ => Err(LedgerError::Column(column.to_owned())),
        }
    }

    fn int(&self, index: usize, column: &str) -> Result<Option<i64>, LedgerError> {
        use rusqlite::types::Value;
        match self.value(index, column)? {
            Value::Null => Ok(None),
            Value::Integer(int) => Ok(Some(*int)),
            _ => Err(LedgerError::Column(column.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sqlite_url_names_its_file_unless_it_is_in_memory() {
        assert_eq!(
            Source::sqlite_file("sqlite://dir/ledger.db?mode=rwc"),
            Some(PathBuf::from("dir/ledger.db"))
        );
        assert_eq!(
            Source::sqlite_file("sqlite:ledger.db"),
            Some(PathBuf::from("ledger.db"))
        );
        assert_eq!(Source::sqlite_file("sqlite::memory:"), None);
        assert_eq!(Source::sqlite_file("sqlite://?mode=memory"), None);
        assert_eq!(Source::sqlite_file("sqlite://x.db?mode=memory"), None);
    }

    fn selected(sql: &str, args: &[Val<'_>]) -> rusqlite::Result<Vec<String>> {
        let conn = rusqlite::Connection::open_in_memory()?;
        run_sqlite(&conn, sql, args, true, |s| {
            let mut rows = s.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                for i in 0..row.as_ref().column_count() {
                    let value: rusqlite::types::Value = row.get(i)?;
                    out.push(format!("{value:?}"));
                }
            }
            Ok(out)
        })
    }

    #[test]
    fn numbered_placeholders_take_their_value_wherever_and_however_often_they_stand() {
        let args = [Val::Text(Some("one")), Val::Int(Some(2)), Val::Text(None)];
        assert_eq!(
            selected("SELECT $2, $1, $3, $2", &args).expect("bound"),
            ["Integer(2)", "Text(\"one\")", "Null", "Integer(2)"]
        );
        assert_eq!(
            selected("SELECT ?2, ?1", &args).expect("bound"),
            ["Integer(2)", "Text(\"one\")"]
        );
        assert_eq!(
            selected("SELECT ?, ?", &args[..2]).expect("bound"),
            ["Text(\"one\")", "Integer(2)"]
        );
    }

    #[test]
    fn a_placeholder_without_its_value_or_number_is_refused() {
        let args = [Val::Int(Some(1))];
        assert!(matches!(
            selected("SELECT $1, $2", &args),
            Err(rusqlite::Error::InvalidParameterCount(2, 1))
        ));
        assert!(matches!(
            selected("SELECT :name", &args),
            Err(rusqlite::Error::InvalidParameterName(name)) if name == ":name"
        ));
        assert!(matches!(
            selected("SELECT $0", &args),
            Err(rusqlite::Error::InvalidParameterName(name)) if name == "$0"
        ));
    }
}
