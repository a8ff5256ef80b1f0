//! Google BigQuery through `gcp-bigquery-client`: `jobs.query` with named
//! parameters, then `getQueryResults` page by page. The next page is
//! requested while the previous one is being produced.
//!
//! Every query carries the job's cost controls (`maximumBytesBilled`,
//! labels). Once the query job is complete its statistics (`jobs.get`) give
//! the bytes processed and billed, before the first page is handed over, so
//! a run that fails later still accounts for what its query cost.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::data_format_options::DataFormatOptions;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_parameter::QueryParameter;
use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::Client;
use tokio::sync::mpsc;

use crate::config::{BigQuerySettings, GcpCredentials};
use crate::produce::checkpoint::Param;
use crate::produce::sql::{parse, Placeholder};

use super::{
    one_line, ordered_params, page_channel, Page, PageStream, QueryCost, SourceError, Statement,
};

mod decode;

use decode::decode_page;

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

    fn request(&self, statement: &Statement<'_>) -> Result<QueryRequest, SourceError> {
        let parsed = parse(statement.sql, Placeholder::Named);
        let values = ordered_params(&parsed.names, statement.params)?;
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
        let options = statement.options;
        request.maximum_bytes_billed = options.maximum_bytes_billed.map(|b| b.to_string());
        if !options.labels.is_empty() {
            request.labels = Some(options.labels.clone().into_iter().collect());
        }
        Ok(request)
    }

    pub fn query(&self, statement: &Statement<'_>) -> Result<PageStream, SourceError> {
        let request = self.request(statement)?;
        let (tx, rx) = page_channel();
        let (source, cost) = (self.clone(), rx.cost_cell());
        let limit = statement.options.maximum_bytes_billed;
        tokio::spawn(async move {
            if let Err(e) = source.pump(request, limit, &cost, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    /// BigQuery's estimate of the bytes the query would process: the same
    /// request as a dry run, which reads and bills nothing.
    pub async fn estimate(&self, statement: &Statement<'_>) -> Result<u64, SourceError> {
        let mut request = self.request(statement)?;
        request.dry_run = Some(true);
        let limit = statement.options.maximum_bytes_billed;
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
        let Some(text) = describe_errors(errors) else {
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
                    |(column, error)| SourceError::Decode {
                        source_name: self.name.clone(),
                        column,
                        error: Box::new(error),
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

/// BigQuery (and its emulators) may answer 200 with errors in the body:
/// their reasons and messages, if there are any.
fn describe_errors(errors: Option<&[ErrorProto]>) -> Option<String> {
    match errors {
        Some(errors) if !errors.is_empty() => Some(
            errors
                .iter()
                .map(|e| {
                    let reason = e.reason.as_deref().unwrap_or("error");
                    let message = e.message.as_deref().unwrap_or("");
                    format!("{reason}: {message}")
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
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

#[cfg(test)]
mod tests;
