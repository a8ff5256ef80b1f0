//! `[demo]`: what `alertsvc demo` runs for real and what it stands in for
//! (DESIGN §8). `config/demo/demo.toml` is layered in by the command.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoBroker {
    /// librdkafka's mock cluster in the demo process.
    Embedded,
    /// `[kafka]` as configured.
    Configured,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoSlack {
    /// The local Slack stand-in, with the preview page.
    Local,
    /// `[notify.slack]` as configured (a real workspace).
    Configured,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoWarehouse {
    /// A fresh SQLite file seeded from the demo files.
    Embedded,
    /// The jobs' configured sources.
    Configured,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    pub broker: DemoBroker,
    pub slack: DemoSlack,
    pub warehouse: DemoWarehouse,
    /// The preview page (and the acknowledge button's endpoint).
    pub http_addr: SocketAddr,
    /// Files under the config directory.
    pub seed_sql: String,
    pub failures: String,
    pub assignments: String,
    pub slack_users: String,
    /// How often a new connector failure is written while the demo runs.
    #[serde(with = "humantime_serde")]
    pub event_interval: Duration,
    /// Partitions of each topic on the embedded broker.
    pub partitions: i32,
}
