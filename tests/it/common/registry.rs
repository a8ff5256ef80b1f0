//! A fake Confluent Schema Registry over HTTP: subjects, versions, global
//! ids (one id per distinct schema, shared across subjects), the real error
//! bodies (40401 subject not found, 40403 schema not found, 42201 invalid
//! schema, 409 incompatible) and BACKWARD compatibility for records (a field
//! added without a default is refused). An outage switch makes it answer
//! every request with an error status (503, 500, …) until switched back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Registry {
    /// Distinct schemas (identity by canonical form, text as registered);
    /// index + 1 is the id.
    schemas: Vec<(String, String)>,
    /// subject → schema ids by version (version = index + 1).
    subjects: BTreeMap<String, Vec<u32>>,
    requests: usize,
    /// While set, every request is answered with this status.
    outage: Option<StatusCode>,
    /// Requests answered with the outage status, by path.
    refused: BTreeMap<String, usize>,
}

type Shared = Arc<Mutex<Registry>>;

pub struct FakeRegistry {
    pub url: String,
    state: Shared,
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/subjects", get(list_subjects))
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route("/schemas/ids/{id}", get(schema_by_id))
            .layer(middleware::from_fn_with_state(state.clone(), outage))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRegistry {
            url: format!("http://{addr}"),
            state,
        }
    }

    pub fn subjects(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .subjects
            .keys()
            .cloned()
            .collect()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// From now on every request is answered with `status` (with a
    /// Confluent error body), as by a registry behind a failing proxy.
    pub fn start_outage(&self, status: StatusCode) {
        self.state.lock().unwrap().outage = Some(status);
    }

    pub fn end_outage(&self) {
        self.state.lock().unwrap().outage = None;
    }

    /// Requests for `path` (e.g. `/schemas/ids/1`) answered with an outage
    /// status so far.
    pub fn refused(&self, path: &str) -> usize {
        let registry = self.state.lock().unwrap();
        registry.refused.get(path).copied().unwrap_or(0)
    }
}

async fn outage(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let status = {
        let mut registry = state.lock().unwrap();
        if registry.outage.is_some() {
            *registry
                .refused
                .entry(request.uri().path().to_owned())
                .or_default() += 1;
        }
        registry.outage
    };
    match status {
        Some(status) => error(
            status,
            u32::from(status.as_u16()) * 100 + 1,
            status.canonical_reason().unwrap_or("outage"),
        ),
        None => next.run(request).await,
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/vnd.schemaregistry.v1+json",
        )],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    reply(status, json!({"error_code": code, "message": message}))
}

async fn list_subjects(State(state): State<Shared>) -> Response {
    let mut registry = state.lock().unwrap();
    registry.requests += 1;
    reply(
        StatusCode::OK,
        json!(registry.subjects.keys().collect::<Vec<_>>()),
    )
}

fn canonical(schema: &str) -> Option<String> {
    apache_avro::Schema::parse_str(schema)
        .ok()
        .map(|s| s.canonical_form())
}

/// BACKWARD: readers of the new schema can read data written with the old
/// one, so every field the new record adds needs a default.
fn backward_compatible(old: &str, new: &str) -> bool {
    let (Ok(old), Ok(new)) = (
        serde_json::from_str::<Value>(old),
        serde_json::from_str::<Value>(new),
    ) else {
        return false;
    };
    let names = |v: &Value| -> Vec<String> {
        v["fields"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|f| f["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let old_names = names(&old);
    new["fields"].as_array().is_none_or(|fields| {
        fields.iter().all(|f| {
            f["name"]
                .as_str()
                .is_some_and(|n| old_names.iter().any(|o| o == n))
                || f.get("default").is_some()
        })
    })
}

async fn register(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut registry = state.lock().unwrap();
    registry.requests += 1;
    let Some(text) = body["schema"].as_str() else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Invalid schema: no schema",
        );
    };
    let Some(canonical_text) = canonical(text) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema");
    };
    let existing_id = registry
        .schemas
        .iter()
        .position(|(canonical, _)| canonical == &canonical_text)
        .map(|i| i as u32 + 1);
    if let Some(id) = existing_id {
        if registry
            .subjects
            .get(&subject)
            .is_some_and(|v| v.contains(&id))
        {
            return reply(StatusCode::OK, json!({"id": id}));
        }
    }
    if let Some(&latest) = registry.subjects.get(&subject).and_then(|v| v.last()) {
        let old = registry.schemas[latest as usize - 1].1.clone();
        if !backward_compatible(&old, text) {
            return error(
                StatusCode::CONFLICT,
                409,
                "Schema being registered is incompatible with an earlier schema for subject",
            );
        }
    }
    let id = match existing_id {
        Some(id) => id,
        None => {
            registry.schemas.push((canonical_text, text.to_owned()));
            registry.schemas.len() as u32
        }
    };
    registry.subjects.entry(subject).or_default().push(id);
    reply(StatusCode::OK, json!({"id": id}))
}

async fn version(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    let mut registry = state.lock().unwrap();
    registry.requests += 1;
    let Some(versions) = registry.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, "Subject not found.");
    };
    let index = match version.as_str() {
        "latest" => versions.len().checked_sub(1),
        v => v.parse::<usize>().ok().and_then(|v| v.checked_sub(1)),
    };
    let Some((index, id)) = index.and_then(|i| versions.get(i).map(|id| (i, *id))) else {
        return error(StatusCode::NOT_FOUND, 40402, "Version not found.");
    };
    let schema = registry.schemas[id as usize - 1].1.clone();
    reply(
        StatusCode::OK,
        json!({"subject": subject, "version": index + 1, "id": id, "schema": schema}),
    )
}

async fn schema_by_id(State(state): State<Shared>, Path(id): Path<u32>) -> Response {
    let mut registry = state.lock().unwrap();
    registry.requests += 1;
    match id
        .checked_sub(1)
        .and_then(|i| registry.schemas.get(i as usize))
    {
        Some((_, schema)) => reply(StatusCode::OK, json!({"schema": schema})),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}
