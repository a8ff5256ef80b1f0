//! notify through what Slack and its own deployment do to it: an outage,
//! answers that may or may not mean "posted", DMs, one channel with a
//! backlog, two replicas reading the same records, versions redelivered out
//! of order, and an alert id coming back after its dedup window.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use alertsvc::messages::DeliveryOutcome;
use alertsvc::notify::ledger::Ledger;
use alertsvc::slack::fake::{FakeMessage, OutageMode};

use crate::common::slack::{
    by_alert, deliver_all, leave_pending, message, no_dead_letters, notify_env, notify_settings,
    now_ms, outcomes, posts_per_alert, version, wait_notify_metric, Backend, NotifyEnv,
};
use crate::common::{eventually, http_get, RunningStage};

const WAIT: Duration = Duration::from_secs(60);

async fn some_partition_paused(env: &crate::common::TestEnv) {
    wait_notify_metric(env, "alertsvc_notify_paused_partitions", |v| v >= 1.0, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_outage_pauses_consumption_and_loses_nothing() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1", "C2", "U0ADA"], None, Backend::Sqlite, 50).await;
    let notify = env
        .start_notify_with(notify_settings(&env, |n| {
            n.unreachable_after = 2;
            n.retry.max_backoff = Duration::from_millis(400);
        }))
        .await;
    env.produce_message(&message("before", "C1", "before the outage"))
        .await;
    env.read_responses(1, WAIT).await;

    slack.set_outage(Some(OutageMode::Refuse));
    let targets = ["C1", "C2", "U0ADA"];
    for i in 0..9 {
        env.produce_message(&message(&format!("during-{i}"), targets[i % 3], "during"))
            .await;
    }
    // Young enough now, too old by the time Slack is back.
    let mut aging = message("aging", "C2", "too late by the end");
    aging.created_at = now_ms() - 3_600_000 + 2_000;
    env.produce_message(&aging).await;

    wait_notify_metric(&env, "alertsvc_slack_unreachable", |v| v == 1.0, WAIT).await;
    some_partition_paused(&env).await;
    let ready = http_get(&format!("http://{}/readyz", env.notify_addr())).await;
    assert_eq!(
        ready.map(|(s, _)| s),
        Some(200),
        "an outage of Slack is not notify's"
    );
    // The outage lasts past `aging`'s max_age and past the retry budget
    // of an unknown error (`retry.max_attempts`, 8): conditions, not a
    // fixed time.
    let expired_at = aging.created_at + 3_600_000;
    eventually(WAIT, "aging past its max_age", || async {
        (now_ms() > expired_at).then_some(())
    })
    .await;
    eventually(
        WAIT,
        "more refused calls than retry.max_attempts",
        || async { (slack.stats().outage_rejections > 8).then_some(()) },
    )
    .await;
    assert_eq!(
        slack.messages().len(),
        1,
        "nothing posted during the outage"
    );
    slack.set_outage(None);

    let responses = env.read_responses(11, WAIT).await;
    let unreachable =
        crate::common::metric_value(&env.notify_metrics().await, "alertsvc_slack_unreachable");
    notify.stop().await.expect("clean stop");
    assert_eq!(unreachable, Some(0.0), "Slack reachable again");
    let outcomes = by_alert(&responses);
    for i in 0..9 {
        let id = format!("during-{i}");
        let seen: Vec<_> = outcomes[&id].iter().map(|r| r.outcome).collect();
        assert_eq!(seen, [DeliveryOutcome::Posted], "{id}");
    }
    let aging: Vec<_> = outcomes["aging"]
        .iter()
        .map(|r| (r.outcome, r.ok))
        .collect();
    assert_eq!(aging, [(DeliveryOutcome::Expired, false)]);
    let posts = posts_per_alert(&slack.messages());
    assert!(posts.values().all(|n| *n == 1), "{posts:?}");
    assert_eq!(posts.len(), 10, "all but the expired one");
    assert!(slack.stats().outage_rejections > 0);
    no_dead_letters(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_answers_are_looked_up_not_posted_again() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1", "C2"], None, Backend::Sqlite, 50).await;
    // Every post is stored, and answered 500 or after the client gave up.
    slack.set_ambiguous(1.0, Duration::from_millis(1_500));
    let notify = env
        .start_notify_with(notify_settings(&env, |n| {
            n.slack.request_timeout = Duration::from_secs(1);
        }))
        .await;
    for i in 0..6 {
        env.produce_message(&message(&format!("a-{i}"), ["C1", "C2"][i % 2], "maybe"))
            .await;
    }
    let responses = env.read_responses(6, WAIT).await;
    let metrics = env.notify_metrics().await;
    notify.stop().await.expect("clean stop");
    let fake = slack.messages();
    assert_eq!(
        posts_per_alert(&fake).values().copied().collect::<Vec<_>>(),
        vec![1; 6],
        "each stored once"
    );
    assert_eq!(slack.stats().ambiguous, 6);
    for response in &responses {
        assert_eq!(response.outcome, DeliveryOutcome::Posted, "{response:?}");
        let stored = fake
            .iter()
            .find(|m| m.alert_id() == Some(response.alert_id.as_str()))
            .expect("stored");
        assert_eq!(response.ts.as_deref(), Some(stored.ts.as_str()));
    }
    assert_eq!(
        crate::common::metric_value(
            &metrics,
            "alertsvc_notify_reconciliations_total{result=\"found\"}"
        ),
        Some(6.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_go_to_the_conversation_and_are_reconciled_there() {
    let NotifyEnv {
        slack,
        env,
        ledger: ledger_url,
        ledger_dir: _ledger_dir,
    } = notify_env(&["U0ADA"], None, Backend::Sqlite, 50).await;
    let ledger = Ledger::connect(&ledger_url, 1).await.unwrap();
    ledger.migrate().await.unwrap();
    // A replica died after Slack stored this DM and before the ledger
    // said so: the entry names the DM conversation, as notify writes it.
    let crashed = message("crashed-dm", "U0ADA", "posted before the crash");
    leave_pending(&ledger, &crashed, "D0ADA").await;
    slack.insert_message(FakeMessage {
        channel: "D0ADA".into(),
        ts: format!("{}.000001", now_ms() / 1000),
        text: crashed.text.clone(),
        blocks: serde_json::from_str(&crashed.blocks).unwrap(),
        metadata: Some(serde_json::json!({"event_type": "alertsvc_alert",
            "event_payload": {"alert_id": "crashed-dm", "occurrence": "1"}})),
        edits: 0,
        revisions: vec![crashed.text.clone()],
        thread_ts: None,
        reply_broadcast: false,
    });
    env.produce_message(&crashed).await;
    for i in 0..2 {
        env.produce_message(&message(&format!("dm-{i}"), "U0ADA", "to Ada"))
            .await;
    }
    let notify = env.start_notify().await;
    let responses = env.read_responses(3, WAIT).await;
    notify.stop().await.expect("clean stop");
    for response in &responses {
        assert_eq!(response.outcome, DeliveryOutcome::Posted, "{response:?}");
        assert_eq!(
            response.channel_id, "D0ADA",
            "the conversation, not the user"
        );
    }
    let fake = slack.messages();
    assert!(fake.iter().all(|m| m.channel == "D0ADA"));
    assert_eq!(
        posts_per_alert(&fake),
        [("crashed-dm", 1), ("dm-0", 1), ("dm-1", 1)]
            .into_iter()
            .map(|(a, n)| (a.to_owned(), n))
            .collect()
    );
    assert_eq!(slack.stats().opens, 1, "the DM id is cached");
    let entry = ledger.get("dm-0").await.unwrap().unwrap();
    assert_eq!(entry.channel_id, "D0ADA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_channel_holds_back_no_other_and_shutdown_is_prompt() {
    let quiet = ["CQ1", "CQ2", "CQ3", "CQ4", "CQ5", "CQ6"];
    let mut channels = vec!["CBUSY"];
    channels.extend(quiet);
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&channels, None, Backend::Sqlite, 1).await;
    let mut busy_partition = None;
    for i in 0..1000 {
        let (partition, _) = env
            .produce_message(&message(&format!("busy-{i}"), "CBUSY", "backlog"))
            .await;
        busy_partition = Some(partition);
    }
    let mut elsewhere = BTreeSet::new();
    for channel in quiet {
        let (partition, _) = env
            .produce_message(&message(&format!("quiet-{channel}"), channel, "calm"))
            .await;
        if Some(partition) != busy_partition {
            elsewhere.insert(format!("quiet-{channel}"));
        }
    }
    assert!(
        !elsewhere.is_empty(),
        "some quiet channel on another partition"
    );
    let notify = env
        .start_notify_with(notify_settings(&env, |n| {
            n.max_channel_backlog = 100;
            n.pacing.workspace_per_second = 1000;
        }))
        .await;
    let mut stored = slack.subscribe();
    let mut first_busy = None;
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !elsewhere.is_subset(&seen) {
        let m = tokio::time::timeout_at(deadline, stored.recv())
            .await
            .expect("quiet channels posted")
            .expect("fake Slack");
        let alert = m.alert_id().unwrap_or_default().to_owned();
        if alert.starts_with("busy-") {
            first_busy.get_or_insert(tokio::time::Instant::now());
        }
        seen.insert(alert);
    }
    let behind = first_busy.map_or(Duration::ZERO, |t| t.elapsed());
    assert!(
        behind < Duration::from_secs(2),
        "the quiet channels waited {behind:?} behind CBUSY"
    );
    // The busy channel's partition is paused rather than read into memory.
    some_partition_paused(&env).await;
    let in_flight =
        crate::common::metric_value(&env.notify_metrics().await, "alertsvc_notify_in_flight")
            .unwrap_or(f64::MAX);
    assert!(in_flight <= 400.0, "{in_flight} messages in memory");

    let grace = env.settings.notify.as_ref().unwrap().shutdown_grace;
    let started = tokio::time::Instant::now();
    stop_within(notify, grace + Duration::from_secs(3)).await;
    assert!(started.elapsed() <= grace + Duration::from_secs(3));
    let busy_posted = slack
        .messages()
        .iter()
        .filter(|m| m.channel == "CBUSY")
        .count();
    assert!(busy_posted < 50, "the backlog was left for the next run");
}

async fn stop_within(stage: RunningStage, limit: Duration) {
    stage.token.cancel();
    tokio::time::timeout(limit, stage.handle)
        .await
        .expect("notify stopped within shutdown_grace")
        .expect("join")
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_reading_the_same_records_post_each_alert_once() {
    let channels = ["C1", "C2", "C3", "C4", "U0ADA", "U0GRACE"];
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&channels, None, Backend::Postgres, 50).await;
    // Slow answers widen every race between the two.
    slack.set_latency(Duration::from_millis(30));
    for i in 0..60 {
        env.produce_message(&message(
            &format!("r-{i}"),
            channels[i % channels.len()],
            "once",
        ))
        .await;
    }
    // Two consumer groups: each replica reads every record, as two owners
    // of one partition do during a rebalance. Only the ledger arbitrates.
    let mut replicas: Vec<RunningStage> = Vec::new();
    for (i, name) in ["replica-a", "replica-b"].iter().enumerate() {
        let settings = notify_settings(&env, |n| {
            n.instance_id = Some((*name).to_owned());
            n.group_id = format!("{}-{i}", n.group_id);
        });
        replicas.push(env.start_notify_with(settings).await);
    }
    let responses = env.read_responses(120, WAIT).await;
    for replica in replicas {
        replica.stop().await.expect("clean stop");
    }
    let posts = posts_per_alert(&slack.messages());
    assert_eq!(posts.len(), 60);
    assert!(posts.values().all(|n| *n == 1), "{posts:?}");
    for (alert, answers) in by_alert(&responses) {
        let mut outcomes: Vec<_> = answers.iter().map(|r| r.outcome).collect();
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            outcomes,
            [DeliveryOutcome::Duplicate, DeliveryOutcome::Posted],
            "{alert}"
        );
        assert!(answers.iter().all(|r| r.ts == answers[0].ts), "{alert}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_never_go_backwards_and_a_late_recurrence_is_posted_anew() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let now = now_ms();
    let v1 = version("conn-1", "C1", "v1 failing", 10, now - 60_000);
    let v2 = version("conn-1", "C1", "v2 still failing", 11, now - 50_000);
    // The same content again 40 s later, past a 30 s dedup window.
    let again = version("conn-1", "C1", "v2 still failing", 12, now - 10_000);
    let settings = notify_settings(&env, |n| n.dedup_window = Duration::from_secs(30));
    let responses = deliver_all(&env, &[&v1, &v2, &v1, &again], settings).await;
    assert_eq!(
        outcomes(&responses),
        [
            DeliveryOutcome::Posted,
            DeliveryOutcome::Updated,
            DeliveryOutcome::Duplicate,
            DeliveryOutcome::Posted
        ]
    );
    let fake = slack.messages();
    assert_eq!(fake.len(), 2, "the first occurrence, then the recurrence");
    assert_eq!(
        fake[0].revisions,
        ["v1 failing", "v2 still failing"],
        "never back to v1"
    );
    assert_eq!(fake[1].revisions, ["v2 still failing"]);
    assert_eq!(
        fake[1].metadata.as_ref().unwrap()["event_payload"]["occurrence"],
        "2"
    );
    assert_ne!(responses[3].ts, responses[0].ts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_posted_once_the_cause_is_fixed() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let refused = message("was-refused", "C0LATER", "the channel did not exist yet");
    env.produce_message(&refused).await;
    let notify = env.start_notify().await;
    env.read_responses(1, WAIT).await;
    // The operator creates the channel, then replays the dead letter; a
    // plain redelivery of the same record is not a replay.
    slack.add_channel("C0LATER");
    env.produce_message(&refused).await;
    env.produce_message_with_headers(
        &refused,
        &[("alertsvc.replayed.from", "slack-messages.dlq/0/0")],
    )
    .await;
    let responses = env.read_responses(3, WAIT).await;
    notify.stop().await.expect("clean stop");
    let seen: Vec<_> = responses.iter().map(|r| (r.outcome, r.ok)).collect();
    assert_eq!(
        seen,
        [
            (DeliveryOutcome::Failed, false),
            (DeliveryOutcome::Duplicate, false),
            (DeliveryOutcome::Posted, true)
        ]
    );
    assert_eq!(responses[1].error.as_deref(), Some("channel_not_found"));
    assert_eq!(posts_per_alert(&slack.messages())["was-refused"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_keeps_the_alert_posted_and_is_not_dead_lettered() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1"], None, Backend::Sqlite, 50).await;
    let now = now_ms();
    env.produce_message(&version("edited", "C1", "v1", 1, now - 2_000))
        .await;
    let notify = env.start_notify().await;
    env.read_responses(1, WAIT).await;
    slack.archive_channel("C1");
    env.produce_message(&version("edited", "C1", "v2", 2, now - 1_000))
        .await;
    let responses = env.read_responses(2, WAIT).await;
    // The same v1 again: still posted, so a duplicate, never a new post.
    env.produce_message(&version("edited", "C1", "v1", 1, now - 2_000))
        .await;
    let responses_after = env.read_responses(3, WAIT).await;
    notify.stop().await.expect("clean stop");
    assert_eq!(
        (
            responses[1].outcome,
            responses[1].ok,
            responses[1].error.as_deref()
        ),
        (DeliveryOutcome::Failed, false, Some("is_archived"))
    );
    assert_eq!(
        responses[1].ts, responses[0].ts,
        "the alert is still where it was"
    );
    assert_eq!(responses_after[2].outcome, DeliveryOutcome::Duplicate);
    assert_eq!(responses_after[2].ts, responses[0].ts);
    let fake = slack.messages();
    assert_eq!(fake.len(), 1);
    assert_eq!(fake[0].revisions, ["v1"]);
    no_dead_letters(&env).await;
}

/// tansu can hold a rebalance for a while (DEPENDENCY-FACTS).
const REBALANCE_WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partitions_queued_messages_are_dropped_and_posted_once_by_the_owner() {
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&[], None, Backend::Postgres, 5).await;
    // A long queue (60 messages at 5/s) in a busy channel of every
    // partition: whichever partitions the rebalance moves (all of them
    // with the eager protocol, some with the cooperative one), one with a
    // queue is among them.
    let mut busy = BTreeMap::new();
    let mut all = 0;
    for c in 0.. {
        let channel = format!("CBUSY{c}");
        slack.add_channel(&channel);
        let mut partition = 0;
        for i in 0..60 {
            let (p, _) = env
                .produce_message(&message(&format!("{channel}-{i}"), &channel, "queued"))
                .await;
            partition = p;
            all += 1;
        }
        busy.entry(partition).or_insert(channel);
        if busy.len() == 3 {
            break;
        }
        assert!(c < 40, "no channel for every partition: {busy:?}");
    }
    let first = env
        .start_notify_with(notify_settings(&env, |n| {
            n.instance_id = Some("replica-a".into());
        }))
        .await;
    let mut stored = slack.subscribe();
    tokio::time::timeout(REBALANCE_WAIT, stored.recv())
        .await
        .expect("first post")
        .expect("fake Slack");
    // A second replica joins the group and takes some of the first's
    // partitions, whose queues are still long.
    let second = env
        .start_notify_with(notify_settings(&env, |n| {
            n.instance_id = Some("replica-b".into());
        }))
        .await;
    // The revoked queue was the first replica's.
    eventually(
        REBALANCE_WAIT,
        "the first replica to drop its revoked queue",
        || async {
            let dropped = first
                .stage
                .metric_sum("alertsvc_notify_dropped_on_revoke_total");
            (dropped >= 1.0).then_some(())
        },
    )
    .await;
    eventually(REBALANCE_WAIT, "every alert posted", || async {
        (slack.posts_by_alert().len() >= all).then_some(())
    })
    .await;
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
    let posts = slack.posts_by_alert();
    assert_eq!(posts.len(), all);
    assert!(posts.values().all(|n| *n == 1), "{posts:?}");
}

/// More messages waiting than `notify.max_in_flight`: notify reads up to
/// the bound and no further; when nothing finishes for a while it pauses
/// every partition (so that the consumer is polled again), resumes once
/// half is done, and posts each alert once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_stops_reading_at_max_in_flight_then_pauses() {
    const MAX_IN_FLIGHT: usize = 6;
    let NotifyEnv {
        slack,
        env,
        ledger_dir: _ledger_dir,
        ..
    } = notify_env(&["C1", "C2"], None, Backend::Sqlite, 50).await;
    // Each post answered after 1.2 s: a channel finishes one message at a
    // time, so the backlog stays full longer than notify waits to pause.
    slack.set_latency(Duration::from_millis(1200));
    let alerts: Vec<String> = (0..10).map(|i| format!("queued-{i}")).collect();
    for (i, alert) in alerts.iter().enumerate() {
        env.produce_message(&message(alert, ["C1", "C2"][i % 2], "queued"))
            .await;
    }
    let notify = env
        .start_notify_with(notify_settings(&env, |n| n.max_in_flight = MAX_IN_FLIGHT))
        .await;
    let partitions = crate::common::TOPICS
        .iter()
        .find(|(id, _)| *id == "slack_messages")
        .map_or(0.0, |(_, n)| f64::from(*n));
    let (mut most_in_flight, mut all_paused) = (0.0_f64, false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while slack.messages().len() < alerts.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} posted",
            slack.messages().len(),
            alerts.len()
        );
        let metrics = env.notify_metrics().await;
        let value = |series| crate::common::metric_value(&metrics, series).unwrap_or(0.0);
        most_in_flight = most_in_flight.max(value("alertsvc_notify_in_flight"));
        all_paused |= value("alertsvc_notify_paused_partitions") == partitions;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        most_in_flight, MAX_IN_FLIGHT as f64,
        "read up to the bound, never past it"
    );
    assert!(
        all_paused,
        "every partition paused while the backlog stayed full"
    );
    let responses = env.read_responses(alerts.len(), WAIT).await;
    assert!(responses
        .iter()
        .all(|r| r.outcome == DeliveryOutcome::Posted));
    let posts = posts_per_alert(&slack.messages());
    let expected: BTreeMap<String, usize> = alerts.iter().map(|a| (a.clone(), 1)).collect();
    assert_eq!(posts, expected, "each alert posted once");
    notify.stop().await.expect("clean stop");
}
