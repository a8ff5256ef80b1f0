//! Notify's test fixtures: the fake Slack, ledger databases (a SQLite file
//! or a fresh PostgreSQL database per test) and message builders.

use std::collections::BTreeMap;

pub use alertsvc::clock::now_ms;
use alertsvc::messages::{
    AlertStatus, DeliveryOutcome, RecurrenceMode, ResolvedUnposted, SlackMessage, SlackResponse,
    UpdateMode,
};
use alertsvc::notify::delivery::{content_hash, version_of};
use alertsvc::notify::ledger::{Claim, Ledger, Owner, Status};
use alertsvc::slack::fake::{FakeMessage, FakeSlack, FakeSlackConfig};
use serde_json::json;

pub const TOKEN: &str = "xoxb-test-token";
pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const POSTGRES_ENV: &str = "ALERTSVC_TEST_POSTGRES";

/// The database a ledger (notify's, produce's state) lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One scenario (`async fn(Backend)`) as two tests, on a SQLite and on a
/// PostgreSQL ledger: `on_both_ledgers!(scenario => scenario_sqlite,
/// scenario_postgres);`.
#[macro_export]
macro_rules! on_both_ledgers {
    ($scenario:ident => $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $scenario($crate::common::slack::Backend::Sqlite).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            $scenario($crate::common::slack::Backend::Postgres).await;
        }
    };
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
            let server = std::env::var(POSTGRES_ENV)
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
            alertsvc::db::create_scratch_database(&server, "alertsvc_test")
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (scripts/install-test-deps.sh starts one)")
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
        group_key: None,
        group_window_ms: 0,
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
    notify_env_with(channels, fake_limit, backend, per_channel_per_second, "").await
}

/// Like [`notify_env`], with `extra` TOML (other stages' settings) after
/// notify's.
pub async fn notify_env_with(
    channels: &[&str],
    fake_limit: Option<f64>,
    backend: Backend,
    per_channel_per_second: u32,
    extra: &str,
) -> NotifyEnv {
    let slack = fake_slack(channels, fake_limit).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_url(backend, dir.path()).await;
    let toml = notify_toml(&slack, &ledger, per_channel_per_second) + extra;
    let env = super::TestEnv::new(&toml).await;
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

/// Produces `messages` in order, runs notify with `settings` until it has
/// answered each of them, and stops it: the responses, in order.
pub async fn deliver_all(
    env: &super::TestEnv,
    messages: &[&SlackMessage],
    settings: alertsvc::config::Settings,
) -> Vec<SlackResponse> {
    for message in messages {
        env.produce_message(message).await;
    }
    let notify = env.start_notify_with(settings).await;
    let responses = env
        .read_responses(messages.len(), std::time::Duration::from_secs(60))
        .await;
    notify.stop().await.expect("clean stop");
    responses
}

/// What notify did with each message, in order.
pub fn outcomes(responses: &[SlackResponse]) -> Vec<DeliveryOutcome> {
    responses.iter().map(|r| r.outcome).collect()
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

/// A message carrying the shipped state controls (as
/// `config/templates/connector_failure.blocks.json.j2` renders them):
/// Acknowledge, Resolve, the Snooze menu and a link button.
pub fn stateful_message(alert_id: &str, channel: &str, text: &str) -> SlackMessage {
    let option = |label: &str, value: &str| json!({"text": {"type": "plain_text", "text": label}, "value": value});
    let blocks = json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{text}*")}},
        {"type": "actions", "block_id": "alertsvc_actions", "elements": [
            {"type": "button", "action_id": "alertsvc_acknowledge", "style": "primary",
             "text": {"type": "plain_text", "text": "Acknowledge"}, "value": alert_id},
            {"type": "button", "action_id": "alertsvc_resolve",
             "text": {"type": "plain_text", "text": "Resolve"}, "value": alert_id},
            {"type": "static_select", "action_id": "alertsvc_snooze",
             "placeholder": {"type": "plain_text", "text": "Snooze"},
             "options": [option("Snooze 1 hour", "1h"), option("Snooze 4 hours", "4h"),
                         option("Snooze 24 hours", "24h")]},
            {"type": "button", "action_id": "alertsvc_open_console",
             "text": {"type": "plain_text", "text": "Open"}, "url": "https://example.com"}]}
    ]);
    let mut m = message(alert_id, channel, text);
    m.blocks = blocks.to_string();
    m
}

/// A button as Slack reports its click.
pub fn button(action_id: &str, value: &str) -> serde_json::Value {
    json!({"type": "button", "action_id": action_id, "block_id": "alertsvc_actions",
           "value": value, "action_ts": format!("{}.{}", now_ms(), fastrand::u32(..))})
}

/// A `static_select` choice as Slack reports it: the option, no `value`.
pub fn menu_choice(action_id: &str, value: &str) -> serde_json::Value {
    json!({"type": "static_select", "action_id": action_id, "block_id": "alertsvc_actions",
           "selected_option": {"text": {"type": "plain_text", "text": value}, "value": value},
           "action_ts": format!("{}.{}", now_ms(), fastrand::u32(..))})
}

/// Clicks `action` on `shown` (the message as Slack shows it) as user
/// `(id, name)`: a signed `block_actions` request to notify's
/// `/slack/interactions`, as Slack sends it. Returns the HTTP status.
pub async fn click(
    env: &super::TestEnv,
    shown: &FakeMessage,
    user: (&str, &str),
    action: serde_json::Value,
) -> u16 {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user.0, "username": user.1, "team_id": "T1"},
        "channel": {"id": shown.channel, "name": "alerts"},
        "container": {"type": "message", "message_ts": shown.ts, "channel_id": shown.channel},
        "message": {"type": "message", "ts": shown.ts, "text": shown.text,
                    "blocks": shown.blocks, "metadata": shown.metadata},
        "actions": [action]
    });
    let body = format!(
        "payload={}",
        form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
    );
    let ts = (now_ms() / 1000).to_string();
    let signature = alertsvc::slack::signing::sign(SIGNING_SECRET, &ts, body.as_bytes());
    reqwest::Client::new()
        .post(format!("http://{}/slack/interactions", env.notify_addr()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await
        .expect("interaction request")
        .status()
        .as_u16()
}

/// The alert's own message in the fake Slack once `done` holds for it.
pub async fn wait_message(
    slack: &FakeSlack,
    alert_id: &str,
    done: impl Fn(&FakeMessage) -> bool,
    timeout: std::time::Duration,
) -> FakeMessage {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = slack
            .messages()
            .into_iter()
            .find(|m| m.alert_id() == Some(alert_id));
        match found {
            Some(m) if done(&m) => return m,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "{alert_id}: not as expected in time: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `alert-state` from the start until `expected` records arrived (plus
/// the reader's settle period, to catch extras): (key, decoded value).
pub async fn read_alert_states(
    env: &super::TestEnv,
    expected: usize,
    timeout: std::time::Duration,
) -> Vec<(Option<String>, serde_json::Value)> {
    env.read_decoded("alert_state", expected, timeout)
        .await
        .into_iter()
        .map(|(record, value)| (record.key, value))
        .collect()
}
