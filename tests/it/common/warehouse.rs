//! Warehouses for produce's tests: a SQLite file, a PostgreSQL schema, or a
//! dataset in a real BigQuery REST emulator (`bqemulator`, started once per
//! test process), each holding the `connector_status_changes` table the
//! shipped `connector-failures` job reads.

use std::process::Child;

use alertsvc::db::sqlite_datetime;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::Client;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};
use tokio::sync::OnceCell;

use super::testkit::bigquery;

pub const BQ_PROJECT: &str = "test-project";
/// 2026-01-01T00:00:00Z
pub const BASE_SECONDS: i64 = 1_767_225_600;

/// One row of `connector_status_changes`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub org: Option<String>,
    pub env: String,
    pub connector: String,
    pub connector_type: String,
    pub old_status: String,
    pub failed_at: i64,
    /// Stored instead of a proper time, to make a bad row.
    pub failed_at_text: Option<String>,
}

/// The i-th generated failure: orgs and types cycle, one second apart.
pub fn failure(i: usize) -> Failure {
    Failure {
        org: Some(format!("org-{}", i % 7)),
        env: format!("env-{}", i % 3),
        connector: format!("lcc-{i:05}"),
        connector_type: if i.is_multiple_of(4) {
            "S3Sink"
        } else {
            "PostgresSink"
        }
        .into(),
        old_status: if i.is_multiple_of(5) {
            "Running"
        } else {
            "Provisioning"
        }
        .into(),
        failed_at: BASE_SECONDS + i as i64,
        failed_at_text: None,
    }
}

pub enum Warehouse {
    Sqlite {
        url: String,
    },
    Postgres {
        url: String,
        schema: String,
    },
    BigQuery {
        endpoint: String,
        dataset: String,
        client: Box<Client>,
    },
}

impl Warehouse {
    pub async fn sqlite(dir: &std::path::Path) -> Warehouse {
        let url = format!("sqlite://{}?mode=rwc", dir.join("warehouse.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
        conn.execute(
            "CREATE TABLE connector_status_changes (org_id TEXT, env_id TEXT, connector_id TEXT, \
             connector_name TEXT, connector_type TEXT, old_status TEXT, new_status TEXT, \
             failure_reason TEXT, failed_at TEXT)",
        )
        .await
        .expect("create table");
        Warehouse::Sqlite { url }
    }

    pub async fn postgres() -> Warehouse {
        let base = std::env::var("ALERTSVC_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let url = format!("{base}/postgres");
        let schema = format!("wh_{}_{}", std::process::id(), fastrand::u32(..));
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/install-test-deps.sh starts one)");
        // `schema` is built here from digits and a fixed prefix.
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.connector_status_changes (\
             org_id TEXT, env_id TEXT, connector_id TEXT, connector_name TEXT, \
             connector_type TEXT, old_status TEXT, new_status TEXT, failure_reason TEXT, \
             failed_at TIMESTAMPTZ)"
        )))
        .await
        .expect("create schema");
        Warehouse::Postgres { url, schema }
    }

    /// A dataset in the shared emulator (created fresh).
    pub async fn bigquery(dataset: &str) -> Warehouse {
        let endpoint = emulator().await.to_owned();
        let client = bigquery_client(&endpoint).await;
        client
            .dataset()
            .delete_if_exists(BQ_PROJECT, dataset, true)
            .await;
        bigquery::create_connector_status_changes(&client, BQ_PROJECT, dataset).await;
        Warehouse::BigQuery {
            endpoint,
            dataset: dataset.to_owned(),
            client: Box::new(client),
        }
    }

    /// The same warehouse, with produce reaching BigQuery at `endpoint` (a
    /// proxy in front of the emulator) instead.
    pub fn through(self, endpoint: &str) -> Warehouse {
        match self {
            Warehouse::BigQuery {
                dataset, client, ..
            } => Warehouse::BigQuery {
                endpoint: endpoint.to_owned(),
                dataset,
                client,
            },
            other => other,
        }
    }

    /// The table's name as the job's SQL writes it.
    pub fn table(&self) -> String {
        match self {
            Warehouse::Sqlite { .. } => "connector_status_changes".into(),
            Warehouse::Postgres { schema, .. } => format!("{schema}.connector_status_changes"),
            Warehouse::BigQuery { dataset, .. } => format!("{dataset}.connector_status_changes"),
        }
    }

    /// `[produce.sources.test_warehouse]` for this warehouse.
    pub fn source_toml(&self) -> String {
        match self {
            Warehouse::Sqlite { url } | Warehouse::Postgres { url, .. } => format!(
                "[produce.sources.test_warehouse]\nkind = \"sql\"\nurl = \"{url}\"\npage_size = 100\n"
            ),
            Warehouse::BigQuery { endpoint, .. } => format!(
                "[produce.sources.test_warehouse]\nkind = \"bigquery\"\nproject_id = \"{BQ_PROJECT}\"\n\
                 credentials = \"none\"\nendpoint = \"{endpoint}/bigquery/v2\"\npage_size = 500\n"
            ),
        }
    }

    /// How an event id spells the row's `failed_at`.
    pub fn id_time(&self, seconds: i64) -> String {
        match self {
            Warehouse::Sqlite { .. } => sqlite_datetime(seconds * 1_000_000),
            _ => alertsvc::produce::row::format_rfc3339(seconds * 1_000_000),
        }
    }

    pub async fn insert(&self, rows: &[Failure]) {
        match self {
            Warehouse::Sqlite { url } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
                let mut tx = conn.begin().await.expect("begin");
                for row in rows {
                    let at = row
                        .failed_at_text
                        .clone()
                        .unwrap_or_else(|| sqlite_datetime(row.failed_at * 1_000_000));
                    bind_failure(sqlx::query(INSERT_SQLITE), row)
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                }
                tx.commit().await.expect("commit");
            }
            Warehouse::Postgres { url, schema } => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
                let sql = format!(
                    "INSERT INTO {schema}.connector_status_changes VALUES \
                     ($1, $2, $3, $4, $5, $6, 'Failed', $7, to_timestamp($8))"
                );
                let mut tx = conn.begin().await.expect("begin");
                for row in rows {
                    bind_failure(sqlx::query(sqlx::AssertSqlSafe(sql.clone())), row)
                        .bind(row.failed_at as f64)
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                }
                tx.commit().await.expect("commit");
            }
            Warehouse::BigQuery {
                dataset, client, ..
            } => {
                for chunk in rows.chunks(5_000) {
                    let mut request = TableDataInsertAllRequest::new();
                    for row in chunk {
                        let at = chrono::DateTime::from_timestamp(row.failed_at, 0)
                            .expect("time")
                            .format("%Y-%m-%d %H:%M:%S%.6f+00:00")
                            .to_string();
                        request.add_row(None, bigquery_row(row, &at)).expect("row");
                    }
                    let response = client
                        .tabledata()
                        .insert_all(BQ_PROJECT, dataset, "connector_status_changes", request)
                        .await
                        .expect("insertAll");
                    assert!(
                        response.insert_errors.unwrap_or_default().is_empty(),
                        "insertAll rejected rows"
                    );
                }
            }
        }
    }
}

const INSERT_SQLITE: &str =
    "INSERT INTO connector_status_changes VALUES ($1, $2, $3, $4, $5, $6, 'Failed', $7, $8)";

fn bind_failure<'q, DB: sqlx::Database>(
    query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    row: &Failure,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(row.org.clone())
        .bind(row.env.clone())
        .bind(row.connector.clone())
        .bind(format!("{} connector", row.connector))
        .bind(row.connector_type.clone())
        .bind(row.old_status.clone())
        .bind(format!("bad credentials for {}", row.connector))
}

fn bigquery_row(row: &Failure, at: &str) -> Value {
    json!({
        "org_id": row.org,
        "env_id": row.env,
        "connector_id": row.connector,
        "connector_name": format!("{} connector", row.connector),
        "connector_type": row.connector_type,
        "old_status": row.old_status,
        "new_status": "Failed",
        "failure_reason": format!("bad credentials for {}", row.connector),
        "failed_at": at,
    })
}

/// The event the shipped `connector-failures` job makes of `row`.
pub fn expected_event(warehouse: &Warehouse, row: &Failure) -> (String, Value) {
    let org = row.org.clone().unwrap_or_default();
    let event = json!({
        "eventId": format!("{org}:{}:{}:{}", row.env, row.connector, warehouse.id_time(row.failed_at)),
        "eventType": "connector-failure",
        "source": "bigquery:ops.connector_status_changes",
        "time": row.failed_at * 1000,
        "data": {
            "env_id": row.env,
            "connector_id": row.connector,
            "connector_name": format!("{} connector", row.connector),
            "connector_type": row.connector_type,
            "failure_reason": format!("bad credentials for {}", row.connector),
            "labels": {"connector_old_status": row.old_status, "connector_new_status": "Failed"},
        },
    });
    (org, event)
}

pub async fn bigquery_client(endpoint: &str) -> Client {
    super::testkit::bigquery::client(endpoint).await
}

/// The emulator of this test process: started on first use, stopped when
/// the process exits (a small Python parent kills it once our pipe closes).
pub async fn emulator() -> &'static str {
    super::init();
    static EMULATOR: OnceCell<(String, std::sync::Mutex<Child>)> = OnceCell::const_new();
    let (endpoint, _) = EMULATOR
        .get_or_init(|| async {
            let (endpoint, child) = bigquery::start_emulator(BQ_PROJECT).await;
            (endpoint, std::sync::Mutex::new(child))
        })
        .await;
    endpoint
}

/// Test overlay for produce: state in `dir`, the warehouse as source, the
/// shipped `connector-failures` job reading this warehouse's table (the
/// shipped SQL with `extra_where` added), and the other shipped job off.
/// `produce_keys` go into `[produce]`.
pub fn produce_toml(
    dir: &std::path::Path,
    warehouse: &Warehouse,
    extra_where: &str,
    produce_keys: &str,
) -> String {
    let shipped =
        std::fs::read_to_string(super::config_dir().join("queries/connector_failures.sql"))
            .expect("shipped SQL");
    let mut sql = shipped.replace("ops.connector_status_changes", &warehouse.table());
    if !extra_where.is_empty() {
        sql = sql.replace("ORDER BY", &format!("  {extra_where}\nORDER BY"));
    }
    let sql_path = dir.join("connector_failures.sql");
    std::fs::write(&sql_path, sql).expect("write SQL");
    format!(
        r#"
        [produce]
        http_addr = "127.0.0.1:0"
        progress_interval = "1s"
        {produce_keys}
        [produce.state]
        database_url = "sqlite://{state}?mode=rwc"
        [produce.jobs.onboarding-started]
        enabled = false
        [produce.jobs.connector-failures]
        sql_file = "{sql}"
        source = "test_warehouse"
        {source}
        "#,
        state = dir.join("produce-state.db").display(),
        sql = sql_path.display(),
        source = warehouse.source_toml(),
    )
}
