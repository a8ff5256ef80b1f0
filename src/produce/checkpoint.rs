//! Checkpoint values: the greatest value of a job's checkpoint column seen
//! in a fully acknowledged run. The next run gets it as `@checkpoint`,
//! lowered by the job's lookback so that rows landing late (at or below the
//! checkpoint) are still read; the emitted-event ledger drops those already
//! emitted. [`window_start`] decides how far down a run may safely read.

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

/// A `params` value no source can bind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("{0} is not a number a database can take")]
    NotANumber(serde_json::Number),
    #[error("parameters are strings, numbers or booleans, not {0}")]
    WrongType(serde_json::Value),
}

impl Param {
    /// A parameter from the job's `params` table.
    pub fn from_config(value: &serde_json::Value) -> Result<Param, ParamError> {
        match value {
            serde_json::Value::String(s) => Ok(Param::Text(s.clone())),
            serde_json::Value::Bool(b) => Ok(Param::Bool(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Param::Int(i)),
                None => n
                    .as_f64()
                    .map(Param::Float)
                    .ok_or_else(|| ParamError::NotANumber(n.clone())),
            },
            other => Err(ParamError::WrongType(other.clone())),
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

    /// The value `units` below this one (microseconds for timestamps,
    /// values for integers), saturating; strings have no distance.
    pub fn minus(&self, units: i64) -> CheckpointValue {
        match self {
            CheckpointValue::Timestamp(v) => CheckpointValue::Timestamp(v.saturating_sub(units)),
            CheckpointValue::Integer(v) => CheckpointValue::Integer(v.saturating_sub(units)),
            CheckpointValue::Text(s) => CheckpointValue::Text(s.clone()),
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

/// Where a run's window starts, the value bound as `@checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start: CheckpointValue,
    /// The full lookback would reach below what the ledger is known to
    /// hold, so the window starts higher (right after the lookback was
    /// raised, or after an upgrade from a version without lookback).
    pub narrowed: bool,
}

/// The window of a run: `lookback` below the checkpoint, but never below
/// `ledger_from`, the position from which the ledger holds every event
/// emitted (below it, ids were pruned and a row read again would be
/// emitted twice), and never above the checkpoint itself (an operator who
/// lowered the checkpoint asks for those rows).
pub fn window_start(
    checkpoint: &CheckpointValue,
    lookback: i64,
    ledger_from: &CheckpointValue,
) -> Window {
    let wanted = checkpoint.minus(lookback);
    let start = wanted
        .clone()
        .max(ledger_from.clone())
        .min(checkpoint.clone());
    Window {
        narrowed: start > wanted,
        start,
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
    fn the_window_reaches_the_lookback_only_where_the_ledger_is_complete() {
        let t = CheckpointValue::Timestamp;
        let minute = 60_000_000;
        let cp = t(100 * minute);
        // The ledger holds the whole lookback: the window is the lookback.
        assert_eq!(
            window_start(&cp, 15 * minute, &t(80 * minute)),
            Window {
                start: t(85 * minute),
                narrowed: false
            }
        );
        // Lookback raised from 5 to 15 minutes: ids 85..95 were pruned, so
        // reading them again would emit them twice.
        assert_eq!(
            window_start(&cp, 15 * minute, &t(95 * minute)),
            Window {
                start: t(95 * minute),
                narrowed: true
            }
        );
        // An upgraded job's ledger is complete from its checkpoint only.
        assert_eq!(
            window_start(&cp, 15 * minute, &cp),
            Window {
                start: cp.clone(),
                narrowed: true
            }
        );
        // No lookback: the checkpoint itself, as before.
        assert_eq!(
            window_start(&cp, 0, &t(0)),
            Window {
                start: cp.clone(),
                narrowed: false
            }
        );
        // An operator lowered the checkpoint below the ledger: the window
        // still starts there.
        assert_eq!(
            window_start(&t(50 * minute), minute, &cp).start,
            t(50 * minute)
        );
    }

    #[test]
    fn integer_lookbacks_count_values_and_saturate() {
        let i = CheckpointValue::Integer;
        assert_eq!(window_start(&i(1_000), 100, &i(0)).start, i(900));
        assert_eq!(window_start(&i(1_000), 100, &i(950)).start, i(950));
        assert_eq!(
            window_start(&i(i64::MIN + 5), 100, &i(i64::MIN)).start,
            i(i64::MIN)
        );
        assert!(i(7).minus(3).sort_key() < i(7).sort_key());
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
