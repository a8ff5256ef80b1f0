//! PostgreSQL and SQLite sources through sqlx. Rows are streamed from the
//! database cursor, never collected.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::{Stream, TryStreamExt};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgColumn, PgConnectOptions, PgRow};
use sqlx::sqlite::{SqliteColumn, SqliteConnectOptions, SqliteRow};
use sqlx::{Column, ConnectOptions, PgPool, Row as _, SqlitePool, TypeInfo, ValueRef};
use tokio::sync::mpsc;

use crate::config::SqlSourceSettings;
use crate::db::sqlite_datetime;
use crate::produce::checkpoint::Param;
use crate::produce::row::{Cell, Columns, Row};
use crate::produce::sql::{parse, Placeholder};

use super::{one_line, ordered_params, page_channel, CellError, Page, PageStream, SourceError};

/// How long connecting (or waiting for a connection) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

#[derive(Clone)]
pub struct SqlSource {
    name: String,
    pool: Pool,
    page_size: usize,
}

impl SqlSource {
    pub async fn connect(
        name: &str,
        settings: &SqlSourceSettings,
    ) -> Result<SqlSource, SourceError> {
        let url = settings.url.expose();
        // sqlx errors name the host or file, never the password.
        let connect_error = |e: sqlx::Error| SourceError::Connect {
            source_name: name.to_owned(),
            reason: one_line(e),
        };
        let pool = if url.starts_with("sqlite") {
            let options = SqliteConnectOptions::from_str(url).map_err(connect_error)?;
            Pool::Sqlite(open(options).await.map_err(connect_error)?)
        } else {
            let options = PgConnectOptions::from_str(url).map_err(connect_error)?;
            Pool::Postgres(open(options).await.map_err(connect_error)?)
        };
        Ok(SqlSource {
            name: name.to_owned(),
            pool,
            page_size: settings.page_size,
        })
    }

    pub fn placeholder(&self) -> Placeholder {
        match self.pool {
            Pool::Postgres(_) => Placeholder::Dollar,
            Pool::Sqlite(_) => Placeholder::Question,
        }
    }

    pub fn query(
        &self,
        sql: &str,
        params: &BTreeMap<String, Param>,
    ) -> Result<PageStream, SourceError> {
        let parsed = parse(sql, self.placeholder());
        let values = ordered_params(&parsed.names, params)?;
        let (tx, rx) = page_channel();
        let (name, page_size) = (self.name.clone(), self.page_size);
        match self.pool.clone() {
            Pool::Postgres(pool) => {
                tokio::spawn(async move {
                    let query = bind_params(
                        sqlx::query(sqlx::AssertSqlSafe(parsed.text)),
                        values,
                        DateTime::<Utc>::from_timestamp_micros,
                    );
                    pump(&name, query.fetch(&pool), postgres_cell, tx, page_size).await;
                });
            }
            Pool::Sqlite(pool) => {
                tokio::spawn(async move {
                    // SQLite's own datetime text, so `>` compares like time.
                    let query = bind_params(
                        sqlx::query(sqlx::AssertSqlSafe(parsed.text)),
                        values,
                        sqlite_datetime,
                    );
                    pump(&name, query.fetch(&pool), sqlite_cell, tx, page_size).await;
                });
            }
        }
        Ok(rx)
    }
}

/// A small pool of either dialect.
async fn open<DB: sqlx::Database>(
    options: <DB::Connection as sqlx::Connection>::Options,
) -> Result<sqlx::Pool<DB>, sqlx::Error> {
    PoolOptions::<DB>::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        // A job's query is one long cursor: sqlx's slow-statement warning
        // would fire on every large run.
        .connect_with(options.log_slow_statements(log::LevelFilter::Off, Duration::MAX))
        .await
}

type Query<DB> = sqlx::query::Query<'static, DB, <DB as sqlx::Database>::Arguments>;

/// Binds parameters in order; timestamps in the form `timestamp` makes.
fn bind_params<DB, T>(
    mut query: Query<DB>,
    values: Vec<Param>,
    timestamp: fn(i64) -> T,
) -> Query<DB>
where
    DB: sqlx::Database,
    String: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    i64: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    f64: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    bool: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    T: for<'e> sqlx::Encode<'e, DB> + sqlx::Type<DB> + Send + 'static,
{
    for value in values {
        query = match value {
            Param::Text(s) => query.bind(s),
            Param::Int(i) => query.bind(i),
            Param::Float(f) => query.bind(f),
            Param::Bool(b) => query.bind(b),
            Param::Timestamp(micros) => query.bind(timestamp(micros)),
        };
    }
    query
}

/// A row's cells, or the column that cannot be read and why.
type Decoded = Result<Vec<Cell>, (String, CellError)>;

/// How a dialect decodes the non-NULL value of column `i`.
type CellDecoder<R> = fn(
    &R,
    usize,
    &<<R as sqlx::Row>::Database as sqlx::Database>::Column,
) -> Result<Cell, CellError>;

/// A row's cells: NULL is NULL in every dialect; any other value as the
/// dialect's `cell` decodes it.
fn decode_row<R>(row: &R, cell: CellDecoder<R>) -> Decoded
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
{
    let mut cells = Vec::with_capacity(row.columns().len());
    for (i, column) in row.columns().iter().enumerate() {
        let named = |e: CellError| (column.name().to_owned(), e);
        let null = row.try_get_raw(i).map_err(|e| named(e.into()))?.is_null();
        cells.push(if null {
            Cell::Null
        } else {
            cell(row, i, column).map_err(named)?
        });
    }
    Ok(cells)
}

/// Moves rows from the cursor into pages until the result ends, an error
/// occurs, or the receiver goes away.
async fn pump<R, S>(
    source_name: &str,
    rows: S,
    cell: CellDecoder<R>,
    tx: mpsc::Sender<Result<Page, SourceError>>,
    page_size: usize,
) where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    S: Stream<Item = Result<R, sqlx::Error>>,
{
    futures::pin_mut!(rows);
    let mut columns: Option<Columns> = None;
    let mut page: Page = Vec::with_capacity(page_size);
    loop {
        let next = rows.try_next().await;
        let row = match next {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => {
                let _ = tx
                    .send(Err(SourceError::Query {
                        source_name: source_name.to_owned(),
                        reason: one_line(e),
                    }))
                    .await;
                return;
            }
        };
        let columns = columns
            .get_or_insert_with(|| {
                let names: Vec<String> =
                    row.columns().iter().map(|c| c.name().to_owned()).collect();
                Arc::from(names)
            })
            .clone();
        match decode_row(&row, cell) {
            Ok(cells) => page.push(Row { columns, cells }),
            Err((column, error)) => {
                let _ = tx
                    .send(Err(SourceError::Decode {
                        source_name: source_name.to_owned(),
                        column,
                        error: Box::new(error),
                    }))
                    .await;
                return;
            }
        }
        if page.len() >= page_size {
            let full = std::mem::replace(&mut page, Vec::with_capacity(page_size));
            if tx.send(Ok(full)).await.is_err() {
                return;
            }
        }
    }
    if !page.is_empty() {
        let _ = tx.send(Ok(page)).await;
    }
}

fn postgres_cell(row: &PgRow, i: usize, column: &PgColumn) -> Result<Cell, CellError> {
    Ok(match column.type_info().name() {
        "BOOL" => Cell::Bool(row.try_get(i)?),
        "INT2" => Cell::Int(row.try_get::<i16, _>(i)?.into()),
        "INT4" => Cell::Int(row.try_get::<i32, _>(i)?.into()),
        "INT8" => Cell::Int(row.try_get(i)?),
        "FLOAT4" => Cell::Float(row.try_get::<f32, _>(i)?.into()),
        "FLOAT8" => Cell::Float(row.try_get(i)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => Cell::Text(row.try_get(i)?),
        "TIMESTAMPTZ" => Cell::Timestamp(row.try_get::<DateTime<Utc>, _>(i)?.timestamp_micros()),
        "TIMESTAMP" => Cell::Timestamp(
            row.try_get::<NaiveDateTime, _>(i)?
                .and_utc()
                .timestamp_micros(),
        ),
        "DATE" => Cell::Text(row.try_get::<NaiveDate, _>(i)?.to_string()),
        "JSON" | "JSONB" => {
            Cell::Json(row.try_get::<sqlx::types::Json<serde_json::Value>, _>(i)?.0)
        }
        other => return Err(CellError::UnsupportedPostgresType(other.to_owned())),
    })
}

fn sqlite_cell(row: &SqliteRow, i: usize, column: &SqliteColumn) -> Result<Cell, CellError> {
    // SQLite types values, not columns: decode by the value's own type.
    let storage = row.try_get_raw(i)?.type_info().name().to_owned();
    let declared = column.type_info().name().to_ascii_uppercase();
    Ok(match storage.as_str() {
        "INTEGER" if declared == "BOOLEAN" => Cell::Bool(row.try_get(i)?),
        "INTEGER" => Cell::Int(row.try_get(i)?),
        "REAL" => Cell::Float(row.try_get(i)?),
        "TEXT" => Cell::Text(row.try_get(i)?),
        other => return Err(CellError::UnsupportedSqliteValue(other.to_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[tokio::test]
    async fn sqlite_values_decode_by_their_own_type_and_null_is_null() {
        let settings = SqlSourceSettings {
            url: Secret::new("sqlite::memory:"),
            page_size: 10,
        };
        let source = SqlSource::connect("mem", &settings)
            .await
            .expect("in-memory SQLite");
        let no_params = BTreeMap::new();
        let mut pages = source
            .query("SELECT NULL AS n, 1 AS i, 1.5 AS f, 'a' AS t", &no_params)
            .expect("started");
        let page = pages.recv().await.expect("a page").expect("rows");
        assert_eq!(
            page[0].cells,
            [
                Cell::Null,
                Cell::Int(1),
                Cell::Float(1.5),
                Cell::Text("a".into())
            ]
        );
        let mut pages = source
            .query("SELECT 1 AS i, x'00' AS b", &no_params)
            .expect("started");
        match pages.recv().await.expect("an answer") {
            Err(SourceError::Decode { column, error, .. }) => {
                assert_eq!(column, "b");
                assert!(
                    matches!(*error, CellError::UnsupportedSqliteValue(ref t) if t == "BLOB"),
                    "{error:?}"
                );
            }
            other => panic!("a BLOB is not decoded: {other:?}"),
        }
    }
}
