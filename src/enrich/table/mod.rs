//! GlobalKTable semantics for join tables: every partition of the table's
//! topic is read from the beginning; the table is *bootstrapped* once each
//! partition reached the high watermark it had at start; updates keep being
//! applied afterwards; a tombstone deletes its key.
//!
//! A record that can never be applied goes to the dead-letter topic, and the
//! loader takes the next record only once the broker acknowledged it; a
//! Schema Registry outage is waited out on the record it hit. Either way no
//! record is skipped, and the bootstrap (hence readiness) waits for both.
//!
//! Rows are kept as their codec's [`Compact`](crate::avro::Compact) bytes
//! and decoded on each lookup: a million small rows add ~180 MB resident
//! instead of ~900 MB as JSON trees. The bootstrap fills the loader's own
//! build without a lock per record and publishes it once; later updates go
//! live one record at a time into one of the table's shards.

mod loader;
mod store;

pub use loader::{BootstrapProgress, TableError, TableLoader};
pub use store::{Staged, Table, Tables};
