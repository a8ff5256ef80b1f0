//! PostgreSQL's multi-row statements take their rows as one array per
//! column.
//!
//! A `VALUES` list of n rows of `$n` placeholders is a different statement
//! text for every n: the server parsed and planned each merged statement
//! anew in every batch (a quarter of its CPU per post in `perf`), and sqlx
//! described it first (a round trip more). With each column's values in one
//! array, each kind of merged statement has one text, prepared once per
//! connection; the server reads the rows back with `unnest`, naming the
//! columns `column1`… as `VALUES` names them, so the statements around it
//! read the same either way.
//!
//! The arrays go in PostgreSQL's binary format: each text as it is, with
//! its length. (The rows used to go as one `jsonb` array of arrays: every
//! text escaped into JSON here and parsed back there, the rendered blocks a
//! first alert state carries included. PERFORMANCE.md, notify's sixteenth
//! round.)

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo};
use sqlx::{Encode, Postgres, Type};

use super::super::LedgerError;
use super::conn::Val;

/// One column of a multi-row statement's rows: every `width`-th of
/// `values` from `index`, bound as one PostgreSQL array (`text[]` or
/// `bigint[]`, as its first row's value is). Encoded straight from the
/// rows (sqlx's arrays of `Option<&str>` took twice the instructions,
/// each value framed through its generic `Encode`: 7.1k against 3.4k per
/// post, PERFORMANCE.md, notify's sixteenth round).
#[derive(Debug, Clone, Copy)]
pub(super) struct Column<'a> {
    values: &'a [Val<'a>],
    width: usize,
    index: usize,
    text: bool,
}

/// The subquery reading the arrays `$1`… back as rows shaped like `first`
/// (a text column where it has text, a `bigint` one where it has a number).
pub(super) fn source(first: &[Val<'_>]) -> String {
    let mut arrays = String::with_capacity(first.len() * 14);
    let mut names = String::with_capacity(first.len() * 10);
    for (i, value) in first.iter().enumerate() {
        if i > 0 {
            arrays.push_str(", ");
            names.push_str(", ");
        }
        let number = itoa::Buffer::new().format(i + 1).to_owned();
        arrays.push('$');
        arrays.push_str(&number);
        arrays.push_str(match value {
            Val::Text(_) => "::text[]",
            Val::Int(_) => "::bigint[]",
        });
        names.push_str("column");
        names.push_str(&number);
    }
    format!("(SELECT * FROM unnest({arrays}) AS u({names}))")
}

/// `values`, `width` to a row, as the columns [`source`] reads.
pub(super) fn split<'a>(values: &'a [Val<'a>], width: usize) -> Vec<Column<'a>> {
    let width = width.max(1);
    values
        .iter()
        .take(width)
        .enumerate()
        .map(|(index, first)| Column {
            values,
            width,
            index,
            text: matches!(first, Val::Text(_)),
        })
        .collect()
}

impl<'a> Column<'a> {
    fn rows(&self) -> impl Iterator<Item = &'a Val<'a>> {
        let values: &'a [Val<'a>] = self.values;
        values.iter().skip(self.index).step_by(self.width)
    }
}

impl Type<Postgres> for Column<'_> {
    fn type_info() -> PgTypeInfo {
        // Only what `produces` names is sent; this is never asked of a
        // column (as `Option<T>`'s is not of a `None`).
        <&str as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for Column<'_> {
    fn produces(&self) -> Option<PgTypeInfo> {
        Some(if self.text {
            <&str as PgHasArrayType>::array_type_info()
        } else {
            <i64 as PgHasArrayType>::array_type_info()
        })
    }

    /// PostgreSQL's binary array (`array_recv`): one dimension, the
    /// element type's oid, the length, lower bound 1, then each element as
    /// its length (-1: null) and its bytes.
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        const TEXT: u32 = 25;
        const INT8: u32 = 20;
        let count = i32::try_from(self.rows().count())?;
        buf.extend_from_slice(&1_i32.to_be_bytes());
        buf.extend_from_slice(&0_i32.to_be_bytes());
        buf.extend_from_slice(&(if self.text { TEXT } else { INT8 }).to_be_bytes());
        buf.extend_from_slice(&count.to_be_bytes());
        buf.extend_from_slice(&1_i32.to_be_bytes());
        for value in self.rows() {
            match (*value, self.text) {
                (Val::Text(Some(text)), true) => {
                    buf.extend_from_slice(&i32::try_from(text.len())?.to_be_bytes());
                    buf.extend_from_slice(text.as_bytes());
                }
                (Val::Int(Some(int)), false) => {
                    buf.extend_from_slice(&8_i32.to_be_bytes());
                    buf.extend_from_slice(&int.to_be_bytes());
                }
                (Val::Text(None), true) | (Val::Int(None), false) => {
                    buf.extend_from_slice(&(-1_i32).to_be_bytes());
                }
                _ => {
                    return Err(Box::new(LedgerError::Rows(
                        "a column mixes text and numbers",
                    )))
                }
            }
        }
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_in_their_columns_and_types() {
        let first = [Val::Text(Some("a")), Val::Int(None), Val::Text(None)];
        assert_eq!(
            source(&first),
            "(SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) \
             AS u(column1, column2, column3))"
        );
    }

    /// Our bytes for a column, against sqlx's own encoding of the same
    /// values as an array of `Option`s (what PostgreSQL has read for years).
    fn encoded<'a, T>(column: &Column<'_>, theirs: &'a [T]) -> (Vec<u8>, Vec<u8>)
    where
        &'a [T]: Encode<'a, Postgres>,
    {
        let mut ours = PgArgumentBuffer::default();
        let mut sqlx = PgArgumentBuffer::default();
        assert!(matches!(column.encode_by_ref(&mut ours), Ok(IsNull::No)));
        assert!(matches!(theirs.encode_by_ref(&mut sqlx), Ok(IsNull::No)));
        (ours.to_vec(), sqlx.to_vec())
    }

    #[test]
    fn columns_are_encoded_as_sqlx_encodes_arrays_of_their_values() {
        let values = [
            Val::Text(Some("a\"b\\c\n\u{1}é")),
            Val::Int(Some(i64::MIN)),
            Val::Text(None),
            Val::Int(None),
            Val::Text(Some("")),
            Val::Int(Some(i64::MAX)),
        ];
        let columns = split(&values, 2);
        assert_eq!(columns.len(), 2);
        let texts = [Some("a\"b\\c\n\u{1}é"), None, Some("")];
        let (ours, theirs) = encoded(&columns[0], &texts);
        assert_eq!(ours, theirs);
        let ints = [Some(i64::MIN), None, Some(i64::MAX)];
        let (ours, theirs) = encoded(&columns[1], &ints);
        assert_eq!(ours, theirs);
        assert_eq!(
            columns[0].produces(),
            Some(<&str as PgHasArrayType>::array_type_info())
        );
        assert_eq!(
            columns[1].produces(),
            Some(<i64 as PgHasArrayType>::array_type_info())
        );
        assert!(split(&[], 3).is_empty());
    }

    #[test]
    fn a_column_mixing_text_and_numbers_is_refused() {
        let values = [Val::Text(Some("a")), Val::Int(Some(1))];
        let column = split(&values, 1)[0];
        let mut buf = PgArgumentBuffer::default();
        match column.encode_by_ref(&mut buf) {
            Err(error) => assert!(
                error.to_string().contains("mixes text and numbers"),
                "{error}"
            ),
            Ok(_) => panic!("a mixed column was encoded"),
        }
    }
}
