//! Group commit for the ledger's writes. Channel workers submit their
//! claims and entry writes here and wait for the answer; a writer task takes
//! everything that is waiting and runs it in one transaction, so hundreds
//! of workers share one commit (one `fsync` on PostgreSQL, one WAL append
//! on SQLite) instead of paying one each.
//!
//! SQLite's one writer runs on a thread of its own with a connection of
//! its own (`writer/conn.rs`). PostgreSQL's writer tasks each keep one
//! of PostgreSQL's own connections (not sqlx's `Any`) between batches (a
//! connection taken from the pool each time is pinged first: one more
//! round trip per batch) when the pool has more than the writers' (the
//! publisher's read needs one), and give it back after a database error so
//! the next batch gets a checked one.
//!
//! Within a batch, the fresh claims and the entry writes of alerts named
//! once run merged, one statement each kind, and so do the entry writes'
//! follow-ups, in segments between the batch's other writes to their
//! table (`writer/merged.rs`).
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
use std::sync::{Arc, LazyLock};

use sqlx::{AnyPool, PgPool};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::op::{Arg, Op, Outcome};
use super::{Entry, LedgerError, COLUMNS};

mod columns;
mod conn;
mod json_rows;
mod merged;

use self::conn::{Conn, Held, Source, Val};

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
    /// Where the writer's connections come from (tests run batches on
    /// one of the same kind).
    #[cfg(test)]
    source: Source,
}

impl Writer {
    /// Starts the writers for the ledger at `url` (its shared pool:
    /// `pool`; PostgreSQL's own: `pg`); they stop when the last `Writer`
    /// is dropped.
    ///
    /// SQLite has one writer anyway: it runs on a thread of its own, with
    /// a connection of its own (`writer/conn.rs`), so that a batch runs
    /// in one go where the writer is. It is the one stage every post
    /// passes through twice; on the shared runtime, each of its
    /// statements a hand-over to sqlx's connection thread and back, it
    /// spent more time waiting to be polled than working. PostgreSQL gets
    /// `tasks` writer tasks on the runtime (its connections' sockets
    /// belong to its I/O driver), whose batches' round trips overlap, each
    /// on a connection of `pg`.
    pub(super) fn start(pool: AnyPool, pg: Option<&PgPool>, url: &str, tasks: usize) -> Writer {
        let (requests, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(WriterStats::default());
        // A task keeps its connection between batches (one taken from a
        // pool each time is pinged first: one more round trip per batch)
        // when the pool has one left over for the reads.
        let keep = |max: u32, tasks: usize| usize::try_from(max).unwrap_or(0) > tasks;
        let (source, tasks) = match pg {
            Some(pg) => {
                let tasks = tasks.max(1);
                let keep = keep(pg.options().get_max_connections(), tasks);
                let pool = pg.clone();
                (Source::Postgres { pool, keep }, tasks)
            }
            None => {
                if let Some(path) = Source::sqlite_file(url) {
                    let source = Source::Sqlite(path);
                    match start_own_thread(&source, receiver.clone(), stats.clone()) {
                        Ok(()) => {
                            return Writer {
                                requests,
                                stats,
                                #[cfg(test)]
                                source,
                            }
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "the ledger's writer cannot have a thread and connection of its own; \
                             it runs on the pool among the workers"
                        ),
                    }
                }
                let keep = keep(pool.options().get_max_connections(), 1);
                (Source::Pool { pool, keep }, 1)
            }
        };
        for _ in 0..tasks {
            match Held::open(&source) {
                Ok(held) => {
                    tokio::spawn(write_loop(held, receiver.clone(), stats.clone()));
                }
                Err(e) => tracing::error!(error = %e, "the ledger's writer cannot start"),
            }
        }
        Writer {
            requests,
            stats,
            #[cfg(test)]
            source,
        }
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

/// Why SQLite's writer could not start on its own thread.
#[derive(Debug, thiserror::Error)]
enum OwnThreadError {
    #[error("opening the database file: {0}")]
    Open(#[from] LedgerError),
    #[error("starting its thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Opens `source`'s connection and runs `write_loop` on it on a thread of
/// its own, with a single-threaded runtime; the thread ends with it.
fn start_own_thread(
    source: &Source,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>,
    stats: Arc<WriterStats>,
) -> Result<(), OwnThreadError> {
    let held = Held::open(source)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || runtime.block_on(write_loop(held, receiver, stats)))?;
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
        held.after_batch();
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

/// The batch in one transaction: each write's answer, or the database
/// error that failed the batch (rolled back).
async fn together(
    held: &mut Held,
    batch: &[Request],
    stats: &WriterStats,
) -> Result<Vec<Answer>, LedgerError> {
    let mut tx = held.begin().await?;
    let mut merged = merged::run(&mut tx.conn(), batch.iter().map(|r| &r.op)).await?;
    stats
        .merged_writes
        .fetch_add(merged.writes() as u64, Ordering::Relaxed);
    let mut answers = Vec::with_capacity(batch.len());
    let mut failed = None;
    for (i, request) in batch.iter().enumerate() {
        let ops = batch.iter().map(|r| &r.op);
        let answer = match merged.answer(&mut tx.conn(), i, &request.op, ops).await {
            Some(answer) => answer,
            None => execute(&mut tx.conn(), &request.op).await,
        };
        match answer {
            // PostgreSQL aborts the transaction on any error: nothing after
            // it can run, and SQLite is kept to the same rule.
            Err(e) if e.is_database() => {
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
    let answer = match held.get().await {
        Ok(mut conn) => alone_on(&mut conn, op).await,
        Err(e) => Err(e),
    };
    if matches!(&answer, Err(e) if e.is_database()) {
        held.give_back();
    }
    answer
}

async fn alone_on(conn: &mut Conn<'_>, op: &Op) -> Answer {
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
        let then = match statement(conn, Cow::Borrowed(then.sql), &then.args).await {
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

async fn execute(conn: &mut Conn<'_>, op: &Op) -> Answer {
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
                Some(statement(conn, Cow::Borrowed(then.sql), &then.args).await?)
            };
            Ok(Outcome::Saved { rows, then })
        }
        Op::Renew {
            alert_id,
            run,
            lease_until,
        } => {
            let args = [text(alert_id), text(run), Val::Int(Some(*lease_until))];
            let sql =
                "UPDATE deliveries SET lease_until = $3 WHERE alert_id = $1 AND owner_run = $2";
            Ok(Outcome::Rows(conn.execute(sql.into(), &args, true).await?))
        }
        Op::Release { alert_id, run } => {
            let sql = "UPDATE deliveries SET owner = NULL, owner_run = NULL, lease_until = NULL \
                       WHERE alert_id = $1 AND owner_run = $2";
            let args = [text(alert_id), text(run)];
            Ok(Outcome::Rows(conn.execute(sql.into(), &args, true).await?))
        }
        Op::Statement { sql, args } => Ok(Outcome::Rows(statement(conn, sql.clone(), args).await?)),
        #[cfg(test)]
        Op::Invalid => {
            let sql = "INSERT INTO no_such_table VALUES (1)";
            Ok(Outcome::Rows(conn.execute(sql.into(), &[], true).await?))
        }
    }
}

/// The claim a fresh claim makes of a row that was there already.
async fn claim_existing(
    conn: &mut Conn<'_>,
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

/// The claim's upsert: returns the row it wrote, and nothing when the
/// conflict's condition kept a live peer's claim.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO deliveries (alert_id, channel_id, ts, content_hash, status, attempts, error, \
         created_at, updated_at, owner, owner_run, lease_until) \
         VALUES ($1, $2, NULL, '', 'new', 0, NULL, $3, $3, $4, $5, $6) \
         ON CONFLICT (alert_id) DO UPDATE SET owner = $4, owner_run = $5, lease_until = $6 \
         WHERE deliveries.owner IS NULL OR deliveries.lease_until IS NULL \
         OR deliveries.lease_until < $3 OR deliveries.owner = $4 \
         RETURNING {COLUMNS}"
    )
});

static SELECT: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM deliveries WHERE alert_id = $1"));

/// Takes the alert unless a live peer holds it; the row after.
async fn claim(conn: &mut Conn<'_>, c: &Claimant<'_>) -> Result<Option<Box<Entry>>, LedgerError> {
    // One round trip when the claim is taken (the common case).
    let args = [
        text(c.alert_id),
        text(c.channel_id),
        Val::Int(Some(c.now_ms)),
        text(c.instance),
        text(c.run),
        Val::Int(Some(c.lease_until)),
    ];
    let taken = conn.fetch_entry(CLAIM.as_str().into(), &args).await?;
    let row = match taken {
        Some(row) => Some(row),
        None => conn.fetch_entry(SELECT.as_str().into(), &args[..1]).await?,
    };
    Ok(row.map(Box::new))
}

/// The fresh claim's insert; `$8` is both `created_at` and `updated_at`.
static INSERT_FRESH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO deliveries (alert_id, channel_id, ts, content_hash, status, attempts, error, \
         created_at, updated_at, version_source, version_offset, version_created_at, occurrence, \
         owner, owner_run, lease_until, alert_status, thread_ts, reply_key, reply_ts, reply_pending) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20) \
         ON CONFLICT (alert_id) DO NOTHING RETURNING {COLUMNS}"
    )
});

/// Creates the alert's row as `fresh` if there is none; the row created.
/// Only an insert that happened returns a row, so a row left by a crashed
/// run is never mistaken for this one's.
async fn insert_fresh(
    conn: &mut Conn<'_>,
    fresh: &Entry,
    now_ms: i64,
) -> Result<Option<Box<Entry>>, LedgerError> {
    let mut args = Vec::with_capacity(20);
    args.push(text(&fresh.alert_id));
    args.extend(shown(fresh));
    args.push(Val::Int(Some(now_ms)));
    args.extend(version(fresh));
    args.extend(holder(fresh));
    args.extend(thread(fresh));
    let inserted = conn
        .fetch_entry(INSERT_FRESH.as_str().into(), &args)
        .await?;
    Ok(inserted.map(Box::new))
}

/// Writes the entry if we still hold its claim; the rows written.
async fn save_entry(
    conn: &mut Conn<'_>,
    entry: &Entry,
    run: &str,
    now_ms: i64,
    lease_until: Option<i64>,
) -> Result<u64, LedgerError> {
    let sql = "UPDATE deliveries SET channel_id = $3, ts = $4, content_hash = $5, status = $6, \
         attempts = $7, error = $8, updated_at = $9, version_source = $10, version_offset = $11, \
         version_created_at = $12, occurrence = $13, \
         owner = CASE WHEN $14 = 1 THEN NULL ELSE owner END, \
         owner_run = CASE WHEN $14 = 1 THEN NULL ELSE owner_run END, \
         lease_until = $15, alert_status = $16, thread_ts = $17, reply_key = $18, \
         reply_ts = $19, reply_pending = $20 \
         WHERE alert_id = $1 AND owner_run = $2";
    let mut args = Vec::with_capacity(20);
    args.extend([text(&entry.alert_id), text(run)]);
    args.extend(shown(entry));
    args.push(Val::Int(Some(now_ms)));
    args.extend(version(entry));
    args.extend(lease(lease_until));
    args.extend(thread(entry));
    conn.execute(sql.into(), &args, true).await
}

fn text(value: &str) -> Val<'_> {
    Val::Text(Some(value))
}

// The `deliveries` columns every write of an entry binds, in groups that
// both the inserts and the fenced updates list in this order.

/// What the entry shows: `channel_id, ts, content_hash, status, attempts,
/// error`.
fn shown(entry: &Entry) -> [Val<'_>; 6] {
    [
        text(&entry.channel_id),
        Val::Text(entry.ts.as_deref()),
        text(&entry.content_hash),
        text(entry.status.as_str()),
        Val::Int(Some(entry.attempts)),
        Val::Text(entry.error.as_deref()),
    ]
}

/// The version shown: `version_source, version_offset,
/// version_created_at, occurrence`.
fn version(entry: &Entry) -> [Val<'_>; 4] {
    [
        text(&entry.version.source),
        Val::Int(Some(entry.version.offset)),
        Val::Int(Some(entry.version.created_at)),
        Val::Int(Some(entry.occurrence)),
    ]
}

/// Who holds a fresh row: `owner, owner_run, lease_until`.
fn holder(entry: &Entry) -> [Val<'_>; 3] {
    [
        Val::Text(entry.owner.as_deref()),
        Val::Text(entry.owner_run.as_deref()),
        Val::Int(entry.lease_until),
    ]
}

/// A fenced write's lease: whether it gives the claim up (1 when
/// `lease_until` is `None`), and the lease.
fn lease(lease_until: Option<i64>) -> [Val<'static>; 2] {
    [
        Val::Int(Some(i64::from(lease_until.is_none()))),
        Val::Int(lease_until),
    ]
}

/// The alert's status and thread: `alert_status, thread_ts, reply_key,
/// reply_ts, reply_pending`.
fn thread(entry: &Entry) -> [Val<'_>; 5] {
    [
        text(entry.alert_status.as_str()),
        Val::Text(entry.thread_ts.as_deref()),
        Val::Text(entry.reply_key.as_deref()),
        Val::Text(entry.reply_ts.as_deref()),
        Val::Text(entry.reply_pending.as_deref()),
    ]
}

/// `args`, `width` to a row, as one JSON array of arrays: the rows a
/// PostgreSQL statement reads from its `$1` as `json_rows` lays out.
pub(super) fn json_rows(args: &[Arg], width: usize) -> String {
    let values: Vec<Val<'_>> = args.iter().map(Val::from).collect();
    json_rows::encode(&values, width)
}

/// A write to another table. One built at run time (owned: a multi-row
/// one, whose text depends on its rows) is not kept prepared.
async fn statement(
    conn: &mut Conn<'_>,
    sql: Cow<'static, str>,
    args: &[Arg],
) -> Result<u64, LedgerError> {
    let keep = matches!(sql, Cow::Borrowed(_));
    let args: Vec<Val<'_>> = args.iter().map(Val::from).collect();
    conn.execute(sql, &args, keep).await
}

#[cfg(test)]
mod tests;
