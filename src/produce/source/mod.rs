//! Where rows come from: BigQuery, or PostgreSQL/SQLite through sqlx. A
//! query runs in its own task and hands over pages through a small bounded
//! channel, so the next page is fetched while the last one is produced and
//! memory stays flat however many rows there are.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use crate::config::SourceSettings;

use super::checkpoint::Param;
use super::row::Row;

pub mod bigquery;
pub mod sql;

/// Pages in flight between the query task and the producer.
const PAGES_AHEAD: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to source {source_name}: {reason}")]
    Connect { source_name: String, reason: String },
    #[error("source {source_name} rejected the query: {reason}")]
    Query { source_name: String, reason: String },
    #[error("source {source_name}: column {column}: {error}")]
    Decode {
        source_name: String,
        column: String,
        error: Box<CellError>,
    },
    #[error("the SQL uses @{0}, which is neither in `params` nor set by alertsvc")]
    MissingParam(String),
    /// BigQuery's `bytesBilledLimitExceeded` (refused before running, so
    /// nothing was read or billed), or a dry run's estimate over the limit.
    #[error(
        "source {source_name}: the query would bill more than maximum_bytes_billed = {}, \
         so it did not run (nothing read, nothing billed): {reason}",
        describe_limit(*limit)
    )]
    BytesBilledLimitExceeded {
        source_name: String,
        limit: Option<u64>,
        reason: String,
    },
}

/// Why a result cell cannot be read. The driver's error is part of the
/// message, not a chained source: the CLI prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("{0}")]
    Driver(#[from] sqlx::Error),
    #[error(
        "PostgreSQL type {0} is not supported; cast it in the query (::text, ::float8, ::bigint)"
    )]
    UnsupportedPostgresType(String),
    #[error("SQLite {0} values are not supported; select text or numbers")]
    UnsupportedSqliteValue(String),
    #[error("expected a string cell, got {0}")]
    NotAString(serde_json::Value),
    #[error("{0:?} is not an INT64")]
    NotInt64(String),
    #[error("{0:?} is not a FLOAT64")]
    NotFloat64(String),
    #[error("{0:?} is not a TIMESTAMP")]
    NotTimestamp(String),
}

fn describe_limit(limit: Option<u64>) -> String {
    match limit {
        Some(bytes) => format!("{} ({bytes} bytes)", crate::config::ByteSize::from(bytes)),
        None => "the project's default".into(),
    }
}

/// What a job asks of its source besides SQL and parameters: BigQuery's
/// cost controls (`config check` refuses them on other sources).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// `maximumBytesBilled`: BigQuery refuses a query that would bill more.
    pub maximum_bytes_billed: Option<u64>,
    /// Labels on the query job, for cost attribution.
    pub labels: BTreeMap<String, String>,
}

/// One query as a job runs it: the SQL (with `@name` parameters), their
/// values, and what is asked of the source besides.
#[derive(Debug, Clone, Copy)]
pub struct Statement<'a> {
    pub sql: &'a str,
    pub params: &'a BTreeMap<String, Param>,
    pub options: &'a QueryOptions,
}

/// What a query scanned and billed, as the warehouse reported it once the
/// query finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryCost {
    /// The warehouse's id of the query (a BigQuery job id).
    pub query_id: String,
    pub bytes_processed: Option<u64>,
    pub bytes_billed: Option<u64>,
    pub cache_hit: Option<bool>,
}

/// One page of a result.
pub type Page = Vec<Row>;

/// The receiving end of a running query.
pub struct PageStream {
    pages: mpsc::Receiver<Result<Page, SourceError>>,
    cost: Arc<OnceLock<QueryCost>>,
}

impl PageStream {
    /// The next page; `None` after the last one.
    pub async fn recv(&mut self) -> Option<Result<Page, SourceError>> {
        self.pages.recv().await
    }

    /// What the query scanned and billed, once the warehouse told (BigQuery
    /// reports it before the first page; SQL sources never do).
    pub fn cost(&self) -> Option<QueryCost> {
        self.cost.get().cloned()
    }

    fn cost_cell(&self) -> Arc<OnceLock<QueryCost>> {
        self.cost.clone()
    }
}

pub enum Source {
    Sql(sql::SqlSource),
    BigQuery(bigquery::BigQuerySource),
}

impl Source {
    pub async fn connect(name: &str, settings: &SourceSettings) -> Result<Source, SourceError> {
        Ok(match settings {
            SourceSettings::Sql(s) => Source::Sql(sql::SqlSource::connect(name, s).await?),
            SourceSettings::Bigquery(s) => {
                Source::BigQuery(bigquery::BigQuerySource::connect(name, s).await?)
            }
        })
    }

    /// Starts the statement and returns its pages.
    pub fn query(&self, statement: &Statement<'_>) -> Result<PageStream, SourceError> {
        match self {
            Source::Sql(s) => s.query(statement.sql, statement.params),
            Source::BigQuery(s) => s.query(statement),
        }
    }

    /// The warehouse's own estimate of the bytes the statement would
    /// process, without running it (a BigQuery dry-run query); `None` from
    /// sources that have no such estimate.
    pub async fn estimate(&self, statement: &Statement<'_>) -> Result<Option<u64>, SourceError> {
        match self {
            Source::Sql(_) => Ok(None),
            Source::BigQuery(s) => s.estimate(statement).await.map(Some),
        }
    }

    /// The placeholder style the source's dialect wants.
    pub fn placeholder(&self) -> super::sql::Placeholder {
        match self {
            Source::Sql(s) => s.placeholder(),
            Source::BigQuery(_) => super::sql::Placeholder::Named,
        }
    }
}

/// The parameters `names` asks for, in order.
fn ordered_params(
    names: &[String],
    params: &BTreeMap<String, Param>,
) -> Result<Vec<Param>, SourceError> {
    names
        .iter()
        .map(|name| {
            params
                .get(name)
                .cloned()
                .ok_or_else(|| SourceError::MissingParam(name.clone()))
        })
        .collect()
}

/// Database messages may span lines (a caret under the bad token): the run's
/// error stays one line.
fn one_line(reason: impl std::fmt::Display) -> String {
    reason
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn page_channel() -> (mpsc::Sender<Result<Page, SourceError>>, PageStream) {
    let (tx, pages) = mpsc::channel(PAGES_AHEAD);
    let cost = Arc::new(OnceLock::new());
    (tx, PageStream { pages, cost })
}
