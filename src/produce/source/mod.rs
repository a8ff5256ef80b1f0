//! Where rows come from: BigQuery, or PostgreSQL/SQLite through sqlx. A
//! query runs in its own task and hands over pages through a small bounded
//! channel, so the next page is fetched while the last one is produced and
//! memory stays flat however many rows there are.

use std::collections::BTreeMap;

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
    #[error("source {source_name}: column {column}: {reason}")]
    Decode {
        source_name: String,
        column: String,
        reason: String,
    },
    #[error("the SQL uses @{0}, which is neither in `params` nor set by alertsvc")]
    MissingParam(String),
}

/// One page of a result.
pub type Page = Vec<Row>;

/// The receiving end of a running query; `None` after the last page.
pub type PageStream = mpsc::Receiver<Result<Page, SourceError>>;

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

    /// Starts `sql` (with `@name` parameters) and returns its pages.
    pub fn query(
        &self,
        sql: &str,
        params: &BTreeMap<String, Param>,
    ) -> Result<PageStream, SourceError> {
        match self {
            Source::Sql(s) => s.query(sql, params),
            Source::BigQuery(s) => s.query(sql, params),
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
    mpsc::channel(PAGES_AHEAD)
}
