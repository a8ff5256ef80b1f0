use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::config::{CheckpointSettings, JobSettings};

fn schema() -> Schema {
    Schema::parse_str(
        r#"{"type": "record", "name": "E", "fields": [
            {"name": "eventId", "type": "string"},
            {"name": "eventType", "type": "string"},
            {"name": "source", "type": "string", "default": ""},
            {"name": "time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "amount", "type": ["null", "double"], "default": null},
            {"name": "data", "type": "string"}
        ]}"#,
    )
    .unwrap()
}

fn job() -> JobSettings {
    let value: toml::Table = toml::from_str(
        r#"
        eventId = { meta = "event_id" }
        eventType = { meta = "event_type" }
        time = "failed_at"
        amount = { column = "amount" }
        data = { json = ["env_id", "labels.old_status = old_status", "labels.n = amount"] }
        "#,
    )
    .unwrap();
    JobSettings {
        enabled: true,
        source: "w".into(),
        topic: "t".into(),
        event_type: "connector-failure".into(),
        sql: Some("SELECT 1".into()),
        sql_file: None,
        params: Default::default(),
        key_column: "org_id".into(),
        event_id: vec!["org_id".into(), "connector_id".into()],
        checkpoint: Some(CheckpointSettings {
            column: "failed_at".into(),
            kind: CheckpointKind::Timestamp,
            initial: None,
            lookback: None,
        }),
        value: value
            .into_iter()
            .map(|(k, v)| (k, v.try_into().unwrap()))
            .collect(),
        schedule: None,
        dedup_retention: std::time::Duration::from_secs(60),
        maximum_bytes_billed: None,
        labels: Default::default(),
    }
}

fn row(cells: Vec<Cell>) -> Row {
    let columns: Vec<String> = [
        "org_id",
        "connector_id",
        "failed_at",
        "amount",
        "env_id",
        "old_status",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Row {
        columns: Arc::from(columns),
        cells,
    }
}

fn good_row() -> Row {
    row(vec![
        Cell::Text("org-1".into()),
        Cell::Int(42),
        Cell::Text("2025-11-21 10:00:00".into()),
        Cell::Null,
        Cell::Text("env-9".into()),
        Cell::Text("Provisioning".into()),
    ])
}

fn mapping() -> Mapping {
    Mapping::compile("failures", &job(), Some(&schema())).unwrap()
}

#[test]
fn a_row_becomes_a_keyed_event_with_typed_fields() {
    let event = mapping().map(&good_row(), 1, 0).unwrap();
    assert_eq!(event.key, "org-1");
    assert_eq!(event.event_id, "org-1:42");
    assert_eq!(
        event.checkpoint,
        Some(CheckpointValue::Timestamp(1_763_719_200_000_000))
    );
    let data: Json = serde_json::from_str(event.value["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        data,
        json!({"env_id": "env-9", "labels": {"old_status": "Provisioning", "n": null}})
    );
    let mut value = event.value.clone();
    value.as_object_mut().unwrap().remove("data");
    assert_eq!(
        value,
        json!({
            "eventId": "org-1:42",
            "eventType": "connector-failure",
            "time": 1_763_719_200_000i64,
            "amount": null,
        })
    );
}

#[test]
fn a_missing_key_names_the_row_and_column() {
    let mut bad = good_row();
    bad.cells[0] = Cell::Null;
    let error = mapping().map(&bad, 17, 0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "row 17, column org_id: missing key (NULL)"
    );
}

#[test]
fn a_wrong_type_names_the_column_and_field() {
    let mut bad = good_row();
    bad.cells[3] = Cell::Text("lots".into());
    let error = mapping().map(&bad, 3, 0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "row 3, column amount: field amount: expected a number, found text \"lots\""
    );
}

#[test]
fn an_unparseable_checkpoint_is_a_row_error() {
    let mut bad = good_row();
    bad.cells[2] = Cell::Text("last tuesday".into());
    let error = mapping().map(&bad, 5, 0).unwrap_err();
    assert_eq!(error.column.as_deref(), Some("failed_at"));
    assert!(
        error.reason.contains("checkpoint wants a timestamp"),
        "{error}"
    );
}

#[test]
fn compile_refuses_unknown_and_unfilled_fields() {
    let mut unknown = job();
    unknown
        .value
        .insert("colour".into(), FieldSource::Column("c".into()));
    let e = Mapping::compile("j", &unknown, Some(&schema()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no field \"colour\""), "{e}");

    let mut unfilled = job();
    unfilled.value.remove("time");
    let e = Mapping::compile("j", &unfilled, Some(&schema()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"time\" has no default"), "{e}");
}

#[test]
fn missing_result_columns_are_reported_with_what_is_there() {
    let e = mapping()
        .check_columns(&["org_id".to_owned(), "amount".to_owned()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no column \"connector_id\""), "{e}");
    assert!(e.contains("org_id, amount"), "{e}");
}

#[test]
fn conversions_accept_what_databases_store() {
    assert_eq!(
        convert(&Cell::Int(1), Target::Boolean, false),
        Ok(json!(true))
    );
    assert_eq!(
        convert(&Cell::Text("12".into()), Target::Long, false),
        Ok(json!(12))
    );
    assert_eq!(
        convert(&Cell::Timestamp(1_500), Target::TimestampMillis, false),
        Ok(json!(1))
    );
    assert_eq!(
        convert(&Cell::Int(7), Target::String, false),
        Ok(json!("7"))
    );
    assert!(convert(&Cell::Int(1 << 40), Target::Int, false).is_err());
    assert!(convert(&Cell::Null, Target::String, false).is_err());
    assert_eq!(convert(&Cell::Null, Target::String, true), Ok(Json::Null));
}

#[test]
fn json_topics_take_cells_as_they_are() {
    let mapping = Mapping::compile("j", &job(), None).unwrap();
    let event = mapping.map(&good_row(), 1, 0).unwrap();
    assert_eq!(event.value["time"], json!("2025-11-21 10:00:00"));
    assert_eq!(
        event.value["data"],
        json!({"env_id": "env-9", "labels": {"old_status": "Provisioning", "n": null}})
    );
}
