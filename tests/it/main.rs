//! Integration tests: every stage against a real Kafka-protocol broker.

mod avro_interop;
mod common;
mod config_check;
mod demo;
mod dlq_replay;
mod enrich_confluent;
mod enrich_crash;
mod enrich_dead_letters;
mod enrich_lifecycle;
mod enrich_tables;
mod enrich_topology;
mod enrich_transactions;
mod kafka_interop;
mod notify_chaos;
mod notify_crash;
mod notify_delivery;
mod notify_faults;
mod notify_interactions;
mod notify_ledger;
mod notify_lifecycle;
mod produce_errors;
mod produce_incremental;
mod produce_sources;
mod telemetry;
