//! What a channel worker asks the ledger's writer for ([`Op`]) and what it
//! is answered ([`Outcome`]): the vocabulary of the group commit in
//! `writer.rs`.

use std::borrow::Cow;

use super::Entry;

/// One write, with what it needs to run on its own.
pub(super) enum Op {
    /// Takes the alert unless a live peer holds it; answers the row after.
    Claim {
        alert_id: String,
        channel_id: String,
        instance: String,
        run: String,
        now_ms: i64,
        lease_until: i64,
    },
    /// A claim that first tries to create the row as `fresh` (already
    /// claimed by its owner); a row already there is claimed as
    /// [`Op::Claim`] does.
    ClaimFresh {
        fresh: Box<Entry>,
        now_ms: i64,
        lease_until: i64,
    },
    /// Writes the entry under our claim (`lease_until: None` gives it up).
    Save {
        entry: Box<Entry>,
        run: String,
        now_ms: i64,
        lease_until: Option<i64>,
    },
    /// [`Op::Save`], then (if it wrote the row) `then` in the same
    /// transaction.
    SaveThen {
        entry: Box<Entry>,
        run: String,
        now_ms: i64,
        lease_until: Option<i64>,
        then: Statement,
    },
    Renew {
        alert_id: String,
        run: String,
        lease_until: i64,
    },
    Release {
        alert_id: String,
        run: String,
    },
    /// A write to another table of the ledger's database (alert states):
    /// one statement, answered with the rows it changed. A statement built
    /// at run time (owned: a multi-row one, whose text depends on its rows)
    /// is not kept prepared.
    Statement {
        sql: Cow<'static, str>,
        args: Vec<Arg>,
    },
    /// A statement the database refuses (tests of the failure path).
    #[cfg(test)]
    Invalid,
}

/// A write to another table, to run after an entry's write.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: &'static str,
    pub args: Vec<Arg>,
    /// Set when `sql` is the one-row insert `rows` describes: the writer
    /// may run it with others of its kind as one multi-row insert.
    pub rows: Option<&'static InsertRows>,
}

/// A one-row `INSERT INTO {into} VALUES ($1, …, $n, {fixed}) ON CONFLICT
/// ({key}) DO NOTHING` whose first argument is the row's `key` (text):
/// several such rows, keys all different, run as one statement that
/// returns the keys it inserted.
#[derive(Debug)]
pub struct InsertRows {
    /// The table and its column list.
    pub into: &'static str,
    /// The values after the bound ones, the same in every row (literals).
    pub fixed: &'static str,
    pub key: &'static str,
}

impl InsertRows {
    /// The statement for `rows` rows of `width` bound values each
    /// (`numbered`: `$1` placeholders, else `?`), returning the keys it
    /// inserted; one numbered row is the one-row statement plus its
    /// `RETURNING`.
    pub fn sql(&self, rows: usize, width: usize, numbered: bool) -> String {
        let values = super::tuples_ending(rows, width, numbered, self.fixed);
        self.sql_with(&format!("VALUES {values}"))
    }

    /// The statement with `rows` (what follows the column list: a
    /// `VALUES` list or a query) for its rows.
    pub(super) fn sql_with(&self, rows: &str) -> String {
        format!(
            "INSERT INTO {} {rows} ON CONFLICT ({}) DO NOTHING RETURNING {}",
            self.into, self.key, self.key
        )
    }
}

/// A value bound to an [`Op::Statement`].
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
}

pub(super) enum Outcome {
    /// The alert's row after a claim attempt (`None`: there is none).
    Row(Option<Box<Entry>>),
    /// Rows a fenced update changed (0: the claim is not ours).
    Rows(u64),
    /// [`Op::ClaimFresh`] created the row as given.
    Inserted(Box<Entry>),
    /// [`Op::SaveThen`]: the entry's rows, and the follow-up's (`None`: it
    /// did not run, or failed when run on its own).
    Saved { rows: u64, then: Option<u64> },
}
