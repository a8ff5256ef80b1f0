//! Checkpoint values: the greatest value of a job's checkpoint column seen
//! in a fully acknowledged run, passed to the next run as `@checkpoint`.

use crate::config::CheckpointKind;

use super::row::{format_rfc3339, parse_timestamp, Cell};

/// A query parameter value, bound by each source in its own way.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
}

impl Param {
    /// A parameter from the job's `params` table.
    pub fn from_config(value: &serde_json::Value) -> Result<Param, String> {
        match value {
            serde_json::Value::String(s) => Ok(Param::Text(s.clone())),
            serde_json::Value::Bool(b) => Ok(Param::Bool(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Param::Int(i)),
                None => n
                    .as_f64()
                    .map(Param::Float)
                    .ok_or_else(|| format!("{n} is not a number a database can take")),
            },
            other => Err(format!(
                "parameters are strings, numbers or booleans, not {other}"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckpointValue {
    Timestamp(i64),
    Integer(i64),
    Text(String),
}

impl CheckpointValue {
    pub fn initial(kind: CheckpointKind) -> CheckpointValue {
        match kind {
            CheckpointKind::Timestamp => CheckpointValue::Timestamp(0),
            CheckpointKind::Integer => CheckpointValue::Integer(i64::MIN),
            CheckpointKind::String => CheckpointValue::Text(String::new()),
        }
    }

    /// Parses a stored or configured value.
    pub fn parse(kind: CheckpointKind, text: &str) -> Option<CheckpointValue> {
        match kind {
            CheckpointKind::Timestamp => parse_timestamp(text).map(CheckpointValue::Timestamp),
            CheckpointKind::Integer => text.trim().parse().ok().map(CheckpointValue::Integer),
            CheckpointKind::String => Some(CheckpointValue::Text(text.to_owned())),
        }
    }

    /// The value of a result cell, if it has the kind's type.
    pub fn from_cell(kind: CheckpointKind, cell: &Cell) -> Option<CheckpointValue> {
        match (kind, cell) {
            (_, Cell::Null) => None,
            (CheckpointKind::Timestamp, cell) => {
                cell.as_timestamp_micros().map(CheckpointValue::Timestamp)
            }
            (CheckpointKind::Integer, Cell::Int(i)) => Some(CheckpointValue::Integer(*i)),
            (CheckpointKind::Integer, Cell::Text(s)) => {
                s.trim().parse().ok().map(CheckpointValue::Integer)
            }
            (CheckpointKind::Integer, _) => None,
            (CheckpointKind::String, cell) => cell.as_text().map(CheckpointValue::Text),
        }
    }

    /// Human-readable and parseable again by [`CheckpointValue::parse`].
    pub fn display(&self) -> String {
        match self {
            CheckpointValue::Timestamp(micros) => format_rfc3339(*micros),
            CheckpointValue::Integer(i) => i.to_string(),
            CheckpointValue::Text(s) => s.clone(),
        }
    }

    /// A string whose text order is the value order, so the database can
    /// compare positions of any kind (numbers are offset and zero-padded).
    pub fn sort_key(&self) -> String {
        match self {
            CheckpointValue::Timestamp(v) | CheckpointValue::Integer(v) => {
                format!("{:020}", i128::from(*v) - i128::from(i64::MIN))
            }
            CheckpointValue::Text(s) => s.clone(),
        }
    }

    pub fn to_param(&self) -> Param {
        match self {
            CheckpointValue::Timestamp(micros) => Param::Timestamp(*micros),
            CheckpointValue::Integer(i) => Param::Int(*i),
            CheckpointValue::Text(s) => Param::Text(s.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_order_like_the_values() {
        let values = [i64::MIN, -5, -1, 0, 1, 42, 1_000_000, i64::MAX];
        for pair in values.windows(2) {
            let (a, b) = (
                CheckpointValue::Integer(pair[0]),
                CheckpointValue::Integer(pair[1]),
            );
            assert!(a.sort_key() < b.sort_key(), "{pair:?}");
            assert_eq!(a.sort_key().len(), 20);
        }
    }

    #[test]
    fn values_round_trip_through_their_display() {
        for (kind, text) in [
            (CheckpointKind::Timestamp, "2025-11-21T10:00:00.250Z"),
            (CheckpointKind::Integer, "-17"),
            (CheckpointKind::String, "v2"),
        ] {
            let value = CheckpointValue::parse(kind, text).unwrap();
            assert_eq!(value.display(), text);
        }
        assert_eq!(
            CheckpointValue::parse(CheckpointKind::Integer, "soon"),
            None
        );
    }

    #[test]
    fn cells_of_the_wrong_type_have_no_checkpoint_value() {
        let kind = CheckpointKind::Timestamp;
        assert_eq!(
            CheckpointValue::from_cell(kind, &Cell::Text("2025-11-21 10:00:00".into())),
            Some(CheckpointValue::Timestamp(1_763_719_200_000_000))
        );
        assert_eq!(
            CheckpointValue::from_cell(kind, &Cell::Text("never".into())),
            None
        );
        assert_eq!(CheckpointValue::from_cell(kind, &Cell::Null), None);
    }

    #[test]
    fn config_params_keep_their_types() {
        assert_eq!(Param::from_config(&serde_json::json!(7)), Ok(Param::Int(7)));
        assert_eq!(
            Param::from_config(&serde_json::json!("x")),
            Ok(Param::Text("x".into()))
        );
        assert!(Param::from_config(&serde_json::json!([1])).is_err());
    }
}
