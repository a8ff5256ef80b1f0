//! produce's state in the database: per-job checkpoints, the ids of events
//! already emitted, and the run in progress with the target topic's end
//! offsets when it began (a re-run reads back from there to learn what an
//! unfinished run sent).

use std::collections::{BTreeMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

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

/// A run that began and never finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedRun {
    pub run_id: String,
    pub topic: String,
    pub start_offsets: BTreeMap<i32, i64>,
    pub started_at_ms: i64,
    /// When the run last showed it was alive.
    pub last_active_ms: i64,
}

/// How a finished run trims the emitted ids.
#[derive(Debug, Clone)]
pub enum Prune {
    /// Incremental jobs: ids below the new checkpoint can never come back.
    BelowPosition(String),
    /// Other jobs: ids older than this (epoch ms) are forgotten.
    EmittedBefore(i64),
}

#[derive(Clone)]
pub struct StateStore {
    pool: AnyPool,
    postgres: bool,
}

/// Rows per multi-row INSERT (4 parameters each; SQLite allows 32766).
const INSERT_CHUNK: usize = 500;

impl StateStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<StateStore, StateError> {
        Ok(StateStore {
            pool: crate::db::connect(url, max_connections).await?,
            postgres: crate::db::is_postgres(url),
        })
    }

    pub async fn migrate(&self) -> Result<(), StateError> {
        Ok(crate::db::migrate(&self.pool, self.postgres).await?)
    }

    pub async fn checkpoint(&self, job: &str) -> Result<Option<String>, StateError> {
        let row: Option<AnyRow> =
            sqlx::query("SELECT checkpoint FROM produce_checkpoints WHERE job = $1")
                .bind(job)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("checkpoint")).transpose()?)
    }

    pub async fn unfinished_run(&self, job: &str) -> Result<Option<UnfinishedRun>, StateError> {
        let row: Option<AnyRow> = sqlx::query(
            "SELECT run_id, topic, start_offsets, started_at, last_active_at FROM produce_runs \
             WHERE job = $1",
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
            topic: row.try_get("topic")?,
            start_offsets,
            started_at_ms: row.try_get("started_at")?,
            last_active_ms: row.try_get("last_active_at")?,
        }))
    }

    /// Records that a run begins. Fails if another run of the job is
    /// recorded (the caller recovers that one first).
    pub async fn begin_run(&self, job: &str, run: &UnfinishedRun) -> Result<(), StateError> {
        let offsets = serde_json::to_string(&run.start_offsets).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO produce_runs (job, run_id, topic, start_offsets, started_at, \
             last_active_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(job)
        .bind(&run.run_id)
        .bind(&run.topic)
        .bind(offsets)
        .bind(run.started_at_ms)
        .bind(run.last_active_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The run is alive at `now_ms`.
    pub async fn touch_run(&self, job: &str, now_ms: i64) -> Result<(), StateError> {
        sqlx::query("UPDATE produce_runs SET last_active_at = $1 WHERE job = $2")
            .bind(now_ms)
            .bind(job)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn forget_run(&self, job: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM produce_runs WHERE job = $1")
            .bind(job)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ids emitted by the job at or after `from_position` (all when None).
    pub async fn emitted_ids(
        &self,
        job: &str,
        from_position: Option<&str>,
    ) -> Result<HashSet<String>, StateError> {
        let rows: Vec<AnyRow> = match from_position {
            Some(position) => {
                sqlx::query(
                    "SELECT event_id FROM produce_emitted WHERE job = $1 AND position >= $2",
                )
                .bind(job)
                .bind(position)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT event_id FROM produce_emitted WHERE job = $1")
                    .bind(job)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
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

    /// Ends a fully acknowledged run in one transaction: the new checkpoint
    /// (display form), the run record gone, old emitted ids pruned.
    pub async fn finish_run(
        &self,
        job: &str,
        checkpoint: Option<&str>,
        prune: Prune,
        now_ms: i64,
    ) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        if let Some(checkpoint) = checkpoint {
            sqlx::query(
                "INSERT INTO produce_checkpoints (job, checkpoint, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (job) DO UPDATE SET checkpoint = excluded.checkpoint, \
                 updated_at = excluded.updated_at",
            )
            .bind(job)
            .bind(checkpoint)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM produce_runs WHERE job = $1")
            .bind(job)
            .execute(&mut *tx)
            .await?;
        match prune {
            Prune::BelowPosition(position) => {
                sqlx::query("DELETE FROM produce_emitted WHERE job = $1 AND position < $2")
                    .bind(job)
                    .bind(position)
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
        Ok(())
    }
}
