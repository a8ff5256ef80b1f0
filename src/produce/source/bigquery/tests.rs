use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use serde_json::json;

use super::decode::decode_cell;
use super::*;
use crate::produce::row::Cell;
use crate::produce::source::CellError;

fn field(name: &str, kind: FieldType) -> TableFieldSchema {
    TableFieldSchema::new(name, kind)
}

#[test]
fn cells_decode_by_schema_type() {
    let int = field("n", FieldType::Int64);
    assert_eq!(
        decode_cell(&int, Some(&json!("42"))).ok(),
        Some(Cell::Int(42))
    );
    assert!(matches!(
        decode_cell(&int, Some(&json!("x"))),
        Err(CellError::NotInt64(text)) if text == "x"
    ));
    let ts = field("t", FieldType::Timestamp);
    assert_eq!(
        decode_cell(&ts, Some(&json!("1763719200000000"))).ok(),
        Some(Cell::Timestamp(1_763_719_200_000_000))
    );
    assert_eq!(
        decode_cell(&ts, Some(&json!("1.7637192E9"))).ok(),
        Some(Cell::Timestamp(1_763_719_200_000_000))
    );
    let b = field("b", FieldType::Bool);
    assert_eq!(
        decode_cell(&b, Some(&json!("true"))).ok(),
        Some(Cell::Bool(true))
    );
    assert_eq!(decode_cell(&b, None).ok(), Some(Cell::Null));
    let j = field("j", FieldType::Json);
    assert_eq!(
        decode_cell(&j, Some(&json!("{\"a\":1}"))).ok(),
        Some(Cell::Json(json!({"a": 1})))
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
        decode_cell(&record, Some(&value)).ok(),
        Some(Cell::Json(json!({"old": "Provisioning", "count": 3})))
    );
    let mut tags = field("tags", FieldType::String);
    tags.mode = Some("REPEATED".into());
    assert_eq!(
        decode_cell(&tags, Some(&json!([{"v": "a"}, {"v": "b"}]))).ok(),
        Some(Cell::Json(json!(["a", "b"])))
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
        describe_errors(Some(&errors)),
        Some("notFound: Table not found: ops.nope".into())
    );
    assert_eq!(describe_errors(Some(&[])), None);
}
