//! produce from each kind of source: every row becomes exactly one event,
//! keyed by org id, with the fields the shipped job maps, read back from the
//! broker and decoded.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::common::warehouse::{expected_event, failure, produce_toml, Failure, Warehouse};
use crate::common::TestEnv;

/// Decoded events by event id, with `data` parsed, asserting none repeats.
pub fn by_event_id(events: Vec<(String, Value)>) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    for (key, mut value) in events {
        let data = value["data"].as_str().expect("data is a JSON string");
        value["data"] = serde_json::from_str(data).expect("data parses");
        let id = value["eventId"].as_str().expect("eventId").to_owned();
        assert!(
            out.insert(id.clone(), (key, value)).is_none(),
            "event {id} was produced twice"
        );
    }
    out
}

/// Asserts the topic holds exactly the events of `rows`.
pub async fn assert_events(env: &TestEnv, warehouse: &Warehouse, rows: &[Failure]) {
    let events = by_event_id(env.read_events("notifications", rows.len()).await);
    let expected: BTreeMap<String, (String, Value)> = rows
        .iter()
        .map(|row| {
            let (key, event) = expected_event(warehouse, row);
            (
                event["eventId"].as_str().unwrap_or_default().to_owned(),
                (key, event),
            )
        })
        .collect();
    assert_eq!(events.len(), expected.len(), "one event per row");
    for (id, want) in &expected {
        assert_eq!(events.get(id), Some(want), "event {id}");
    }
}

async fn rows_become_events(warehouse: Warehouse, dir: tempfile::TempDir, count: usize) {
    let rows: Vec<Failure> = (0..count).map(failure).collect();
    warehouse.insert(&rows).await;
    let env = TestEnv::new(&produce_toml(dir.path(), &warehouse, "", "")).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "produce --once failed: {stderr}");
    assert_events(&env, &warehouse, &rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_become_keyed_events() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    rows_become_events(warehouse, dir, 1_250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_become_keyed_events() {
    let dir = tempfile::tempdir().unwrap();
    rows_become_events(Warehouse::postgres().await, dir, 1_250).await;
}

/// The shipped SQL against a real BigQuery REST emulator, 500-row pages:
/// 2,500 rows arrive over five pages and become 2,500 events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigquery_rows_across_pages_become_keyed_events() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::bigquery("produce_pages").await;
    rows_become_events(warehouse, dir, 2_500).await;
}

/// `params` are bound as real parameters, typed, on every source: a
/// string and an integer narrow the result, and a value that would break
/// spliced SQL is just a value.
async fn parameters_are_bound(warehouse: Warehouse, dir: tempfile::TempDir) {
    let rows: Vec<Failure> = (0..40).map(failure).collect();
    warehouse.insert(&rows).await;
    let mut toml = produce_toml(
        dir.path(),
        &warehouse,
        "AND connector_type = @connector_type AND env_id != @quote_test \
         AND LENGTH(connector_id) = @id_length",
        "",
    );
    toml.push_str(
        r#"
        [produce.jobs.connector-failures.params]
        connector_type = "S3Sink"
        quote_test = "x' OR '1'='1"
        id_length = 9
        "#,
    );
    let env = TestEnv::new(&toml).await;
    let (code, _, stderr) = env.run_produce(&["--once"]).await;
    assert_eq!(code, 0, "produce --once failed: {stderr}");
    let wanted: Vec<Failure> = rows
        .into_iter()
        .filter(|r| r.connector_type == "S3Sink")
        .collect();
    assert_eq!(wanted.len(), 10);
    assert_events(&env, &warehouse, &wanted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_parameters_are_bound() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::sqlite(dir.path()).await;
    parameters_are_bound(warehouse, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_parameters_are_bound() {
    let dir = tempfile::tempdir().unwrap();
    parameters_are_bound(Warehouse::postgres().await, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigquery_parameters_are_bound() {
    let dir = tempfile::tempdir().unwrap();
    parameters_are_bound(Warehouse::bigquery("produce_params").await, dir).await;
}
