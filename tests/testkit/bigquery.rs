//! The BigQuery side of the fixtures: the REST emulator (`bqemulator`), a
//! client for it, and the `connector_status_changes` table the shipped
//! `connector-failures` job reads.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::Client;

/// Names the emulator binary (default: where `scripts/install-test-deps.sh`
/// installs it).
pub const BQEMULATOR_ENV: &str = "ALERTSVC_BQEMULATOR";

/// The emulator accepts any token.
#[derive(Clone)]
struct NoCredentials;

#[async_trait::async_trait]
impl Authenticator for NoCredentials {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("test".into())
    }
}

pub async fn client(endpoint: &str) -> Client {
    ClientBuilder::new()
        .with_v2_base_url(format!("{endpoint}/bigquery/v2"))
        .build_from_authenticator(Arc::new(NoCredentials))
        .await
        .expect("BigQuery client")
}

/// Starts bqemulator for `project` under a small Python parent that stops
/// it once the returned child's stdin closes (when this process ends, even
/// on a panic); waits until its REST API answers and returns
/// (endpoint, parent).
pub async fn start_emulator(project: &str) -> (String, Child) {
    let binary = std::env::var(BQEMULATOR_ENV).unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/alertsvc/bqemulator-venv/bin/bqemulator")
    });
    assert!(
        std::path::Path::new(&binary).exists(),
        "no BigQuery emulator at {binary}: run scripts/install-test-deps.sh \
         (or set {BQEMULATOR_ENV})"
    );
    // The emulator is a child process told its ports up front.
    let (rest, grpc) = (super::free_port(), super::free_port());
    let watchdog = "import subprocess, sys\n\
         p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
         sys.stdin.read()\n\
         p.terminate()\n\
         p.wait(10)\n";
    let child = Command::new("python3")
        .arg("-c")
        .arg(watchdog)
        .arg(&binary)
        .args(["start", "--rest-host", "127.0.0.1", "--rest-port"])
        .arg(rest.to_string())
        .arg("--grpc-port")
        .arg(grpc.to_string())
        .args(["--project", project, "--ephemeral"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start bqemulator");
    let endpoint = format!("http://127.0.0.1:{rest}");
    let probe = format!("{endpoint}/bigquery/v2/projects/{project}/datasets");
    super::eventually(
        Duration::from_secs(60),
        &format!("bqemulator answering on {endpoint}"),
        || async { matches!(super::http_get(&probe).await, Some((200, _))).then_some(()) },
    )
    .await;
    (endpoint, child)
}

/// Creates `project.dataset.connector_status_changes` (the dataset too).
pub async fn create_connector_status_changes(client: &Client, project: &str, dataset: &str) {
    client
        .dataset()
        .create(Dataset::new(project, dataset))
        .await
        .expect("create dataset");
    let string = TableFieldSchema::string;
    let schema = TableSchema::new(vec![
        string("org_id"),
        string("env_id"),
        string("connector_id"),
        string("connector_name"),
        string("connector_type"),
        string("old_status"),
        string("new_status"),
        string("failure_reason"),
        TableFieldSchema::timestamp("failed_at"),
    ]);
    client
        .table()
        .create(Table::new(
            project,
            dataset,
            "connector_status_changes",
            schema,
        ))
        .await
        .expect("create table");
}
