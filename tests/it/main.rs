//! Integration tests: every stage against a real Kafka-protocol broker.

mod common;
mod enrich_topology;
mod enrich_dead_letters;
mod enrich_tables;
mod config_check;
mod enrich_crash;
