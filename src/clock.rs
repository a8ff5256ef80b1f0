//! The wall clock in the unit every stage stores and compares: milliseconds
//! since the Unix epoch (Kafka timestamps, ledger rows, leases, Avro
//! `timestamp-millis`).

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
