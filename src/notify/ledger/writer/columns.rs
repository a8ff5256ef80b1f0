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

use super::super::LedgerError;
use super::conn::Val;

/// One column of a multi-row statement's rows.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Column<'a> {
    Texts(Vec<Option<&'a str>>),
    Ints(Vec<Option<i64>>),
}

/// The subquery reading the arrays `$1`… back as rows shaped like `first`
/// (a text column where it has text, a `bigint` one where it has a number).
pub(super) fn source(first: &[Val<'_>]) -> String {
    let mut arrays = String::new();
    let mut names = String::new();
    for (i, value) in first.iter().enumerate() {
        if i > 0 {
            arrays.push_str(", ");
            names.push_str(", ");
        }
        let kind = match value {
            Val::Text(_) => "text",
            Val::Int(_) => "bigint",
        };
        arrays.push_str(&format!("${}::{kind}[]", i + 1));
        names.push_str(&format!("column{}", i + 1));
    }
    format!("(SELECT * FROM unnest({arrays}) AS u({names}))")
}

/// `values`, `width` to a row, as the columns [`source`] reads: each
/// column of the type its first row's value has.
pub(super) fn split<'a>(values: &[Val<'a>], width: usize) -> Result<Vec<Column<'a>>, LedgerError> {
    let width = width.max(1);
    let rows = values.len() / width;
    let mut columns: Vec<Column<'a>> = values
        .iter()
        .take(width)
        .map(|value| match value {
            Val::Text(_) => Column::Texts(Vec::with_capacity(rows)),
            Val::Int(_) => Column::Ints(Vec::with_capacity(rows)),
        })
        .collect();
    for row in values.chunks(width) {
        for (value, column) in row.iter().zip(&mut columns) {
            match (column, *value) {
                (Column::Texts(texts), Val::Text(text)) => texts.push(text),
                (Column::Ints(ints), Val::Int(int)) => ints.push(int),
                _ => return Err(LedgerError::Rows("a column mixes text and numbers")),
            }
        }
    }
    Ok(columns)
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

    #[test]
    fn values_are_split_into_their_columns_in_row_order() {
        let values = [
            Val::Text(Some("a\"b\\c\n\u{1}é")),
            Val::Int(Some(i64::MIN)),
            Val::Text(None),
            Val::Int(None),
            Val::Text(Some("")),
            Val::Int(Some(i64::MAX)),
        ];
        assert_eq!(
            split(&values, 2).expect("one shape"),
            [
                Column::Texts(vec![Some("a\"b\\c\n\u{1}é"), None, Some("")]),
                Column::Ints(vec![Some(i64::MIN), None, Some(i64::MAX)]),
            ]
        );
        assert_eq!(split(&[], 3).expect("no rows"), []);
    }

    #[test]
    fn a_column_mixing_text_and_numbers_is_refused() {
        let values = [Val::Text(Some("a")), Val::Int(Some(1))];
        assert!(matches!(
            split(&values, 1),
            Err(LedgerError::Rows(_))
        ));
    }
}
