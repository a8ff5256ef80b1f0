//! produce benchmarks (figures in docs/PERFORMANCE.md). Each run is the
//! release `alertsvc produce --once` as a child process, so its resident
//! memory is its own (the mock broker lives in this process).
//!
//!   cargo bench --bench produce -- sql [ROWS...]
//!       SQLite source → mock broker: events/s and peak resident memory per
//!       row count (default: 10000 and 1000000).
//!   cargo bench --bench produce -- bigquery [ROWS]
//!       BigQuery emulator → mock broker: produce's rows/s against the
//!       emulator's own paging rate in the same run (default 100000).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::Client;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sqlx::{Connection, Executor};

#[path = "../tests/testkit/mod.rs"]
mod testkit;

use testkit::{bigquery, config_dir, mock_cluster};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "data-notifications-pipeline";
/// The mock keeps ≤ 5 MB per partition; 1M ~450-byte events need room.
const PARTITIONS: i32 = 128;
const PROJECT: &str = "bench-project";

fn mock_broker() -> MockCluster<'static, DefaultProducerContext> {
    mock_cluster(&[(TOPIC, PARTITIONS), (&format!("{TOPIC}.dlq"), 1)])
}

/// The overlay: the broker, produce's state in `dir`, the shipped
/// connector-failures job reading `table` from `source`.
fn overlay(dir: &Path, bootstrap: &str, table: &str, source: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(config_dir().join("queries/connector_failures.sql"))
        .expect("shipped SQL");
    let sql = dir.join("job.sql");
    std::fs::write(&sql, shipped.replace("ops.connector_status_changes", table)).expect("sql");
    testkit::bench_overlay(
        dir,
        bootstrap,
        &format!(
            "[produce]\nhttp_addr = \"127.0.0.1:0\"\nprogress_interval = \"5s\"\n\
             [produce.state]\ndatabase_url = \"sqlite://{}?mode=rwc\"\n\
             [produce.jobs.onboarding-started]\nenabled = false\n\
             [produce.jobs.connector-failures]\nsource = \"bench\"\nsql_file = \"{}\"\n\
             [produce.sources.bench]\n{source}\n",
            dir.join("state.db").display(),
            sql.display()
        ),
    )
}

struct ChildRun {
    elapsed: Duration,
    peak_rss_mb: f64,
}

/// `alertsvc produce --once` with `overlay`, sampling its peak RSS.
fn run_produce(overlay: &Path) -> ChildRun {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_alertsvc"))
        .arg("--config-dir")
        .arg(config_dir())
        .arg("--config")
        .arg(overlay)
        .args(["produce", "--once"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn alertsvc produce");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "produce failed: {status}");
    ChildRun {
        elapsed: started.elapsed(),
        peak_rss_mb: peak_kb as f64 / 1024.0,
    }
}

async fn sqlite_warehouse(dir: &Path, rows: usize) -> String {
    let url = format!("sqlite://{}?mode=rwc", dir.join("warehouse.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
    // One statement generates the rows inside SQLite.
    let sql = format!(
        "CREATE TABLE connector_status_changes (org_id TEXT, env_id TEXT, connector_id TEXT, \
         connector_name TEXT, connector_type TEXT, old_status TEXT, new_status TEXT, \
         failure_reason TEXT, failed_at TEXT);
         WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {last})
         INSERT INTO connector_status_changes
         SELECT 'org-' || (i % 1000), 'env-' || (i % 3), printf('lcc-%07d', i),
                printf('lcc-%07d connector', i), 'PostgresSink', 'Provisioning', 'Failed',
                'bad credentials for the sink database',
                datetime(1767225600 + i / 10, 'unixepoch')
         FROM seq;",
        last = rows - 1
    );
    conn.execute(sqlx::AssertSqlSafe(sql))
        .await
        .expect("seed warehouse");
    url
}

async fn bench_sql(counts: &[usize]) {
    let mut results = Vec::new();
    for &rows in counts {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = sqlite_warehouse(dir.path(), rows).await;
        let cluster = mock_broker();
        let overlay = overlay(
            dir.path(),
            &cluster.bootstrap_servers(),
            "connector_status_changes",
            &format!("kind = \"sql\"\nurl = \"{url}\"\npage_size = 1000"),
        );
        let run = run_produce(&overlay);
        let rate = rows as f64 / run.elapsed.as_secs_f64();
        println!(
            "sql {rows} rows: {:.2} s, {rate:.0} events/s, peak RSS {:.1} MB",
            run.elapsed.as_secs_f64(),
            run.peak_rss_mb
        );
        results.push((rows, run.peak_rss_mb));
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        println!(
            "peak RSS difference, {} vs {} rows: {:.1} MB (target ≤ 20 MB)",
            last.0,
            first.0,
            last.1 - first.1
        );
    }
}

/// The emulator's own paging rate: the same query, pages read and dropped.
async fn raw_paging(client: &Client, sql: &str, page_size: i32) -> f64 {
    let started = Instant::now();
    let mut request = QueryRequest::new(sql);
    request.max_results = Some(page_size);
    let first = client.job().query(PROJECT, request).await.expect("query");
    let job_id = first.job_reference.and_then(|r| r.job_id).expect("job id");
    let mut rows = first.rows.map_or(0, |r| r.len());
    let mut token = first.page_token;
    while let Some(page_token) = token {
        let page = client
            .job()
            .get_query_results(
                PROJECT,
                &job_id,
                GetQueryResultsParameters {
                    page_token: Some(page_token),
                    max_results: Some(page_size),
                    ..Default::default()
                },
            )
            .await
            .expect("page");
        rows += page.rows.map_or(0, |r| r.len());
        token = page.page_token;
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

async fn bench_bigquery(rows: usize) {
    let (endpoint, mut emulator) = bigquery::start_emulator(PROJECT).await;
    let client = bigquery::client(&endpoint).await;
    bigquery::create_connector_status_changes(&client, PROJECT, "ops").await;
    let seeding = Instant::now();
    for start in (0..rows).step_by(10_000) {
        let mut request = TableDataInsertAllRequest::new();
        for i in start..(start + 10_000).min(rows) {
            let at = chrono::DateTime::from_timestamp(1_767_225_600 + (i / 10) as i64, 0)
                .expect("time")
                .format("%Y-%m-%d %H:%M:%S%.6f+00:00")
                .to_string();
            request
                .add_row(
                    None,
                    serde_json::json!({
                        "org_id": format!("org-{}", i % 1000), "env_id": format!("env-{}", i % 3),
                        "connector_id": format!("lcc-{i:07}"),
                        "connector_name": format!("lcc-{i:07} connector"),
                        "connector_type": "PostgresSink", "old_status": "Provisioning",
                        "new_status": "Failed",
                        "failure_reason": "bad credentials for the sink database",
                        "failed_at": at,
                    }),
                )
                .expect("row");
        }
        client
            .tabledata()
            .insert_all(PROJECT, "ops", "connector_status_changes", request)
            .await
            .expect("insertAll");
    }
    println!(
        "seeded {rows} rows in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let page_size = 10_000;
    let sql = "SELECT * FROM ops.connector_status_changes WHERE new_status = 'Failed' \
               ORDER BY failed_at";
    let raw_before = raw_paging(&client, sql, page_size).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = mock_broker();
    let overlay = overlay(
        dir.path(),
        &cluster.bootstrap_servers(),
        "ops.connector_status_changes",
        &format!(
            "kind = \"bigquery\"\nproject_id = \"{PROJECT}\"\ncredentials = \"none\"\n\
             endpoint = \"{endpoint}/bigquery/v2\"\npage_size = {page_size}"
        ),
    );
    let run = run_produce(&overlay);
    let raw_after = raw_paging(&client, sql, page_size).await;
    let raw = (raw_before + raw_after) / 2.0;
    let produced = rows as f64 / run.elapsed.as_secs_f64();
    println!(
        "bigquery {rows} rows: emulator paging {raw:.0} rows/s ({raw_before:.0} before, \
         {raw_after:.0} after); alertsvc produce {produced:.0} rows/s ({:.2} s, peak RSS \
         {:.1} MB); ratio {:.2} (target ≥ 0.8)",
        run.elapsed.as_secs_f64(),
        run.peak_rss_mb,
        produced / raw
    );
    drop(emulator.stdin.take());
    let _ = emulator.wait();
}

fn main() {
    let args = testkit::bench_init();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let numbers: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    match args.first().map(String::as_str) {
        Some("sql") => {
            let counts = if numbers.is_empty() {
                vec![10_000, 1_000_000]
            } else {
                numbers
            };
            runtime.block_on(bench_sql(&counts));
        }
        Some("bigquery") => {
            runtime.block_on(bench_bigquery(numbers.first().copied().unwrap_or(100_000)))
        }
        _ => {
            eprintln!("usage: cargo bench --bench produce -- sql [ROWS...] | bigquery [ROWS]");
            std::process::exit(2);
        }
    }
}
