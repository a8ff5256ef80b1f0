//! The idempotency ledger (SQLite by default, PostgreSQL for several
//! replicas): one row per alert id with where it was posted, what it shows
//! and who is working on it.
//!
//! Every change to Slack happens under a claim: a conditional upsert sets
//! the row's owner and lease only when nobody live holds it, and every
//! later write is fenced by the claimant's run id, so two replicas (or a
//! replica and its restarted self) never both act on one alert. A row is
//! `pending` while a post may be in flight, so a crash in between is visible
//! and reconciled against Slack before any re-post; a thread reply is
//! noted in `reply_pending` the same way, and once made in `reply_key`, so
//! no replay replies twice.

mod op;
#[cfg(test)]
pub(crate) mod testing;
mod writer;

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

pub use self::op::{Arg, InsertRows, Statement};

use self::op::{Op, Outcome};
use self::writer::Writer;
pub use self::writer::WriterStats;

pub use super::decision::{Shown, Status, Version};
use crate::messages::AlertStatus;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("ledger row: column {0} is missing or of another type")]
    Column(String),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("ledger row for {alert_id} has unknown status {status:?}")]
    Status { alert_id: String, status: String },
    #[error("ledger row for {alert_id} has unknown alert_status {status:?}")]
    AlertStatus { alert_id: String, status: String },
    #[error("alert_states row for {alert_id} has unknown state {state:?}")]
    State { alert_id: String, state: String },
    #[error("the claim on {alert_id} was taken over (our lease ran out)")]
    ClaimLost { alert_id: String },
    #[error("the ledger's writer stopped")]
    WriterGone,
    #[error("the ledger's writer answered a different kind of write")]
    WriterAnswer,
    #[error("a multi-row write's rows: {0}")]
    Rows(&'static str),
}

impl LedgerError {
    /// An error of the database itself (a statement refused, a connection
    /// lost), not of what it answered.
    fn is_database(&self) -> bool {
        matches!(self, LedgerError::Database(_) | LedgerError::Sqlite(_))
    }
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Pending => "pending",
            Status::Posted => "posted",
            Status::Failed => "failed",
            Status::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "new" => Status::New,
            "pending" => Status::Pending,
            "posted" => Status::Posted,
            "failed" => Status::Failed,
            "expired" => Status::Expired,
            _ => return None,
        })
    }
}

/// Who holds a claim: the instance (unique among live replicas, stable
/// across its restarts: the pod name) and this process's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub instance: String,
    pub run: String,
}

impl Owner {
    /// A new run of `instance`.
    pub fn new(instance: &str) -> Owner {
        Owner {
            instance: instance.to_owned(),
            run: format!("{:016x}", fastrand::u64(..)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub alert_id: String,
    /// The conversation the message lives in (a DM's `D…` id).
    pub channel_id: String,
    pub ts: Option<String>,
    pub content_hash: String,
    pub status: Status,
    pub attempts: i64,
    pub error: Option<String>,
    pub version: Version,
    pub occurrence: i64,
    pub updated_at: i64,
    pub owner: Option<String>,
    pub owner_run: Option<String>,
    pub lease_until: Option<i64>,
    /// What the alert's message shows (never shown: what its last record
    /// said).
    pub alert_status: AlertStatus,
    /// The thread this occurrence was posted into; `None`: its own ts.
    pub thread_ts: Option<String>,
    /// The last thread reply made for this occurrence, and its ts.
    pub reply_key: Option<String>,
    pub reply_ts: Option<String>,
    /// A reply that may have reached Slack: look before replying again.
    pub reply_pending: Option<String>,
}

impl Entry {
    /// The row a claim creates for an alert the ledger has none for (the
    /// schema's defaults, `new`, held by `owner`).
    pub fn claimed_new(
        alert_id: &str,
        channel_id: &str,
        owner: &Owner,
        now_ms: i64,
        lease_until: i64,
    ) -> Entry {
        Entry {
            alert_id: alert_id.to_owned(),
            channel_id: channel_id.to_owned(),
            ts: None,
            content_hash: String::new(),
            status: Status::New,
            attempts: 0,
            error: None,
            version: Version {
                source: String::new(),
                offset: -1,
                created_at: 0,
            },
            occurrence: 1,
            updated_at: now_ms,
            owner: Some(owner.instance.clone()),
            owner_run: Some(owner.run.clone()),
            lease_until: Some(lease_until),
            alert_status: AlertStatus::Firing,
            thread_ts: None,
            reply_key: None,
            reply_ts: None,
            reply_pending: None,
        }
    }

    /// What the decision core reads; `None` for a row nothing was sent for.
    pub fn shown(&self) -> Shown {
        Shown {
            status: self.status,
            ts: self.ts.clone(),
            content_hash: self.content_hash.clone(),
            version: self.version.clone(),
            occurrence: self.occurrence,
            alert: self.alert_status,
            thread_ts: self.thread_ts.clone(),
            reply_key: self.reply_key.clone(),
            reply_pending: self.reply_pending.clone(),
        }
    }
}

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We hold the alert (a new row has status `new`).
    Held(Box<Entry>),
    /// A live peer holds it.
    Busy { owner: String, lease_until: i64 },
}

#[derive(Clone)]
pub struct Ledger {
    pub(super) pool: AnyPool,
    /// PostgreSQL's own connections: the writer tasks' and the alert-state
    /// publisher's read of every batch ([`Connections`]).
    pg: Option<sqlx::PgPool>,
    postgres: bool,
    /// Claims and entry writes, committed in shared transactions.
    writer: Writer,
}

const COLUMNS: &str =
    "alert_id, channel_id, ts, content_hash, status, attempts, error, updated_at, \
     version_source, version_offset, version_created_at, occurrence, owner, owner_run, lease_until, \
     alert_status, thread_ts, reply_key, reply_ts, reply_pending";

/// A row as a driver gives it: a column by its place in the query's list
/// (here [`COLUMNS`]; `alert_states`' in `state::store`) or by its name,
/// whichever the driver reads by.
pub(crate) trait EntryRow {
    fn text(&self, index: usize, column: &str) -> Result<Option<String>, LedgerError>;
    fn int(&self, index: usize, column: &str) -> Result<Option<i64>, LedgerError>;

    /// [`Self::text`] of a column that is never null.
    fn required_text(&self, index: usize, column: &str) -> Result<String, LedgerError> {
        self.text(index, column)?
            .ok_or_else(|| LedgerError::Column(column.to_owned()))
    }

    /// [`Self::int`] of a column that is never null.
    fn required_int(&self, index: usize, column: &str) -> Result<i64, LedgerError> {
        self.int(index, column)?
            .ok_or_else(|| LedgerError::Column(column.to_owned()))
    }
}

impl EntryRow for AnyRow {
    fn text(&self, _: usize, column: &str) -> Result<Option<String>, LedgerError> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, _: usize, column: &str) -> Result<Option<i64>, LedgerError> {
        match self.try_get::<Option<i64>, _>(column) {
            Ok(value) => Ok(value),
            Err(_) => Ok(self.try_get::<Option<i32>, _>(column)?.map(i64::from)),
        }
    }
}

/// PostgreSQL's own rows (`Ledger::postgres_pool`), read by place.
impl EntryRow for sqlx::postgres::PgRow {
    fn text(&self, index: usize, _: &str) -> Result<Option<String>, LedgerError> {
        Ok(self.try_get(index)?)
    }

    fn int(&self, index: usize, _: &str) -> Result<Option<i64>, LedgerError> {
        match self.try_get::<Option<i64>, _>(index) {
            Ok(value) => Ok(value),
            Err(_) => Ok(self.try_get::<Option<i32>, _>(index)?.map(i64::from)),
        }
    }
}

fn entry_from(row: &impl EntryRow) -> Result<Entry, LedgerError> {
    let text = |index: usize, column: &str| row.required_text(index, column);
    let int = |index: usize, column: &str| row.required_int(index, column);
    let alert_id = text(0, "alert_id")?;
    let status = text(4, "status")?;
    let parsed = Status::parse(&status).ok_or_else(|| LedgerError::Status {
        alert_id: alert_id.clone(),
        status,
    })?;
    let alert_status = text(15, "alert_status")?;
    let alert_status =
        AlertStatus::parse(&alert_status).ok_or_else(|| LedgerError::AlertStatus {
            alert_id: alert_id.clone(),
            status: alert_status,
        })?;
    Ok(Entry {
        alert_id,
        channel_id: text(1, "channel_id")?,
        ts: row.text(2, "ts")?,
        content_hash: text(3, "content_hash")?,
        status: parsed,
        attempts: int(5, "attempts")?,
        error: row.text(6, "error")?,
        version: Version {
            source: text(8, "version_source")?,
            offset: int(9, "version_offset")?,
            created_at: int(10, "version_created_at")?,
        },
        occurrence: int(11, "occurrence")?,
        updated_at: int(7, "updated_at")?,
        owner: row.text(12, "owner")?,
        owner_run: row.text(13, "owner_run")?,
        lease_until: row.int(14, "lease_until")?,
        alert_status,
        thread_ts: row.text(16, "thread_ts")?,
        reply_key: row.text(17, "reply_key")?,
        reply_ts: row.text(18, "reply_ts")?,
        reply_pending: row.text(19, "reply_pending")?,
    })
}

/// How many of a PostgreSQL ledger's `max_connections` are PostgreSQL's
/// own ([`Ledger::postgres_pool`]) for reads beside the writers': the
/// publisher reads one batch at a time.
const PG_READ_CONNECTIONS: u32 = 1;

/// A ledger's `max_connections`, shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Connections {
    /// sqlx's `Any` pool: every statement but the hot ones below.
    shared: u32,
    /// PostgreSQL's own pool (0: SQLite, which has none): the writer
    /// tasks' and the publisher's read.
    own: u32,
    /// Writer tasks. SQLite has one writer whatever we do; PostgreSQL
    /// overlaps batches on several connections, about half of them.
    writers: usize,
}

impl Connections {
    /// Each pool keeps at least one connection: `max_connections` below
    /// 2 on PostgreSQL opens 2.
    fn split(postgres: bool, max_connections: u32) -> Connections {
        if !postgres {
            return Connections {
                shared: max_connections,
                own: 0,
                writers: 1,
            };
        }
        let writers = (max_connections.saturating_sub(PG_READ_CONNECTIONS) / 2).max(1);
        // With too few for a connection each, the writers and the read
        // take turns on what there is (the writers then give theirs back
        // after each batch: `Writer::start`).
        let own = (PG_READ_CONNECTIONS + writers)
            .min(max_connections.saturating_sub(1))
            .max(1);
        Connections {
            shared: max_connections.saturating_sub(own).max(1),
            own,
            writers: usize::try_from(writers).unwrap_or(1),
        }
    }
}

/// How the ledger's PostgreSQL connections plan their statements: a join
/// is a batch of keys looked up through the table's index, never a hash or
/// merge of the whole table.
///
/// Every join the ledger runs is of that kind (a batch's rows, or the
/// alerts a publish names, against `deliveries` or `alert_states` by
/// primary key), but PostgreSQL plans it from the table's statistics, and
/// a prepared statement keeps its plan: on a ledger that grew since it was
/// last analyzed (a new deployment's first minutes, a burst into a quiet
/// one) the plan made while the table was small hashed the whole table in
/// every batch. Measured on `cargo bench --bench notify -- unlimited 10000`
/// with a new PostgreSQL ledger: 150 rows of `deliveries` read per post,
/// a quarter of the server's CPU (docs/PERFORMANCE.md, eleventh round).
/// The sweeps read through their own indexes either way.
const POSTGRES_PLANNING: &[&str] = &["SET enable_hashjoin = off", "SET enable_mergejoin = off"];

impl Ledger {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Ledger, LedgerError> {
        let postgres = crate::db::is_postgres(url);
        let budget = Connections::split(postgres, max_connections);
        let pg = match budget.own {
            0 => None,
            own => Some(crate::db::connect_postgres(url, own, POSTGRES_PLANNING).await?),
        };
        let pool = crate::db::connect_with(url, budget.shared, POSTGRES_PLANNING).await?;
        Ok(Ledger {
            writer: Writer::start(pool.clone(), pg.as_ref(), url, budget.writers),
            pg,
            pool,
            postgres,
        })
    }

    /// PostgreSQL's own pool, for the hot reads whose rows through sqlx's
    /// `Any` driver cost more than their query (`None`: SQLite).
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        self.pg.as_ref()
    }

    /// Whether the database is PostgreSQL (else SQLite): which placeholders
    /// a statement built at run time uses.
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Applies `migrations/` (the schema shared with produce).
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        Ok(crate::db::migrate(&self.pool, self.postgres).await?)
    }

    pub async fn get(&self, alert_id: &str) -> Result<Option<Entry>, LedgerError> {
        let row: Option<AnyRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE alert_id = $1"
        )))
        .bind(alert_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_from).transpose()
    }

    /// Takes the alert for `owner` until `lease_until`, atomically: only a
    /// row nobody holds, whose lease ran out, or that this instance held
    /// before a restart (instance ids are unique among live replicas) is
    /// taken.
    pub async fn claim(
        &self,
        alert_id: &str,
        channel_id: &str,
        owner: &Owner,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<Claim, LedgerError> {
        let op = Op::Claim {
            alert_id: alert_id.to_owned(),
            channel_id: channel_id.to_owned(),
            instance: owner.instance.clone(),
            run: owner.run.clone(),
            now_ms,
            lease_until,
        };
        let Outcome::Row(row) = self.writer.submit(op).await? else {
            return Err(LedgerError::WriterAnswer);
        };
        let entry = row.ok_or_else(|| LedgerError::ClaimLost {
            alert_id: alert_id.to_owned(),
        })?;
        if entry.owner_run.as_deref() == Some(owner.run.as_str()) {
            Ok(Claim::Held(entry))
        } else {
            Ok(Claim::Busy {
                owner: entry.owner.unwrap_or_default(),
                lease_until: entry.lease_until.unwrap_or(now_ms),
            })
        }
    }

    /// Creates the alert's row as `fresh` (held by its owner) if the ledger
    /// has none, in one statement; `true` with it then. Otherwise claims the
    /// row there as [`Ledger::claim`] does (`false`).
    pub async fn claim_fresh(
        &self,
        fresh: &Entry,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<(Claim, bool), LedgerError> {
        let op = Op::ClaimFresh {
            fresh: Box::new(fresh.clone()),
            now_ms,
            lease_until,
        };
        let row = match self.writer.submit(op).await? {
            Outcome::Inserted(entry) => return Ok((Claim::Held(entry), true)),
            Outcome::Row(row) => row,
            _ => return Err(LedgerError::WriterAnswer),
        };
        let entry = row.ok_or_else(|| LedgerError::ClaimLost {
            alert_id: fresh.alert_id.clone(),
        })?;
        if entry.owner_run.is_some() && entry.owner_run == fresh.owner_run {
            Ok((Claim::Held(entry), false))
        } else {
            Ok((
                Claim::Busy {
                    owner: entry.owner.unwrap_or_default(),
                    lease_until: entry.lease_until.unwrap_or(now_ms),
                },
                false,
            ))
        }
    }

    /// Extends our claim; fails if a peer took it over.
    pub async fn renew(
        &self,
        alert_id: &str,
        owner: &Owner,
        lease_until: i64,
    ) -> Result<(), LedgerError> {
        let op = Op::Renew {
            alert_id: alert_id.to_owned(),
            run: owner.run.clone(),
            lease_until,
        };
        fenced(self.writer.submit(op).await?, alert_id)
    }

    /// Writes `entry` under our claim, and either extends the claim to
    /// `lease_until` or (`None`) gives it up, in the same statement.
    pub async fn save(
        &self,
        entry: &Entry,
        owner: &Owner,
        now_ms: i64,
        lease_until: Option<i64>,
    ) -> Result<(), LedgerError> {
        let op = Op::Save {
            entry: Box::new(entry.clone()),
            run: owner.run.clone(),
            now_ms,
            lease_until,
        };
        fenced(self.writer.submit(op).await?, &entry.alert_id)
    }

    /// [`Ledger::save`], then `then` in the same transaction: the rows
    /// `then` changed (`None`: it failed, the entry's write stands).
    pub async fn save_then(
        &self,
        entry: &Entry,
        owner: &Owner,
        now_ms: i64,
        lease_until: Option<i64>,
        then: Statement,
    ) -> Result<Option<u64>, LedgerError> {
        let op = Op::SaveThen {
            entry: Box::new(entry.clone()),
            run: owner.run.clone(),
            now_ms,
            lease_until,
            then,
        };
        match self.writer.submit(op).await? {
            Outcome::Saved { rows: 0, .. } => Err(LedgerError::ClaimLost {
                alert_id: entry.alert_id.clone(),
            }),
            Outcome::Saved { then, .. } => Ok(then),
            _ => Err(LedgerError::WriterAnswer),
        }
    }

    /// Gives a claim up without changing the row.
    pub async fn release(&self, alert_id: &str, owner: &Owner) -> Result<(), LedgerError> {
        let op = Op::Release {
            alert_id: alert_id.to_owned(),
            run: owner.run.clone(),
        };
        self.writer.submit(op).await?;
        Ok(())
    }

    /// Runs one write to another table of the ledger's database in the
    /// writer's next batch; returns the rows it changed.
    pub async fn write(
        &self,
        sql: impl Into<std::borrow::Cow<'static, str>>,
        args: Vec<Arg>,
    ) -> Result<u64, LedgerError> {
        let sql = sql.into();
        match self.writer.submit(Op::Statement { sql, args }).await? {
            Outcome::Rows(rows) => Ok(rows),
            _ => Err(LedgerError::WriterAnswer),
        }
    }

    /// How many transactions the ledger's writes shared.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.writer.stats
    }

    /// Deletes rows untouched since `before` that nobody holds; returns how
    /// many.
    pub async fn prune(&self, before_ms: i64, now_ms: i64) -> Result<u64, LedgerError> {
        let done = sqlx::query(
            // `created_at` is indexed (never rewritten, unlike
            // `updated_at`) and never later than `updated_at`.
            "DELETE FROM deliveries WHERE created_at < $1 AND updated_at < $1 \
             AND (owner IS NULL OR lease_until IS NULL OR lease_until < $2)",
        )
        .bind(before_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// `args`, `width` to a row, as one `jsonb` value: PostgreSQL reads
/// them back with `jsonb_array_elements($1::jsonb) AS e`, a row's values
/// as `e->>0`, `e->>1`… (text; cast numbers back). One statement text for
/// any number of rows, kept prepared, where a `VALUES` list of
/// placeholders is a new text (parsed and planned anew) for each count.
pub fn json_rows(args: &[Arg], width: usize) -> String {
    writer::json_rows(args, width)
}

/// `rows` tuples of `width` placeholders: numbered, `($1, $2), ($3, $4)`,
/// or anonymous, `(?, ?), (?, ?)`.
pub fn tuples(rows: usize, width: usize, numbered: bool) -> String {
    tuples_ending(rows, width, numbered, "")
}

/// [`tuples`], each ending with `fixed` after its placeholders (literal
/// values, the same in every row) unless it is empty.
pub(crate) fn tuples_ending(rows: usize, width: usize, numbered: bool, fixed: &str) -> String {
    let mut sql = String::with_capacity(rows * (width * 5 + fixed.len() + 4));
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push('$');
                sql.push_str(&(row * width + column + 1).to_string());
            } else {
                sql.push('?');
            }
        }
        if !fixed.is_empty() {
            sql.push_str(", ");
            sql.push_str(fixed);
        }
        sql.push(')');
    }
    sql
}

fn fenced(outcome: Outcome, alert_id: &str) -> Result<(), LedgerError> {
    if matches!(outcome, Outcome::Rows(0)) {
        Err(LedgerError::ClaimLost {
            alert_id: alert_id.to_owned(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod connections_tests {
    use super::Connections;

    fn split(postgres: bool, max: u32) -> (u32, u32, usize) {
        let c = Connections::split(postgres, max);
        (c.shared, c.own, c.writers)
    }

    #[test]
    fn postgres_connections_are_shared_out_within_max_connections() {
        // (shared, own: writers + the read, writers)
        assert_eq!(split(true, 5), (2, 3, 2));
        assert_eq!(split(true, 10), (5, 5, 4));
        assert_eq!(split(true, 3), (1, 2, 1));
        // Too few for one each: the writer and the read take turns.
        assert_eq!(split(true, 2), (1, 1, 1));
        assert_eq!(split(true, 1), (1, 1, 1));
        for max in 2..64 {
            let (shared, own, _) = split(true, max);
            assert_eq!(shared + own, max, "max_connections = {max}");
        }
    }

    #[test]
    fn sqlite_has_one_writer_and_no_pool_of_its_own() {
        assert_eq!(split(false, 5), (5, 0, 1));
        assert_eq!(split(false, 1), (1, 0, 1));
    }
}
