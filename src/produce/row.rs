//! Result rows as the sources hand them over: column names shared by a
//! page, and typed cells every source can produce.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value as Json};

/// One cell. Sources keep what type information they have; the mapping
/// converts to what the event schema wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    Json(Json),
}

impl Cell {
    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "NULL",
            Cell::Bool(_) => "a boolean",
            Cell::Int(_) => "an integer",
            Cell::Float(_) => "a float",
            Cell::Text(_) => "text",
            Cell::Timestamp(_) => "a timestamp",
            Cell::Json(_) => "JSON",
        }
    }

    /// The cell as JSON with no target type in mind: timestamps become
    /// RFC 3339 strings.
    pub fn to_json(&self) -> Json {
        match self {
            Cell::Null => Json::Null,
            Cell::Bool(b) => Json::Bool(*b),
            Cell::Int(i) => Json::from(*i),
            Cell::Float(f) => serde_json::Number::from_f64(*f)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            Cell::Text(s) => Json::String(s.clone()),
            Cell::Timestamp(micros) => Json::String(format_rfc3339(*micros)),
            Cell::Json(v) => v.clone(),
        }
    }

    /// Text for keys and event ids: strings, integers and timestamps.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Cell::Text(s) => Some(s.clone()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Timestamp(micros) => Some(format_rfc3339(*micros)),
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Float(f) => Some(f.to_string()),
            Cell::Json(Json::String(s)) => Some(s.clone()),
            Cell::Json(_) | Cell::Null => None,
        }
    }

    /// The cell as a point in time (microseconds), accepting native
    /// timestamps and the text forms databases store them in.
    pub fn as_timestamp_micros(&self) -> Option<i64> {
        match self {
            Cell::Timestamp(micros) => Some(*micros),
            Cell::Text(s) => parse_timestamp(s),
            _ => None,
        }
    }
}

/// Column names, shared by every row of a result.
pub type Columns = Arc<[String]>;

#[derive(Debug, Clone)]
pub struct Row {
    pub columns: Columns,
    pub cells: Vec<Cell>,
}

impl Row {
    pub fn get(&self, index: usize) -> &Cell {
        self.cells.get(index).unwrap_or(&Cell::Null)
    }

    /// The whole row as a JSON object, for dead letters and `json = ["*"]`.
    pub fn to_json(&self) -> Json {
        let mut object = Map::new();
        for (name, cell) in self.columns.iter().zip(&self.cells) {
            object.insert(name.clone(), cell.to_json());
        }
        Json::Object(object)
    }
}

/// Parses RFC 3339 (`2026-11-21T10:00:00Z`), SQL's `2026-11-21 10:00:00[.f]`
/// (taken as UTC), a bare date, or BigQuery's integer microseconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    if let Some(t) = text
        .strip_suffix(" UTC")
        .and_then(|t| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").ok())
    {
        return Some(t.and_utc().timestamp_micros());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_micros());
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return text.parse().ok();
    }
    None
}

/// `2026-11-21T10:00:00.250Z`: UTC, as many fraction digits as needed.
pub fn format_rfc3339(micros: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => micros.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_763_719_200_000_000; // 2025-11-21T10:00:00Z

    #[test]
    fn timestamps_parse_in_every_stored_form() {
        assert_eq!(parse_timestamp("2025-11-21T10:00:00Z"), Some(T));
        assert_eq!(parse_timestamp("2025-11-21T11:00:00+01:00"), Some(T));
        assert_eq!(parse_timestamp("2025-11-21 10:00:00"), Some(T));
        assert_eq!(parse_timestamp("2025-11-21 10:00:00.5"), Some(T + 500_000));
        assert_eq!(parse_timestamp("2025-11-21 10:00:00 UTC"), Some(T));
        assert_eq!(parse_timestamp(&T.to_string()), Some(T));
        assert_eq!(parse_timestamp("2025-11-21"), Some(T - 10 * 3_600_000_000));
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp(""), None);
    }

    #[test]
    fn timestamps_format_for_json() {
        assert_eq!(format_rfc3339(T), "2025-11-21T10:00:00Z");
        assert_eq!(format_rfc3339(T + 250_000), "2025-11-21T10:00:00.250Z");
    }
}
