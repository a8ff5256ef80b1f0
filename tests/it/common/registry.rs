//! A fake Confluent Schema Registry over HTTP: subjects, versions, global
//! ids (one id per distinct schema, shared across subjects), registration
//! (`POST /subjects/{s}/versions`), lookup (`POST /subjects/{s}`), the real
//! error bodies (40401 subject not found, 40403 schema not found, 42201
//! invalid schema, 409 incompatible) and BACKWARD compatibility for records
//! (a field added without a default is refused). An outage switch makes it
//! answer every request with an error status (503, 500, …) until switched
//! back.
//!
//! Keys, as Confluent Cloud hands them out: once one is added, a request
//! without a known key (HTTP basic auth) is answered 401, and a read-only
//! key's writes (registration) 403 with error code 40301, "User is denied
//! operation Write on Subject: …". Lookups and reads are allowed to every
//! key. Tests register schemas "as the pipeline" with [`FakeRegistry::register`],
//! which needs no key.

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

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// One request as the registry answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Default)]
struct Registry {
    /// `Authorization` header value → (key name, access).
    keys: BTreeMap<String, (String, Access)>,
    calls: Vec<Call>,
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
    /// A configuration overlay: this registry (with `credentials`, a key
    /// and its secret, if given) and each `(topic id, format)`.
    pub fn overlay(&self, credentials: Option<(&str, &str)>, formats: &[(&str, &str)]) -> String {
        let mut toml = format!("[schema_registry]\nurl = \"{}\"\n", self.url);
        if let Some((key, secret)) = credentials {
            toml.push_str(&format!("username = \"{key}\"\npassword = \"{secret}\"\n"));
        }
        for (topic, format) in formats {
            toml.push_str(&format!("[topics.{topic}]\nformat = \"{format}\"\n"));
        }
        toml
    }

    pub async fn start() -> FakeRegistry {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/subjects", get(list_subjects))
            .route("/subjects/{subject}", post(look_up))
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route("/schemas/ids/{id}", get(schema_by_id))
            .layer(middleware::from_fn_with_state(state.clone(), authorize))
            .layer(middleware::from_fn_with_state(state.clone(), outage))
            .layer(middleware::from_fn_with_state(state.clone(), record))
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

    /// Registers `schema` under `subject` as a pipeline with write access
    /// would (no key needed); returns its id. Panics when the registry
    /// refuses it, as a test's setup must not go on then.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        let mut registry = self.state.lock().unwrap();
        registry
            .register(subject, schema)
            .unwrap_or_else(|(status, code, message)| {
                panic!("registering under {subject}: {status} {code} {message}")
            })
    }

    /// The ids registered under `subject`, by version.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        let registry = self.state.lock().unwrap();
        registry.subjects.get(subject).cloned().unwrap_or_default()
    }

    /// Adds an API key; from now on every request needs a known one.
    pub fn add_key(&self, user: &str, secret: &str, access: Access) {
        let header = format!("Basic {}", base64(format!("{user}:{secret}").as_bytes()));
        let mut registry = self.state.lock().unwrap();
        registry.keys.insert(header, (user.to_owned(), access));
    }

    /// Changes what the key `user` may do (a role granted or revoked).
    pub fn set_access(&self, user: &str, access: Access) {
        let mut registry = self.state.lock().unwrap();
        for (name, granted) in registry.keys.values_mut() {
            if name == user {
                *granted = access;
            }
        }
    }

    /// Every request so far, as answered.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
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

async fn record(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    state.lock().unwrap().calls.push(Call {
        method,
        path,
        status: response.status().as_u16(),
    });
    response
}

/// Confluent Cloud's answers for keys: 401 without a known key, 403 40301
/// for a read-only key's write. Registering is the only write served here;
/// a lookup (`POST /subjects/{s}`) is a read.
async fn authorize(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let refusal = {
        let registry = state.lock().unwrap();
        if registry.keys.is_empty() {
            None
        } else {
            let key = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| registry.keys.get(v));
            let path = request.uri().path();
            let written_subject = match request.method().as_str() {
                "POST" => path
                    .strip_prefix("/subjects/")
                    .and_then(|rest| rest.strip_suffix("/versions")),
                _ => None,
            };
            match (key, written_subject) {
                (None, _) => Some(error(StatusCode::UNAUTHORIZED, 401, "Unauthorized")),
                (Some((_, Access::ReadOnly)), Some(subject)) => Some(error(
                    StatusCode::FORBIDDEN,
                    40301,
                    &format!("User is denied operation Write on Subject: {subject}"),
                )),
                (Some(_), _) => None,
            }
        }
    };
    match refusal {
        Some(response) => response,
        None => next.run(request).await,
    }
}

/// Standard base64 with padding, for basic-auth headers.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

impl Registry {
    /// Registers `text` under `subject`: its id, or the registry's refusal
    /// (status, error code, message).
    fn register(&mut self, subject: &str, text: &str) -> Result<u32, (StatusCode, u32, String)> {
        let Some(canonical_text) = canonical(text) else {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                42201,
                "Invalid schema".into(),
            ));
        };
        let existing_id = self.id_of(&canonical_text);
        if let Some(id) = existing_id {
            if self.subjects.get(subject).is_some_and(|v| v.contains(&id)) {
                return Ok(id);
            }
        }
        if let Some(&latest) = self.subjects.get(subject).and_then(|v| v.last()) {
            let old = &self.schemas[latest as usize - 1].1;
            if !backward_compatible(old, text) {
                return Err((
                    StatusCode::CONFLICT,
                    409,
                    "Schema being registered is incompatible with an earlier schema for subject"
                        .into(),
                ));
            }
        }
        let id = match existing_id {
            Some(id) => id,
            None => {
                self.schemas.push((canonical_text, text.to_owned()));
                self.schemas.len() as u32
            }
        };
        self.subjects
            .entry(subject.to_owned())
            .or_default()
            .push(id);
        Ok(id)
    }

    fn id_of(&self, canonical_text: &str) -> Option<u32> {
        self.schemas
            .iter()
            .position(|(canonical, _)| canonical == canonical_text)
            .map(|i| i as u32 + 1)
    }
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
    match registry.register(&subject, text) {
        Ok(id) => reply(StatusCode::OK, json!({"id": id})),
        Err((status, code, message)) => error(status, code, &message),
    }
}

/// `POST /subjects/{subject}`: whether the schema is registered under the
/// subject, with its id and version there.
async fn look_up(
    State(state): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut registry = state.lock().unwrap();
    registry.requests += 1;
    let Some(canonical_text) = body["schema"].as_str().and_then(canonical) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema");
    };
    let Some(versions) = registry.subjects.get(&subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        );
    };
    let found = versions
        .iter()
        .enumerate()
        .find(|(_, id)| registry.schemas[**id as usize - 1].0 == canonical_text);
    match found {
        Some((index, id)) => reply(
            StatusCode::OK,
            json!({"subject": subject, "version": index + 1, "id": id,
                   "schema": registry.schemas[*id as usize - 1].1}),
        ),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
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

/// A schema file shipped in `config/schemas/`, as text.
pub fn shipped_schema(file: &str) -> String {
    let path = super::config_dir().join("schemas").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `schema` (a record) with `field` appended: a newer version of it.
pub fn with_field(schema: &str, field: Value) -> String {
    let mut schema: Value = serde_json::from_str(schema).expect("schema JSON");
    schema["fields"]
        .as_array_mut()
        .expect("a record schema")
        .push(field);
    schema.to_string()
}

/// The subject of a topic's values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// enrich held everything while the registry was out: no dead letter for
/// the stream and no output.
pub fn assert_nothing_written(env: &super::TestEnv) {
    assert_eq!(env.end_offsets(&env.dlq("notifications"), 1), [0]);
    assert_eq!(
        env.end_offsets(&env.topic("slack_messages"), 3)
            .iter()
            .sum::<i64>(),
        0,
        "nothing is written while the registry is out"
    );
}
