//! BigQuery's cost, visible and bounded: each query job carries the job's
//! `maximum_bytes_billed` and labels, every run reports the bytes BigQuery
//! processed and billed (log lines and metrics), a query over its limit
//! fails the run with exit code 4 and emits nothing, and `--dry-run` reports
//! BigQuery's own estimate next to the rows.
//!
//! The emulator (bqemulator 1.4) reports 0 bytes for every query and dry
//! run, has no bytes billed, and ignores `maximumBytesBilled` and `labels`.
//! So these tests run the emulator behind `common::bigquery_proxy`, which
//! records the requests we send and answers with BigQuery's cost figures
//! and its `bytesBilledLimitExceeded` error: they check our side (fields
//! sent, figures read from the answers, the error handled), not BigQuery's
//! arithmetic.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::bigquery_proxy::{billed_for, BigQueryProxy};
use crate::common::warehouse::{emulator, failure, produce_toml, Failure, Warehouse};
use crate::common::{eventually, http_get, metric_value, Broker, TestEnv};
use crate::config_check::{assert_refused, check};
use crate::produce_sources::assert_events;

/// What the proxy's queries read, by default: 117.74 MiB.
const SCANNED: u64 = 123_456_789;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A BigQuery warehouse reached through a proxy whose queries read `scans`
/// bytes in turn, holding `rows`.
async fn warehouse_behind_proxy(
    dataset: &str,
    scans: &[u64],
    rows: &[Failure],
) -> (Warehouse, BigQueryProxy) {
    let proxy = BigQueryProxy::start(emulator().await, scans).await;
    let warehouse = Warehouse::bigquery(dataset).await.through(&proxy.endpoint);
    warehouse.insert(rows).await;
    (warehouse, proxy)
}

/// The first stderr line containing `message`, without the terminal
/// colours of the human log format.
fn log_line(stderr: &str, message: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} line in: {stderr}"));
    let mut plain = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('\x1b') {
        plain.push_str(&rest[..start]);
        rest = rest[start..]
            .find('m')
            .map_or("", |end| &rest[start + end + 1..]);
    }
    plain.push_str(rest);
    plain
}

/// The query job carries the job's limit and the labels merged from the
/// defaults, the source and the job (the job's win); the run's
/// `run finished` line and a `BigQuery query cost` line carry the bytes
/// processed and billed that `jobs.get` reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigquery_queries_carry_limit_and_labels_and_runs_report_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Failure> = (0..12).map(failure).collect();
    let (warehouse, proxy) = warehouse_behind_proxy("produce_cost_labels", &[SCANNED], &rows).await;
    // The source's table comes last in the overlay: these are its keys.
    let mut base = produce_toml(dir.path(), &warehouse, "", "");
    base.push_str("labels = { team = \"data-platform\", env = \"test\" }\n");
    let job = r#"
        [produce.jobs.connector-failures]
        maximum_bytes_billed = "1 GiB"
        labels = { cost_center = "cc-42", team = "alerts" }
    "#;
    let env = TestEnv::with_layers(Broker::start(), &[&base, job]).await;

    let (code, stdout, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert_events(&env, &warehouse, &rows).await;

    let queries = proxy.queries();
    assert_eq!(queries.len(), 1, "one query and no dry run: {queries:?}");
    assert_eq!(queries[0]["maximumBytesBilled"], "1073741824");
    assert_eq!(
        queries[0]["labels"],
        json!({
            "app": "alertsvc",
            "job": "connector-failures",
            "env": "test",
            "team": "alerts",
            "cost_center": "cc-42",
        })
    );
    assert_eq!(queries[0].get("dryRun"), None);
    let job_ids = proxy.job_ids();
    assert_eq!(job_ids.len(), 1);
    let job_id = &job_ids[0];
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.contains(&format!("/jobs/{job_id}"))),
        "the job's statistics were asked for: {:?}",
        proxy.requests()
    );

    let billed = billed_for(SCANNED);
    assert_eq!(billed, 118 * MIB);
    let finished = log_line(&stderr, "run finished");
    for field in [
        "rows_read=12".to_owned(),
        "events_produced=12".to_owned(),
        format!("bytes_processed={SCANNED}"),
        format!("bytes_billed={billed}"),
    ] {
        assert!(finished.contains(&field), "{field} not in: {finished}");
    }
    let cost = log_line(&stderr, "BigQuery query cost");
    for field in [
        "job=\"connector-failures\"".to_owned(),
        format!("bigquery_job_id={job_id}"),
        format!("bytes_processed={SCANNED}"),
        format!("bytes_billed={billed}"),
        "cache_hit=false".to_owned(),
    ] {
        assert!(cost.contains(&field), "{field} not in: {cost}");
    }
}

/// A query that would bill more than the source's `maximum_bytes_billed`
/// is refused by BigQuery (the proxy answers its 400
/// `bytesBilledLimitExceeded`): exit code 4, one line saying what happened
/// and which key to change, nothing emitted. The next run, whose query
/// reads less, emits every row: the refused run moved no checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_its_byte_limit_fails_with_exit_4_and_emits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Failure> = (0..12).map(failure).collect();
    let (warehouse, proxy) =
        warehouse_behind_proxy("produce_cost_limit", &[5 * GIB, 100 * MIB], &rows).await;
    let mut toml = produce_toml(dir.path(), &warehouse, "", "recovery_settle = \"100ms\"");
    toml.push_str("maximum_bytes_billed = 1073741824\n");
    let env = TestEnv::new(&toml).await;

    let (code, stdout, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 4, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        "error: produce failed: job connector-failures: source test_warehouse: the query would \
         bill more than maximum_bytes_billed = 1 GiB (1073741824 bytes), so it did not run \
         (nothing read, nothing billed): bytesBilledLimitExceeded: Query exceeded limit for \
         bytes billed: 1073741824. 5368709120 or higher required; narrow the query \
         (`alertsvc produce --dry-run --job connector-failures` shows BigQuery's estimate) or \
         raise `produce.sources.test_warehouse.maximum_bytes_billed`"
    );
    assert_eq!(proxy.queries()[0]["maximumBytesBilled"], "1073741824");
    assert!(proxy.job_ids().is_empty(), "the refused query never ran");
    let topic = env.topic("notifications");
    assert_eq!(env.end_offsets(&topic, 3).iter().sum::<i64>(), 0);
    assert!(!stderr.contains("BigQuery query cost"), "{stderr}");

    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_events(&env, &warehouse, &rows).await;
    let finished = log_line(&stderr, "run finished");
    assert!(
        finished.contains(&format!("bytes_processed={}", 100 * MIB)),
        "{finished}"
    );
}

/// `--dry-run` first asks BigQuery for its estimate with a dry-run query
/// (the same request, `dryRun = true`), prints the events as JSON lines on
/// stdout, and ends with a summary line on stderr: rows, events and the
/// estimate. Nothing reaches Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bigquery_dry_run_reports_the_estimate_next_to_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Failure> = (0..12).map(failure).collect();
    let (warehouse, proxy) = warehouse_behind_proxy("produce_cost_dry", &[SCANNED], &rows).await;
    let base = produce_toml(dir.path(), &warehouse, "", "");
    let job = "[produce.jobs.connector-failures]\nmaximum_bytes_billed = \"1 GiB\"\n";
    let env = TestEnv::with_layers(Broker::start(), &[&base, job]).await;

    let (code, stdout, stderr) = env.run_produce(&["--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(events.len(), 12);
    assert!(events.iter().all(|e| e["job"] == "connector-failures"));
    assert!(
        stderr.lines().any(|l| l
            == "dry run of job connector-failures: 12 rows read, 12 events would be produced, \
                0 already emitted, 0 rows cannot be mapped; BigQuery estimates 117.74 MiB \
                (123456789 bytes) processed"),
        "{stderr}"
    );
    let queries = proxy.queries();
    assert_eq!(queries.len(), 2, "{queries:?}");
    assert_eq!(queries[0]["dryRun"], true);
    let mut estimated = queries[0].clone();
    estimated.as_object_mut().unwrap().remove("dryRun");
    assert_eq!(
        estimated, queries[1],
        "the dry run asks about the same query"
    );
    assert_eq!(queries[1]["maximumBytesBilled"], "1073741824");
    let topic = env.topic("notifications");
    assert_eq!(env.end_offsets(&topic, 3).iter().sum::<i64>(), 0);
}

/// A dry run whose estimate is over the limit stops there with the same
/// error and exit code as the refused query: no event printed, and the real
/// query never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_over_the_byte_limit_stops_before_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Failure> = (0..3).map(failure).collect();
    let (warehouse, proxy) =
        warehouse_behind_proxy("produce_cost_dry_over", &[5 * GIB], &rows).await;
    let base = produce_toml(dir.path(), &warehouse, "", "");
    let job = "[produce.jobs.connector-failures]\nmaximum_bytes_billed = \"1 GiB\"\n";
    let env = TestEnv::with_layers(Broker::start(), &[&base, job]).await;

    let (code, stdout, stderr) = env.run_produce(&["--dry-run"]).await;
    assert_eq!(code, 4, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        "error: produce failed: job connector-failures: source test_warehouse: the query would \
         bill more than maximum_bytes_billed = 1 GiB (1073741824 bytes), so it did not run \
         (nothing read, nothing billed): its dry run estimates 5 GiB (5368709120 bytes) \
         processed; narrow the query (`alertsvc produce --dry-run --job connector-failures` \
         shows BigQuery's estimate) or raise `produce.jobs.connector-failures.maximum_bytes_billed`"
    );
    let queries = proxy.queries();
    assert_eq!(queries.len(), 1, "only the dry run: {queries:?}");
    assert_eq!(queries[0]["dryRun"], true);
}

/// `--schedule`: the byte counters add up what each completed query
/// processed and billed, and a run refused for its limit counts as
/// `bytes_limit_exceeded` and adds no bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_mode_counts_bytes_and_refused_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Failure> = (0..5).map(failure).collect();
    let scans = [100 * MIB, 200 * MIB, 5 * GIB];
    let (warehouse, _proxy) = warehouse_behind_proxy("produce_cost_metrics", &scans, &rows).await;
    let mut toml = produce_toml(dir.path(), &warehouse, "", "recovery_settle = \"100ms\"");
    toml.push_str("maximum_bytes_billed = \"1 GiB\"\n");
    let env = TestEnv::new(&toml).await;
    let produce = env.start_produce_scheduled("* * * * * *").await;
    let addr = produce.http_addr;
    let series = |name: &str, labels: &str| {
        format!("alertsvc_produce_{name}{{job=\"connector-failures\"{labels}}}")
    };
    let refused = series("runs_total", ",outcome=\"bytes_limit_exceeded\"");
    let text = eventually(Duration::from_secs(30), "a refused run", || async {
        let (_, text) = http_get(&format!("http://{addr}/metrics")).await?;
        metric_value(&text, &refused).map(|_| text)
    })
    .await;
    produce
        .stop()
        .await
        .expect("produce stops cleanly on shutdown");

    let value = |series: &str| metric_value(&text, series);
    assert_eq!(
        value(&series("runs_total", ",outcome=\"ok\"")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&series("runs_total", ",outcome=\"failed\"")),
        None,
        "{text}"
    );
    assert_eq!(
        value(&series("bytes_processed_total", "")),
        Some((300 * MIB) as f64),
        "{text}"
    );
    assert_eq!(
        value(&series("bytes_billed_total", "")),
        Some((billed_for(100 * MIB) + billed_for(200 * MIB)) as f64),
        "{text}"
    );
    assert_eq!(
        value(&series("events_produced_total", "")),
        Some(5.0),
        "{text}"
    );
    assert_events(&env, &warehouse, &rows).await;
}

/// `config check` holds labels to BigQuery's rules and the cost settings
/// to BigQuery sources, and prints a byte size as its number of bytes.
#[test]
fn bigquery_cost_settings_are_checked() {
    assert_refused(
        "[produce.jobs.connector-failures.labels]\nTeam = \"alerts\"\n",
        &["`produce.jobs.connector-failures.labels.Team`: label key \"Team\" must start with a lowercase letter"],
    );
    assert_refused(
        "[produce.sources.warehouse.labels]\nteam = \"Data Platform\"\n",
        &["`produce.sources.warehouse.labels.team`: label \"team\": value \"Data Platform\" has 'D': values may hold only lowercase letters, digits, `_` and `-`"],
    );
    assert_refused(
        "[produce.jobs.connector-failures]\nmaximum_bytes_billed = \"10 GB/s\"\n",
        &[
            "maximum_bytes_billed",
            "\"10 GB/s\" is not a byte size: the unit must be",
        ],
    );
    assert_refused(
        "[produce.sources.warehouse]\nmaximum_bytes_billed = 0\n",
        &["`produce.sources.warehouse.maximum_bytes_billed`: must be at least 1 byte"],
    );
    assert_refused(
        "[produce.sources.local]\nkind = \"sql\"\nurl = \"sqlite://local.db\"\n\
         [produce.jobs.connector-failures]\nsource = \"local\"\nmaximum_bytes_billed = \"1 GiB\"\n",
        &["`produce.jobs.connector-failures.maximum_bytes_billed`: applies only to BigQuery sources (source \"local\" is kind = \"sql\")"],
    );
    let many: String = (0..63).map(|i| format!("l{i} = \"v\"\n")).collect();
    assert_refused(
        &format!("[produce.jobs.connector-failures.labels]\n{many}"),
        &["`produce.jobs.connector-failures.labels`: 65 labels with the defaults (app, job) and source \"warehouse\"'s; BigQuery allows at most 64"],
    );

    let outcome = check(
        "[produce.jobs.connector-failures]\nmaximum_bytes_billed = \"10 GiB\"\n\
         labels = { team = \"data-platform\" }\n",
    );
    assert!(outcome.success, "{}", outcome.stderr);
    assert!(
        outcome
            .stdout
            .contains("maximum_bytes_billed = 10737418240"),
        "{}",
        outcome.stdout
    );
}
