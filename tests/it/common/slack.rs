//! Notify's test fixtures: the fake Slack, ledger databases (a SQLite file
//! or a fresh PostgreSQL database per test) and message builders.

use std::collections::BTreeMap;

use alertsvc::messages::{
    AlertStatus, RecurrenceMode, ResolvedUnposted, SlackMessage, SlackResponse, UpdateMode,
};
use alertsvc::notify::delivery::{content_hash, version_of};
use alertsvc::notify::ledger::{Claim, Ledger, Owner, Status};
use alertsvc::slack::fake::{FakeMessage, FakeSlack, FakeSlackConfig};
use serde_json::json;
use sqlx::Connection;

pub const TOKEN: &str = "xoxb-test-token";
pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const POSTGRES_ENV: &str = "ALERTSVC_TEST_POSTGRES";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The fake Slack with these conversations. Names that are user ids
/// (`U…`, `W…`) become users, reached by DM as in Slack: a post to
/// `U0ADA` lands in `D0ADA` (see `alertsvc::slack::fake::dm_channel`).
pub async fn fake_slack(channels: &[&str], per_channel_per_second: Option<f64>) -> FakeSlack {
    let (users, channels): (Vec<String>, Vec<String>) = channels
        .iter()
        .map(|c| (*c).to_owned())
        .partition(|c| c.starts_with('U') || c.starts_with('W'));
    FakeSlack::start(FakeSlackConfig {
        token: TOKEN.into(),
        channels,
        users,
        archived: vec!["C0ARCHIVED".into()],
        not_in_channel: vec!["C0NOTIN".into()],
        per_channel_per_second,
        burst: 1,
        ..FakeSlackConfig::default()
    })
    .await
    .expect("fake slack")
}

/// A ledger URL: a SQLite file in `dir`, or a new PostgreSQL database.
pub async fn ledger_url(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("ledger.db").display()),
        Backend::Postgres => {
            let base = std::env::var(POSTGRES_ENV)
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
            let name = format!("alertsvc_test_{}_{}", std::process::id(), fastrand::u64(..));
            let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (scripts/install-test-deps.sh starts one)");
            // `name` is built here from digits and a fixed prefix.
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .expect("create database");
            format!("{base}/{name}")
        }
    }
}

/// Notify settings for a test: the fake Slack, the ledger, fast pacing.
pub fn notify_toml(slack: &FakeSlack, ledger: &str, per_channel_per_second: u32) -> String {
    format!(
        r#"
        [notify]
        max_age = "1h"
        reconcile_delay = "100ms"
        [notify.slack]
        api_url = "{}"
        bot_token = "{TOKEN}"
        signing_secret = "{SIGNING_SECRET}"
        request_timeout = "5s"
        [notify.pacing]
        per_channel_per_second = {per_channel_per_second}
        per_channel_burst = 1
        workspace_per_second = 1000
        workspace_burst = 1000
        [notify.ledger]
        database_url = "{ledger}"
        claim_lease = "10s"
        "#,
        slack.url
    )
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn message(alert_id: &str, channel: &str, text: &str) -> SlackMessage {
    let blocks = json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{text}*")}},
        {"type": "actions", "block_id": "alertsvc_actions", "elements": [
            {"type": "button", "action_id": "alertsvc_acknowledge",
             "text": {"type": "plain_text", "text": "Acknowledge"}, "value": alert_id}]}
    ]);
    SlackMessage {
        alert_id: alert_id.into(),
        channel_id: channel.into(),
        text: text.into(),
        blocks: blocks.to_string(),
        created_at: now_ms(),
        pipeline: "test".into(),
        source_topic: "t".into(),
        source_partition: 0,
        source_offset: 0,
        status: AlertStatus::Firing,
        updates: UpdateMode::Edit,
        recurrence: RecurrenceMode::New,
        resolved_unposted: ResolvedUnposted::Skip,
    }
}

/// A test environment for notify: fake Slack, ledger, broker and topics.
pub struct NotifyEnv {
    pub slack: FakeSlack,
    pub ledger: String,
    pub env: super::TestEnv,
    /// Holds the SQLite file; bind it for as long as the ledger is used.
    pub ledger_dir: tempfile::TempDir,
}

pub async fn notify_env(
    channels: &[&str],
    fake_limit: Option<f64>,
    backend: Backend,
    per_channel_per_second: u32,
) -> NotifyEnv {
    let slack = fake_slack(channels, fake_limit).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_url(backend, dir.path()).await;
    let env = super::TestEnv::new(&notify_toml(&slack, &ledger, per_channel_per_second)).await;
    NotifyEnv {
        slack,
        ledger,
        env,
        ledger_dir: dir,
    }
}

/// What a replica that died mid-post leaves in the ledger: the alert
/// `pending` (a post may or may not have reached Slack) under a claim whose
/// lease has run out.
pub async fn leave_pending(ledger: &Ledger, message: &SlackMessage, channel: &str) {
    let dead = Owner::new("replica-that-died");
    let now = now_ms();
    let Claim::Held(entry) = ledger
        .claim(&message.alert_id, channel, &dead, now, now - 1)
        .await
        .expect("claim")
    else {
        panic!("{} is held by a live replica", message.alert_id);
    };
    let mut entry = *entry;
    entry.status = Status::Pending;
    entry.channel_id = channel.to_owned();
    entry.content_hash = content_hash(message);
    entry.version = version_of(message);
    entry.attempts = 1;
    ledger
        .save(&entry, &dead, now, Some(now - 1))
        .await
        .expect("save pending");
}

/// Responses by alert id, in the order written.
pub fn by_alert(responses: &[SlackResponse]) -> BTreeMap<String, Vec<&SlackResponse>> {
    let mut map: BTreeMap<String, Vec<&SlackResponse>> = BTreeMap::new();
    for r in responses {
        map.entry(r.alert_id.clone()).or_default().push(r);
    }
    map
}

/// Top-level posts per alert id, as the fake Slack stored them.
pub fn posts_per_alert(messages: &[FakeMessage]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in messages {
        *counts
            .entry(m.alert_id().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// A version of an alert: rendered from source record `offset` created at
/// `created_at`.
pub fn version(
    alert_id: &str,
    channel: &str,
    text: &str,
    offset: i64,
    created_at: i64,
) -> SlackMessage {
    let mut m = message(alert_id, channel, text);
    m.source_offset = offset;
    m.created_at = created_at;
    m
}

/// The test's settings with notify's changed by `change`.
pub fn notify_settings(
    env: &super::TestEnv,
    change: impl FnOnce(&mut alertsvc::config::NotifySettings),
) -> alertsvc::config::Settings {
    let mut settings = env.settings.clone();
    if let Some(notify) = settings.notify.as_mut() {
        change(notify);
    }
    settings
}

/// Polls notify's `/metrics` until `series` satisfies `check`.
pub async fn wait_notify_metric(
    env: &super::TestEnv,
    series: &str,
    check: impl Fn(f64) -> bool,
    timeout: std::time::Duration,
) -> f64 {
    super::eventually(timeout, &format!("notify metric {series}"), || async {
        super::metric_value(&env.notify_metrics().await, series).filter(|v| check(*v))
    })
    .await
}

/// Asserts that nothing reached `slack-messages.dlq`.
pub async fn no_dead_letters(env: &super::TestEnv) {
    let dead = env
        .read_until(
            &env.dlq("slack_messages"),
            |_| false,
            std::time::Duration::from_millis(500),
        )
        .await;
    assert!(
        dead.is_empty(),
        "dead letters: {:?}",
        dead.iter().map(|r| &r.headers).collect::<Vec<_>>()
    );
}
