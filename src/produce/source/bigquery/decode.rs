//! Query results in BigQuery's `f`/`v` JSON encoding, typed by the
//! result schema, as rows of cells.

use std::sync::Arc;

use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_row::TableRow;
use serde_json::Value as Json;

use crate::produce::row::{Cell, Columns, Row};

use super::super::{CellError, Page};

/// A page, or the column that cannot be read and why.
type Decoded = Result<Page, (String, CellError)>;

pub(super) fn decode_page(fields: &[TableFieldSchema], rows: Vec<TableRow>) -> Decoded {
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
                    decode_cell(field, value).map_err(|error| (field.name.clone(), error))
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
pub(super) fn decode_cell(
    field: &TableFieldSchema,
    value: Option<&Json>,
) -> Result<Cell, CellError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Cell::Null);
    };
    if is_repeated(field) || matches!(field.r#type, FieldType::Record | FieldType::Struct) {
        return Ok(Cell::Json(nested_json(field, value)?));
    }
    let Some(text) = value.as_str() else {
        return Err(CellError::NotAString(value.clone()));
    };
    Ok(match field.r#type {
        FieldType::Integer | FieldType::Int64 => Cell::Int(
            text.parse()
                .map_err(|_| CellError::NotInt64(text.to_owned()))?,
        ),
        FieldType::Float | FieldType::Float64 => Cell::Float(
            text.parse()
                .map_err(|_| CellError::NotFloat64(text.to_owned()))?,
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
fn timestamp_micros(text: &str) -> Result<i64, CellError> {
    if let Ok(micros) = text.parse::<i64>() {
        return Ok(micros);
    }
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite())
        .map(|seconds| (seconds * 1e6).round() as i64)
        .ok_or_else(|| CellError::NotTimestamp(text.to_owned()))
}

/// RECORD and REPEATED cells as plain JSON.
fn nested_json(field: &TableFieldSchema, value: &Json) -> Result<Json, CellError> {
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
