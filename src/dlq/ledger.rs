//! The `dlq_replays` table: what was replayed, so a re-run skips it.

use std::collections::HashSet;

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::ReplayError;

/// (partition, offset) of every dead letter of `dlq_topic` already replayed.
pub(super) async fn replayed(
    pool: &AnyPool,
    dlq_topic: &str,
) -> Result<HashSet<(i32, i64)>, ReplayError> {
    let rows: Vec<AnyRow> =
        sqlx::query("SELECT dlq_partition, dlq_offset FROM dlq_replays WHERE dlq_topic = $1")
            .bind(dlq_topic)
            .fetch_all(pool)
            .await?;
    let mut done = HashSet::with_capacity(rows.len());
    for row in rows {
        let partition: i64 = row.try_get("dlq_partition")?;
        let offset: i64 = row.try_get("dlq_offset")?;
        // Partitions are i32 in Kafka; a row outside that range was not
        // written by this code and matches no record.
        if let Ok(partition) = i32::try_from(partition) {
            done.insert((partition, offset));
        }
    }
    Ok(done)
}

pub(super) async fn record_replayed(
    pool: &AnyPool,
    dlq_topic: &str,
    acknowledged: &[(i32, i64, &str)],
    now_ms: i64,
) -> Result<(), ReplayError> {
    if acknowledged.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for (partition, offset, target) in acknowledged {
        sqlx::query(
            "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, target_topic, \
             replayed_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING",
        )
        .bind(dlq_topic)
        .bind(i64::from(*partition))
        .bind(*offset)
        .bind(*target)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
