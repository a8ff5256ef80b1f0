//! A batch's delivery writes of one kind as one statement: the fresh
//! claims as one multi-row insert, the entry writes as one multi-row
//! update. On PostgreSQL each statement is a round trip; on SQLite a
//! statement per row costs its own step through SQLite's engine, and
//! through sqlx (where it still writes) two thread hand-overs.
//!
//! Only the write of an alert no other write in the batch names is merged.
//! Such a write touches a `deliveries` row nothing else in the transaction
//! reads or writes, so running it before the others gives the same rows
//! and answers as running it in its place.
//!
//! The follow-ups of merged entry writes (a post's first alert state) run
//! as multi-row inserts too, one per segment of the batch: a run of
//! follow-ups of one shape, keys all different, with no other write to
//! their table between them (no [`Op::Statement`], no follow-up that is
//! not merged). Each inserts a row unless its key has one, so no follow-up
//! of a segment sees another's row, and the writes between them touch
//! only `deliveries`: inserting a segment's rows together where its first
//! one stands leaves the same rows and answers as each in its place. A
//! write to their table ends a segment, so what ran before it still ran
//! before it (the alert-state publisher's marks come into most batches
//! under load; one in a batch used to make every follow-up run alone).

use std::collections::{HashMap, HashSet};

use std::borrow::Cow;

use super::super::op::{Arg, InsertRows, Op, Outcome, Statement};
use super::super::{tuples, tuples_ending};
use super::super::{Entry, LedgerError};
use super::columns::{self, Column};
use super::conn::{Conn, Val};
use super::{claim_existing, holder, lease, shown, statement, text, thread, version, Answer};

/// What the merged statements of a batch did, for answering their writes.
pub(super) struct Ran {
    plan: Plan,
    /// Alerts whose row the fresh claims' insert created.
    inserted: HashSet<String>,
    /// Alerts whose entry the merged update wrote.
    saved: HashSet<String>,
    /// Per segment of follow-ups, once its insert ran: the keys it
    /// inserted.
    followed: Vec<Option<HashSet<String>>>,
    /// How many follow-ups the segments' inserts carried.
    follow_ups: usize,
}

/// Runs the merged statements of the batch `ops` on `conn` (in its
/// transaction), before its other writes.
pub(super) async fn run<'a>(
    conn: &mut Conn<'_>,
    ops: impl Iterator<Item = &'a Op> + Clone,
) -> Result<Ran, LedgerError> {
    let plan = plan(ops.clone());
    let ops: Vec<&Op> = ops.collect();
    let fresh: Vec<_> = plan
        .fresh
        .iter()
        .filter_map(|&i| match ops[i] {
            Op::ClaimFresh { fresh, now_ms, .. } => Some((&**fresh, *now_ms)),
            _ => None,
        })
        .collect();
    let inserted = if fresh.is_empty() {
        HashSet::new()
    } else {
        insert_fresh(conn, &fresh).await?
    };
    let saves: Vec<_> = plan
        .saves
        .iter()
        .filter_map(|&i| match ops[i] {
            Op::Save {
                entry,
                run,
                now_ms,
                lease_until,
            }
            | Op::SaveThen {
                entry,
                run,
                now_ms,
                lease_until,
                ..
            } => Some(Save {
                entry,
                run,
                now_ms: *now_ms,
                lease_until: *lease_until,
            }),
            _ => None,
        })
        .collect();
    let saved = if saves.is_empty() {
        HashSet::new()
    } else {
        save_entries(conn, &saves).await?
    };
    Ok(Ran {
        followed: vec![None; plan.thens.len()],
        plan,
        inserted,
        saved,
        follow_ups: 0,
    })
}

impl Ran {
    /// How many writes ran merged.
    pub(super) fn writes(&self) -> usize {
        self.plan.fresh.len() + self.plan.saves.len()
    }

    /// How many follow-ups ran merged.
    pub(super) fn follow_ups(&self) -> usize {
        self.follow_ups
    }

    /// The segment of follow-ups write `i`'s belongs to.
    fn segment_of(&self, i: usize) -> Option<usize> {
        self.plan
            .thens
            .iter()
            .position(|segment| segment.binary_search(&i).is_ok())
    }

    /// The keys segment `segment`'s insert inserted, running it first if
    /// it has not run: the follow-ups of its entries that were written,
    /// as they would run unmerged.
    async fn follow<'a>(
        &mut self,
        conn: &mut Conn<'_>,
        segment: usize,
        batch: impl Iterator<Item = &'a Op>,
    ) -> Result<&HashSet<String>, LedgerError> {
        if self.followed[segment].is_none() {
            let members = &self.plan.thens[segment];
            let thens: Vec<&Statement> = batch
                .enumerate()
                .filter(|(i, _)| members.binary_search(i).is_ok())
                .filter_map(|(_, op)| match op {
                    Op::SaveThen { entry, then, .. } if self.saved.contains(&entry.alert_id) => {
                        Some(then)
                    }
                    _ => None,
                })
                .collect();
            let inserted = match thens.first().and_then(|then| then.rows) {
                Some(rows) => insert_rows(conn, rows, &thens).await?,
                None => HashSet::new(),
            };
            self.follow_ups += thens.len();
            self.followed[segment] = Some(inserted);
        }
        Ok(self.followed[segment].get_or_insert_with(HashSet::new))
    }

    /// The answer to the batch's write `i` (`op`) if it ran merged, after
    /// what remains of it: a fresh claim of a row that was there is claimed
    /// as [`Op::ClaimFresh`] does, an entry write's follow-up runs now
    /// (with the rest of its segment, at the segment's first write).
    /// `None`: it did not run merged. Called for each write of `batch`
    /// in order.
    pub(super) async fn answer<'a>(
        &mut self,
        conn: &mut Conn<'_>,
        i: usize,
        op: &Op,
        batch: impl Iterator<Item = &'a Op>,
    ) -> Option<Answer> {
        if self.plan.fresh.binary_search(&i).is_ok() {
            let Op::ClaimFresh {
                fresh,
                now_ms,
                lease_until,
            } = op
            else {
                return Some(Err(LedgerError::WriterAnswer));
            };
            if self.inserted.remove(&fresh.alert_id) {
                // The row holds exactly the values bound for it (every
                // column is bound), so it is not read back: 20 columns
                // copied out of SQLite, converted and parsed per claim.
                return Some(Ok(Outcome::Inserted(Box::new(Entry {
                    updated_at: *now_ms,
                    ..(**fresh).clone()
                }))));
            }
            return Some(claim_existing(conn, fresh, *now_ms, *lease_until).await);
        }
        if self.plan.saves.binary_search(&i).is_err() {
            return None;
        }
        Some(match op {
            Op::Save { entry, .. } => Ok(Outcome::Rows(u64::from(
                self.saved.contains(&entry.alert_id),
            ))),
            Op::SaveThen { entry, then, .. } if self.saved.contains(&entry.alert_id) => {
                match self.segment_of(i) {
                    Some(segment) => match self.follow(conn, segment, batch).await {
                        Ok(inserted) => Ok(Outcome::Saved {
                            rows: 1,
                            then: Some(u64::from(
                                key_of(then).is_some_and(|key| inserted.contains(key)),
                            )),
                        }),
                        Err(e) => Err(e),
                    },
                    None => match statement(conn, Cow::Borrowed(then.sql), &then.args).await {
                        Ok(rows) => Ok(Outcome::Saved {
                            rows: 1,
                            then: Some(rows),
                        }),
                        Err(e) => Err(e),
                    },
                }
            }
            Op::SaveThen { .. } => Ok(Outcome::Saved {
                rows: 0,
                then: None,
            }),
            _ => Err(LedgerError::WriterAnswer),
        })
    }
}

/// Which writes of a batch run merged (indexes into the batch).
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    fresh: Vec<usize>,
    saves: Vec<usize>,
    /// Of `saves`, the entry writes whose follow-ups run merged: segments
    /// of at least two, each one insert, in batch order.
    thens: Vec<Vec<usize>>,
}

/// The `deliveries` row `op` names (`None`: another table).
fn alert_of(op: &Op) -> Option<&str> {
    match op {
        Op::Claim { alert_id, .. } | Op::Renew { alert_id, .. } | Op::Release { alert_id, .. } => {
            Some(alert_id)
        }
        Op::ClaimFresh { fresh, .. } => Some(&fresh.alert_id),
        Op::Save { entry, .. } | Op::SaveThen { entry, .. } => Some(&entry.alert_id),
        Op::Statement { .. } => None,
        #[cfg(test)]
        Op::Invalid => None,
    }
}

/// Fresh claims and entry writes of alerts no other write in `ops` names;
/// a kind with fewer than two runs as before (its statement is cached).
fn plan<'a>(ops: impl Iterator<Item = &'a Op> + Clone) -> Plan {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for alert in ops.clone().filter_map(alert_of) {
        *seen.entry(alert).or_default() += 1;
    }
    let alone = |op: &Op| alert_of(op).is_some_and(|a| seen.get(a) == Some(&1));
    let mut plan = Plan::default();
    for (i, op) in ops.clone().enumerate() {
        match op {
            Op::ClaimFresh { .. } if alone(op) => plan.fresh.push(i),
            Op::Save { .. } | Op::SaveThen { .. } if alone(op) => plan.saves.push(i),
            _ => {}
        }
    }
    if plan.fresh.len() < 2 {
        plan.fresh.clear();
    }
    if plan.saves.len() < 2 {
        plan.saves.clear();
    }
    plan.thens = follow_ups(ops, &plan.saves);
    plan
}

/// Of the merged entry writes `saves`, those whose follow-ups run merged,
/// as segments (see the module's comment): a segment ends at a write to a
/// table other than `deliveries` that is not a merged follow-up (a
/// statement, a follow-up not merged or of no known shape), and a new one
/// starts at a follow-up of another shape or arity, or of a key the
/// segment has. Segments of fewer than two are dropped (their follow-ups
/// run in place). Within a segment, all have one shape and arity.
fn follow_ups<'a>(ops: impl Iterator<Item = &'a Op>, saves: &[usize]) -> Vec<Vec<usize>> {
    let mut segments = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut shape: Option<(&InsertRows, usize)> = None;
    let mut keys = HashSet::new();
    let mut close = |current: &mut Vec<usize>, keys: &mut HashSet<&'a str>| {
        if current.len() >= 2 {
            segments.push(std::mem::take(current));
        }
        current.clear();
        keys.clear();
    };
    for (i, op) in ops.enumerate() {
        match op {
            Op::Statement { .. } => close(&mut current, &mut keys),
            Op::SaveThen { then, .. } => {
                let merged = saves.binary_search(&i).is_ok();
                let (Some(rows), Some(key), true) = (then.rows, key_of(then), merged) else {
                    close(&mut current, &mut keys);
                    continue;
                };
                let width = then.args.len();
                let other = shape.is_some_and(|(s, w)| !std::ptr::eq(s, rows) || w != width);
                if other || keys.contains(key) {
                    close(&mut current, &mut keys);
                }
                shape = Some((rows, width));
                keys.insert(key);
                current.push(i);
            }
            _ => {}
        }
    }
    close(&mut current, &mut keys);
    segments
}

/// The key of a follow-up of a known shape: its first argument.
fn key_of(then: &Statement) -> Option<&str> {
    match then.args.first() {
        Some(Arg::Text(Some(key))) if then.rows.is_some() => Some(key.as_str()),
        _ => None,
    }
}

/// How many rows each multi-row statement of a kind carries for `rows`
/// rows. PostgreSQL: one statement, whose text is the same for any number
/// of rows (they go as one array per column, see `columns`). SQLite parses a
/// statement's text each time unless it is kept prepared, and a
/// multi-row statement's text differs with its row count: the parse was a
/// third of SQLite's thread's instructions per post. So on SQLite the rows
/// go in chunks of power-of-two sizes (the bits of `rows`, largest first),
/// whose statements are kept prepared per connection: at most
/// `MAX_BATCH.ilog2() + 1` texts per kind, a few statements per batch.
/// The rows of one kind name distinct alerts (or keys), so running them in
/// chunks leaves the same rows and answers as one statement.
fn chunks(rows: usize, by_columns: bool) -> Vec<usize> {
    if by_columns {
        return vec![rows];
    }
    (0..usize::BITS)
        .rev()
        .map(|bit| 1usize << bit)
        .filter(|size| rows & size != 0)
        .collect()
}

/// The fresh claims' rows as one `INSERT … ON CONFLICT DO NOTHING` (per
/// chunk, see [`chunks`]): the alerts whose row it created (only those: a
/// row already there returns nothing).
async fn insert_fresh(
    conn: &mut Conn<'_>,
    fresh: &[(&Entry, i64)],
) -> Result<HashSet<String>, LedgerError> {
    let by_columns = conn.by_columns();
    let mut inserted = HashSet::with_capacity(fresh.len());
    let mut rest = fresh;
    for size in chunks(fresh.len(), by_columns) {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        inserted.extend(insert_fresh_chunk(conn, chunk, by_columns).await?);
    }
    Ok(inserted)
}

async fn insert_fresh_chunk(
    conn: &mut Conn<'_>,
    fresh: &[(&Entry, i64)],
    by_columns: bool,
) -> Result<Vec<String>, LedgerError> {
    let mut args = Vec::with_capacity(fresh.len() * 21);
    for (entry, now_ms) in fresh {
        args.push(text(&entry.alert_id));
        args.extend(shown(entry));
        args.extend([Val::Int(Some(*now_ms)), Val::Int(Some(*now_ms))]);
        args.extend(version(entry));
        args.extend(holder(entry));
        args.extend(thread(entry));
    }
    let rows = Rows::of(&args, 21, by_columns);
    let sql = format!(
        "INSERT INTO deliveries (alert_id, channel_id, ts, content_hash, status, attempts, error, \
         created_at, updated_at, version_source, version_offset, version_created_at, occurrence, \
         owner, owner_run, lease_until, alert_status, thread_ts, reply_key, reply_ts, reply_pending) \
         {} ON CONFLICT (alert_id) DO NOTHING RETURNING alert_id",
        rows.inserted(fresh.len(), "")
    );
    rows.fetch_keys(conn, sql, &args).await
}

/// How a multi-row statement carries its rows: SQLite binds each value
/// (`VALUES` of `?`, the text kept prepared per chunk size), PostgreSQL
/// takes them as one array per column (`columns`: one text per kind).
enum Rows<'a> {
    Values {
        width: usize,
    },
    Columns {
        source: String,
        columns: Vec<Column<'a>>,
    },
}

impl<'a> Rows<'a> {
    fn of(args: &'a [Val<'a>], width: usize, by_columns: bool) -> Rows<'a> {
        if by_columns {
            Rows::Columns {
                source: columns::source(&args[..width.min(args.len())]),
                columns: columns::split(args, width),
            }
        } else {
            Rows::Values { width }
        }
    }

    /// What follows an `INSERT`'s column list for `count` rows, each
    /// ending with `fixed` (literals) unless it is empty.
    fn inserted(&self, count: usize, fixed: &str) -> String {
        match self {
            Rows::Values { width } => {
                format!("VALUES {}", tuples_ending(count, *width, false, fixed))
            }
            Rows::Columns { source, .. } if fixed.is_empty() => {
                format!("SELECT * FROM {source} AS v")
            }
            Rows::Columns { source, .. } => format!("SELECT v.*, {fixed} FROM {source} AS v"),
        }
    }

    /// The rows as a table to join, named `v` (columns `column1`…).
    fn joined(&self, count: usize) -> String {
        match self {
            Rows::Values { width } => format!("(VALUES {}) AS v", tuples(count, *width, false)),
            Rows::Columns { source, .. } => format!("{source} AS v"),
        }
    }

    /// Runs `sql` (returning one text column) with these rows, whose
    /// values are `args`: its values.
    async fn fetch_keys(
        &self,
        conn: &mut Conn<'_>,
        sql: String,
        args: &[Val<'_>],
    ) -> Result<Vec<String>, LedgerError> {
        match self {
            Rows::Values { .. } => conn.fetch_keys(sql.into(), args, true).await,
            Rows::Columns { columns, .. } => conn.fetch_keys_by_columns(sql.into(), columns).await,
        }
    }
}

/// The follow-ups `thens` (all of the shape `rows` with one arity, keys
/// all different, as [`follow_ups`] plans them) as
/// one multi-row insert: the keys it inserted.
async fn insert_rows(
    conn: &mut Conn<'_>,
    rows: &InsertRows,
    thens: &[&Statement],
) -> Result<HashSet<String>, LedgerError> {
    let width = thens.first().map_or(0, |then| then.args.len());
    let by_columns = conn.by_columns();
    let mut keys = HashSet::with_capacity(thens.len());
    let mut rest = thens;
    for size in chunks(thens.len(), by_columns) {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let args: Vec<Val<'_>> = chunk
            .iter()
            .flat_map(|then| then.args.iter().map(Val::from))
            .collect();
        let values = Rows::of(&args, width, by_columns);
        let sql = rows.sql_with(&values.inserted(chunk.len(), rows.fixed));
        keys.extend(values.fetch_keys(conn, sql, &args).await?);
    }
    Ok(keys)
}

/// One entry write: what `writer::save_entry` binds.
struct Save<'a> {
    entry: &'a Entry,
    run: &'a str,
    now_ms: i64,
    lease_until: Option<i64>,
}

/// The entry writes as one `UPDATE … FROM (VALUES …)` (per chunk, see
/// [`chunks`]), each fenced by its run as `writer::save_entry` is: the
/// alert ids it wrote. (`VALUES` names its columns `column1`… in both
/// SQLite and PostgreSQL.)
async fn save_entries(
    conn: &mut Conn<'_>,
    saves: &[Save<'_>],
) -> Result<HashSet<String>, LedgerError> {
    let by_columns = conn.by_columns();
    let mut saved = HashSet::with_capacity(saves.len());
    let mut rest = saves;
    for size in chunks(saves.len(), by_columns) {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        saved.extend(save_entries_chunk(conn, chunk, by_columns).await?);
    }
    Ok(saved)
}

async fn save_entries_chunk(
    conn: &mut Conn<'_>,
    saves: &[Save<'_>],
    by_columns: bool,
) -> Result<Vec<String>, LedgerError> {
    let args = save_args(saves);
    let rows = Rows::of(&args, 20, by_columns);
    let sql = save_entries_sql(&rows.joined(saves.len()));
    rows.fetch_keys(conn, sql, &args).await
}

/// What [`save_entries_sql`] binds for `saves`, 20 values each.
fn save_args<'a>(saves: &[Save<'a>]) -> Vec<Val<'a>> {
    let mut args = Vec::with_capacity(saves.len() * 20);
    for save in saves {
        let entry = save.entry;
        args.extend([text(&entry.alert_id), text(save.run)]);
        args.extend(shown(entry));
        args.push(Val::Int(Some(save.now_ms)));
        args.extend(version(entry));
        args.extend(lease(save.lease_until));
        args.extend(thread(entry));
    }
    args
}

/// The merged entry write, its rows joined from `rows` (named `v`).
fn save_entries_sql(rows: &str) -> String {
    format!(
        "UPDATE deliveries SET channel_id = v.column3, ts = v.column4, content_hash = v.column5, \
         status = v.column6, attempts = v.column7, error = v.column8, updated_at = v.column9, \
         version_source = v.column10, version_offset = v.column11, \
         version_created_at = v.column12, occurrence = v.column13, \
         owner = CASE WHEN v.column14 = 1 THEN NULL ELSE deliveries.owner END, \
         owner_run = CASE WHEN v.column14 = 1 THEN NULL ELSE deliveries.owner_run END, \
         lease_until = v.column15, alert_status = v.column16, thread_ts = v.column17, \
         reply_key = v.column18, reply_ts = v.column19, reply_pending = v.column20 \
         FROM {rows} \
         WHERE deliveries.alert_id = v.column1 AND deliveries.owner_run = v.column2 \
         RETURNING alert_id"
    )
}

#[cfg(test)]
mod tests;
