//! The grouped alerts' ledger (migration 0008): which group a channel's
//! key takes members into, each group's summary message under a claim
//! (like an alert's: a conditional update of owner and lease, every later
//! write fenced by the claimant's run), and the members.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::plan::{GroupRow, GroupStatus, Head};
use super::summary::Member;
use crate::messages::AlertStatus;
use crate::notify::ledger::{Ledger, LedgerError, Owner};

#[derive(Clone)]
pub struct GroupLedger {
    pool: AnyPool,
}

const COLUMNS: &str = "group_id, channel_id, group_key, window_start, window_end, status, ts, \
     revision, shown_revision, shown_at, error, updated_at, owner_run";

fn int(row: &AnyRow, column: &str) -> Result<i64, sqlx::Error> {
    row.try_get::<i64, _>(column)
        .or_else(|_| row.try_get::<i32, _>(column).map(i64::from))
}

fn group_from_row(row: &AnyRow) -> Result<GroupRow, LedgerError> {
    let group_id: String = row.try_get("group_id")?;
    let status: String = row.try_get("status")?;
    let status = GroupStatus::parse(&status).ok_or_else(|| LedgerError::Status {
        alert_id: format!("group:{group_id}"),
        status,
    })?;
    Ok(GroupRow {
        group_id,
        channel_id: row.try_get("channel_id")?,
        group_key: row.try_get("group_key")?,
        window_start: int(row, "window_start")?,
        window_end: int(row, "window_end")?,
        status,
        ts: row.try_get("ts")?,
        revision: int(row, "revision")?,
        shown_revision: int(row, "shown_revision")?,
        shown_at: row.try_get::<Option<i64>, _>("shown_at")?,
        error: row.try_get("error")?,
        updated_at: int(row, "updated_at")?,
        owner_run: row.try_get("owner_run")?,
    })
}

/// Who a claim on a group is fenced by: the alert claims' key space is
/// alert ids, this one group ids, so the two never collide.
fn fenced(rows: u64, group_id: &str) -> Result<(), LedgerError> {
    if rows == 0 {
        Err(LedgerError::ClaimLost {
            alert_id: format!("group:{group_id}"),
        })
    } else {
        Ok(())
    }
}

impl GroupLedger {
    /// The groups in `ledger`'s database (migration 0008).
    pub fn new(ledger: &Ledger) -> GroupLedger {
        GroupLedger {
            pool: ledger.pool.clone(),
        }
    }

    /// The group `channel`'s `key` takes members into now.
    pub async fn head(&self, channel: &str, key: &str) -> Result<Option<Head>, LedgerError> {
        let row: Option<AnyRow> = sqlx::query(
            "SELECT group_id, window_start, window_end FROM alert_group_heads \
             WHERE channel_id = $1 AND group_key = $2",
        )
        .bind(channel)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Head {
                group_id: row.try_get("group_id")?,
                window_start: int(&row, "window_start")?,
                window_end: int(&row, "window_end")?,
            })
        })
        .transpose()
    }

    /// Makes `wanted` the head unless a head whose window is still open at
    /// `wanted.window_start` is there (a peer opened it first); returns the
    /// head as it now is, and its group row exists.
    pub async fn open(
        &self,
        channel: &str,
        key: &str,
        wanted: &Head,
        now_ms: i64,
    ) -> Result<Head, LedgerError> {
        sqlx::query(
            "INSERT INTO alert_group_heads (channel_id, group_key, group_id, window_start, window_end) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (channel_id, group_key) DO UPDATE SET group_id = $3, window_start = $4, \
             window_end = $5 WHERE alert_group_heads.window_end <= $4",
        )
        .bind(channel)
        .bind(key)
        .bind(&wanted.group_id)
        .bind(wanted.window_start)
        .bind(wanted.window_end)
        .execute(&self.pool)
        .await?;
        let head = self
            .head(channel, key)
            .await?
            .ok_or_else(|| LedgerError::ClaimLost {
                alert_id: format!("group:{}", wanted.group_id),
            })?;
        sqlx::query(
            "INSERT INTO alert_groups (group_id, channel_id, group_key, window_start, window_end, \
             status, revision, shown_revision, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'new', 0, 0, $6, $6) ON CONFLICT (group_id) DO NOTHING",
        )
        .bind(&head.group_id)
        .bind(channel)
        .bind(key)
        .bind(head.window_start)
        .bind(head.window_end)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(head)
    }

    /// Adds `member` to the group (or updates it there) and marks the
    /// summary out of date.
    pub async fn upsert_member(
        &self,
        group_id: &str,
        member: &Member,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO alert_group_members (group_id, alert_id, text, status, created_at, joined_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (group_id, alert_id) \
             DO UPDATE SET text = $3, status = $4, created_at = $5",
        )
        .bind(group_id)
        .bind(&member.alert_id)
        .bind(&member.text)
        .bind(member.status.as_str())
        .bind(member.created_at)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        self.touch(group_id, now_ms).await
    }

    /// Records `member`'s new text and status in the group whose summary
    /// is `thread_ts` in `channel` (the thread its reply is in); false if
    /// that is no group's summary.
    pub async fn update_member_in_thread(
        &self,
        channel: &str,
        thread_ts: &str,
        member: &Member,
        now_ms: i64,
    ) -> Result<bool, LedgerError> {
        let row: Option<AnyRow> =
            sqlx::query("SELECT group_id FROM alert_groups WHERE channel_id = $1 AND ts = $2")
                .bind(channel)
                .bind(thread_ts)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let group_id: String = row.try_get("group_id")?;
        self.upsert_member(&group_id, member, now_ms).await?;
        Ok(true)
    }

    async fn touch(&self, group_id: &str, now_ms: i64) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE alert_groups SET revision = revision + 1, updated_at = $2 WHERE group_id = $1",
        )
        .bind(group_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get(&self, group_id: &str) -> Result<Option<GroupRow>, LedgerError> {
        let row: Option<AnyRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM alert_groups WHERE group_id = $1"
        )))
        .bind(group_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(group_from_row).transpose()
    }

    /// The members of a group, for its summary and for the buttons that
    /// act on the whole group.
    pub async fn members(&self, group_id: &str) -> Result<Vec<Member>, LedgerError> {
        let rows: Vec<AnyRow> = sqlx::query(
            "SELECT alert_id, text, status, created_at FROM alert_group_members \
             WHERE group_id = $1 ORDER BY created_at, alert_id",
        )
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let alert_id: String = row.try_get("alert_id")?;
                let status: String = row.try_get("status")?;
                let status =
                    AlertStatus::parse(&status).ok_or_else(|| LedgerError::AlertStatus {
                        alert_id: alert_id.clone(),
                        status,
                    })?;
                Ok(Member {
                    alert_id,
                    text: row.try_get("text")?,
                    status,
                    created_at: int(row, "created_at")?,
                })
            })
            .collect()
    }

    /// Posted summaries that do not show their members as they are.
    pub async fn out_of_date(&self) -> Result<Vec<GroupRow>, LedgerError> {
        let rows: Vec<AnyRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM alert_groups WHERE status = 'posted' \
             AND revision > shown_revision ORDER BY updated_at"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(group_from_row).collect()
    }

    /// Takes the group's summary for `owner` until `lease_until`; `None`
    /// while a live peer holds it.
    pub async fn claim(
        &self,
        group_id: &str,
        owner: &Owner,
        now_ms: i64,
        lease_until: i64,
    ) -> Result<Option<GroupRow>, LedgerError> {
        sqlx::query(
            "UPDATE alert_groups SET owner = $2, owner_run = $3, lease_until = $4 \
             WHERE group_id = $1 AND (owner IS NULL OR lease_until IS NULL \
             OR lease_until < $5 OR owner = $2)",
        )
        .bind(group_id)
        .bind(&owner.instance)
        .bind(&owner.run)
        .bind(lease_until)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let group = self.get(group_id).await?;
        Ok(group.filter(|g| g.owner_run.as_deref() == Some(owner.run.as_str())))
    }

    /// Writes the summary's state under our claim, keeping the claim
    /// until `lease_until` or (`None`) giving it up.
    pub async fn save(
        &self,
        group: &GroupRow,
        owner: &Owner,
        now_ms: i64,
        lease_until: Option<i64>,
    ) -> Result<(), LedgerError> {
        let done = sqlx::query(
            "UPDATE alert_groups SET channel_id = $3, status = $4, ts = $5, error = $6, \
             shown_revision = $7, shown_at = $8, updated_at = $9, \
             owner = CASE WHEN $10 = 1 THEN NULL ELSE owner END, \
             owner_run = CASE WHEN $10 = 1 THEN NULL ELSE owner_run END, lease_until = $11 \
             WHERE group_id = $1 AND owner_run = $2",
        )
        .bind(&group.group_id)
        .bind(&owner.run)
        .bind(&group.channel_id)
        .bind(group.status.as_str())
        .bind(&group.ts)
        .bind(&group.error)
        .bind(group.shown_revision)
        .bind(group.shown_at)
        .bind(now_ms)
        .bind(i32::from(lease_until.is_none()))
        .bind(lease_until)
        .execute(&self.pool)
        .await?;
        fenced(done.rows_affected(), &group.group_id)
    }

    pub async fn release(&self, group_id: &str, owner: &Owner) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE alert_groups SET owner = NULL, owner_run = NULL, lease_until = NULL \
             WHERE group_id = $1 AND owner_run = $2",
        )
        .bind(group_id)
        .bind(&owner.run)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes groups untouched since `before` (their windows closed long
    /// ago, their summaries current) with their members; returns how many.
    pub async fn prune(&self, before_ms: i64) -> Result<u64, LedgerError> {
        sqlx::query(
            "DELETE FROM alert_group_members WHERE group_id IN (SELECT group_id FROM alert_groups \
             WHERE updated_at < $1 AND window_end < $1 \
             AND (status <> 'posted' OR revision <= shown_revision))",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM alert_group_heads WHERE window_end < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        let done = sqlx::query(
            "DELETE FROM alert_groups WHERE updated_at < $1 AND window_end < $1 \
             AND (status <> 'posted' OR revision <= shown_revision)",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
