//! When a delivery lets its channel go: a post, once Slack answered it.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::PacingSettings;
use crate::messages::{AlertStatus, RecurrenceMode, ResolvedUnposted, UpdateMode};
use crate::notify::pacing::Pacer;
use crate::notify::slack_health::SlackHealth;
use crate::slack::fake::{FakeSlack, FakeSlackConfig};

const TOKEN: &str = "xoxb-fake-token";

struct Setup {
    slack: FakeSlack,
    deliverer: Deliverer,
    _ledger_dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = FakeSlack::start(FakeSlackConfig {
        token: TOKEN.into(),
        channels: vec!["C1".into()],
        per_channel_per_second: None,
        ..FakeSlackConfig::default()
    })
    .await
    .expect("fake slack");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("ledger.db").display()
    );
    let ledger = Ledger::connect(&url, 2).await.expect("ledger");
    ledger.migrate().await.expect("migrations");
    let metrics = NotifyMetrics::register(&prometheus::Registry::new()).expect("metrics");
    let side = SlackSide {
        api: Arc::new(SlackApi::new(&slack.url, TOKEN, Duration::from_secs(5))),
        pacer: Arc::new(Pacer::new(&PacingSettings::roomy())),
        health: Arc::new(SlackHealth::new(3, metrics.slack_unreachable.clone())),
    };
    let settings = DeliverySettings {
        retry: RetrySettings {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
        rules: Rules {
            max_age: Duration::from_secs(3600),
            dedup_window: Duration::from_secs(3600),
        },
        claim_lease: Duration::from_secs(30),
        reconcile_delay: Duration::from_millis(100),
        group_update_interval: Duration::from_millis(100),
    };
    let deliverer = Deliverer::new(side, ledger, settings, Owner::new("test"), metrics);
    Setup {
        slack,
        deliverer,
        _ledger_dir: dir,
    }
}

fn message(alert_id: &str, group_key: Option<&str>) -> SlackMessage {
    SlackMessage {
        alert_id: alert_id.into(),
        channel_id: "C1".into(),
        text: format!("Alert {alert_id}"),
        blocks: r#"[{"type":"section","text":{"type":"mrkdwn","text":"*hi*"}}]"#.into(),
        created_at: crate::clock::now_ms(),
        pipeline: "test".into(),
        source_topic: "t".into(),
        source_partition: 0,
        source_offset: 0,
        status: AlertStatus::Firing,
        updates: UpdateMode::Edit,
        recurrence: RecurrenceMode::New,
        resolved_unposted: ResolvedUnposted::Skip,
        group_key: group_key.map(str::to_owned),
        group_window_ms: group_key.map_or(0, |_| 60_000),
    }
}

/// Delivers `message`; how the channel was let go, if it was, and whether
/// Slack had the message by then.
async fn deliver_watching_release(setup: &Setup, message: &SlackMessage) -> (Option<LetGo>, bool) {
    let (release, mut released) = ChannelRelease::new();
    let stop = CancellationToken::new();
    let delivering = setup.deliverer.deliver(message, false, &release, &stop);
    tokio::pin!(delivering);
    let posted_by_then = |slack: &FakeSlack| {
        slack
            .messages()
            .iter()
            .any(|m| m.about_alert() == Some(message.alert_id.as_str()))
    };
    let delivery = tokio::select! {
        delivery = &mut delivering => delivery,
        Ok(how) = &mut released => {
            let seen = posted_by_then(&setup.slack);
            let delivery = delivering.await.expect("delivered");
            assert_eq!(delivery.outcome, DeliveryOutcome::Posted);
            return (Some(how), seen);
        }
    };
    assert_eq!(
        delivery.expect("delivered").outcome,
        DeliveryOutcome::Posted
    );
    // Done without letting go: nothing was sent (the sender is ours).
    let let_go = released.try_recv().ok();
    (let_go, posted_by_then(&setup.slack))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_lets_its_channel_go_once_slack_answered_it() {
    let setup = setup().await;
    let message = message("a-1", None);
    let (let_go, in_slack) = deliver_watching_release(&setup, &message).await;
    assert_eq!(
        let_go,
        Some(LetGo::InOrder),
        "the channel's next message need not wait for the ledger"
    );
    assert!(in_slack, "not before Slack had the post");
    let entry = setup
        .deliverer
        .ledger()
        .get("a-1")
        .await
        .expect("ledger")
        .expect("an entry");
    assert_eq!(entry.status, Status::Posted, "recorded all the same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_post_keeps_its_channel_until_it_is_recorded() {
    // The group's next member must find this one's summary in the ledger.
    let setup = setup().await;
    let (let_go, _) = deliver_watching_release(&setup, &message("g-1", Some("disk"))).await;
    assert_eq!(let_go, None);
}
