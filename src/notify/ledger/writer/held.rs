//! A writer task's connection, kept between batches when the pool can
//! spare it (see `writer.rs`).

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};

/// A writer task's connection, kept from batch to batch.
pub(super) struct Held {
    pool: AnyPool,
    conn: Option<PoolConnection<Any>>,
    /// Kept after a batch, or given back at once.
    pub(super) keep: bool,
}

impl Held {
    pub(super) fn new(pool: AnyPool, keep: bool) -> Held {
        Held {
            pool,
            conn: None,
            keep,
        }
    }

    pub(super) async fn get(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.acquire().await?);
        }
        self.conn.as_deref_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Back to the pool, which checks it before anyone uses it again.
    pub(super) fn give_back(&mut self) {
        self.conn = None;
    }
}
