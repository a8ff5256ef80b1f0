//! produce's state in the database: per-job checkpoints, the ids of events
//! already emitted (the ledger), and each job's run record. The run record
//! is both the run's lease on its job (one run per job at a time; renewed
//! while it runs) and, when a run dies, what the next run recovers from:
//! the target topic's end offsets when the dead run began, from which the
//! topic is read back to learn what the dead run sent.

use std::collections::{BTreeMap, HashSet};

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row};

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("state database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("state database: run record of job {job} is unreadable: {reason}")]
    Corrupt { job: String, reason: String },
}

/// A job's run record: the run holding the job, or one that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedRun {
    pub run_id: String,
    /// The process (host name and pid) that holds or held the lease.
    pub owner: String,
    pub topic: String,
    pub start_offsets: BTreeMap<i32, i64>,
    pub started_at_ms: i64,
    /// When the run last showed it was alive.
    pub last_active_ms: i64,
    /// Nobody else may start the job before this (epoch ms).
    pub lease_until_ms: i64,
}

/// What a run found when it asked for its job's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// No other record: the lease is this run's.
    Started,
    /// Another run holds a lease that has not lapsed.
    Held(UnfinishedRun),
    /// A run whose lease lapsed (it died, or failed and let go): it may be
    /// taken over, and what it sent must be read back first.
    Lapsed(UnfinishedRun),
}

/// How a finished run trims the emitted ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prune {
    /// Incremental jobs: ids below `floor`, the next run's lowest reachable
    /// position (the new checkpoint minus the lookback), can never come
    /// back. Ids without a position of their own (rows whose checkpoint
    /// column was empty or unreadable) are placed at `checkpoint` first, so
    /// they are kept while the window still reaches where they were seen.
    BelowPosition { floor: String, checkpoint: String },
    /// Other jobs: ids older than this (epoch ms) are forgotten.
    EmittedBefore(i64),
}

/// A job's stored checkpoint (display form) and the value from which its
/// ledger is complete (None: from the checkpoint itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub checkpoint: String,
    pub ledger_from: Option<String>,
}

#[derive(Clone)]
pub struct StateStore {
    pool: AnyPool,
    postgres: bool,
}

/// Rows per multi-row INSERT (4 parameters each; SQLite allows 32766).
const INSERT_CHUNK: usize = 500;

impl StateStore {
    /// Runs an update of this run's record; false when it changed
    /// nothing: the record is no longer this run's.
    async fn changed_one(&self, query: Query<'_, Any, AnyArguments>) -> Result<bool, StateError> {
        Ok(query.execute(&self.pool).await?.rows_affected() == 1)
    }

    pub async fn connect(url: &str, max_connections: u32) -> Result<StateStore, StateError> {
        Ok(StateStore {
            pool: crate::db::connect(url, max_connections).await?,
            postgres: crate::db::is_postgres(url),
        })
    }

    pub async fn migrate(&self) -> Result<(), StateError> {
        Ok(crate::db::migrate(&self.pool, self.postgres).await?)
    }

    pub async fn checkpoint(&self, job: &str) -> Result<Option<StoredCheckpoint>, StateError> {
        let row: Option<AnyRow> =
            sqlx::query("SELECT checkpoint, ledger_from FROM produce_checkpoints WHERE job = $1")
                .bind(job)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredCheckpoint {
            checkpoint: row.try_get("checkpoint")?,
            ledger_from: row.try_get("ledger_from")?,
        }))
    }

    pub async fn run_record(&self, job: &str) -> Result<Option<UnfinishedRun>, StateError> {
        let row: Option<AnyRow> = sqlx::query(
            "SELECT run_id, owner, topic, start_offsets, started_at, last_active_at, lease_until \
             FROM produce_runs WHERE job = $1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let offsets: String = row.try_get("start_offsets")?;
        let start_offsets: BTreeMap<i32, i64> =
            serde_json::from_str(&offsets).map_err(|e| StateError::Corrupt {
                job: job.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Some(UnfinishedRun {
            run_id: row.try_get("run_id")?,
            owner: row.try_get("owner")?,
            topic: row.try_get("topic")?,
            start_offsets,
            started_at_ms: row.try_get("started_at")?,
            last_active_ms: row.try_get("last_active_at")?,
            lease_until_ms: row.try_get("lease_until")?,
        }))
    }

    /// Asks for the job's lease with `run` as the new record. Two runs
    /// asking at once both try the same insert; the database lets exactly
    /// one of them in, and the other is told who holds the job.
    pub async fn acquire(
        &self,
        job: &str,
        run: &UnfinishedRun,
        now_ms: i64,
    ) -> Result<Acquire, StateError> {
        let offsets = serde_json::to_string(&run.start_offsets).unwrap_or_else(|_| "{}".into());
        // A record may vanish between the insert and the read (its run
        // finished): then the insert is simply tried again.
        loop {
            let inserted = sqlx::query(
                "INSERT INTO produce_runs (job, run_id, owner, topic, start_offsets, started_at, \
                 last_active_at, lease_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (job) DO NOTHING",
            )
            .bind(job)
            .bind(&run.run_id)
            .bind(&run.owner)
            .bind(&run.topic)
            .bind(&offsets)
            .bind(run.started_at_ms)
            .bind(run.last_active_ms)
            .bind(run.lease_until_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(Acquire::Started);
            }
            match self.run_record(job).await? {
                None => continue,
                Some(other) if other.lease_until_ms > now_ms => return Ok(Acquire::Held(other)),
                Some(other) => return Ok(Acquire::Lapsed(other)),
            }
        }
    }

    /// Takes over the record of a run whose lease lapsed, keeping its start
    /// offsets (if this run dies too, the next one still reads back from
    /// there). False when another run took it first or the dead run came
    /// back to life and renewed it.
    pub async fn take_over(
        &self,
        job: &str,
        dead: &UnfinishedRun,
        run_id: &str,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<bool, StateError> {
        let query = sqlx::query(
            "UPDATE produce_runs SET run_id = $1, owner = $2, lease_until = $3 \
             WHERE job = $4 AND run_id = $5 AND lease_until <= $6",
        )
        .bind(run_id)
        .bind(owner)
        .bind(lease_until_ms)
        .bind(job)
        .bind(&dead.run_id)
        .bind(now_ms);
        self.changed_one(query).await
    }

    /// After recovering a dead run's events: this run's own start offsets.
    /// False when the lease is no longer this run's.
    pub async fn restart_run(
        &self,
        job: &str,
        run_id: &str,
        topic: &str,
        start_offsets: &BTreeMap<i32, i64>,
        started_at_ms: i64,
    ) -> Result<bool, StateError> {
        let offsets = serde_json::to_string(start_offsets).unwrap_or_else(|_| "{}".into());
        let query = sqlx::query(
            "UPDATE produce_runs SET topic = $1, start_offsets = $2, started_at = $3 \
             WHERE job = $4 AND run_id = $5",
        )
        .bind(topic)
        .bind(offsets)
        .bind(started_at_ms)
        .bind(job)
        .bind(run_id);
        self.changed_one(query).await
    }

    /// The run is alive at `now_ms` and holds the job until `lease_until_ms`.
    /// False when the record is no longer this run's (its lease lapsed and
    /// another run took over): it must stop at once.
    pub async fn renew(
        &self,
        job: &str,
        run_id: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<bool, StateError> {
        let query = sqlx::query(
            "UPDATE produce_runs SET last_active_at = $1, lease_until = $2 \
             WHERE job = $3 AND run_id = $4",
        )
        .bind(now_ms)
        .bind(lease_until_ms)
        .bind(job)
        .bind(run_id);
        self.changed_one(query).await
    }

    /// A failed run lets go of its lease at once but leaves its record: the
    /// next run need not wait for the lease to lapse, and still reads back
    /// what this one sent.
    pub async fn release(&self, job: &str, run_id: &str, now_ms: i64) -> Result<(), StateError> {
        sqlx::query("UPDATE produce_runs SET lease_until = $1 WHERE job = $2 AND run_id = $3")
            .bind(now_ms)
            .bind(job)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every id the ledger holds for the job. Pruning keeps only what a
    /// run can read again, so this is the set a run must not repeat,
    /// whatever position a row has now.
    pub async fn emitted_ids(&self, job: &str) -> Result<HashSet<String>, StateError> {
        let rows: Vec<AnyRow> = sqlx::query("SELECT event_id FROM produce_emitted WHERE job = $1")
            .bind(job)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("event_id").map_err(StateError::from))
            .collect()
    }

    /// Remembers acknowledged events as (event id, position); ids already
    /// known are kept as they are.
    pub async fn mark_emitted(
        &self,
        job: &str,
        events: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StateError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO produce_emitted (job, event_id, position, emitted_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let n = i * 4;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
            }
            sql.push_str(" ON CONFLICT (job, event_id) DO NOTHING");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (event_id, position) in chunk {
                query = query
                    .bind(job)
                    .bind(event_id.as_str())
                    .bind(position.as_str())
                    .bind(now_ms);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends a fully acknowledged run in one transaction: its record gone,
    /// the new checkpoint (display form) with the value its ledger is
    /// complete from, old emitted ids pruned. Nothing changes, and false is
    /// returned, when the record is no longer this run's.
    pub async fn finish_run(
        &self,
        job: &str,
        run_id: &str,
        checkpoint: Option<&StoredCheckpoint>,
        prune: Prune,
        now_ms: i64,
    ) -> Result<bool, StateError> {
        let mut tx = self.pool.begin().await?;
        let ours = sqlx::query("DELETE FROM produce_runs WHERE job = $1 AND run_id = $2")
            .bind(job)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if ours != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(checkpoint) = checkpoint {
            sqlx::query(
                "INSERT INTO produce_checkpoints (job, checkpoint, ledger_from, updated_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (job) DO UPDATE SET checkpoint = excluded.checkpoint, \
                 ledger_from = excluded.ledger_from, updated_at = excluded.updated_at",
            )
            .bind(job)
            .bind(&checkpoint.checkpoint)
            .bind(checkpoint.ledger_from.as_deref())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        match prune {
            Prune::BelowPosition { floor, checkpoint } => {
                sqlx::query(
                    "UPDATE produce_emitted SET position = $1 WHERE job = $2 AND position = ''",
                )
                .bind(checkpoint)
                .bind(job)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM produce_emitted WHERE job = $1 AND position < $2")
                    .bind(job)
                    .bind(floor)
                    .execute(&mut *tx)
                    .await?
            }
            Prune::EmittedBefore(cutoff) => {
                sqlx::query("DELETE FROM produce_emitted WHERE job = $1 AND emitted_at < $2")
                    .bind(job)
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?
            }
        };
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
