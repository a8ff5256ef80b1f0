//! notify against the fake Slack: delivery, pacing, idempotency, failures.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use alertsvc::messages::DeliveryOutcome;
use alertsvc::slack::fake::FakeMessage;

use crate::common::slack::{
    by_alert, leave_pending, message, no_dead_letters, notify_env, notify_settings, now_ms,
    posts_per_alert, version, Backend, NotifyEnv,
};
use crate::common::{eventually, http_get, metric_value, wait_ready_at};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_posted_once_in_channel_order_with_responses() {
    let channels = ["C1", "C2", "C3", "C4", "C5", "C6"];
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&channels, None, Backend::Sqlite, 50).await;
    let mut expected_order: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..36 {
        let channel = channels[i % channels.len()];
        let alert = format!("alert-{i}");
        env.produce_message(&message(&alert, channel, &format!("Alert {i}")))
            .await;
        expected_order.entry(channel).or_default().push(alert);
    }
    let notify = env.start_notify().await;
    let responses = env.read_responses(36, WAIT).await;
    assert_eq!(responses.len(), 36, "one response per message");
    let fake = slack.messages();
    assert_eq!(fake.len(), 36);
    assert!(
        posts_per_alert(&fake).values().all(|n| *n == 1),
        "each posted once"
    );
    for (channel, alerts) in &expected_order {
        let posted: Vec<String> = fake
            .iter()
            .filter(|m| m.channel == *channel)
            .map(|m| m.alert_id().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(&posted, alerts, "order in {channel}");
    }
    for response in &responses {
        assert!(response.ok, "{response:?}");
        assert_eq!(response.outcome, DeliveryOutcome::Posted);
        let posted = fake
            .iter()
            .find(|m| m.alert_id() == Some(response.alert_id.as_str()))
            .unwrap();
        assert_eq!(response.ts.as_deref(), Some(posted.ts.as_str()));
        assert_eq!(response.channel_id, posted.channel);
        assert_eq!(response.attempts, 1);
    }
    let first = fake
        .iter()
        .find(|m| m.alert_id() == Some("alert-0"))
        .unwrap();
    assert_eq!(first.text, "Alert 0");
    assert_eq!(
        first.blocks[1]["elements"][0]["action_id"], "alertsvc_acknowledge",
        "blocks as sent"
    );
    assert_eq!(
        first.metadata.as_ref().unwrap()["event_type"],
        "alertsvc_alert"
    );
    notify.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_channel_waits_without_holding_back_others() {
    // notify's own pacing is set too fast on purpose: Slack's 429s and
    // Retry-After must do the pacing.
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["CBUSY", "CQUIET"], Some(1.0), Backend::Sqlite, 20).await;
    for i in 0..5 {
        env.produce_message(&message(&format!("busy-{i}"), "CBUSY", "burst"))
            .await;
    }
    for i in 0..3 {
        env.produce_message(&message(&format!("quiet-{i}"), "CQUIET", "calm"))
            .await;
    }
    let notify = env.start_notify().await;
    let responses = env.read_responses(8, WAIT).await;
    assert_eq!(responses.len(), 8);
    assert!(
        responses
            .iter()
            .all(|r| r.ok && r.outcome == DeliveryOutcome::Posted),
        "{responses:?}"
    );
    let fake = slack.messages();
    let busy: Vec<_> = fake
        .iter()
        .filter(|m| m.channel == "CBUSY")
        .map(|m| m.alert_id().unwrap().to_owned())
        .collect();
    assert_eq!(
        busy,
        (0..5).map(|i| format!("busy-{i}")).collect::<Vec<_>>(),
        "nothing lost, in order"
    );
    assert!(
        slack.stats().rate_limited > 0,
        "the fake enforced its limit"
    );
    let last_quiet = fake.iter().rposition(|m| m.channel == "CQUIET").unwrap();
    let last_busy = fake.iter().rposition(|m| m.channel == "CBUSY").unwrap();
    assert!(
        last_quiet < last_busy,
        "CQUIET was not delayed behind CBUSY: {fake:?}"
    );
    let metrics = env.notify_metrics().await;
    assert!(metric_value(&metrics, "alertsvc_slack_rate_limited_total").unwrap_or(0.0) >= 1.0);
    notify.stop().await.expect("clean stop");
}

/// `chat.update` is tier-limited workspace-wide (Tier 3): edits past the
/// limit are answered 429 before Slack reads them, and notify waits out each
/// `Retry-After`; every edit lands once, no alert is posted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_past_slacks_update_tier_wait_and_all_land() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1", "C2"], None, Backend::Sqlite, 50).await;
    slack.set_update_limit(Some(2), Duration::from_secs(1));
    let alerts: Vec<(String, &str)> = (0..4)
        .map(|i| (format!("a-{i}"), if i % 2 == 0 { "C1" } else { "C2" }))
        .collect();
    for (alert, channel) in &alerts {
        env.produce_message(&message(alert, channel, "first")).await;
    }
    let notify = env.start_notify().await;
    env.read_responses(4, WAIT).await;
    for (alert, channel) in &alerts {
        env.produce_message(&message(alert, channel, "second"))
            .await;
    }
    let responses = env.read_responses(8, WAIT).await;
    notify.stop().await.expect("clean stop");

    assert!(slack.stats().rate_limited >= 2, "{:?}", slack.stats());
    let shown = slack.messages();
    assert_eq!(shown.len(), 4, "no second post: {shown:?}");
    for m in &shown {
        assert_eq!((m.text.as_str(), m.edits), ("second", 1), "{m:?}");
    }
    for (alert, outcomes) in by_alert(&responses) {
        let seen: Vec<_> = outcomes.iter().map(|r| r.outcome).collect();
        assert_eq!(
            seen,
            [DeliveryOutcome::Posted, DeliveryOutcome::Updated],
            "{alert}"
        );
    }
    no_dead_letters(&env).await;
}

/// An edit waiting for `chat.update`'s tier (workspace-wide) does not hold
/// up new alerts in its channel: they are posted while it waits. The
/// alert's own later version still waits for that edit, and every edit
/// lands in order, within the tier (no 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_waiting_for_its_tier_does_not_hold_up_its_channel() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    // 12 edits a minute: one at once, then one every 5.1 s.
    slack.set_update_limit(Some(12), Duration::from_secs(60));
    let settings = notify_settings(&env, |n| n.pacing.updates_per_minute = 12);
    let now = now_ms();
    env.produce_message(&version("a-0", "C1", "v1", 1, now))
        .await;
    let notify = env.start_notify_with(settings).await;
    env.read_responses(1, WAIT).await;
    env.produce_message(&version("a-0", "C1", "v2", 2, now))
        .await;
    env.produce_message(&version("a-0", "C1", "v3", 3, now))
        .await;
    // v2's edit took the tier's burst: v3's waits ~5 s from here.
    env.read_responses(2, WAIT).await;
    for i in 0..4 {
        env.produce_message(&message(&format!("b-{i}"), "C1", "new"))
            .await;
    }
    env.produce_message(&version("a-0", "C1", "v4", 4, now))
        .await;
    let responses = env.read_responses(8, WAIT).await;
    notify.stop().await.expect("clean stop");

    // Where each of a-0's answers is among all of them: v1, v2, v3, v4.
    let a0_at: Vec<usize> = responses
        .iter()
        .enumerate()
        .filter(|(_, r)| r.alert_id == "a-0")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(a0_at.len(), 4, "{responses:?}");
    let v3_edit = a0_at[2];
    let posted_new: Vec<usize> = responses
        .iter()
        .enumerate()
        .filter(|(_, r)| r.alert_id.starts_with("b-"))
        .map(|(i, r)| {
            assert_eq!(r.outcome, DeliveryOutcome::Posted, "{r:?}");
            i
        })
        .collect();
    assert_eq!(posted_new.len(), 4, "{responses:?}");
    assert!(
        posted_new.iter().all(|i| *i < v3_edit),
        "new alerts waited for the edit: {responses:?}"
    );
    let a0: Vec<_> = by_alert(&responses)["a-0"]
        .iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        a0,
        [
            DeliveryOutcome::Posted,
            DeliveryOutcome::Updated,
            DeliveryOutcome::Updated,
            DeliveryOutcome::Updated
        ]
    );
    let fake = slack.messages();
    assert_eq!(fake.len(), 5, "one post per alert: {fake:?}");
    let shown = fake.iter().find(|m| m.alert_id() == Some("a-0")).unwrap();
    assert_eq!(shown.revisions, ["v1", "v2", "v3", "v4"], "in order");
    assert_eq!(slack.stats().rate_limited, 0, "{:?}", slack.stats());
    no_dead_letters(&env).await;
}

/// A post answered ambiguously must be looked for before it is made again,
/// and `conversations.history` has a workspace-wide tier: a lookup waiting
/// for it does not hold up new alerts in its channel. They are posted
/// meanwhile, the looked-up alert is still posted exactly once, and no
/// lookup runs into a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_waiting_for_its_tier_does_not_hold_up_its_channel() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1", "C2"], None, Backend::Sqlite, 50).await;
    // 12 lookups a minute: one at once, then one every 5.1 s.
    slack.set_history_per_minute(Some(12));
    let settings = notify_settings(&env, |n| n.pacing.history_per_minute = 12);
    let notify = env.start_notify_with(settings).await;
    // x-0's post fails (500, nothing stored): its lookup takes the burst.
    slack.fail_next(500, 1);
    env.produce_message(&message("x-0", "C2", "first")).await;
    env.read_responses(1, WAIT).await;
    // a-0's post fails too: its lookup waits ~5 s for the tier.
    slack.fail_next(500, 1);
    env.produce_message(&message("a-0", "C1", "looked up"))
        .await;
    for i in 0..4 {
        env.produce_message(&message(&format!("b-{i}"), "C1", "new"))
            .await;
    }
    let responses = env.read_responses(6, WAIT).await;
    notify.stop().await.expect("clean stop");

    let at = |alert: &str| {
        responses
            .iter()
            .position(|r| r.alert_id == alert)
            .unwrap_or_else(|| panic!("no answer for {alert}: {responses:?}"))
    };
    for r in &responses {
        assert_eq!(r.outcome, DeliveryOutcome::Posted, "{r:?}");
    }
    for i in 0..4 {
        assert!(
            at(&format!("b-{i}")) < at("a-0"),
            "new alerts waited for the lookup: {responses:?}"
        );
    }
    let fake = slack.messages();
    assert_eq!(fake.len(), 6, "{fake:?}");
    assert!(posts_per_alert(&fake).values().all(|n| *n == 1), "{fake:?}");
    assert_eq!(slack.stats().rate_limited, 0, "{:?}", slack.stats());
    no_dead_letters(&env).await;
}

async fn redelivery_is_not_posted_twice_and_changes_update(backend: Backend) {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, backend, 50).await;
    for i in 0..4 {
        env.produce_message(&message(&format!("a-{i}"), "C1", "first"))
            .await;
    }
    let notify = env.start_notify().await;
    env.read_responses(4, WAIT).await;
    notify.stop().await.expect("clean stop");

    // The same records consumed again (a new group starts from the
    // beginning), then a changed version of a-0.
    let mut settings = env.settings.clone();
    if let Some(n) = settings.notify.as_mut() {
        n.group_id = format!("{}-again", n.group_id);
    }
    let rerun = env.start_notify_with(settings).await;
    env.produce_message(&message("a-0", "C1", "second version"))
        .await;
    let responses = env.read_responses(4 + 5, WAIT).await;
    rerun.stop().await.expect("clean stop");

    let fake = slack.messages();
    assert_eq!(fake.len(), 4, "no second post: {fake:?}");
    let outcomes = by_alert(&responses);
    for i in 1..4 {
        let seen: Vec<_> = outcomes[&format!("a-{i}")]
            .iter()
            .map(|r| r.outcome)
            .collect();
        assert_eq!(seen, [DeliveryOutcome::Posted, DeliveryOutcome::Duplicate]);
    }
    let a0: Vec<_> = outcomes["a-0"].iter().map(|r| r.outcome).collect();
    assert_eq!(
        a0,
        [
            DeliveryOutcome::Posted,
            DeliveryOutcome::Duplicate,
            DeliveryOutcome::Updated
        ]
    );
    let updated = fake.iter().find(|m| m.alert_id() == Some("a-0")).unwrap();
    assert_eq!(updated.text, "second version");
    assert_eq!(updated.edits, 1);
    assert_eq!(outcomes["a-0"][2].ts.as_deref(), Some(updated.ts.as_str()));
}

crate::on_both_ledgers!(redelivery_is_not_posted_twice_and_changes_update => redelivery_sqlite, redelivery_postgres);

async fn pending_entry_is_reconciled_before_any_repost(backend: Backend) {
    let NotifyEnv {
        slack,
        env,
        ledger: ledger_db,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, backend, 50).await;
    // A crash right after Slack's answer: the ledger says pending, Slack
    // has the message (found by its metadata).
    let ledger = alertsvc::notify::ledger::Ledger::connect(&ledger_db, 1)
        .await
        .unwrap();
    ledger.migrate().await.unwrap();
    let crashed = message("crashed", "C1", "posted before the crash");
    leave_pending(&ledger, &crashed, "C1").await;
    // Slack's ts of a post made just after the pending entry.
    let crashed_ts = format!("{}.000001", now_ms() / 1000);
    slack.insert_message(FakeMessage {
        channel: "C1".into(),
        ts: crashed_ts.clone(),
        text: crashed.text.clone(),
        blocks: serde_json::from_str(&crashed.blocks).unwrap(),
        metadata: Some(serde_json::json!({"event_type": "alertsvc_alert", "event_payload": {"alert_id": "crashed", "occurrence": "1"}})),
        edits: 0,
        revisions: vec![crashed.text.clone()],
        thread_ts: None,
        reply_broadcast: false,
    });
    // Pending but never reached Slack: posted now.
    let lost = message("lost", "C1", "never reached Slack");
    leave_pending(&ledger, &lost, "C1").await;

    env.produce_message(&crashed).await;
    env.produce_message(&lost).await;
    let notify = env.start_notify().await;
    let responses = env.read_responses(2, WAIT).await;
    notify.stop().await.expect("clean stop");
    let outcomes = by_alert(&responses);
    assert_eq!(
        outcomes["crashed"][0].outcome,
        DeliveryOutcome::Posted,
        "found, reported once"
    );
    assert_eq!(
        outcomes["crashed"][0].ts.as_deref(),
        Some(crashed_ts.as_str())
    );
    assert_eq!(outcomes["lost"][0].outcome, DeliveryOutcome::Posted);
    assert_eq!(
        posts_per_alert(&slack.messages()),
        BTreeMap::from([("crashed".to_owned(), 1), ("lost".to_owned(), 1)])
    );
    assert!(slack.stats().history_calls >= 2);
    let entry = ledger.get("crashed").await.unwrap().unwrap();
    assert_eq!(entry.status, alertsvc::notify::ledger::Status::Posted);
}

crate::on_both_ledgers!(pending_entry_is_reconciled_before_any_repost => pending_reconciled_sqlite, pending_reconciled_postgres);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_dead_lettered_transient_ones_retried_and_stale_alerts_expire() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    slack.fail_next(503, 2);
    env.produce_message(&message("ok-1", "C1", "fine")).await;
    env.produce_message(&message("gone", "C0NOPE", "no such channel"))
        .await;
    env.produce_message(&message("archived", "C0ARCHIVED", "archived"))
        .await;
    let mut bad_blocks = message("bad-blocks", "C1", "bad");
    bad_blocks.blocks =
        r#"[{"type": "header", "text": {"type": "plain_text", "text": "x"}, "block_id": ""}]"#
            .replace("\"\"", &format!("\"{}\"", "b".repeat(300)));
    env.produce_message(&bad_blocks).await;
    let mut stale = message("stale", "C1", "too late");
    stale.created_at = now_ms() - 2 * 3_600_000;
    env.produce_message(&stale).await;
    env.produce_message(&message("ok-2", "C1", "fine again"))
        .await;

    let notify = env.start_notify().await;
    let responses = env.read_responses(6, WAIT).await;
    let outcomes = by_alert(&responses);
    let first = |id: &str| outcomes[id][0];
    assert_eq!(
        (first("ok-1").ok, first("ok-1").outcome),
        (true, DeliveryOutcome::Posted)
    );
    // The two 503s hit whichever calls came first; those were retried.
    assert_eq!(slack.stats().server_errors, 2);
    assert_eq!(
        responses.iter().map(|r| r.attempts).sum::<i32>(),
        5 + 2,
        "one call each, two retries"
    );
    assert_eq!(
        (first("gone").ok, first("gone").error.as_deref()),
        (false, Some("channel_not_found"))
    );
    assert_eq!(first("archived").error.as_deref(), Some("is_archived"));
    assert_eq!(first("bad-blocks").error.as_deref(), Some("invalid_blocks"));
    assert_eq!(
        (
            first("stale").ok,
            first("stale").outcome,
            first("stale").error.as_deref()
        ),
        (false, DeliveryOutcome::Expired, Some("expired"))
    );
    assert_eq!(first("ok-2").outcome, DeliveryOutcome::Posted);
    let posted: BTreeSet<_> = slack
        .messages()
        .iter()
        .map(|m| m.alert_id().unwrap().to_owned())
        .collect();
    assert_eq!(
        posted,
        BTreeSet::from(["ok-1".to_owned(), "ok-2".to_owned()])
    );

    let dead = env.read(&env.dlq("slack_messages"), 3, WAIT).await;
    let reasons: BTreeSet<_> = dead
        .iter()
        .map(|r| r.headers["alertsvc.dlq.reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            "Slack error: channel_not_found".into(),
            "Slack error: is_archived".into(),
            "Slack error: invalid_blocks".into()
        ])
    );
    assert!(dead
        .iter()
        .all(|r| r.headers["alertsvc.dlq.stage"] == "deliver"));
    // Each dead letter names its alert and where it was read from.
    let named: BTreeSet<_> = dead
        .iter()
        .map(|r| {
            (
                r.headers["alertsvc.dlq.alert_id"].clone(),
                r.headers["alertsvc.dlq.source.topic"].clone(),
            )
        })
        .collect();
    let input = env.topic("slack_messages");
    assert_eq!(
        named,
        BTreeSet::from([
            ("archived".to_owned(), input.clone()),
            ("bad-blocks".to_owned(), input.clone()),
            ("gone".to_owned(), input),
        ])
    );
    notify.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_stops_delivery_and_fails_readiness() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    env.produce_message(&message("before", "C1", "delivered"))
        .await;
    let notify = env.start_notify().await;
    env.read_responses(1, WAIT).await;
    wait_ready_at(env.notify_addr(), WAIT).await;

    slack.revoke_token();
    for i in 0..3 {
        env.produce_message(&message(&format!("after-{i}"), "C1", "held"))
            .await;
    }
    let ready_url = format!("http://{}/readyz", env.notify_addr());
    eventually(WAIT, "readiness to fail", || async {
        (http_get(&ready_url).await.map(|(s, _)| s) == Some(503)).then_some(())
    })
    .await;
    // Stopped, notify can write nothing more: what the topics hold now is
    // all it ever wrote for the held messages.
    notify.stop().await.expect("clean stop");
    let everything = |_: &[_]| true;
    let responses = env
        .read_until(&env.topic("slack_responses"), everything, WAIT)
        .await;
    assert_eq!(
        responses.len(),
        1,
        "no response, no dead letter for held messages"
    );
    assert_eq!(slack.messages().len(), 1);
    let dead_letters = env
        .read_until(&env.dlq("slack_messages"), everything, WAIT)
        .await;
    assert_eq!(dead_letters.len(), 0);
    // Held, not skipped: only the delivered message's offset is committed,
    // so a restart with a good token reads the three again.
    let group = &env.settings.notify.as_ref().expect("notify").group_id;
    let committed: i64 = env
        .committed(group, &env.topic("slack_messages"), 3)
        .iter()
        .map(|o| (*o).max(0))
        .sum();
    assert_eq!(committed, 1);
}
