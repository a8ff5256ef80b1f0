//! `[notify]`: Slack, pacing, retries, the ledger, and the checks that
//! need nothing but the configuration itself.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    validate_at_least_one, validate_database_url, validate_http_url, ConfigError, Secret, Settings,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// Base URL of Slack's Web API; a local server in tests and the demo.
    pub api_url: String,
    /// Bot token (`xoxb-…`); from `ALERTSVC__NOTIFY__SLACK__BOT_TOKEN`.
    #[serde(default)]
    pub bot_token: Option<Secret>,
    /// Signing secret for interactivity requests.
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PacingSettings {
    /// Messages per second to one channel (Slack allows about one).
    pub per_channel_per_second: u32,
    /// Short bursts allowed above that rate.
    pub per_channel_burst: u32,
    /// chat.postMessage calls per second for the whole workspace.
    pub workspace_per_second: u32,
    pub workspace_burst: u32,
    /// `conversations.history` calls per minute (Slack's Tier 3 is about
    /// 50), spent on looking for posts an ambiguous answer may have made.
    #[serde(default = "tier_3_per_minute")]
    pub history_per_minute: u32,
    /// `chat.update` calls per minute for the whole workspace (Tier 3,
    /// about 50): resolutions, state changes and group summaries.
    #[serde(default = "tier_3_per_minute")]
    pub updates_per_minute: u32,
}

fn tier_3_per_minute() -> u32 {
    50
}

#[cfg(test)]
impl PacingSettings {
    /// For tests: 1,000 a second (and in a burst) on every channel and
    /// the workspace, which no test reaches, and Slack's Tier 3 for the
    /// per-minute calls. A test sets the limit it is about over this.
    pub(crate) fn roomy() -> PacingSettings {
        PacingSettings {
            per_channel_per_second: 1000,
            per_channel_burst: 1000,
            workspace_per_second: 1000,
            workspace_burst: 1000,
            history_per_minute: tier_3_per_minute(),
            updates_per_minute: tier_3_per_minute(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts for errors Slack does not document as permanent or
    /// transient. Transient failures (unreachable, timeouts, 5xx, 429) are
    /// retried for as long as the alert is younger than `max_age`.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

/// notify's ledger: the state database plus how long claims and rows live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// `sqlite://path?mode=rwc` or `postgres://…`; a secret, since URLs
    /// carry passwords. From `ALERTSVC__NOTIFY__LEDGER__DATABASE_URL`.
    pub database_url: Secret,
    /// Apply `migrations/` at start.
    pub migrate_on_start: bool,
    pub max_connections: u32,
    /// Rows untouched for this long are pruned; at least `dedup_window`
    /// and `max_age`, so a redelivered record still finds its row.
    #[serde(with = "humantime_serde", default = "default_ledger_retention")]
    pub retention: Duration,
    /// How long a claim on an alert lasts without renewal (a replica that
    /// died holding it is waited for this long); more than twice
    /// `slack.request_timeout`.
    #[serde(with = "humantime_serde", default = "default_claim_lease")]
    pub claim_lease: Duration,
    #[serde(with = "humantime_serde", default = "default_prune_interval")]
    pub prune_interval: Duration,
}

fn default_ledger_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_claim_lease() -> Duration {
    Duration::from_secs(60)
}

fn default_prune_interval() -> Duration {
    Duration::from_secs(600)
}

fn default_dedup_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_max_channel_backlog() -> usize {
    1000
}

fn default_group_update_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_reconcile_delay() -> Duration {
    Duration::from_secs(2)
}

fn default_unreachable_after() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    pub group_id: String,
    /// Topic ids.
    pub input: String,
    pub responses: String,
    pub interactions: String,
    /// Topic id of the compacted alert-state topic every state change is
    /// published to; none: states are kept and shown, not published.
    #[serde(default)]
    pub alert_state: Option<String>,
    pub http_addr: SocketAddr,
    /// Alerts older than this (from `createdAt`) are not posted.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// An alert id seen again more than this after the version it shows
    /// (by `createdAt`) is a new occurrence, posted anew.
    #[serde(with = "humantime_serde", default = "default_dedup_window")]
    pub dedup_window: Duration,
    /// Messages read but not yet finished, across all channels; beyond it
    /// every partition is paused.
    pub max_in_flight: usize,
    /// Messages waiting for one channel; beyond it the partitions feeding
    /// that channel are paused.
    #[serde(default = "default_max_channel_backlog")]
    pub max_channel_backlog: usize,
    /// After an ambiguous answer (timeout, reset, 5xx), how long to wait
    /// before looking for the message in the conversation.
    #[serde(with = "humantime_serde", default = "default_reconcile_delay")]
    pub reconcile_delay: Duration,
    /// A group's summary is edited at most once per this long: a burst of
    /// members is shown in a few edits, the last one exact.
    #[serde(with = "humantime_serde", default = "default_group_update_interval")]
    pub group_update_interval: Duration,
    /// This many Slack calls in a row that could not reach Slack mark it
    /// unreachable: partitions pause until a call succeeds.
    #[serde(default = "default_unreachable_after")]
    pub unreachable_after: u32,
    /// Names this replica in ledger claims; unique among live replicas and
    /// stable across restarts. Default: `ALERTSVC_INSTANCE_ID`, else the
    /// host name (the pod name on Kubernetes).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long shutdown waits for in-flight posts.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub slack: SlackSettings,
    pub pacing: PacingSettings,
    pub retry: RetrySettings,
    pub ledger: LedgerSettings,
}

impl NotifySettings {
    /// Cross-field checks that the types alone cannot express.
    pub(crate) fn validate(&self, settings: &Settings) -> Result<(), ConfigError> {
        for (key, id) in [
            ("notify.input", &self.input),
            ("notify.responses", &self.responses),
            ("notify.interactions", &self.interactions),
        ] {
            settings.topic_at(key, id)?;
        }
        if let Some(id) = &self.alert_state {
            settings.topic_at("notify.alert_state", id)?;
        }
        let pacing = &self.pacing;
        for (key, value) in [
            (
                "notify.pacing.per_channel_per_second",
                pacing.per_channel_per_second,
            ),
            ("notify.pacing.per_channel_burst", pacing.per_channel_burst),
            (
                "notify.pacing.workspace_per_second",
                pacing.workspace_per_second,
            ),
            ("notify.pacing.workspace_burst", pacing.workspace_burst),
            (
                "notify.pacing.history_per_minute",
                pacing.history_per_minute,
            ),
            (
                "notify.pacing.updates_per_minute",
                pacing.updates_per_minute,
            ),
            ("notify.retry.max_attempts", self.retry.max_attempts),
        ] {
            validate_at_least_one(key, value.into())?;
        }
        validate_at_least_one("notify.max_in_flight", self.max_in_flight as u64)?;
        validate_database_url("notify.ledger.database_url", &self.ledger.database_url)?;
        if self.ledger.retention < self.dedup_window.max(self.max_age) {
            return Err(ConfigError::invalid(
                "notify.ledger.retention",
                "must be at least notify.dedup_window and notify.max_age",
            ));
        }
        if self.ledger.claim_lease < self.slack.request_timeout * 2 {
            return Err(ConfigError::invalid(
                "notify.ledger.claim_lease",
                "must be at least twice notify.slack.request_timeout",
            ));
        }
        validate_at_least_one(
            "notify.max_channel_backlog",
            self.max_channel_backlog as u64,
        )?;
        validate_at_least_one("notify.unreachable_after", self.unreachable_after.into())?;
        validate_http_url("notify.slack.api_url", &self.slack.api_url)
    }
}
