//! alertsvc: warehouse and Kafka events become enriched, actionable Slack
//! messages. The binary's subcommands are the stages; this library holds
//! them so that tests and benchmarks drive the same code.

pub mod avro;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod demo;
pub mod dlq;
pub mod enrich;
pub mod http;
pub mod kafka;
pub mod memory;
pub mod messages;
pub mod metrics;
pub mod notify;
pub mod produce;
pub mod slack;
pub mod stage;
pub mod telemetry;
#[cfg(test)]
mod test_rng;
