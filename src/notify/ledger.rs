//! The idempotency ledger (SQLite by default, PostgreSQL for several
//! replicas): one row per alert id with where and what was posted. A row is
//! written `pending` before the post and `posted` after it, so a crash in
//! between is visible and reconciled against Slack before any re-post.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("ledger row for {alert_id} has unknown status {status:?}")]
    Status { alert_id: String, status: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Posted,
    Failed,
    Expired,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Posted => "posted",
            Status::Failed => "failed",
            Status::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "posted" => Status::Posted,
            "failed" => Status::Failed,
            "expired" => Status::Expired,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub alert_id: String,
    pub channel_id: String,
    pub ts: Option<String>,
    pub content_hash: String,
    pub status: Status,
    pub attempts: i64,
}

#[derive(Clone)]
pub struct Ledger {
    pool: AnyPool,
    postgres: bool,
}

impl Ledger {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Ledger, LedgerError> {
        Ok(Ledger {
            pool: crate::db::connect(url, max_connections).await?,
            postgres: crate::db::is_postgres(url),
        })
    }

    /// Applies `migrations/` (the schema shared with produce).
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        Ok(crate::db::migrate(&self.pool, self.postgres).await?)
    }

    pub async fn get(&self, alert_id: &str) -> Result<Option<Entry>, LedgerError> {
        let row: Option<AnyRow> = sqlx::query(
            "SELECT alert_id, channel_id, ts, content_hash, status, attempts FROM deliveries WHERE alert_id = $1",
        )
        .bind(alert_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let status: String = row.try_get("status")?;
            let alert_id: String = row.try_get("alert_id")?;
            let parsed = Status::parse(&status).ok_or_else(|| LedgerError::Status {
                alert_id: alert_id.clone(),
                status,
            })?;
            Ok(Entry {
                alert_id,
                channel_id: row.try_get("channel_id")?,
                ts: row.try_get("ts")?,
                content_hash: row.try_get("content_hash")?,
                status: parsed,
                attempts: row
                    .try_get::<i64, _>("attempts")
                    .or_else(|_| row.try_get::<i32, _>("attempts").map(i64::from))?,
            })
        })
        .transpose()
    }

    /// Records an attempt about to start; keeps an earlier `ts`.
    pub async fn mark_pending(
        &self,
        alert_id: &str,
        channel_id: &str,
        content_hash: &str,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO deliveries (alert_id, channel_id, ts, content_hash, status, attempts, error, created_at, updated_at) \
             VALUES ($1, $2, NULL, $3, 'pending', 1, NULL, $4, $4) \
             ON CONFLICT (alert_id) DO UPDATE SET channel_id = $2, content_hash = $3, status = 'pending', \
             attempts = deliveries.attempts + 1, error = NULL, updated_at = $4",
        )
        .bind(alert_id)
        .bind(channel_id)
        .bind(content_hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records where the alert now is, with the content it shows.
    pub async fn mark_posted(
        &self,
        alert_id: &str,
        channel_id: &str,
        ts: &str,
        content_hash: &str,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO deliveries (alert_id, channel_id, ts, content_hash, status, attempts, error, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'posted', 1, NULL, $5, $5) \
             ON CONFLICT (alert_id) DO UPDATE SET channel_id = $2, ts = $3, content_hash = $4, status = 'posted', \
             error = NULL, updated_at = $5",
        )
        .bind(alert_id)
        .bind(channel_id)
        .bind(ts)
        .bind(content_hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a final failure (`failed`) or an expiry (`expired`).
    pub async fn mark_final(
        &self,
        alert_id: &str,
        channel_id: &str,
        content_hash: &str,
        status: Status,
        error: &str,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO deliveries (alert_id, channel_id, ts, content_hash, status, attempts, error, created_at, updated_at) \
             VALUES ($1, $2, NULL, $3, $4, 0, $5, $6, $6) \
             ON CONFLICT (alert_id) DO UPDATE SET status = $4, error = $5, updated_at = $6",
        )
        .bind(alert_id)
        .bind(channel_id)
        .bind(content_hash)
        .bind(status.as_str())
        .bind(error)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
