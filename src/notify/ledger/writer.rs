//! Group commit for the ledger's writes. Channel workers submit their
//! claims and entry writes here and wait for the answer; a writer task takes
//! everything that is waiting and runs it in one transaction, so hundreds
//! of workers share one commit (one `fsync` on PostgreSQL, one WAL append
//! on SQLite) instead of paying one each.
//!
//! Each writer task keeps one connection of the pool between batches (a
//! connection taken from the pool each time is pinged first: one more
//! round trip per batch) when the pool has more than the writers' (reads
//! need one), and gives it back after a database error so the next batch
//! gets a checked one. Within a batch, the fresh claims and the
//! entry writes of alerts named once run merged, one statement each kind,
//! and so do the entry writes' follow-ups when nothing else in the batch
//! writes their table (`writer/merged.rs`).
//!
//! Nothing about durability changes: a worker is answered only after the
//! transaction holding its write committed, so `pending` is still durable
//! before Slack sees the post and `posted` before the offset moves. The
//! statements run in submission order inside the transaction, each seeing
//! the ones before it, so a claim's compare-and-set holds within a batch as
//! it does between batches (and between replicas: each statement takes the
//! row's lock).
//!
//! A failing statement fails only its submitter: the batch is rolled back
//! and every write in it runs again on its own. Running one again is safe
//! even if an uncertain commit did apply it: each delivery write is
//! idempotent for its owner (a claim re-taken by the same run, an entry
//! written with the same values, a lease set to the same time), and an
//! alert state's compare-and-set then finds its own change and decides
//! again from it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::op::{Arg, Op, Outcome};
use super::{entry_from_row, Entry, LedgerError, COLUMNS};

mod held;
mod merged;

use self::held::Held;

/// The most writes one transaction carries: bounds how long a batch holds
/// its row locks (and a failed batch's retry one by one).
const MAX_BATCH: usize = 512;

type Answer = Result<Outcome, LedgerError>;

struct Request {
    op: Op,
    reply: oneshot::Sender<Answer>,
}

/// How much sharing happened (for tests and benches).
#[derive(Debug, Default)]
pub struct WriterStats {
    pub transactions: AtomicU64,
    pub writes: AtomicU64,
    /// Batches rolled back and run again write by write.
    pub retried_batches: AtomicU64,
    /// Writes that ran as part of a multi-row statement.
    pub merged_writes: AtomicU64,
    /// Entry writes' follow-ups that ran as part of a multi-row insert.
    pub merged_follow_ups: AtomicU64,
}

#[derive(Clone)]
pub(super) struct Writer {
    requests: mpsc::UnboundedSender<Request>,
    pub(super) stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts `tasks` writer tasks on `pool`; they stop when the last
    /// `Writer` is dropped. One task for SQLite (it has one writer anyway),
    /// on a thread of its own; several for PostgreSQL, where a batch's
    /// statements are round trips that other batches can overlap.
    ///
    /// SQLite's writer is the one stage every post passes through twice,
    /// and each of its statements is a hand-over to the connection's
    /// thread and back. Woken from that thread, a task on the shared
    /// runtime waits in its global queue behind the channel workers: under
    /// load the writer spent more time waiting to be polled than working.
    /// On its own thread it is polled as soon as it is woken. (PostgreSQL's
    /// writers stay on the runtime: their connections' sockets belong to
    /// its I/O driver, and their wake-ups come from it, not from another
    /// thread.)
    pub(super) fn start(pool: AnyPool, tasks: usize, postgres: bool) -> Writer {
        let (requests, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(WriterStats::default());
        let tasks = tasks.max(1);
        let keep = usize::try_from(pool.options().get_max_connections()).unwrap_or(0) > tasks;
        if tasks == 1 && !postgres {
            match spawn_on_own_thread(write_loop(
                Held::new(pool.clone(), keep),
                receiver.clone(),
                stats.clone(),
            )) {
                Ok(()) => return Writer { requests, stats },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the ledger writer's thread; it runs among the workers")
                }
            }
        }
        for _ in 0..tasks {
            tokio::spawn(write_loop(
                Held::new(pool.clone(), keep),
                receiver.clone(),
                stats.clone(),
            ));
        }
        Writer { requests, stats }
    }

    /// Runs `op` in the next batch; returns once that batch committed.
    pub(super) async fn submit(&self, op: Op) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { op, reply })
            .map_err(|_| LedgerError::WriterGone)?;
        answer.await.map_err(|_| LedgerError::WriterGone)?
    }
}

/// Runs `write_loop` on a thread of its own with a single-threaded
/// runtime; the thread ends with it.
fn spawn_on_own_thread(
    write_loop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || runtime.block_on(write_loop))?;
    Ok(())
}

async fn write_loop(
    mut held: Held,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>,
    stats: Arc<WriterStats>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            // The lock is held while waiting: the next free task takes what
            // arrived meanwhile, all of it, as one batch.
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        run_batch(&mut held, &mut batch, &stats).await;
        if !held.keep {
            held.give_back();
        }
    }
}

/// Runs `batch` in one transaction and answers each request; on a
/// database error, rolls back and runs each write on its own.
async fn run_batch(held: &mut Held, batch: &mut Vec<Request>, stats: &WriterStats) {
    stats.transactions.fetch_add(1, Ordering::Relaxed);
    stats
        .writes
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    if batch.len() == 1 {
        // Alone: the statement is its own transaction.
        for request in batch.drain(..) {
            let answer = alone(held, &request.op).await;
            let _ = request.reply.send(answer);
        }
        return;
    }
    match together(held, batch, stats).await {
        Ok(answers) => {
            for (request, answer) in batch.drain(..).zip(answers) {
                let _ = request.reply.send(answer);
            }
        }
        Err(e) => {
            stats.retried_batches.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, writes = batch.len(), "ledger batch failed; running its writes one by one");
            held.give_back();
            for request in batch.drain(..) {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                let answer = alone(held, &request.op).await;
                let _ = request.reply.send(answer);
            }
        }
    }
}

async fn together(
    held: &mut Held,
    batch: &[Request],
    stats: &WriterStats,
) -> Result<Vec<Answer>, sqlx::Error> {
    let mut tx = held.get().await?.begin().await?;
    let mut merged = merged::run(&mut tx, batch.iter().map(|r| &r.op)).await?;
    stats
        .merged_writes
        .fetch_add(merged.writes() as u64, Ordering::Relaxed);
    let mut answers = Vec::with_capacity(batch.len());
    let mut failed = None;
    for (i, request) in batch.iter().enumerate() {
        let ops = batch.iter().map(|r| &r.op);
        let answer = match merged.answer(&mut tx, i, &request.op, ops).await {
            Some(answer) => answer,
            None => execute(&mut tx, &request.op).await,
        };
        match answer {
            // PostgreSQL aborts the transaction on any error: nothing after
            // it can run, and SQLite is kept to the same rule.
            Err(LedgerError::Database(e)) => {
                failed = Some(e);
                break;
            }
            answer => answers.push(answer),
        }
    }
    // Counted as the merged writes are, whether the batch commits or not.
    stats
        .merged_follow_ups
        .fetch_add(merged.follow_ups() as u64, Ordering::Relaxed);
    if let Some(e) = failed {
        return Err(e);
    }
    tx.commit().await?;
    Ok(answers)
}

/// A write on its own, outside any transaction; a database error gives
/// the connection back.
async fn alone(held: &mut Held, op: &Op) -> Answer {
    let answer = alone_on(held.get().await?, op).await;
    if matches!(answer, Err(LedgerError::Database(_))) {
        held.give_back();
    }
    answer
}

async fn alone_on(conn: &mut AnyConnection, op: &Op) -> Answer {
    if let Op::SaveThen {
        entry,
        run,
        now_ms,
        lease_until,
        then,
    } = op
    {
        // Without a transaction the entry's write stands on its own: a
        // failing follow-up must not turn it into an error.
        let rows = save_entry(conn, entry, run, *now_ms, *lease_until).await?;
        if rows == 0 {
            return Ok(Outcome::Saved { rows, then: None });
        }
        let then = match statement(conn, then.sql, &then.args).await {
            Ok(then) => Some(then),
            Err(e) => {
                tracing::debug!(error = %e, "the write after the entry's failed");
                None
            }
        };
        return Ok(Outcome::Saved { rows, then });
    }
    execute(conn, op).await
}

async fn execute(conn: &mut AnyConnection, op: &Op) -> Answer {
    match op {
        Op::Claim {
            alert_id,
            channel_id,
            instance,
            run,
            now_ms,
            lease_until,
        } => {
            let claimed = Claimant {
                alert_id,
                channel_id,
                instance,
                run,
                now_ms: *now_ms,
                lease_until: *lease_until,
            };
            Ok(Outcome::Row(claim(conn, &claimed).await?))
        }
        Op::ClaimFresh {
            fresh,
            now_ms,
            lease_until,
        } => {
            if let Some(row) = insert_fresh(conn, fresh, *now_ms).await? {
                return Ok(Outcome::Inserted(row));
            }
            claim_existing(conn, fresh, *now_ms, *lease_until).await
        }
        Op::Save {
            entry,
            run,
            now_ms,
            lease_until,
        } => Ok(Outcome::Rows(
            save_entry(conn, entry, run, *now_ms, *lease_until).await?,
        )),
        Op::SaveThen {
            entry,
            run,
            now_ms,
            lease_until,
            then,
        } => {
            let rows = save_entry(conn, entry, run, *now_ms, *lease_until).await?;
            let then = if rows == 0 {
                None
            } else {
                Some(statement(conn, then.sql, &then.args).await?)
            };
            Ok(Outcome::Saved { rows, then })
        }
        Op::Renew {
            alert_id,
            run,
            lease_until,
        } => {
            let done = sqlx::query(
                "UPDATE deliveries SET lease_until = $3 WHERE alert_id = $1 AND owner_run = $2",
            )
            .bind(alert_id)
            .bind(run)
            .bind(lease_until)
            .execute(&mut *conn)
            .await?;
            Ok(Outcome::Rows(done.rows_affected()))
        }
        Op::Release { alert_id, run } => {
            let done = sqlx::query(
                "UPDATE deliveries SET owner = NULL, owner_run = NULL, lease_until = NULL \
                 WHERE alert_id = $1 AND owner_run = $2",
            )
            .bind(alert_id)
            .bind(run)
            .execute(&mut *conn)
            .await?;
            Ok(Outcome::Rows(done.rows_affected()))
        }
        Op::Statement {
            sql: Cow::Borrowed(sql),
            args,
        } => Ok(Outcome::Rows(statement(conn, sql, args).await?)),
        Op::Statement {
            sql: Cow::Owned(sql),
            args,
        } => Ok(Outcome::Rows(built_statement(conn, sql, args).await?)),
        #[cfg(test)]
        Op::Invalid => {
            sqlx::query("INSERT INTO no_such_table VALUES (1)")
                .execute(&mut *conn)
                .await?;
            Ok(Outcome::Rows(1))
        }
    }
}

/// The claim a fresh claim makes of a row that was there already.
async fn claim_existing(
    conn: &mut AnyConnection,
    fresh: &Entry,
    now_ms: i64,
    lease_until: i64,
) -> Answer {
    let claimed = Claimant {
        alert_id: &fresh.alert_id,
        channel_id: &fresh.channel_id,
        instance: fresh.owner.as_deref().unwrap_or_default(),
        run: fresh.owner_run.as_deref().unwrap_or_default(),
        now_ms,
        lease_until,
    };
    Ok(Outcome::Row(claim(conn, &claimed).await?))
}

/// Who claims which alert, and until when.
struct Claimant<'a> {
    alert_id: &'a str,
    channel_id: &'a str,
    instance: &'a str,
    run: &'a str,
    now_ms: i64,
    lease_until: i64,
}

/// Takes the alert unless a live peer holds it; the row after.
async fn claim(
    conn: &mut AnyConnection,
    c: &Claimant<'_>,
) -> Result<Option<Box<Entry>>, LedgerError> {
    // One round trip when the claim is taken (the common case): the
    // upsert returns the row it wrote, and nothing when the conflict's
    // condition kept a live peer's claim.
    let taken: Option<AnyRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deliveries (alert_id, channel_id, ts, content_hash, status, attempts, error, \
         created_at, updated_at, owner, owner_run, lease_until) \
         VALUES ($1, $2, NULL, '', 'new', 0, NULL, $3, $3, $4, $5, $6) \
         ON CONFLICT (alert_id) DO UPDATE SET owner = $4, owner_run = $5, lease_until = $6 \
         WHERE deliveries.owner IS NULL OR deliveries.lease_until IS NULL \
         OR deliveries.lease_until < $3 OR deliveries.owner = $4 \
         RETURNING {COLUMNS}"
    )))
    .bind(c.alert_id)
    .bind(c.channel_id)
    .bind(c.now_ms)
    .bind(c.instance)
    .bind(c.run)
    .bind(c.lease_until)
    .fetch_optional(&mut *conn)
    .await?;
    let row = match taken {
        Some(row) => Some(row),
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM deliveries WHERE alert_id = $1"
            )))
            .bind(c.alert_id)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    Ok(row.as_ref().map(entry_from_row).transpose()?.map(Box::new))
}

/// Creates the alert's row as `fresh` if there is none; the row created.
/// Only an insert that happened returns a row, so a row left by a crashed
/// run is never mistaken for this one's.
async fn insert_fresh(
    conn: &mut AnyConnection,
    fresh: &Entry,
    now_ms: i64,
) -> Result<Option<Box<Entry>>, LedgerError> {
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deliveries (alert_id, channel_id, ts, content_hash, status, attempts, error, \
         created_at, updated_at, version_source, version_offset, version_created_at, occurrence, \
         owner, owner_run, lease_until, alert_status, thread_ts, reply_key, reply_ts, reply_pending) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20) \
         ON CONFLICT (alert_id) DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(&fresh.alert_id);
    let query = bind_shown(query, fresh).bind(now_ms);
    let query = bind_version(query, fresh)
        .bind(&fresh.owner)
        .bind(&fresh.owner_run)
        .bind(fresh.lease_until);
    let inserted: Option<AnyRow> = bind_thread(query, fresh).fetch_optional(&mut *conn).await?;
    Ok(inserted
        .as_ref()
        .map(entry_from_row)
        .transpose()?
        .map(Box::new))
}

/// Writes the entry if we still hold its claim; the rows written.
async fn save_entry(
    conn: &mut AnyConnection,
    entry: &Entry,
    run: &str,
    now_ms: i64,
    lease_until: Option<i64>,
) -> Result<u64, sqlx::Error> {
    let query = sqlx::query(
        "UPDATE deliveries SET channel_id = $3, ts = $4, content_hash = $5, status = $6, \
         attempts = $7, error = $8, updated_at = $9, version_source = $10, version_offset = $11, \
         version_created_at = $12, occurrence = $13, \
         owner = CASE WHEN $14 = 1 THEN NULL ELSE owner END, \
         owner_run = CASE WHEN $14 = 1 THEN NULL ELSE owner_run END, \
         lease_until = $15, alert_status = $16, thread_ts = $17, reply_key = $18, \
         reply_ts = $19, reply_pending = $20 \
         WHERE alert_id = $1 AND owner_run = $2",
    )
    .bind(&entry.alert_id)
    .bind(run);
    let query = bind_shown(query, entry).bind(now_ms);
    let query = bind_version(query, entry)
        .bind(i32::from(lease_until.is_none()))
        .bind(lease_until);
    let done = bind_thread(query, entry).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}

/// A statement on the ledger, any database.
pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

// The `deliveries` columns every write of an entry binds, in groups that
// both the inserts and the fenced updates list in this order.

/// What the entry shows: `channel_id, ts, content_hash, status, attempts,
/// error`.
pub(super) fn bind_shown<'q>(query: AnyQuery<'q>, entry: &Entry) -> AnyQuery<'q> {
    query
        .bind(&entry.channel_id)
        .bind(&entry.ts)
        .bind(&entry.content_hash)
        .bind(entry.status.as_str())
        .bind(entry.attempts)
        .bind(&entry.error)
}

/// The version shown: `version_source, version_offset,
/// version_created_at, occurrence`.
pub(super) fn bind_version<'q>(query: AnyQuery<'q>, entry: &Entry) -> AnyQuery<'q> {
    query
        .bind(&entry.version.source)
        .bind(entry.version.offset)
        .bind(entry.version.created_at)
        .bind(entry.occurrence)
}

/// The alert's status and thread: `alert_status, thread_ts, reply_key,
/// reply_ts, reply_pending`.
pub(super) fn bind_thread<'q>(query: AnyQuery<'q>, entry: &Entry) -> AnyQuery<'q> {
    query
        .bind(entry.alert_status.as_str())
        .bind(&entry.thread_ts)
        .bind(&entry.reply_key)
        .bind(&entry.reply_ts)
        .bind(&entry.reply_pending)
}

async fn statement(
    conn: &mut AnyConnection,
    sql: &'static str,
    args: &[Arg],
) -> Result<u64, sqlx::Error> {
    run_statement(conn, sqlx::query(sql), args).await
}

/// A statement built at run time: not kept prepared (one per row count).
async fn built_statement(
    conn: &mut AnyConnection,
    sql: &str,
    args: &[Arg],
) -> Result<u64, sqlx::Error> {
    let query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).persistent(false);
    run_statement(conn, query, args).await
}

async fn run_statement(
    conn: &mut AnyConnection,
    mut query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    args: &[Arg],
) -> Result<u64, sqlx::Error> {
    for arg in args {
        query = match arg {
            Arg::Text(value) => query.bind(value.clone()),
            Arg::Int(value) => query.bind(*value),
        };
    }
    Ok(query.execute(&mut *conn).await?.rows_affected())
}

#[cfg(test)]
mod tests;
