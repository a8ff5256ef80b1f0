//! A recording proxy in front of the BigQuery emulator that plays
//! BigQuery's cost model, which the emulator lacks. bqemulator 1.4 answers
//! `totalBytesProcessed = "0"` for every query and dry run, reports no
//! `totalBytesBilled` in `jobs.get`, and ignores `maximumBytesBilled` and
//! `labels` (it neither stores nor enforces them). The proxy forwards every
//! request to the emulator and records it; each `jobs.query` that is not a
//! dry run takes the next figure of `scans` as the bytes it reads (the last
//! figure repeats), and the proxy answers as BigQuery would:
//! - bytes billed are the bytes read rounded up to a MiB, at least 10 MiB;
//! - a query whose `maximumBytesBilled` is below that is refused, not
//!   forwarded, with BigQuery's own HTTP 400 `bytesBilledLimitExceeded` body;
//! - the figures go into `totalBytesProcessed` of `jobs.query`, of its dry
//!   run (the next query's figure) and of `getQueryResults`, and into
//!   `statistics.query.totalBytesProcessed` / `totalBytesBilled` of `jobs.get`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// BigQuery bills at least this much per query (one table read).
const MIN_BILLED: u64 = 10 << 20;

/// The bytes BigQuery bills for a query that reads `bytes`.
pub fn billed_for(bytes: u64) -> u64 {
    bytes
        .div_ceil(1 << 20)
        .saturating_mul(1 << 20)
        .max(MIN_BILLED)
}

/// One request as the proxy received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query string, e.g. `/bigquery/v2/projects/p/queries`.
    pub path: String,
    /// The JSON body (`Null` without one).
    pub body: Value,
}

#[derive(Default)]
struct Proxy {
    upstream: String,
    scans: Vec<u64>,
    /// Non-dry-run queries seen so far.
    queries: usize,
    /// Bytes read by each job the emulator ran, by job id.
    jobs: HashMap<String, u64>,
    recorded: Vec<Recorded>,
}

impl Proxy {
    /// The bytes the next non-dry-run query reads.
    fn next_scan(&self) -> u64 {
        let index = self.queries.min(self.scans.len().saturating_sub(1));
        self.scans.get(index).copied().unwrap_or(0)
    }
}

type Shared = Arc<Mutex<Proxy>>;

pub struct BigQueryProxy {
    /// What to put before `/bigquery/v2` (like the emulator's endpoint).
    pub endpoint: String,
    state: Shared,
}

impl BigQueryProxy {
    /// A proxy to `upstream` (the emulator's endpoint) whose queries read
    /// `scans` bytes, one figure per query, the last one repeating.
    pub async fn start(upstream: &str, scans: &[u64]) -> BigQueryProxy {
        assert!(!scans.is_empty(), "give the proxy at least one scan figure");
        let state: Shared = Arc::new(Mutex::new(Proxy {
            upstream: upstream.to_owned(),
            scans: scans.to_vec(),
            ..Proxy::default()
        }));
        let app = Router::new().fallback(forward).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BigQueryProxy {
            endpoint: format!("http://{addr}"),
            state,
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().recorded.clone()
    }

    /// Ids of the query jobs the emulator ran through the proxy.
    pub fn job_ids(&self) -> Vec<String> {
        self.state.lock().unwrap().jobs.keys().cloned().collect()
    }

    /// The bodies of the `jobs.query` requests so far, dry runs included.
    pub fn queries(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/queries"))
            .map(|r| r.body)
            .collect()
    }
}

fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// BigQuery's answer to a query over its `maximumBytesBilled`.
fn bytes_billed_limit_exceeded(limit: u64, billed: u64) -> Response {
    let message =
        format!("Query exceeded limit for bytes billed: {limit}. {billed} or higher required.");
    reply(
        StatusCode::BAD_REQUEST,
        &json!({"error": {
            "code": 400,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": "bytesBilledLimitExceeded"}],
            "status": "INVALID_ARGUMENT",
        }}),
    )
}

async fn forward(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let is_query = method == Method::POST && uri.path().ends_with("/queries");
    let dry_run = is_query && json_body["dryRun"] == json!(true);
    let (upstream, scan) = {
        let mut proxy = state.lock().unwrap();
        proxy.recorded.push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            body: json_body.clone(),
        });
        let scan = proxy.next_scan();
        if is_query && !dry_run {
            proxy.queries += 1;
        }
        (proxy.upstream.clone(), scan)
    };
    if is_query && !dry_run {
        let limit = json_body["maximumBytesBilled"]
            .as_str()
            .and_then(|l| l.parse::<u64>().ok());
        if let Some(limit) = limit.filter(|l| *l < billed_for(scan)) {
            return bytes_billed_limit_exceeded(limit, billed_for(scan));
        }
    }

    let mut request = reqwest::Client::new().request(method.clone(), format!("{upstream}{path}"));
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    let answer = match request.body(body.to_vec()).send().await {
        Ok(answer) => answer,
        Err(e) => {
            return reply(
                StatusCode::BAD_GATEWAY,
                &json!({"error": {"code": 502, "message": format!("proxy: {e}"), "errors": []}}),
            )
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = answer.bytes().await.unwrap_or_default();
    let Ok(mut answer) = serde_json::from_slice::<Value>(&bytes) else {
        return (status, bytes.to_vec()).into_response();
    };
    if status.is_success() {
        play_cost(&state, uri.path(), is_query, dry_run, scan, &mut answer);
    }
    reply(status, &answer)
}

/// Puts the bytes a query read (and was billed) where BigQuery reports them.
fn play_cost(
    state: &Shared,
    path: &str,
    is_query: bool,
    dry_run: bool,
    scan: u64,
    answer: &mut Value,
) {
    let mut proxy = state.lock().unwrap();
    let job_id = path.rsplit('/').next().unwrap_or_default().to_owned();
    if is_query {
        answer["totalBytesProcessed"] = json!(scan.to_string());
        if !dry_run {
            if let Some(id) = answer["jobReference"]["jobId"].as_str() {
                proxy.jobs.insert(id.to_owned(), scan);
            }
        }
    } else if path.contains("/queries/") {
        if let Some(bytes) = proxy.jobs.get(&job_id) {
            answer["totalBytesProcessed"] = json!(bytes.to_string());
        }
    } else if path.contains("/jobs/") {
        if let Some(bytes) = proxy.jobs.get(&job_id).copied() {
            let query = &mut answer["statistics"]["query"];
            query["totalBytesProcessed"] = json!(bytes.to_string());
            query["totalBytesBilled"] = json!(billed_for(bytes).to_string());
        }
    }
}
