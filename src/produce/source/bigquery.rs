//! Google BigQuery through `gcp-bigquery-client`: `jobs.query` with named
//! parameters, then `getQueryResults` page by page. The next page is
//! requested while the previous one is being produced.
//!
//! Every query carries the job's cost controls (`maximumBytesBilled`,
//! labels). Once the query job is complete its statistics (`jobs.get`) give
//! the bytes processed and billed, before the first page is handed over, so
//! a run that fails later still accounts for what its query cost.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::data_format_options::DataFormatOptions;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_parameter::QueryParameter;
use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_row::TableRow;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::Client;
use serde_json::Value as Json;
use tokio::sync::mpsc;

use crate::config::{BigQuerySettings, GcpCredentials};
use crate::produce::checkpoint::Param;
use crate::produce::row::{Cell, Columns, Row};
use crate::produce::sql::{parse, Placeholder};

use super::{
    one_line, ordered_params, page_channel, Page, PageStream, QueryCost, QueryOptions, SourceError,
};

/// The error reason of a query refused for `maximumBytesBilled`.
const BYTES_BILLED_LIMIT_EXCEEDED: &str = "bytesBilledLimitExceeded";

#[derive(Clone)]
pub struct BigQuerySource {
    name: String,
    client: Arc<Client>,
    project_id: String,
    location: Option<String>,
    page_size: u32,
    timeout: Duration,
}

/// For emulators, which accept any bearer token.
#[derive(Clone)]
struct NoCredentials;

#[async_trait::async_trait]
impl Authenticator for NoCredentials {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("local-emulator".into())
    }
}

impl BigQuerySource {
    pub async fn connect(
        name: &str,
        settings: &BigQuerySettings,
    ) -> Result<BigQuerySource, SourceError> {
        let mut builder = ClientBuilder::new();
        if let Some(endpoint) = &settings.endpoint {
            builder.with_v2_base_url(endpoint.trim_end_matches('/').to_owned());
        }
        let client = match settings.credentials {
            GcpCredentials::None => {
                builder
                    .build_from_authenticator(Arc::new(NoCredentials))
                    .await
            }
            GcpCredentials::ApplicationDefault => {
                builder.build_from_application_default_credentials().await
            }
            GcpCredentials::WorkloadIdentity => builder.build_with_workload_identity(true).await,
            GcpCredentials::ServiceAccountKey => {
                let file = settings.key_file.as_deref().unwrap_or_default();
                builder.build_from_service_account_key_file(file).await
            }
        }
        .map_err(|e| SourceError::Connect {
            source_name: name.to_owned(),
            reason: format!("BigQuery credentials ({:?}): {e}", settings.credentials),
        })?;
        Ok(BigQuerySource {
            name: name.to_owned(),
            client: Arc::new(client),
            project_id: settings.project_id.clone(),
            location: settings.location.clone(),
            page_size: settings.page_size,
            timeout: settings.timeout,
        })
    }

    fn request(
        &self,
        sql: &str,
        params: &BTreeMap<String, Param>,
        options: &QueryOptions,
    ) -> Result<QueryRequest, SourceError> {
        let parsed = parse(sql, Placeholder::Named);
        let values = ordered_params(&parsed.names, params)?;
        let mut request = QueryRequest::new(parsed.text);
        request.use_legacy_sql = false;
        request.parameter_mode = Some("NAMED".into());
        request.query_parameters = Some(
            parsed
                .names
                .iter()
                .zip(values)
                .map(|(name, value)| query_parameter(name, value))
                .collect(),
        );
        request.max_results = Some(page_size_i32(self.page_size));
        request.location = self.location.clone();
        request.timeout_ms = Some(timeout_ms(self.timeout));
        request.format_options = Some(DataFormatOptions {
            use_int64_timestamp: Some(true),
        });
        request.maximum_bytes_billed = options.maximum_bytes_billed.map(|b| b.to_string());
        if !options.labels.is_empty() {
            request.labels = Some(options.labels.clone().into_iter().collect());
        }
        Ok(request)
    }

    pub fn query(
        &self,
        sql: &str,
        params: &BTreeMap<String, Param>,
        options: &QueryOptions,
    ) -> Result<PageStream, SourceError> {
        let request = self.request(sql, params, options)?;
        let (tx, rx) = page_channel();
        let (source, cost) = (self.clone(), rx.cost_cell());
        let limit = options.maximum_bytes_billed;
        tokio::spawn(async move {
            if let Err(e) = source.pump(request, limit, &cost, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    /// BigQuery's estimate of the bytes the query would process: the same
    /// request as a dry run, which reads and bills nothing.
    pub async fn estimate(
        &self,
        sql: &str,
        params: &BTreeMap<String, Param>,
        options: &QueryOptions,
    ) -> Result<u64, SourceError> {
        let mut request = self.request(sql, params, options)?;
        request.dry_run = Some(true);
        let limit = options.maximum_bytes_billed;
        let response = self
            .call(
                "jobs.query (dry run)",
                limit,
                self.client.job().query(&self.project_id, request),
            )
            .await?;
        self.check(response.errors.as_deref(), limit)?;
        response
            .total_bytes_processed
            .as_deref()
            .and_then(parse_bytes)
            .ok_or_else(|| self.error("the dry run answered without totalBytesProcessed".into()))
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError::Query {
            source_name: self.name.clone(),
            reason: one_line(reason),
        }
    }

    async fn call<T>(
        &self,
        what: &str,
        limit: Option<u64>,
        call: impl std::future::Future<Output = Result<T, BQError>>,
    ) -> Result<T, SourceError> {
        match tokio::time::timeout(self.timeout + Duration::from_secs(5), call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(match bytes_limit_message(&response_reasons(&e)) {
                Some(message) => self.over_limit(limit, message),
                None => self.error(format!("{what}: {}", describe_bq_error(&e))),
            }),
            Err(_) => Err(self.error(format!("{what}: no answer within {:?}", self.timeout))),
        }
    }

    /// Errors in a 200 answer (BigQuery and its emulators do that).
    fn check(&self, errors: Option<&[ErrorProto]>, limit: Option<u64>) -> Result<(), SourceError> {
        let Err(text) = check_errors(errors) else {
            return Ok(());
        };
        let reasons: Vec<(String, String)> = errors
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default(),
                )
            })
            .collect();
        Err(match bytes_limit_message(&reasons) {
            Some(message) => self.over_limit(limit, message),
            None => self.error(text),
        })
    }

    fn over_limit(&self, limit: Option<u64>, message: String) -> SourceError {
        SourceError::BytesBilledLimitExceeded {
            source_name: self.name.clone(),
            limit,
            // BigQuery's message ends in a full stop; ours goes on.
            reason: one_line(format!("{BYTES_BILLED_LIMIT_EXCEEDED}: {message}"))
                .trim_end_matches('.')
                .to_owned(),
        }
    }

    /// The finished query job's bytes processed and billed (`jobs.get`).
    /// Without an answer the run goes on: the rows matter more than the
    /// figure, which then falls back to what `jobs.query` said.
    async fn cost(
        &self,
        job_id: &str,
        location: Option<&str>,
        processed: Option<&str>,
    ) -> QueryCost {
        let mut cost = QueryCost {
            query_id: job_id.to_owned(),
            bytes_processed: processed.and_then(parse_bytes),
            ..QueryCost::default()
        };
        let job = self
            .call(
                "jobs.get",
                None,
                self.client
                    .job()
                    .get_job(&self.project_id, job_id, location),
            )
            .await;
        match job {
            Ok(job) => {
                if let Some(query) = job.statistics.and_then(|s| s.query) {
                    if let Some(bytes) =
                        query.total_bytes_processed.as_deref().and_then(parse_bytes)
                    {
                        cost.bytes_processed = Some(bytes);
                    }
                    cost.bytes_billed = query.total_bytes_billed.as_deref().and_then(parse_bytes);
                    cost.cache_hit = query.cache_hit;
                }
            }
            Err(e) => tracing::warn!(
                source = %self.name,
                bigquery_job_id = job_id,
                error = %e,
                "cannot read the query job's statistics: bytes billed unknown for this run"
            ),
        }
        cost
    }

    /// Runs the query and sends its pages until the last one or until the
    /// receiver goes away.
    async fn pump(
        &self,
        request: QueryRequest,
        limit: Option<u64>,
        cost: &OnceLock<QueryCost>,
        tx: &mpsc::Sender<Result<Page, SourceError>>,
    ) -> Result<(), SourceError> {
        let jobs = self.client.job();
        let response = self
            .call("jobs.query", limit, jobs.query(&self.project_id, request))
            .await?;
        self.check(response.errors.as_deref(), limit)?;
        let job_id = response
            .job_reference
            .as_ref()
            .and_then(|r| r.job_id.clone())
            .ok_or_else(|| self.error("jobs.query answered without a job id".into()))?;
        let location = response
            .job_reference
            .as_ref()
            .and_then(|r| r.location.clone())
            .or_else(|| self.location.clone());
        let mut complete = response.job_complete.unwrap_or(true);
        let mut processed = response.total_bytes_processed;
        let mut schema = response.schema;
        let mut rows = response.rows;
        let mut page_token = response.page_token;
        loop {
            if complete && cost.get().is_none() {
                let found = self
                    .cost(&job_id, location.as_deref(), processed.as_deref())
                    .await;
                let _ = cost.set(found);
            }
            let next_token = if complete {
                let fields = schema
                    .as_ref()
                    .and_then(|s: &TableSchema| s.fields.clone())
                    .unwrap_or_default();
                let page = decode_page(&fields, rows.take().unwrap_or_default()).map_err(
                    |(column, reason)| SourceError::Decode {
                        source_name: self.name.clone(),
                        column,
                        reason,
                    },
                )?;
                if !page.is_empty() && tx.send(Ok(page)).await.is_err() {
                    return Ok(());
                }
                match page_token.take() {
                    Some(token) => Some(token),
                    None => return Ok(()),
                }
            } else {
                // The query outlived `timeoutMs`: ask again (no token) until
                // it completes; its first page comes with that answer.
                None
            };
            let results = self
                .call(
                    "jobs.getQueryResults",
                    limit,
                    jobs.get_query_results(
                        &self.project_id,
                        &job_id,
                        self.page_request(location.clone(), next_token),
                    ),
                )
                .await?;
            self.check(results.errors.as_deref(), limit)?;
            complete = results.job_complete.unwrap_or(true);
            if results.total_bytes_processed.is_some() {
                processed = results.total_bytes_processed;
            }
            if results.schema.is_some() {
                schema = results.schema;
            }
            rows = results.rows;
            page_token = results.page_token;
        }
    }

    fn page_request(
        &self,
        location: Option<String>,
        page_token: Option<String>,
    ) -> GetQueryResultsParameters {
        GetQueryResultsParameters {
            // The crate cannot put this nested option in a URL (the request
            // fails before it is sent); the job's own formatOptions apply.
            format_options: None,
            location,
            max_results: Some(page_size_i32(self.page_size)),
            page_token,
            start_index: None,
            timeout_ms: Some(timeout_ms(self.timeout)),
        }
    }
}

fn page_size_i32(page_size: u32) -> i32 {
    i32::try_from(page_size).unwrap_or(i32::MAX)
}

fn timeout_ms(timeout: Duration) -> i32 {
    i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX)
}

/// BigQuery (and its emulators) may answer 200 with errors in the body.
fn check_errors(errors: Option<&[ErrorProto]>) -> Result<(), String> {
    match errors {
        Some(errors) if !errors.is_empty() => Err(errors
            .iter()
            .map(|e| {
                let reason = e.reason.as_deref().unwrap_or("error");
                let message = e.message.as_deref().unwrap_or("");
                format!("{reason}: {message}")
            })
            .collect::<Vec<_>>()
            .join("; ")),
        _ => Ok(()),
    }
}

/// BigQuery's int64 figures come as decimal strings.
fn parse_bytes(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// (reason, message) of each error in a non-2xx answer.
fn response_reasons(error: &BQError) -> Vec<(String, String)> {
    let BQError::ResponseError { error } = error else {
        return Vec::new();
    };
    error
        .error
        .errors
        .iter()
        .map(|e| {
            let field = |name: &str| e.get(name).cloned().unwrap_or_default();
            (field("reason"), field("message"))
        })
        .collect()
}

/// The message of a `bytesBilledLimitExceeded` error among `reasons`.
fn bytes_limit_message(reasons: &[(String, String)]) -> Option<String> {
    reasons
        .iter()
        .find(|(reason, _)| reason == BYTES_BILLED_LIMIT_EXCEEDED)
        .map(|(_, message)| message.clone())
}

fn describe_bq_error(error: &BQError) -> String {
    match error {
        BQError::ResponseError { error } => {
            let inner = &error.error;
            format!("HTTP {}: {}", inner.code, inner.message)
        }
        other => other.to_string(),
    }
}

fn query_parameter(name: &str, value: Param) -> QueryParameter {
    let (kind, text) = match value {
        Param::Text(s) => ("STRING", s),
        Param::Int(i) => ("INT64", i.to_string()),
        Param::Float(f) => ("FLOAT64", f.to_string()),
        Param::Bool(b) => ("BOOL", b.to_string()),
        Param::Timestamp(micros) => ("TIMESTAMP", timestamp_parameter(micros)),
    };
    QueryParameter {
        name: Some(name.to_owned()),
        parameter_type: Some(QueryParameterType {
            array_type: None,
            struct_types: None,
            r#type: kind.into(),
        }),
        parameter_value: Some(QueryParameterValue {
            array_values: None,
            struct_values: None,
            value: Some(text),
        }),
    }
}

/// `2026-11-21 10:00:00.250000+00:00`, the form Google's own clients send
/// (emulators reject some others, such as a trailing ` UTC`).
fn timestamp_parameter(micros: i64) -> String {
    match chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string(),
        None => micros.to_string(),
    }
}

type Decoded = Result<Page, (String, String)>;

fn decode_page(fields: &[TableFieldSchema], rows: Vec<TableRow>) -> Decoded {
    let names: Vec<String> = fields.iter().map(|f| f.name.clone()).collect();
    let columns: Columns = Arc::from(names);
    rows.into_iter()
        .map(|row| {
            let raw = row.columns.unwrap_or_default();
            let cells = fields
                .iter()
                .enumerate()
                .map(|(i, field)| {
                    let value = raw.get(i).and_then(|c| c.value.as_ref());
                    decode_cell(field, value).map_err(|reason| (field.name.clone(), reason))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Row {
                columns: columns.clone(),
                cells,
            })
        })
        .collect()
}

fn is_repeated(field: &TableFieldSchema) -> bool {
    field.mode.as_deref() == Some("REPEATED")
}

/// A cell of the `f`/`v` JSON encoding as typed by the result schema.
fn decode_cell(field: &TableFieldSchema, value: Option<&Json>) -> Result<Cell, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Cell::Null);
    };
    if is_repeated(field) || matches!(field.r#type, FieldType::Record | FieldType::Struct) {
        return Ok(Cell::Json(nested_json(field, value)?));
    }
    let Some(text) = value.as_str() else {
        return Err(format!("expected a string cell, got {value}"));
    };
    Ok(match field.r#type {
        FieldType::Integer | FieldType::Int64 => Cell::Int(
            text.parse()
                .map_err(|_| format!("{text:?} is not an INT64"))?,
        ),
        FieldType::Float | FieldType::Float64 => Cell::Float(
            text.parse()
                .map_err(|_| format!("{text:?} is not a FLOAT64"))?,
        ),
        FieldType::Boolean | FieldType::Bool => Cell::Bool(text.eq_ignore_ascii_case("true")),
        FieldType::Timestamp => Cell::Timestamp(timestamp_micros(text)?),
        FieldType::Json => match serde_json::from_str(text) {
            Ok(json) => Cell::Json(json),
            Err(_) => Cell::Text(text.to_owned()),
        },
        _ => Cell::Text(text.to_owned()),
    })
}

/// Integer microseconds (`useInt64Timestamp`, and the emulator), or
/// BigQuery's older float seconds (`1.7E9`).
fn timestamp_micros(text: &str) -> Result<i64, String> {
    if let Ok(micros) = text.parse::<i64>() {
        return Ok(micros);
    }
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite())
        .map(|seconds| (seconds * 1e6).round() as i64)
        .ok_or_else(|| format!("{text:?} is not a TIMESTAMP"))
}

/// RECORD and REPEATED cells as plain JSON.
fn nested_json(field: &TableFieldSchema, value: &Json) -> Result<Json, String> {
    if is_repeated(field) {
        let single = TableFieldSchema {
            mode: Some("NULLABLE".into()),
            ..field.clone()
        };
        let items = value.as_array().cloned().unwrap_or_default();
        return items
            .iter()
            .map(|item| {
                let inner = item.get("v").unwrap_or(&Json::Null);
                decode_cell(&single, Some(inner)).map(|c| c.to_json())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Json::Array);
    }
    let subfields = field.fields.clone().unwrap_or_default();
    let cells = value
        .get("f")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    let mut object = serde_json::Map::new();
    for (i, sub) in subfields.iter().enumerate() {
        let inner = cells.get(i).and_then(|c| c.get("v"));
        object.insert(sub.name.clone(), decode_cell(sub, inner)?.to_json());
    }
    Ok(Json::Object(object))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(name: &str, kind: FieldType) -> TableFieldSchema {
        TableFieldSchema::new(name, kind)
    }

    #[test]
    fn cells_decode_by_schema_type() {
        let int = field("n", FieldType::Int64);
        assert_eq!(decode_cell(&int, Some(&json!("42"))), Ok(Cell::Int(42)));
        assert!(decode_cell(&int, Some(&json!("x"))).is_err());
        let ts = field("t", FieldType::Timestamp);
        assert_eq!(
            decode_cell(&ts, Some(&json!("1763719200000000"))),
            Ok(Cell::Timestamp(1_763_719_200_000_000))
        );
        assert_eq!(
            decode_cell(&ts, Some(&json!("1.7637192E9"))),
            Ok(Cell::Timestamp(1_763_719_200_000_000))
        );
        let b = field("b", FieldType::Bool);
        assert_eq!(decode_cell(&b, Some(&json!("true"))), Ok(Cell::Bool(true)));
        assert_eq!(decode_cell(&b, None), Ok(Cell::Null));
        let j = field("j", FieldType::Json);
        assert_eq!(
            decode_cell(&j, Some(&json!("{\"a\":1}"))),
            Ok(Cell::Json(json!({"a": 1})))
        );
    }

    #[test]
    fn records_and_arrays_become_json() {
        let record = TableFieldSchema::record(
            "labels",
            vec![
                field("old", FieldType::String),
                field("count", FieldType::Int64),
            ],
        );
        let value = json!({"f": [{"v": "Provisioning"}, {"v": "3"}]});
        assert_eq!(
            decode_cell(&record, Some(&value)),
            Ok(Cell::Json(json!({"old": "Provisioning", "count": 3})))
        );
        let mut tags = field("tags", FieldType::String);
        tags.mode = Some("REPEATED".into());
        assert_eq!(
            decode_cell(&tags, Some(&json!([{"v": "a"}, {"v": "b"}]))),
            Ok(Cell::Json(json!(["a", "b"])))
        );
    }

    #[test]
    fn timestamp_parameters_use_the_client_library_form() {
        assert_eq!(
            timestamp_parameter(1_763_719_200_250_000),
            "2025-11-21 10:00:00.250000+00:00"
        );
    }

    /// The body BigQuery answers (HTTP 400) for a query over
    /// `maximumBytesBilled`.
    #[test]
    fn a_bytes_billed_limit_error_is_recognised() {
        let message = "Query exceeded limit for bytes billed: 1000. 10485760 or higher required.";
        let body = json!({"error": {
            "code": 400,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": "bytesBilledLimitExceeded"}],
            "status": "INVALID_ARGUMENT",
        }});
        let error = BQError::ResponseError {
            error: serde_json::from_value(body).unwrap(),
        };
        assert_eq!(
            bytes_limit_message(&response_reasons(&error)),
            Some(message.to_owned())
        );
        let other = json!({"error": {
            "code": 400, "message": "Syntax error", "status": "INVALID_ARGUMENT",
            "errors": [{"message": "Syntax error", "domain": "global", "reason": "invalidQuery"}],
        }});
        let error = BQError::ResponseError {
            error: serde_json::from_value(other).unwrap(),
        };
        assert_eq!(bytes_limit_message(&response_reasons(&error)), None);
    }

    #[test]
    fn errors_in_a_200_answer_are_errors() {
        let errors = vec![ErrorProto {
            debug_info: None,
            location: None,
            message: Some("Table not found: ops.nope".into()),
            reason: Some("notFound".into()),
        }];
        assert_eq!(
            check_errors(Some(&errors)),
            Err("notFound: Table not found: ops.nope".into())
        );
        assert_eq!(check_errors(Some(&[])), Ok(()));
    }
}
