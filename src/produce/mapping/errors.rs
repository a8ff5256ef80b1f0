//! Why a mapping cannot be compiled, applied to a result, or fill a field.

use super::super::checkpoint::ParamError;

/// The value mapping does not fit the topic's schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("the topic's schema is not a record")]
    NotARecord,
    #[error("value.{name}: the schema has no field {name:?}")]
    UnknownField { name: String },
    #[error("value: schema field {field:?} has no default and no mapping")]
    Unfilled { field: String },
}

/// The query result lacks a column the mapping reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the query result has no column {wanted:?} (it has: {})", .found.join(", "))]
pub struct ColumnsError {
    pub wanted: String,
    pub found: Vec<String>,
}

/// A cell that cannot become the value its field wants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("NULL in a required field")]
    NullInRequired,
    #[error("expected {expected}, found {found}")]
    Expected {
        expected: &'static str,
        found: String,
    },
}

/// An entry of the job's `params` table that cannot be bound.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    #[error("params.{name}: {name:?} is set by alertsvc")]
    Builtin { name: String },
    #[error("params.{name}: {error}")]
    Value { name: String, error: ParamError },
}
