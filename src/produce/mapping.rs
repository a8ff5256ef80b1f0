//! Rows → events: the pure part of a job. A [`Mapping`] is compiled once
//! from the job's config and the topic's schema, bound to a result's column
//! names, then applied to each row.

use std::collections::BTreeMap;
use std::fmt;

use apache_avro::Schema;
use serde_json::{Map, Value as Json};

use crate::config::{CheckpointKind, FieldSource, FieldSpec, JobSettings, MetaValue};

use super::checkpoint::CheckpointValue;
use super::row::{Cell, Row};

mod errors;

pub use errors::{ColumnsError, ConvertError, MappingError, ParamsError};

/// What a schema field wants, so cells convert before Avro sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    String,
    Long,
    Int,
    Double,
    Boolean,
    TimestampMillis,
    TimestampMicros,
    /// No schema (JSON topics) or a complex type: the cell's own JSON.
    Any,
}

#[derive(Debug, Clone)]
enum ValueSource {
    Column(String),
    Const(Json),
    Meta(MetaValue),
    /// (path in the object, column); `*` as column takes every column.
    Json(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
struct FieldPlan {
    name: String,
    source: ValueSource,
    target: Target,
    nullable: bool,
}

/// A job's row → event rules.
#[derive(Debug, Clone)]
pub struct Mapping {
    job: String,
    event_type: String,
    key_column: String,
    event_id: Vec<String>,
    checkpoint: Option<(String, CheckpointKind)>,
    fields: Vec<FieldPlan>,
}

/// The event made from one row.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedEvent {
    pub key: String,
    pub event_id: String,
    pub value: Json,
    pub checkpoint: Option<CheckpointValue>,
}

/// Why a row could not become an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based position in this run's result.
    pub row: u64,
    pub column: Option<String>,
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "row {}, column {column}: {}", self.row, self.reason),
            None => write!(f, "row {}: {}", self.row, self.reason),
        }
    }
}

impl Mapping {
    /// Checks the value mapping against the schema: every field it names
    /// exists, and every schema field without a default is filled.
    pub fn compile(
        job_name: &str,
        job: &JobSettings,
        schema: Option<&Schema>,
    ) -> Result<Mapping, MappingError> {
        let record_fields = match schema {
            Some(Schema::Record(record)) => Some(&record.fields),
            Some(_) => return Err(MappingError::NotARecord),
            None => None,
        };
        let mut fields = Vec::new();
        if let Some(record_fields) = record_fields {
            for name in job.value.keys() {
                if !record_fields.iter().any(|f| &f.name == name) {
                    return Err(MappingError::UnknownField { name: name.clone() });
                }
            }
            for field in record_fields {
                let (target, nullable) = target_of(&field.schema);
                match job.value.get(&field.name) {
                    Some(source) => fields.push(FieldPlan {
                        name: field.name.clone(),
                        source: value_source(source),
                        target,
                        nullable,
                    }),
                    None if field.default.is_some() || nullable => {}
                    None => {
                        return Err(MappingError::Unfilled {
                            field: field.name.clone(),
                        })
                    }
                }
            }
        } else {
            for (name, source) in &job.value {
                fields.push(FieldPlan {
                    name: name.clone(),
                    source: value_source(source),
                    target: Target::Any,
                    nullable: true,
                });
            }
        }
        Ok(Mapping {
            job: job_name.to_owned(),
            event_type: job.event_type.clone(),
            key_column: job.key_column.clone(),
            event_id: job.event_id.clone(),
            checkpoint: job.checkpoint.as_ref().map(|c| (c.column.clone(), c.kind)),
            fields,
        })
    }

    /// Every column the mapping reads (`*` excluded).
    pub fn columns(&self) -> Vec<&str> {
        let mut columns = vec![self.key_column.as_str()];
        columns.extend(self.event_id.iter().map(String::as_str));
        if let Some((column, _)) = &self.checkpoint {
            columns.push(column);
        }
        for field in &self.fields {
            match &field.source {
                ValueSource::Column(c) => columns.push(c),
                ValueSource::Json(list) => columns.extend(
                    list.iter()
                        .map(|(_, column)| column.as_str())
                        .filter(|c| *c != "*"),
                ),
                ValueSource::Const(_) | ValueSource::Meta(_) => {}
            }
        }
        columns.sort_unstable();
        columns.dedup();
        columns
    }

    /// Fails when the result lacks a column the mapping reads.
    pub fn check_columns(&self, columns: &[String]) -> Result<(), ColumnsError> {
        for wanted in self.columns() {
            if !columns.iter().any(|c| c == wanted) {
                return Err(ColumnsError {
                    wanted: wanted.to_owned(),
                    found: columns.to_vec(),
                });
            }
        }
        Ok(())
    }

    /// The row's checkpoint value, if it has a valid one (for rows that
    /// fail elsewhere: they still move the checkpoint, via the DLQ).
    pub fn checkpoint_of(&self, row: &Row) -> Option<CheckpointValue> {
        let (column, kind) = self.checkpoint.as_ref()?;
        CheckpointValue::from_cell(*kind, cell(row, column))
    }

    pub fn key_column(&self) -> &str {
        &self.key_column
    }

    /// The row's key, if it has one.
    pub fn key_of(&self, row: &Row) -> Option<String> {
        cell(row, &self.key_column)
            .as_text()
            .filter(|k| !k.is_empty())
    }

    /// Maps one row. `row_number` is 1-based; `run_started_ms` feeds
    /// `meta = "run_started_at"`.
    pub fn map(
        &self,
        row: &Row,
        row_number: u64,
        run_started_ms: i64,
    ) -> Result<MappedEvent, RowError> {
        let error = |column: &str, reason: String| RowError {
            row: row_number,
            column: Some(column.to_owned()),
            reason,
        };
        let key = match cell(row, &self.key_column).as_text() {
            Some(key) if !key.is_empty() => key,
            Some(_) => return Err(error(&self.key_column, "missing key (empty)".into())),
            None => {
                let found = cell(row, &self.key_column).kind();
                return Err(error(&self.key_column, format!("missing key ({found})")));
            }
        };
        let mut id_parts = Vec::with_capacity(self.event_id.len());
        for column in &self.event_id {
            match cell(row, column).as_text() {
                Some(part) => id_parts.push(part),
                None => {
                    return Err(error(
                        column,
                        format!("event id part is {}", cell(row, column).kind()),
                    ))
                }
            }
        }
        let event_id = id_parts.join(":");
        let checkpoint = match &self.checkpoint {
            Some((column, kind)) => {
                let c = cell(row, column);
                Some(CheckpointValue::from_cell(*kind, c).ok_or_else(|| {
                    error(
                        column,
                        format!(
                            "checkpoint wants {}, found {}",
                            kind_name(*kind),
                            describe(c)
                        ),
                    )
                })?)
            }
            None => None,
        };
        let mut value = Map::with_capacity(self.fields.len());
        for field in &self.fields {
            let json = match &field.source {
                ValueSource::Column(column) => {
                    convert(cell(row, column), field.target, field.nullable).map_err(|reason| {
                        error(column, format!("field {}: {reason}", field.name))
                    })?
                }
                ValueSource::Const(v) => v.clone(),
                ValueSource::Meta(meta) => match meta {
                    MetaValue::EventId => Json::String(event_id.clone()),
                    MetaValue::EventType => Json::String(self.event_type.clone()),
                    MetaValue::Job => Json::String(self.job.clone()),
                    MetaValue::Key => Json::String(key.clone()),
                    MetaValue::RunStartedAt => match field.target {
                        Target::TimestampMicros => Json::from(run_started_ms * 1000),
                        Target::String => {
                            Json::String(super::row::format_rfc3339(run_started_ms * 1000))
                        }
                        _ => Json::from(run_started_ms),
                    },
                },
                ValueSource::Json(columns) => {
                    let object = json_object(row, columns);
                    if field.target == Target::String {
                        Json::String(object.to_string())
                    } else {
                        object
                    }
                }
            };
            value.insert(field.name.clone(), json);
        }
        Ok(MappedEvent {
            key,
            event_id,
            value: Json::Object(value),
            checkpoint,
        })
    }
}

fn cell<'r>(row: &'r Row, column: &str) -> &'r Cell {
    row.columns
        .iter()
        .position(|c| c == column)
        .map(|i| row.get(i))
        .unwrap_or(&Cell::Null)
}

fn value_source(source: &FieldSource) -> ValueSource {
    match source {
        FieldSource::Column(column) => ValueSource::Column(column.clone()),
        FieldSource::Spec(FieldSpec {
            column: Some(column),
            ..
        }) => ValueSource::Column(column.clone()),
        FieldSource::Spec(FieldSpec {
            constant: Some(v), ..
        }) => ValueSource::Const(v.clone()),
        FieldSource::Spec(FieldSpec { meta: Some(m), .. }) => ValueSource::Meta(*m),
        FieldSource::Spec(FieldSpec {
            json: Some(list), ..
        }) => ValueSource::Json(list.iter().map(|entry| json_entry(entry)).collect()),
        // Config validation guarantees one of the above.
        FieldSource::Spec(_) => ValueSource::Const(Json::Null),
    }
}

fn target_of(schema: &Schema) -> (Target, bool) {
    match schema {
        Schema::Union(union) => {
            let variants = union.variants();
            let nullable = variants.iter().any(|v| matches!(v, Schema::Null));
            let non_null: Vec<&Schema> = variants
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .collect();
            match non_null.as_slice() {
                [only] => (target_of(only).0, nullable),
                _ => (Target::Any, nullable),
            }
        }
        Schema::String | Schema::Uuid(_) | Schema::Enum(_) => (Target::String, false),
        Schema::Long => (Target::Long, false),
        Schema::Int => (Target::Int, false),
        Schema::Double | Schema::Float => (Target::Double, false),
        Schema::Boolean => (Target::Boolean, false),
        Schema::TimestampMillis => (Target::TimestampMillis, false),
        Schema::TimestampMicros => (Target::TimestampMicros, false),
        Schema::Null => (Target::Any, true),
        _ => (Target::Any, false),
    }
}

fn kind_name(kind: CheckpointKind) -> &'static str {
    match kind {
        CheckpointKind::Timestamp => "a timestamp",
        CheckpointKind::Integer => "an integer",
        CheckpointKind::String => "text",
    }
}

fn describe(cell: &Cell) -> String {
    match cell {
        Cell::Text(s) => {
            let shown: String = s.chars().take(40).collect();
            format!("text {shown:?}")
        }
        Cell::Float(f) => format!("the float {f}"),
        other => other.kind().to_owned(),
    }
}

/// Converts a cell to the JSON the Avro mapping expects for `target`.
pub fn convert(cell: &Cell, target: Target, nullable: bool) -> Result<Json, ConvertError> {
    let wrong = |expected: &'static str| {
        Err(ConvertError::Expected {
            expected,
            found: describe(cell),
        })
    };
    match (target, cell) {
        (_, Cell::Null) if nullable || target == Target::Any => Ok(Json::Null),
        (_, Cell::Null) => Err(ConvertError::NullInRequired),
        (Target::Any, c) => Ok(c.to_json()),
        (Target::String, Cell::Text(s)) => Ok(Json::String(s.clone())),
        (Target::String, Cell::Json(Json::String(s))) => Ok(Json::String(s.clone())),
        (Target::String, Cell::Json(v)) => Ok(Json::String(v.to_string())),
        (Target::String, c @ (Cell::Int(_) | Cell::Timestamp(_))) => {
            Ok(Json::String(c.as_text().unwrap_or_default()))
        }
        (Target::String, _) => wrong("text"),
        (Target::Long | Target::Int, Cell::Int(i)) => {
            if target == Target::Int && i32::try_from(*i).is_err() {
                return wrong("a 32-bit integer");
            }
            Ok(Json::from(*i))
        }
        (Target::Long | Target::Int, Cell::Text(s)) => match s.trim().parse::<i64>() {
            Ok(i) if target == Target::Long || i32::try_from(i).is_ok() => Ok(Json::from(i)),
            _ => wrong("an integer"),
        },
        (Target::Long | Target::Int, _) => wrong("an integer"),
        (Target::Double, Cell::Float(f)) => Ok(Json::from(*f)),
        (Target::Double, Cell::Int(i)) => Ok(Json::from(*i as f64)),
        (Target::Double, Cell::Text(s)) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Json::from(f)),
            _ => wrong("a number"),
        },
        (Target::Double, _) => wrong("a number"),
        (Target::Boolean, Cell::Bool(b)) => Ok(Json::Bool(*b)),
        (Target::Boolean, Cell::Int(0)) => Ok(Json::Bool(false)),
        (Target::Boolean, Cell::Int(1)) => Ok(Json::Bool(true)),
        (Target::Boolean, Cell::Text(s)) if s.eq_ignore_ascii_case("true") => Ok(Json::Bool(true)),
        (Target::Boolean, Cell::Text(s)) if s.eq_ignore_ascii_case("false") => {
            Ok(Json::Bool(false))
        }
        (Target::Boolean, _) => wrong("a boolean"),
        (Target::TimestampMillis | Target::TimestampMicros, c) => {
            let micros = match c {
                // An integer column is taken in the field's own unit.
                Cell::Int(i) if target == Target::TimestampMillis => i.checked_mul(1000),
                Cell::Int(i) => Some(*i),
                other => other.as_timestamp_micros(),
            };
            match micros {
                Some(m) if target == Target::TimestampMillis => Ok(Json::from(m.div_euclid(1000))),
                Some(m) => Ok(Json::from(m)),
                None => wrong("a timestamp"),
            }
        }
    }
}

/// `"labels.old = old_status"` puts column `old_status` at `labels.old`;
/// a bare name is both path and column.
fn json_entry(entry: &str) -> (String, String) {
    match entry.split_once('=') {
        Some((path, column)) => (path.trim().to_owned(), column.trim().to_owned()),
        None => (entry.trim().to_owned(), entry.trim().to_owned()),
    }
}

/// Columns gathered into an object; dotted paths nest, `*` takes all.
fn json_object(row: &Row, entries: &[(String, String)]) -> Json {
    let mut root = Map::new();
    for (path, column) in entries {
        if column == "*" {
            for (name, value) in row.columns.iter().zip(&row.cells) {
                insert_path(&mut root, name, value.to_json());
            }
        } else {
            insert_path(&mut root, path, cell(row, column).to_json());
        }
    }
    Json::Object(root)
}

fn insert_path(object: &mut Map<String, Json>, path: &str, value: Json) {
    match path.split_once('.') {
        None => {
            object.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = object
                .entry(head.to_owned())
                .or_insert_with(|| Json::Object(Map::new()));
            if !child.is_object() {
                *child = Json::Object(Map::new());
            }
            if let Json::Object(child) = child {
                insert_path(child, rest, value);
            }
        }
    }
}

/// Parameters a job's SQL may use that are not in its `params` table.
pub const BUILTIN_PARAMS: &[&str] = &["checkpoint"];

/// The `params` table as bindable values.
pub fn config_params(
    params: &BTreeMap<String, Json>,
) -> Result<BTreeMap<String, super::checkpoint::Param>, ParamsError> {
    params
        .iter()
        .map(|(name, value)| {
            if BUILTIN_PARAMS.contains(&name.as_str()) {
                return Err(ParamsError::Builtin { name: name.clone() });
            }
            super::checkpoint::Param::from_config(value)
                .map(|p| (name.clone(), p))
                .map_err(|error| ParamsError::Value {
                    name: name.clone(),
                    error,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests;
